"""pyunion: an aufs-style union file system in userspace (pyfuse3 + trio)."""
