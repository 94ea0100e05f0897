"""The on-disk formats of the branches: aufs's names (which OCI image layers
use too), overlayfs's (kernel overlayfs, fuse-overlayfs), and pyunion's own
xattr.  Both formats are read in every branch; the writable branch is
written in one of them, the mount's ``whiteout=`` choice (:class:`Format`).

* ``.wh.NAME`` in a branch hides ``NAME`` in every branch below it.
* A character device 0/0 named ``NAME`` (overlayfs's whiteout) does the
  same, in any branch, and never shows through the mount.  In the aufs
  format pyunion writes this form only for a name whose ``.wh.NAME`` would
  exceed ``NAME_MAX`` (names of 252-255 bytes): the whiteout then takes the
  name's own place in the writable branch.  A user cannot make one through the mount
  (``mknod`` of a 0/0 character device fails with EPERM, as on overlayfs).
* ``.wh..wh..opq`` in a directory hides everything below that directory;
  so does overlay's xattr ``trusted.overlay.opaque``, ``user.overlay.opaque``
  (overlayfs's ``userxattr``) or ``user.fuseoverlayfs.opaque`` (what
  fuse-overlayfs falls back to without privilege) equal to ``y``.
  fuse-overlayfs writes the xattr and ``.wh..wh..opq`` both; kernel
  overlayfs's other values (``x``: a directory holding xwhiteouts) are not
  opaque.
* overlay's ``trusted.overlay.redirect`` on a directory says where its
  lower parts live: an absolute path from the layer's root (``/a/b``), or a
  bare name, in the same parent.  It is followed as pyunion's own redirect
  is, in any branch.  ``user.overlay.redirect`` is not: any owner of a
  directory may set it, and so reach, through it, what a directory below
  keeps from them (kernel overlayfs never follows it on a directory
  either: ``userxattr`` turns ``redirect_dir`` off).
* overlay's other xattrs are not read: ``origin`` is a file handle of the
  lower file (for stable inode numbers, and the index); pyunion keeps its
  own origin (below), and a handle could not be trusted across a copy of
  the layers anyway.  Nor are ``metacopy`` (a copy with its data still
  below), ``nlink``, ``impure``, xwhiteouts, or fuse-overlayfs's
  ``user.fuseoverlayfs.origin`` (a path, for inode numbers only).  All of
  overlay's xattrs (``trusted.overlay.*``, ``user.overlay.*``,
  ``user.fuseoverlayfs.*``) are the format's: they never show through the
  mount, cannot be set through it, and are not copied up.
* A whiteout hides nothing in its own branch (as in aufs and OCI layers).
  A change killed at its very last step, removing the whiteout of a name
  it has just made, leaves one beside the new entry: harmless, since that
  entry (a non-directory, or a directory made opaque) hides all below.
* Every name that starts with ``.wh.`` is reserved: it never shows through
  the mount and cannot be made through it.  pyunion keeps its own
  bookkeeping (the work directory, the hard-link index, intent records,
  chunk maps) under ``.wh..wh.pyunion`` at the top of the writable branch,
  the way aufs keeps ``.wh..wh.plnk`` and friends; with ``whiteout=overlay``
  all of it lives in ``workdir=`` instead, so the branch holds nothing that
  overlayfs would show.
* The xattr ``trusted.pyunion`` on an entry of the writable branch records,
  as JSON, what the union knows of it: ``origin``, the inode number it had
  before it was copied up (so ``st_ino`` does not change), and, on a
  directory that was renamed, ``redirect``, the path where its lower parts
  still live; on a file in the hard-link index (``index.py``), ``nlink``,
  its link count in the union; on a partially copied-up file
  (``partial.py``), ``partial``, the id of its chunk map.  The xattr never
  shows through the mount.

What pyunion writes in the writable branch, by format:

* ``aufs`` (the default): ``.wh.NAME`` whiteouts (a device for a name too
  long for one, as above) and ``.wh..wh..opq`` files.
* ``overlay``: every whiteout a character device 0/0 in the name's place,
  and opaque directories ``trusted.overlay.opaque=y``.  Kernel overlayfs
  reads such a branch as pyunion does, once ``pyunion flatten`` has
  resolved pyunion's own redirects and partial copies (which overlayfs
  cannot read).  Making devices and ``trusted.`` xattrs needs privilege.
  Kernel overlayfs shows ``trusted.pyunion`` (to root) as an ordinary
  xattr.

This module knows names and formats only; it never touches the disk.
"""

from __future__ import annotations

import enum
import json
import os
import stat
from dataclasses import dataclass
from typing import NamedTuple

NAME_MAX = 255  # bytes in a name, on every local file system a branch may be on
PREFIX = ".wh."
OPAQUE = PREFIX + PREFIX + ".opq"
META_DIR = PREFIX + PREFIX + "pyunion"
XATTR = "trusted.pyunion"
#: setting it on a name through the mount completes the partial copies at
#: and below that name (``pyunion flatten``); it is never stored
FLATTEN_XATTR = XATTR + ".flatten"
OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
OVERLAY_OPAQUE = "trusted.overlay.opaque"  # the one pyunion writes
_OPAQUE_XATTRS = frozenset(prefix + "opaque" for prefix in OVERLAY_PREFIXES)
_REDIRECT_XATTR = "trusted.overlay.redirect"  # only root can set it
#: overlay's xattrs that say something of a directory to pyunion
DIR_XATTRS = _OPAQUE_XATTRS | {_REDIRECT_XATTR}


class Format(enum.Enum):
    """What pyunion writes in the writable branch (``whiteout=``)."""

    AUFS = "aufs"
    OVERLAY = "overlay"


class DirMarks(NamedTuple):
    """What overlay's xattrs say of a directory: opaque, and its raw
    redirect (resolved against the directory's path by ``tree.py``)."""

    opaque: bool = False
    redirect: str | None = None

    @classmethod
    def of(cls, values: dict[str, bytes]) -> DirMarks:
        """From the values of the directory's :data:`DIR_XATTRS`."""
        redirect = values.get(_REDIRECT_XATTR)
        return cls(any(values.get(n) == b"y" for n in _OPAQUE_XATTRS),
                   os.fsdecode(redirect.rstrip(b"\0")) if redirect else None)


NO_DIR_MARKS = DirMarks()


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
    """pyunion's xattrs and overlay's: the formats', never the user's."""
    return name == XATTR or name.startswith(XATTR + ".") or name.startswith(OVERLAY_PREFIXES)


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
