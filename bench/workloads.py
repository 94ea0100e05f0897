"""What is measured.  A workload builds its lower tree once (for all
systems), and times one run on a mounted union; run ``i`` of a copy-up
workload touches its own file ``f{i}``, which no earlier run copied up.
"""

from __future__ import annotations

import functools
import mmap
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Workload:
    name: str
    what: str                          # one line for the table's heading
    params: tuple                      # full run
    quick_params: tuple                # --quick
    build: Callable[[Path, object, int], None]   # (lower, param, runs)
    run: Callable[[Path, object, int], float]    # (mnt, param, i) -> seconds
    label: Callable[[object], str] = str
    cold: bool = False                 # drop the caches before every run
    branches: Callable[[object], int] = field(default=lambda param: 1)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def size_label(size: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def _write_file(path: Path, size: int) -> None:
    """Real data in every block (no holes), so copies must move it all."""
    block = os.urandom(min(size, MiB))
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[:left])


def _files(lower: Path, size: int, runs: int) -> None:
    for i in range(runs):
        _write_file(lower / f"f{i}", size)


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _one_byte_write(mnt: Path, size: int, i: int) -> float:
    def write():
        fd = os.open(mnt / f"f{i}", os.O_WRONLY)
        try:
            os.pwrite(fd, b"x", 0)
        finally:
            os.close(fd)
    return _timed(write)


def _rewrite(mnt: Path, size: int, i: int) -> float:
    block = b"r" * min(size, MiB)

    def rewrite():
        with open(mnt / f"f{i}", "wb") as f:
            left = size
            while left:
                left -= f.write(block[:left])
    return _timed(rewrite)


def _read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def _tree(lower: Path, count: int, runs: int) -> None:
    per_dir = 100
    for n in range(count):
        directory = lower / "tree" / f"d{n // per_dir}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{n}").write_bytes(b"")


def _walk_stat(mnt: Path, count: int, i: int) -> float:
    def walk():
        for root, dirs, files in os.walk(mnt / "tree"):
            for name in files:
                os.lstat(os.path.join(root, name))
    return _timed(walk)


def _big_dir(lower: Path, count: int, runs: int) -> None:
    (lower / "big").mkdir()
    for n in range(count):
        (lower / "big" / f"entry{n}").write_bytes(b"")


def _create_unlink(mnt: Path, count: int, i: int) -> float:
    directory = mnt / f"new{i}"

    def churn():
        directory.mkdir()
        for n in range(count):
            os.close(os.open(directory / f"f{n}", os.O_WRONLY | os.O_CREAT, 0o644))
        for n in range(count):
            os.unlink(directory / f"f{n}")
    return _timed(churn)


def _bottom_names(lower: Path, per_run: int, runs: int) -> None:
    for i in range(runs):
        for k in range(per_run):
            (lower / f"n{i}_{k}").write_bytes(b"")


def _stat_names(mnt: Path, per_run: int, i: int) -> float:
    return _timed(lambda: [os.lstat(mnt / f"n{i}_{k}") for k in range(per_run)])


def _find(mnt: Path, count: int, i: int) -> float:
    return _timed(lambda: subprocess.run(["find", str(mnt / "tree")], check=True,
                                         stdout=subprocess.DEVNULL))


def _map_all(path: Path) -> None:
    """Read a file through a read-only ``MAP_SHARED`` map, a byte a page;
    raises where the mount refuses such a map."""
    with open(path, "rb", buffering=0) as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED,
                                                        mmap.PROT_READ) as view:
        sum(view[offset] for offset in range(0, len(view), mmap.PAGESIZE))


#: Python's standard library without its test suites, compiled modules and
#: installed packages: a tree of small source files, as a container image has
_STDLIB = Path(sysconfig.get_paths()["stdlib"])
_NOT_LIBRARY = shutil.ignore_patterns("__pycache__", "site-packages", "test", "tests",
                                      "idle_test", "lib-dynload", "config-*")


def _library(lower: Path, subtree: str, runs: int) -> None:
    """One copy of the library (or its ``subtree``) for every run, so each
    compileall writes into a tree no earlier run compiled."""
    for i in range(runs):
        shutil.copytree(_STDLIB / subtree, lower / f"lib{i}", ignore=_NOT_LIBRARY)


@functools.cache
def library_label(subtree: str) -> str:
    """Which library a workload uses and how many files it has."""
    files = 0
    for root, dirs, names in os.walk(_STDLIB / subtree):
        ignored = _NOT_LIBRARY(root, dirs + names)
        dirs[:] = [d for d in dirs if d not in ignored]
        files += len([n for n in names if n not in ignored])
    return f"{'stdlib/' + subtree if subtree else 'stdlib'}, {files:,} files"


def _tar(mnt: Path, subtree: str, i: int) -> float:
    """tar writes to a pipe, not to /dev/null: GNU tar does not read the
    files at all when its archive is /dev/null."""
    command = f"tar -cf - -C {shlex.quote(str(mnt))} lib0 | cat >/dev/null"
    return _timed(lambda: subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True))


def _compileall(mnt: Path, subtree: str, i: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    return _timed(lambda: subprocess.run([sys.executable, "-m", "compileall", "-q",
                                          str(mnt / f"lib{i}")],
                                         check=True, env=env, stdout=subprocess.DEVNULL))


LOOKUP_NAMES = 200


def all_workloads() -> list[Workload]:
    return [
        Workload("copy-up: 1-byte write", "first in-place 1-byte write to a lower file",
                 (4 * KiB, MiB, 64 * MiB, GiB), (4 * KiB, MiB),
                 _files, _one_byte_write, size_label),
        Workload("copy-up: chmod", "chmod of a lower file (a metadata-only change)",
                 (GiB,), (MiB,), _files,
                 lambda mnt, size, i: _timed(lambda: os.chmod(mnt / f"f{i}", 0o600)),
                 size_label),
        Workload("full rewrite", "truncate and rewrite a whole lower file",
                 (64 * MiB,), (MiB,), _files, _rewrite, size_label),
        Workload("sequential read, cold", "read a lower file; caches dropped first",
                 (GiB,), (4 * MiB,), lambda lower, size, runs: _write_file(lower / "f", size),
                 lambda mnt, size, i: _timed(lambda: _read_all(mnt / "f")),
                 size_label, cold=True),
        Workload("sequential read, warm", "read a lower file again (in the page cache)",
                 (GiB,), (4 * MiB,), lambda lower, size, runs: _write_file(lower / "f", size),
                 lambda mnt, size, i: _timed(lambda: _read_all(mnt / "f")), size_label),
        Workload("sequential read, shared map", "read a lower file through a read-only "
                 "MAP_SHARED map, a byte a page (again, in the page cache)",
                 (64 * MiB,), (4 * MiB,), lambda lower, size, runs: _write_file(lower / "f", size),
                 lambda mnt, size, i: _timed(lambda: _map_all(mnt / "f")), size_label),
        Workload("walk and stat", "os.walk + lstat of every file of a lower tree",
                 (10_000,), (500,), _tree, _walk_stat, lambda n: f"{n:,} files", cold=True),
        Workload("list a directory", "readdir of a big lower directory",
                 (10_000,), (500,), _big_dir,
                 lambda mnt, n, i: _timed(lambda: os.listdir(mnt / "big")),
                 lambda n: f"{n:,} entries", cold=True),
        Workload("list a directory, warm", "readdir of a big lower directory, listed before",
                 (10_000,), (500,), _big_dir,
                 lambda mnt, n, i: _timed(lambda: os.listdir(mnt / "big")),
                 lambda n: f"{n:,} entries"),
        Workload("find, warm", "`find` over a lower tree, walked before",
                 (10_000,), (500,), _tree, _find, lambda n: f"{n:,} files"),
        Workload("tar of a library", "`tar -cf - | cat >/dev/null` of a lower tree of Python "
                 "sources (open, read, close each), read before",
                 ("",), ("json",), lambda lower, subtree, runs: _library(lower, subtree, 1),
                 _tar, library_label),
        Workload("compileall of a library", "`python -m compileall -q` of a lower tree of "
                 "Python sources, none compiled before: a .pyc written into the union for each",
                 ("",), ("json",), _library, _compileall, library_label),
        Workload("create + unlink", "create then unlink new files in a new directory",
                 (5_000,), (200,), lambda lower, n, runs: None, _create_unlink,
                 lambda n: f"{n:,} files"),
        Workload("lookup vs branches", f"lstat of {LOOKUP_NAMES} names in the bottom branch",
                 (1, 8, 32, 64), (1, 8),
                 lambda lower, n, runs: _bottom_names(lower, LOOKUP_NAMES, runs),
                 lambda mnt, n, i: _stat_names(mnt, LOOKUP_NAMES, i),
                 lambda n: f"{n} branches", branches=lambda n: n),
    ]
