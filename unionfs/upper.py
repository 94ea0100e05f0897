"""The writable branch, where every change to the union lands.

It owns the work directory: a change that must appear at once (a copied-up
file, a directory made over a whiteout, a directory on its way out) is
built there under a fresh name and renamed into place, so the branch never
shows half of it.  Whatever a crash left in the work directory is removed
at mount.  The work directory is ``work`` inside ``workdir=`` when given
(as overlayfs does), otherwise ``.wh..wh.pyunion/work`` at the top of the
branch; the chunk maps of partially copied-up files (``chunkmap.py``) live
in ``chunks`` beside it.  The hard-link index and the intent records live
in ``.wh..wh.pyunion`` of the branch, or, with the overlay format, of
``workdir=`` (:attr:`Upper.meta`).

Whiteouts and opaque marks are written here, in the mount's format
(``whiteout.Format``): :meth:`Upper._whiteout_name` and
:meth:`Upper.mark_opaque` are the only places that choose.  Each method
that takes a name out, moves it or puts one back handles every form a
whiteout may have, so callers never ask which.

What leaves the branch here (a retired entry, a chunk map) is reported to
the branch's quota (``quota.py``) once it is gone; what comes in goes
through the layer, which reports it (``metered.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat

from . import durable
from .branches import Branch, BranchError, Mode
from .chunkmap import ChunkMap, Source
from .copyup import remove_staged
from .layer import RENAME_EXCHANGE, RENAME_WHITEOUT, ROOT, Layer, child, split
from .metered import MeteredLayer
from .quota import UNLIMITED, Quota, Unlimited, tree_blocks
from .whiteout import (META_DIR, OPAQUE, OVERLAY_OPAQUE, XATTR, Format, Marks,
                       is_whiteout_device, named_whiteout)

def _subdirectory(parent_fd: int, name: str) -> int:
    """Open (making it if needed) ``name`` in ``parent_fd``."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=parent_fd)


class Upper:
    def __init__(self, layer: Layer, workdir: str | None, quota: Quota | Unlimited = UNLIMITED,
                 written: Format = Format.AUFS):
        self.layer = layer
        self._workdir = workdir
        #: what the branch may hold (a quota's layer is a ``MeteredLayer``)
        self.quota = quota
        #: the format whiteouts and opaque marks are written in
        self.written = written
        #: the layer whose ``.wh..wh.pyunion`` holds the hard-link index and
        #: the intent records: the branch, or ``workdir=`` (overlay format,
        #: which needs it) so the branch holds nothing overlayfs would show
        self.meta = layer if written is Format.AUFS else (
            MeteredLayer(Branch(workdir, Mode.RW), -1, quota) if quota.limit is not None
            else Layer(Branch(workdir, Mode.RW), -1))
        self.work_fd = -1
        #: where the chunk maps of partially copied-up files live
        self.chunks_fd = -1
        self._names = (f"{os.getpid()}.{n}" for n in itertools.count())

    def prepare(self, volatile: bool = False) -> None:
        """Make (or clean) the work directory, marked while a ``volatile``
        mount lives (``durable.py``): done once the mount exists, so that a
        mount that fails writes nothing."""
        if self._workdir is None:
            top = self.layer.open(ROOT, os.O_RDONLY | os.O_DIRECTORY)
            try:
                base = _subdirectory(top, META_DIR)
            finally:
                os.close(top)
        else:
            base = os.open(self._workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.work_fd = _subdirectory(base, "work")
            self.chunks_fd = _subdirectory(base, "chunks")
        finally:
            os.close(base)
        for stale in os.listdir(self.work_fd):
            if stale != durable.MARKER_DIR:
                remove_staged(self.work_fd, stale)
        durable.unmark(self.work_fd)  # checked before the mount (check_volatile)
        if volatile:
            durable.mark(self.work_fd)

    def check_volatile(self) -> None:
        """Before the mount: refuse a branch that a volatile mount left as
        the machine went down (``durable.py``)."""
        durable.check(self._work_path())

    def settle(self) -> None:
        """At a clean unmount of a volatile mount: flushed, and unmarked."""
        durable.settle(self.work_fd)

    def _work_path(self) -> str:
        if self._workdir is None:
            return os.path.join(self.layer.branch.path, META_DIR, "work")
        return os.path.join(self._workdir, "work")

    def count(self) -> None:
        """Have the quota count what the branch holds, with the work and
        chunk directories of a ``workdir=``: at mount, once prepared and
        recovered."""
        if self.quota.limit is None:
            return
        if self.meta is not self.layer:
            own = self.meta
        else:
            own = Layer(Branch(self._workdir, Mode.RW), -1) if self._workdir else None
        try:
            self.quota.count([(self.layer, ROOT)] + ([(own, "work"), (own, "chunks")]
                                                     if own else [])
                             + ([(own, META_DIR)] if own is self.meta else []), [self.work_fd])
        finally:
            if own is not None and own is not self.meta:
                own.close()

    def check_format(self) -> None:
        """Refuse, before the mount, bookkeeping that the other format left
        where this one does not look, and a format the daemon cannot
        write: the overlay one needs privilege (a 0/0 device, a
        ``trusted.`` xattr), tried in ``workdir=``, then removed."""
        self._check_other_bookkeeping()
        if self.written is Format.AUFS:
            return
        probe = f".pyunion-probe.{os.getpid()}"
        base = os.open(self._workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.mkdir(probe, 0o700, dir_fd=base)
            try:
                os.setxattr(f"/proc/self/fd/{base}/{probe}", OVERLAY_OPAQUE, b"y",
                            follow_symlinks=False)
                os.mknod(f"{probe}/whiteout", stat.S_IFCHR, 0, dir_fd=base)
            except OSError as exc:
                raise BranchError(f"whiteout=overlay: cannot write overlay's marks in "
                                  f"{self._workdir} ({exc.strerror}): trusted.* xattrs take "
                                  "CAP_SYS_ADMIN") from None
            finally:
                remove_staged(base, probe)
        finally:
            os.close(base)

    def _check_other_bookkeeping(self) -> None:
        """The hard-link index, intent records and chunk maps of a mount
        in the other format are not where this one looks for them."""
        other = Format.OVERLAY if self.written is Format.AUFS else Format.AUFS
        if other is Format.AUFS:
            left = os.path.join(self.layer.branch.path, META_DIR)
        elif self._workdir is not None:
            left = os.path.join(self._workdir, META_DIR)
        else:
            return
        for kept in ("index", "intents", "chunks"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if os.listdir(os.path.join(left, kept)):
                    raise BranchError(f"{left} holds the {kept} of a whiteout={other.value} "
                                      f"mount: mount it with whiteout={other.value}")

    def close(self) -> None:
        for fd in (self.work_fd, self.chunks_fd):
            if fd >= 0:
                os.close(fd)
        if self.meta is not self.layer:
            self.meta.close()

    def staging_name(self) -> str:
        """A fresh name in the work directory."""
        return next(self._names)

    def install(self, staged: str, path: str) -> None:
        """Move a staged entry to ``path`` in the branch, atomically, over a
        whiteout of that name if there is one."""
        try:
            self.layer.move_in(self.work_fd, staged, path)
        except NotADirectoryError:
            if not self._has_device_whiteout(path):
                raise
            # rename(2) puts no directory over a device: swap, drop the device.
            with self.quota.removing(lambda: self.layer.open(path, os.O_PATH)):
                self.layer.move_in(self.work_fd, staged, path, RENAME_EXCHANGE)
                remove_staged(self.work_fd, staged)

    def retire(self, path: str, whiteout: bool = False) -> None:
        """Take ``path`` out of the branch at once (leaving a whiteout of its
        name if ``whiteout``), then delete it at leisure."""
        self._retire(path, self._whiteout_flags(path) if whiteout else 0)

    def move(self, path: str, new_path: str, whiteout: bool) -> None:
        """Rename ``path`` to ``new_path`` in the branch, leaving a whiteout
        of the old name if ``whiteout``.  What the branch holds at
        ``new_path`` goes: a whiteout, or an entry the union replaces (a
        directory, which may still hold whiteouts that rename(2) would take
        for contents, is swapped out and retired)."""
        flags = self._whiteout_flags(path) if whiteout else 0
        target = self.layer.lstat_or_none(new_path)
        if target is not None and (stat.S_ISDIR(target.st_mode)
                                   or stat.S_ISDIR(self.layer.lstat(path).st_mode)):
            self.layer.rename(path, new_path, RENAME_EXCHANGE)
            self._retire(path, flags)
        else:
            self.layer.rename(path, new_path, flags)
        self.remove_whiteout(*split(new_path))

    def link(self, path: str, new_path: str) -> None:
        """A new name ``new_path`` for the branch's ``path``, made over a
        whiteout of that name if there is one."""
        staged = self.staging_name()
        with self.layer.at(path) as (fd, name):
            os.link(name, staged, src_dir_fd=fd, dst_dir_fd=self.work_fd, follow_symlinks=False)
        try:
            self.install(staged, new_path)
        except BaseException:
            self.discard(staged)
            raise
        self.remove_whiteout(*split(new_path))

    def discard(self, staged: str) -> None:
        remove_staged(self.work_fd, staged)

    def add_whiteout(self, dir_path: str, name: str) -> None:
        """Hide ``name`` in the branches below; the branch must not hold
        the name (a device whiteout takes its place)."""
        named = self._whiteout_name(name)
        if named is None:
            self.layer.mknod(child(dir_path, name), stat.S_IFCHR, 0)
        else:
            os.close(self.layer.open(child(dir_path, named),
                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))

    def remove_whiteout(self, dir_path: str, name: str) -> None:
        """Remove a whiteout of ``name``, of either form."""
        named = named_whiteout(name)
        if named is not None:
            with contextlib.suppress(FileNotFoundError):
                self.layer.unlink(child(dir_path, named))
        if self._has_device_whiteout(child(dir_path, name)):
            self.layer.unlink(child(dir_path, name))

    def has_whiteout(self, dir_path: str, name: str) -> bool:
        named = named_whiteout(name)
        return ((named is not None and self.layer.lstat_or_none(child(dir_path, named)) is not None)
                or self._has_device_whiteout(child(dir_path, name)))

    def _has_device_whiteout(self, path: str) -> bool:
        st = self.layer.lstat_or_none(path)
        return st is not None and is_whiteout_device(st.st_mode, st.st_rdev)

    def _whiteout_name(self, name: str) -> str | None:
        """The ``.wh.`` name a new whiteout of ``name`` is written as, or
        None for a device in the name's own place: always with the overlay
        format, and with the aufs one for a name too long for ``.wh.``."""
        return named_whiteout(name) if self.written is Format.AUFS else None

    def _whiteout_flags(self, path: str) -> int:
        """Before ``path`` goes: its named whiteout made, or the rename
        flag that leaves a device in its place."""
        dir_path, name = split(path)
        if self._whiteout_name(name) is None:
            return RENAME_WHITEOUT
        self.add_whiteout(dir_path, name)
        return 0

    def _retire(self, path: str, flags: int) -> None:
        staged = self.staging_name()
        with self.quota.removing(lambda: self.layer.open(path, os.O_PATH),
                                 lambda: tree_blocks(self.layer, path)):
            self.layer.move_out(path, self.work_fd, staged, flags)
            remove_staged(self.work_fd, staged)

    def new_chunk_map(self, map_id: str, source: Source, limit: int) -> None:
        """Make the chunk map ``map_id`` of a file about to be copied up."""
        with self.quota.making(self.chunks_fd, map_id):
            ChunkMap.create(self.chunks_fd, map_id, source, limit).close()

    def remove_chunk_map(self, map_id: str) -> None:
        """Remove a chunk map (open ones live on until closed); a missing
        one is no error."""
        with self.quota.removing(lambda: os.open(
                map_id, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.chunks_fd)):
            ChunkMap.remove(self.chunks_fd, map_id)

    def mark_opaque(self, path: str, in_work: bool = False) -> None:
        """Hide what lies below the directory ``path`` (of the work
        directory if ``in_work``, else of the branch), in the mount's
        format: a ``.wh..wh..opq`` file, or overlay's xattr."""
        if self.written is Format.OVERLAY:
            if in_work:
                os.setxattr(f"/proc/self/fd/{self.work_fd}/{path}", OVERLAY_OPAQUE, b"y",
                            follow_symlinks=False)
            else:
                self.layer.setxattr(path, OVERLAY_OPAQUE, b"y")
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        if in_work:
            os.close(os.open(child(path, OPAQUE), flags, 0o600, dir_fd=self.work_fd))
        else:
            os.close(self.layer.open(child(path, OPAQUE), flags, 0o600))

    def set_marks(self, path: str, marks: Marks, layer: Layer | None = None) -> None:
        """Mark ``path`` of the branch, or of ``layer`` (the index's)."""
        (layer or self.layer).setxattr(path, XATTR, marks.encode())
