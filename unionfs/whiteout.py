"""The on-disk names of the aufs format, which OCI image layers use too.

* ``.wh.NAME`` in a branch hides ``NAME`` in every branch below it.
* ``.wh..wh..opq`` in a directory hides everything below that directory.
* Every name that starts with ``.wh.`` is reserved: it never shows through
  the mount and cannot be made through it.  pyunion keeps its own
  bookkeeping (the work directory) under ``.wh..wh.pyunion`` at the top of
  the writable branch, the way aufs keeps ``.wh..wh.plnk`` and friends.

This module knows names only; it never touches the disk.
"""

PREFIX = ".wh."
OPAQUE = PREFIX + PREFIX + ".opq"
META_DIR = PREFIX + PREFIX + "pyunion"


def is_reserved(name: str) -> bool:
    """True for names that belong to the format, never to the user."""
    return name.startswith(PREFIX)


def whiteout_for(name: str) -> str:
    """The name that hides ``name`` in the branches below."""
    return PREFIX + name


def hidden_by(whiteout: str) -> str:
    """The name a whiteout hides (``.wh.foo`` hides ``foo``)."""
    return whiteout[len(PREFIX) :]
