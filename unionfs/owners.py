"""Owners as the branches keep them and as the mount shows them.

podman runs a container in a user namespace (``--uidmap``, ``--userns``)
on image layers whose files belong to the container's IDs (0 for its root),
without chowning a copy of them: it asks its mount program, as it asks
fuse-overlayfs, to show the files as the host's IDs the namespace maps them
to, with ``uidmapping=``/``gidmapping=`` (triples ``ID:HOST-ID:COUNT``, as
in ``/proc/PID/uid_map``, which containers/storage starts with a ``:``),
and, where one ID is all there is, ``squash_to_uid=``/``squash_to_gid=``.
``squash_to_root`` shows every file as root's.

What the mount shows is the stored ID moved into the host's range; what it
stores (a new file's owner, a chown) is the caller's ID moved back.  A
stored ID outside every range is shown as no ID, ``(uid_t)-1``: the kernel
shows that as its overflow ID (65534, ``nobody``), as fuse-overlayfs shows
it, but, as on overlayfs, never takes any process for its owner (a root
daemon's mount is open to the host's real ``nobody`` too).  A caller's ID
outside every range is stored as the overflow ID.  A squash changes only
what is shown.  The users and groups a POSIX ACL names
(``system.posix_acl_*``) move as owners do, a squash aside; an entry for
no ID is left out of what is shown (it grants no one anything).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .branches import BranchError

#: (uid_t)-1, no ID: chown's "leave it as it is", the kernel's invalid ID
NO_ID = (1 << 32) - 1
_ID_LIMIT = NO_ID  # every ID is below it
_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
#: an ACL's value: a 4-byte version, then entries (tag, permissions, ID)
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # the tags of entries that name an ID
_OVERFLOW = {"uid": "/proc/sys/kernel/overflowuid", "gid": "/proc/sys/kernel/overflowgid"}


@dataclass(frozen=True)
class Span:
    """``count`` IDs from ``stored`` in the branches, shown from ``shown``."""

    stored: int
    shown: int
    count: int


@dataclass(frozen=True)
class IdMap:
    """One kind of ID (users or groups); no spans and no squash: as stored."""

    spans: tuple[Span, ...] = ()
    squash: int | None = None
    overflow: int = 65534

    def shown(self, stored: int) -> int:
        if self.squash is not None:
            return self.squash
        return self.moved(stored, to_shown=True)

    def stored(self, shown: int) -> int:
        return self.moved(shown, to_shown=False)

    def moved(self, id_: int, to_shown: bool) -> int:
        """``id_`` moved across the spans, a squash aside (it is of owners
        only); outside them, :data:`NO_ID` shown, the overflow ID stored."""
        ends = (lambda s: (s.stored, s.shown)) if to_shown else (lambda s: (s.shown, s.stored))
        if not self.spans:
            return id_
        for span in self.spans:
            start, to = ends(span)
            if start <= id_ < start + span.count:
                return to + id_ - start
        return NO_ID if to_shown else self.overflow


@dataclass(frozen=True)
class Owners:
    uids: IdMap = IdMap()
    gids: IdMap = IdMap()

    @property
    def mapped(self) -> bool:
        return self != Owners()

    def in_acl(self, name: str, value: bytes, to_shown: bool) -> bytes:
        """The value of the xattr ``name``, with the users and groups a POSIX
        ACL names moved as the owners are (what the kernel and the tools
        read as IDs); any other xattr, or a malformed ACL, as it is."""
        if name not in _ACL_XATTRS or not self.mapped or len(value) % _ACL_ENTRY.size != 4:
            return value
        moved = [value[:4]]
        for tag, perm, id_ in _ACL_ENTRY.iter_unpack(value[4:]):
            ids = {_ACL_USER: self.uids, _ACL_GROUP: self.gids}.get(tag)
            id_ = ids.moved(id_, to_shown) if ids is not None else id_
            if ids is None or id_ != NO_ID:
                moved.append(_ACL_ENTRY.pack(tag, perm, id_))
        return b"".join(moved)


AS_STORED = Owners()


def parse(options: dict[str, str]) -> Owners:
    """The owner options among ``options`` (``squash_to_root`` with an
    empty value); the rest are left alone."""
    root = 0 if "squash_to_root" in options else None
    kinds = {}
    for kind in ("uid", "gid"):
        squash = options.get(f"squash_to_{kind}")
        spans = options.get(f"{kind}mapping")
        kinds[kind] = IdMap(
            _spans(spans, f"{kind}mapping") if spans is not None else (),
            _id(squash, f"squash_to_{kind}") if squash is not None else root,
            _overflow(kind))
    return Owners(kinds["uid"], kinds["gid"])


def _spans(text: str, option: str) -> tuple[Span, ...]:
    fields = [f for f in text.split(":") if f]
    if not fields or len(fields) % 3 or not all(f.isdigit() for f in fields):
        raise BranchError(f"{option}= must be triples ID:HOST-ID:COUNT, not {text!r}")
    numbers = [int(f) for f in fields]
    spans = tuple(Span(*numbers[i:i + 3]) for i in range(0, len(numbers), 3))
    if any(span.count == 0 for span in spans):
        raise BranchError(f"{option}= has a range of no IDs: {text!r}")
    if any(max(span.stored, span.shown) + span.count > _ID_LIMIT for span in spans):
        raise BranchError(f"{option}= goes past the largest ID: {text!r}")
    return spans


def _id(text: str, option: str) -> int:
    if not text.isdigit() or int(text) >= _ID_LIMIT:
        raise BranchError(f"{option}= must be a user or group ID, not {text!r}")
    return int(text)


def _overflow(kind: str) -> int:
    try:
        with open(_OVERFLOW[kind]) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534
