"""Benchmarks of pyunion beside kernel overlayfs and the FUSE peers."""
