"""The writable branch, where every change to the union lands.

It owns the work directory: a change that must appear at once (a copied-up
file, a directory made over a whiteout, a directory on its way out) is
built there under a fresh name and renamed into place, so the branch never
shows half of it.  Whatever a crash left in the work directory is removed
at mount.  The work directory is ``work`` inside ``workdir=`` when given
(as overlayfs does), otherwise ``.wh..wh.pyunion/work`` at the top of the
branch; the chunk maps of partially copied-up files (``chunkmap.py``) live
in ``chunks`` beside it.
"""

from __future__ import annotations

import contextlib
import itertools
import os

from .copyup import remove_staged
from .layer import ROOT, Layer, child
from .whiteout import META_DIR, OPAQUE, XATTR, Marks, whiteout_for

def _subdirectory(parent_fd: int, name: str) -> int:
    """Open (making it if needed) ``name`` in ``parent_fd``."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=parent_fd)


class Upper:
    def __init__(self, layer: Layer, workdir: str | None):
        self.layer = layer
        self._workdir = workdir
        self.work_fd = -1
        #: where the chunk maps of partially copied-up files live
        self.chunks_fd = -1
        self._names = (f"{os.getpid()}.{n}" for n in itertools.count())

    def prepare(self) -> None:
        """Make (or clean) the work directory: done once the mount exists,
        so that a mount that fails writes nothing."""
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
            remove_staged(self.work_fd, stale)

    def close(self) -> None:
        for fd in (self.work_fd, self.chunks_fd):
            if fd >= 0:
                os.close(fd)

    def staging_name(self) -> str:
        """A fresh name in the work directory."""
        return next(self._names)

    def install(self, staged: str, path: str) -> None:
        """Move a staged entry to ``path`` in the branch, atomically."""
        self.layer.move_in(self.work_fd, staged, path)

    def retire(self, path: str) -> None:
        """Take ``path`` out of the branch at once, then delete it at leisure."""
        staged = self.staging_name()
        self.layer.move_out(path, self.work_fd, staged)
        remove_staged(self.work_fd, staged)

    def discard(self, staged: str) -> None:
        remove_staged(self.work_fd, staged)

    def add_whiteout(self, dir_path: str, name: str) -> None:
        os.close(self.layer.open(child(dir_path, whiteout_for(name)),
                                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))

    def remove_whiteout(self, dir_path: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layer.unlink(child(dir_path, whiteout_for(name)))

    def has_whiteout(self, dir_path: str, name: str) -> bool:
        return self.layer.lstat_or_none(child(dir_path, whiteout_for(name))) is not None

    def mark_opaque(self, path: str, in_work: bool = False) -> None:
        """Hide what lies below the directory ``path`` (of the work
        directory if ``in_work``, else of the branch)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        if in_work:
            os.close(os.open(child(path, OPAQUE), flags, 0o600, dir_fd=self.work_fd))
        else:
            os.close(self.layer.open(child(path, OPAQUE), flags, 0o600))

    def set_marks(self, path: str, marks: Marks) -> None:
        self.layer.setxattr(path, XATTR, marks.encode())
