"""``udba``: what the union does when a read-only branch is changed behind
its back (aufs's option of that name: "user's direct branch access").

* ``none``: the daemon keeps a read-only directory's names for as long as
  they stay among the 4,096 listings it keeps (so for the life of the
  mount, for a small tree), and the kernel keeps names and attributes for
  ``LONG`` seconds.  Fastest; right when branches never change (container
  image layers).
* ``reval``: a directory's kept names are used only after a ``stat`` shows
  its inode number, mtime and ctime unchanged (else they are read again),
  and the kernel keeps names and attributes for ``SHORT`` seconds only, so
  it asks again: a change shows within a second.
* ``notify``: the directories the daemon looks into are watched with
  inotify (``watch.py``); an event drops their kept names and has the
  kernel drop what it keeps of the names and files that changed.  The
  kernel keeps names and attributes for ``LONG`` seconds otherwise (a name
  it does not find for ``SHORT``: a directory that appears below a merged
  one brings names no event tells of one by one).  Past the inotify watch
  limit, the directories that cannot be watched get reval's checks.

In every mode the data read through the mount is never another file's:
:func:`changed_below` checks a lower file at each open against what the
kernel was last told of it.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from typing import NamedTuple

from .layer import Layer

#: seconds the kernel keeps names and attributes it may trust (none, notify)
LONG = 60.0
#: seconds it keeps those that may go stale unseen (reval; notify's negative
#: entries and unwatched directories).  One second, not zero: a ``find`` or
#: ``ls -l`` asks each name once, not once per system call on it, and a
#: change still shows within a second.
SHORT = 1.0


class Mode(enum.Enum):
    NONE = "none"
    REVAL = "reval"
    NOTIFY = "notify"


class Seen(NamedTuple):
    """What the kernel was last told of a lower file: which file it is
    (a number reused for a file of another type is another file: the
    kernel cannot change an inode's type) and what would make its cached
    attributes and pages wrong."""

    dev: int
    ino: int
    kind: int
    size: int
    mtime_ns: int
    ctime_ns: int


def seen(st: os.stat_result) -> Seen:
    return Seen(st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                st.st_ctime_ns)


def changed_below(told: Seen | None, fd: int) -> Seen | None:
    """What the lower file just opened as ``fd`` is now, if it changed
    since the kernel was told ``told`` of it, else None.  Another file
    under that name (replaced below) is ESTALE: the kernel then looks the
    name up again and opens what it finds (it retries an open once with
    ``LOOKUP_REVAL``)."""
    now = seen(os.fstat(fd))
    if told is None or now == told:
        return None
    if now[:3] != told[:3]:
        raise OSError(errno.ESTALE, "replaced in a read-only branch")
    return now


def check_identity(told: Seen | None, st: os.stat_result) -> None:
    """ESTALE if ``st`` (of a lower file, for its attributes) is not of the
    file the kernel holds as this inode: a stat by path is retried with a
    fresh lookup."""
    if told is not None and seen(st)[:3] != told[:3]:
        raise OSError(errno.ESTALE, "replaced in a read-only branch")


class Policy:
    """One mount's udba choice, applied to each read-only layer it gets
    (at mount, and when branches are added at run time)."""

    def __init__(self, mode: Mode, watcher=None):
        self.mode = mode
        #: ``watch.Watcher`` with notify
        self.watcher = watcher

    def adopt(self, layer: Layer) -> None:
        if layer.writable:
            return
        layer.check_dirs = self.mode is Mode.REVAL
        if self.watcher is not None:
            layer.watch = self.watcher.watch

    def retire(self, layer: Layer) -> None:
        if self.watcher is not None:
            self.watcher.drop(layer)

    def timeout(self, dir_path: str | None) -> float:
        """How long the kernel may keep a name found in (and the
        attributes of a file of) the union directory ``dir_path``."""
        if self.mode is Mode.NONE:
            return LONG
        if self.mode is Mode.REVAL or dir_path is None or self.watcher.unwatched(dir_path):
            return SHORT
        return LONG

    def keeps_every_listing(self) -> bool:
        """Whether the kernel may keep every directory's listing for the
        mount's whole life (so it may open directories itself)."""
        return self.mode is Mode.NONE

    def keeps_listing(self, dir_path: str) -> bool:
        """Whether the kernel may keep the listing of the union directory
        ``dir_path`` across opens: as long as it keeps names found in it."""
        return self.timeout(dir_path) == LONG

    def negative_timeout(self) -> float:
        return LONG if self.mode is Mode.NONE else SHORT
