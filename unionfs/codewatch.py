"""Whether the code a long-lived process runs has changed on disk since it
loaded it (the fork server asks before each request: a stale server would
run yesterday's code).

Watched: the file of every module loaded, every file mapped (shared
libraries: extension modules, libfuse, libc), the interpreter, and the
directories of the program's packages and of site-packages (a module
added, a package installed).  A stat of each, ~100 µs in all.  The watch
starts when the process did, before anything was loaded: a file changed
since (a checkout while the program was loading) counts as changed,
however its stat reads afterwards.
"""

from __future__ import annotations

import os
import site
import sys
import time

#: how far a file's time may lag the clock (the kernel stamps files with a
#: clock that is a tick behind, a tick being 10 ms at most)
_TICK_NS = 10_000_000


class Code:
    """The watch takes its first look once the program is loaded
    (:meth:`loaded`)."""

    def __init__(self):
        self._since = _started_ns() - _TICK_NS
        self._dirs: list[str] = []
        self._files: list[str] = []
        self._seen: list[tuple[int, int, int] | None] = []
        self._changed_while_loading = False

    def loaded(self, package_dirs: list[str]) -> None:
        """``package_dirs``: the programs' top-level packages' (their
        subpackages' directories are watched too)."""
        self._dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
        for top in package_dirs:
            for directory, subdirectories, _ in os.walk(top):
                subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
                self._dirs.append(directory)
        files = {sys.executable, *_mapped()}
        files.update(m.__file__ for m in list(sys.modules.values())
                     if isinstance(getattr(m, "__file__", None), str))
        self._files = sorted(files)
        self._seen = _stats(self._dirs + self._files)
        self._changed_while_loading = any(
            stat is None or stat[2] >= self._since for stat in self._seen[len(self._dirs):])

    def changed(self) -> bool:
        return self._changed_while_loading or _stats(self._dirs + self._files) != self._seen


def _started_ns() -> int:
    """When this process started, on the clock files are stamped with."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rpartition(")")[2].split()[19])
    age = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 1_000_000_000 // os.sysconf(
        "SC_CLK_TCK")
    return time.time_ns() - age


def _mapped() -> set[str]:
    """The files mapped into this process (its shared libraries)."""
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[5:]
            if path and path[0].startswith("/") and not path[0].endswith("(deleted)\n"):
                found.add(path[0].rstrip("\n"))
    return found


def _stats(paths: list[str]) -> list[tuple[int, int, int] | None]:
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    return stats
