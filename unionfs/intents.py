"""Intent records, for the few changes that no order of steps keeps
old-or-new at every point a daemon may be killed.

Such a change writes down what it is about to do, does it, and removes the
record.  A daemon that mounts the branch again finds the records a killed
one left, and completes or undoes each before it serves a request
(``Changes.replay_intents``): the record says how to tell which steps
happened.  The kinds:

* ``count``: a hard-linked file in the index gains or loses a union name
  (``link``, ``unlink``, a rename over it).  The name changes in one step,
  the count in the index entry's marks in another; the record gives the
  count for either outcome, ``named`` if ``path`` still (or now) names the
  file ``number``, ``unnamed`` otherwise.
* ``retire``: a directory renamed over a directory of the writable branch
  swaps the two (the one replaced may hold whiteouts, so rename(2) would
  refuse it), then takes the replaced one away.  Between the two, the
  record says the directory at ``path`` with inode number ``ino`` is dead.
* ``map``: a partial file is made or loses its last name, and its chunk map
  is made before or removed after; the map ``id`` is kept only if the file
  at ``path`` uses it.

Records live in ``.wh..wh.pyunion/intents`` of the writable branch (of
``workdir=`` with the overlay format: ``Upper.meta``), one
small JSON file each, written in the work directory and renamed into place
so a record is whole or absent.  Changes run one at a time (``fs.py``), so
the records of a running daemon are those of the change under way.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Callable

from .layer import child
from .upper import Upper
from .whiteout import META_DIR

INTENTS_DIR = child(META_DIR, "intents")


class Intents:
    def __init__(self, upper: Upper):
        self._upper = upper

    @contextlib.contextmanager
    def recorded(self, settle: Callable[[dict], None], **record):
        """Keep ``record`` on disk while the steps in the block run.  A
        block that fails has ``settle`` finish or undo it at once, as the
        next mount would after a kill."""
        name = self._upper.staging_name()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=self._upper.work_fd)
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        dir_fd = self._dir()
        try:
            os.rename(name, name, src_dir_fd=self._upper.work_fd, dst_dir_fd=dir_fd)
            try:
                yield
            except BaseException:
                settle(record)
                os.unlink(name, dir_fd=dir_fd)
                raise
            os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def left(self) -> list[tuple[str, dict]]:
        """The records a killed daemon left, by name."""
        try:
            dir_fd = self._upper.meta.open(INTENTS_DIR, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return []
        try:
            found = []
            for name in os.listdir(dir_fd):
                with open(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as f:
                    found.append((name, json.loads(f.read())))
            return found
        finally:
            os.close(dir_fd)

    def done(self, name: str) -> None:
        os.unlink(child(INTENTS_DIR, name), dir_fd=self._upper.meta.fd)

    def _dir(self) -> int:
        for path in (META_DIR, INTENTS_DIR):
            with contextlib.suppress(FileExistsError), \
                    self._upper.quota.making(self._upper.meta.fd, path):
                os.mkdir(path, 0o700, dir_fd=self._upper.meta.fd)
        return self._upper.meta.open(INTENTS_DIR, os.O_RDONLY | os.O_DIRECTORY)
