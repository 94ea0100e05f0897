"""The on-disk format of the branches: the aufs names (which OCI image layers
use too) and pyunion's own xattr.

* ``.wh.NAME`` in a branch hides ``NAME`` in every branch below it.
* A character device 0/0 named ``NAME`` (overlayfs's whiteout) does the
  same, in any branch, and never shows through the mount.  pyunion writes
  this form only for a name whose ``.wh.NAME`` would exceed ``NAME_MAX``
  (names of 252-255 bytes): the whiteout then takes the name's own place in
  the writable branch.  A user cannot make one through the mount
  (``mknod`` of a 0/0 character device fails with EPERM, as on overlayfs).
* ``.wh..wh..opq`` in a directory hides everything below that directory.
* A whiteout hides nothing in its own branch (as in aufs and OCI layers).
  A change killed at its very last step, removing the whiteout of a name
  it has just made, leaves one beside the new entry: harmless, since that
  entry (a non-directory, or a directory made opaque) hides all below.
* Every name that starts with ``.wh.`` is reserved: it never shows through
  the mount and cannot be made through it.  pyunion keeps its own
  bookkeeping (the work directory) under ``.wh..wh.pyunion`` at the top of
  the writable branch, the way aufs keeps ``.wh..wh.plnk`` and friends.
* The xattr ``trusted.pyunion`` on an entry of the writable branch records,
  as JSON, what the union knows of it: ``origin``, the inode number it had
  before it was copied up (so ``st_ino`` does not change), and, on a
  directory that was renamed, ``redirect``, the path where its lower parts
  still live; on a file in the hard-link index (``index.py``), ``nlink``,
  its link count in the union; on a partially copied-up file
  (``partial.py``), ``partial``, the id of its chunk map.  The xattr never
  shows through the mount.

This module knows names and formats only; it never touches the disk.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

NAME_MAX = 255  # bytes in a name, on every local file system a branch may be on
PREFIX = ".wh."
OPAQUE = PREFIX + PREFIX + ".opq"
META_DIR = PREFIX + PREFIX + "pyunion"
XATTR = "trusted.pyunion"
#: setting it on a name through the mount completes the partial copies at
#: and below that name (``pyunion flatten``); it is never stored
FLATTEN_XATTR = XATTR + ".flatten"


def is_reserved(name: str) -> bool:
    """True for names that belong to the format, never to the user."""
    return name.startswith(PREFIX)


def named_whiteout(name: str) -> str | None:
    """``.wh.NAME``, the name that hides ``name`` in the branches below, or
    None when it would be too long (the whiteout is then a device)."""
    whiteout = PREFIX + name
    return whiteout if len(os.fsencode(whiteout)) <= NAME_MAX else None


def is_whiteout_device(mode: int, rdev: int) -> bool:
    """True for a node that is overlayfs's whiteout: a character device 0/0."""
    return stat.S_ISCHR(mode) and rdev == 0


def hidden_by(whiteout: str) -> str:
    """The name a whiteout hides (``.wh.foo`` hides ``foo``)."""
    return whiteout[len(PREFIX) :]


def is_private_xattr(name: str) -> bool:
    return name == XATTR or name.startswith(XATTR + ".")


@dataclass(frozen=True)
class Marks:
    """What ``trusted.pyunion`` says of an upper entry."""

    origin: int | None = None
    redirect: str | None = None
    nlink: int | None = None
    partial: str | None = None

    def encode(self) -> bytes:
        fields = {k: v for k, v in vars(self).items() if v is not None}
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Marks:
        fields = json.loads(raw)
        return cls(**{k: fields.get(k) for k in ("origin", "redirect", "nlink", "partial")})
