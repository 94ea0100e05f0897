"""pycontainer: runs a process tree in fresh namespaces and cgroups on a pyunion root."""
