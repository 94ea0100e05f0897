"""Partial (chunked) copy-up: a lower file's copy-up copies no data, writes
bring up only the 64 KiB chunks they touch, reads merge the two, a crash at
any step leaves every write old or new, and ``flatten`` completes the copies.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import itertools
import json
import mmap
import os
import random
import signal
import stat
import subprocess
import threading
import time
import types
from pathlib import Path

import pytest

from helpers import build, force_unmount, mounted, process_gone, pyunion, wait_for
from unionfs import chunkmap as chunkmap_module
from unionfs import daemon
from unionfs import partial as partial_module
from unionfs.changes import SMALL_FILE
from unionfs.chunkmap import CHUNK, ChunkMap, Source
from unionfs.partial import PartialFile

KiB, MiB = 1 << 10, 1 << 20
META = ".wh..wh.pyunion"
XATTR = "trusted.pyunion"


# -- helpers --------------------------------------------------------------------


def write_big(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes of real (not sparse) data, no two 64 KiB chunks alike."""
    base = random.Random(seed).randbytes(MiB)
    with open(path, "wb") as f:
        for start in range(0, size, MiB):
            shift = (start // MiB) * 97 % MiB
            f.write((base[shift:] + base[:shift])[:size - start])


def digest(path: Path, patch: tuple[int, bytes] | None = None) -> str:
    """sha256 of a file's bytes, as if ``patch`` (offset, data) were written."""
    found = hashlib.sha256()
    with open(path, "rb") as f:
        offset = 0
        while block := f.read(MiB):
            if patch is not None:
                at, data = patch
                if offset <= at < offset + len(block):
                    i = at - offset
                    block = block[:i] + data + block[i + len(data):]
            found.update(block)
            offset += len(block)
    return found.hexdigest()


def pread_all(fd: int) -> bytes:
    parts, offset = [], 0
    while part := os.pread(fd, 4 * MiB, offset):
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def read_direct(path: Path) -> bytes:
    """The file's bytes as the daemon, or a file passed through, gives
    them (O_DIRECT skips the page cache; a file passed through takes the
    branch's alignment rules, so the buffer and offsets are aligned)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    parts, offset = [], 0
    try:
        with mmap.mmap(-1, 4 * MiB) as buffer:
            while (count := os.preadv(fd, [buffer], offset)) > 0:
                parts.append(buffer[:count])
                offset += count
                if count < len(buffer):
                    break
    finally:
        os.close(fd)
    return b"".join(parts)


def marks(path: Path) -> dict:
    return json.loads(os.getxattr(path, XATTR))


def chunk_maps(up: Path) -> list[str]:
    return sorted(os.listdir(up / META / "chunks"))


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def flatten(mnt: Path, *path: str) -> subprocess.CompletedProcess:
    return pyunion("flatten", str(mnt), *path, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 1, done
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr


def assert_plain(up: Path, name: str, expected: bytes) -> None:
    """``name`` in the writable branch is an ordinary file holding ``expected``."""
    assert (up / name).read_bytes() == expected
    assert "partial" not in marks(up / name)


# -- 1, 2: what a copy-up costs ----------------------------------------------------


def test_metadata_changes_copy_up_no_data(tmp_path, unions):
    names = ["chmod", "chown", "utime", "setxattr"]
    low = build(tmp_path / "low", {})
    for seed, name in enumerate(names):
        write_big(low / name, 64 * MiB, seed)
    expected = {name: digest(low / name) for name in names}
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)

    os.chmod(mnt / "chmod", 0o600)
    os.chown(mnt / "chown", 1234, 5678)
    os.utime(mnt / "utime", ns=(1_000_000_000, 2_000_000_000))
    os.setxattr(mnt / "setxattr", "user.x", b"value")

    assert stat.S_IMODE(os.stat(mnt / "chmod").st_mode) == 0o600
    assert (os.stat(mnt / "chown").st_uid, os.stat(mnt / "chown").st_gid) == (1234, 5678)
    assert os.stat(mnt / "utime").st_mtime_ns == 2_000_000_000
    assert os.getxattr(mnt / "setxattr", "user.x") == b"value"
    for name in names:
        assert digest(mnt / name) == expected[name], name
        st = os.stat(up / name)  # after the whole file was read through the mount
        assert st.st_size == 64 * MiB, name
        assert st.st_blocks * 512 < MiB, name
        assert "partial" in marks(up / name), name
    assert chunk_maps(up) == sorted(marks(up / n)["partial"] for n in names)


def test_a_one_byte_write_brings_up_one_chunk(tmp_path, unions):
    size = 256 * MiB
    low = build(tmp_path / "low", {})
    write_big(low / "big", size)
    at = 100 * MiB + 3 * CHUNK + 12345
    expected = digest(low / "big", patch=(at, b"!"))
    with open(low / "big", "rb") as f:
        f.seek(at - CHUNK)
        around = bytearray(f.read(3 * CHUNK))
    around[CHUNK] = ord("!")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)

    write_at(mnt / "big", at, b"!")

    st = os.stat(up / "big")
    assert st.st_size == size
    assert st.st_blocks * 512 <= 128 * KiB
    fd = os.open(mnt / "big", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 3 * CHUNK, at - CHUNK) == around
    finally:
        os.close(fd)
    assert digest(mnt / "big") == expected
    assert os.stat(up / "big").st_blocks * 512 <= 128 * KiB  # reading brought nothing up


@pytest.mark.parametrize("volatile", [False, True], ids=["durable", "volatile"])
def test_small_files_are_copied_whole_where_flushes_are_skipped(tmp_path, unions, volatile):
    """``changes.SMALL_FILE``: on a volatile mount a first write copies a
    small file whole (no chunk map), a bigger one still partially; a
    durable mount copies both partially (a whole copy's flush costs more)."""
    sizes = {"empty": 0, "small": 4 * KiB, "edge": SMALL_FILE, "big": SMALL_FILE + 1}
    low = build(tmp_path / "low", {})
    for seed, (name, size) in enumerate(sizes.items()):
        write_big(low / name, size, seed)
    expected = {name: (low / name).read_bytes() for name in sizes}
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], *(["volatile"] if volatile else []), rw=True)

    for name in sizes:
        write_at(mnt / name, 0, b"!")
        expected[name] = b"!" + expected[name][1:]

    whole = {name for name, size in sizes.items() if size == 0
             or (volatile and size <= SMALL_FILE)}
    for name in sizes:
        assert (mnt / name).read_bytes() == expected[name], name
        if name in whole:
            assert_plain(up, name, expected[name])
        else:
            assert "partial" in marks(up / name), name
    assert chunk_maps(up) == sorted(marks(up / n)["partial"] for n in set(sizes) - whole)


# -- 3: random operations against a model ---------------------------------------------


class RandomRun:
    """Files of a union changed at random through the mount, one after the
    other (a round each), and the bytes the current one must hold (``data``)."""

    def __init__(self, rng: random.Random, unions, up: Path, low: Path):
        self.rng = rng
        self.unions = unions
        self.up, self.low = up, low
        self.mnt = unions.mount([up, low], rw=True)
        self.fresh = itertools.count()
        self.early: int | None = None
        #: after each operation, how many chunks were still read from below
        self.absent_after: list[int] = []
        self.done: collections.Counter[str] = collections.Counter()

    # -- choosing -------------------------------------------------------------

    def offset(self, limit: int) -> int:
        """Half the time just around a chunk boundary."""
        if self.rng.random() < 0.5:
            return max(0, self.rng.randrange(limit // CHUNK + 2) * CHUNK
                       + self.rng.randrange(-300, 300))
        return self.rng.randrange(limit + 1)

    def length(self) -> int:
        roll = self.rng.random()
        if roll < 0.4:
            return self.rng.randrange(1, 300)
        if roll < 0.7:
            return CHUNK + self.rng.randrange(-3, 4)
        if roll < 0.85:
            return self.rng.randrange(1, 2 * CHUNK)
        return self.rng.randrange(2 * CHUNK, 3 * CHUNK)

    def path(self) -> Path:
        return self.mnt / self.rng.choice(self.names)

    def put(self, offset: int, data: bytes) -> None:
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = data

    # -- operations -----------------------------------------------------------

    def pwrite(self):
        offset = self.offset(len(self.data) + CHUNK)  # past the end too: a hole
        data = self.rng.randbytes(self.length())
        write_at(self.path(), offset, data)
        self.put(offset, data)

    def aligned_write(self):
        """Whole chunks, which may all still be below."""
        offset = self.rng.randrange(len(self.data) // CHUNK + 1) * CHUNK
        data = self.rng.randbytes(self.rng.randrange(1, 3) * CHUNK)
        write_at(self.path(), offset, data)
        self.put(offset, data)

    def truncate(self):
        if self.rng.random() < 0.2:
            size = self.offset(3 * MiB // 2)
        else:  # around the end, which keeps most of the file below
            size = max(0, len(self.data) + self.rng.randrange(-2 * CHUNK, 2 * CHUNK))
        if self.rng.random() < 0.5:
            os.truncate(self.path(), size)
        else:
            fd = os.open(self.path(), os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))

    def append(self):
        data = self.rng.randbytes(self.rng.randrange(1, 100_000))
        fd = os.open(self.path(), os.O_WRONLY | os.O_APPEND)
        try:
            assert os.write(fd, data) == len(data)
        finally:
            os.close(fd)
        self.data += data

    def mmap_write(self):
        if not self.data:
            return self.append()
        offset = self.rng.randrange(len(self.data))
        data = self.rng.randbytes(min(self.length(), len(self.data) - offset))
        fd = os.open(self.path(), os.O_RDWR)
        try:
            with mmap.mmap(fd, len(self.data)) as mapped:
                mapped[offset:offset + len(data)] = data
                mapped.flush()
        finally:
            os.close(fd)
        self.put(offset, data)

    def chmod(self):
        os.chmod(self.path(), self.rng.choice([0o600, 0o640, 0o644]))

    def link(self):
        new = f"link{next(self.fresh)}"
        os.link(self.mnt / self.names[0], self.mnt / new)
        self.names.append(new)
        assert os.stat(self.mnt / new).st_ino == os.stat(self.mnt / self.names[0]).st_ino

    def rename(self):
        i = self.rng.randrange(len(self.names))
        new = self.rng.choice(["", "d/"]) + f"moved{next(self.fresh)}"
        os.rename(self.mnt / self.names[i], self.mnt / new)
        self.names[i] = new

    def remount(self):
        self.close_early()
        pyunion("umount", str(self.mnt))
        self.unions.mount([self.up, self.low], rw=True, mnt=self.mnt)

    def close_early(self):
        if self.early is not None:
            os.close(self.early)
            self.early = None

    # -- checking -------------------------------------------------------------

    def absent_chunks(self) -> int:
        """How many chunks of the file the union still reads from below."""
        upper = self.up / self.names[0]
        chunks_fd = os.open(self.up / META / "chunks", os.O_RDONLY | os.O_DIRECTORY)
        try:
            found = ChunkMap.load(chunks_fd, marks(upper)["partial"], os.stat(upper).st_size)
        finally:
            os.close(chunks_fd)
        try:
            return sum(found.is_absent(i) for i in found.chunks(0, found.limit))
        finally:
            found.close()

    def check(self, step: str):
        for name in self.names:
            path = self.mnt / name
            assert os.stat(path).st_size == len(self.data), (step, name)
            assert read_direct(path) == self.data, (step, name)
        assert self.path().read_bytes() == self.data, step  # through the page cache
        if self.early is not None:
            assert pread_all(self.early) == self.data, (step, "reader opened before copy-up")

    def round(self, name: str, steps: int, remount: bool):
        """``steps`` operations on the lower file ``name``, then its flatten."""
        self.names = [name]
        self.data = bytearray((self.low / name).read_bytes())
        # A reader opened before the copy-up must see every later write.
        self.early = os.open(self.mnt / name, os.O_RDONLY | os.O_DIRECT)
        self.check("start")
        first = self.rng.choice([self.pwrite, self.aligned_write, self.append, self.mmap_write,
                                 self.chmod, self.link])
        first()
        self.done[first.__name__] += 1
        self.check(f"0 {first.__name__}")
        weighted = ([self.pwrite] * 30 + [self.aligned_write] * 8 + [self.truncate] * 8
                    + [self.append] * 5 + [self.mmap_write] * 8 + [self.chmod] * 2
                    + [self.rename] * 4 + [self.link])
        remount_at = self.rng.randrange(1, steps) if remount else None
        for step in range(1, steps):
            if step == remount_at:
                op = self.remount
            elif len(self.data) > 2 * MiB:
                op = self.truncate
            else:
                op = self.rng.choice(weighted)
                if op == self.link and len(self.names) > 1:
                    op = self.pwrite
            op()
            self.done[op.__name__] += 1
            self.check(f"{step} {op.__name__}")
            self.absent_after.append(self.absent_chunks())
        self.close_early()
        done = flatten(self.mnt, self.names[0])
        assert done.returncode == 0, done.stderr
        for name in self.names:
            assert_plain(self.up, name, self.data)
            assert read_direct(self.mnt / name) == self.data
        assert chunk_maps(self.up) == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_operations_match_a_model(tmp_path, unions, seed):
    rng = random.Random(seed)
    rounds = 5
    low = build(tmp_path / "low", {"d/other": "x", **{
        f"f{i}": rng.randbytes(MiB + rng.randrange(1, 8 * CHUNK)) for i in range(rounds)}})
    up = build(tmp_path / "up", {})
    run = RandomRun(rng, unions, up, low)
    try:
        for i in range(rounds):
            run.round(f"f{i}", 50, remount=i % 2 == 1)
    finally:
        run.close_early()
    assert set(run.done) == {"pwrite", "aligned_write", "truncate", "append", "mmap_write",
                             "chmod", "rename", "link", "remount"}, run.done
    # Most operations met a file with parts of it still below.
    assert sum(1 for n in run.absent_after if n) > len(run.absent_after) // 2


# -- 4: a crash at every step, in-process ---------------------------------------------

C = CHUNK
SIZE0 = 8 * C + 1000  # the lower file; its last chunk is short
SCRIPT = [
    ("write", 2 * C, 2 * C),        # whole chunks, all below: data, then the mark
    ("write", 8 * C, 1000),         # the short last chunk, all of it
    ("write", 4 * C - 100, 300),    # a present chunk and an absent one
    ("write", 10, 50),              # inside an absent chunk
    ("write", C + 100, 4 * C),      # absent, present x3, absent: two runs brought up
    ("truncate", 7 * C + 777),      # shrink into an absent chunk
    ("write", 7 * C + 700, 200),    # across the new end, inside that chunk
    ("truncate", 9 * C + 5),        # extend: zeros above the old end
    ("write", 7 * C, 2 * C),        # in the zeros
    ("truncate", C + 123),          # shrink into a present chunk, an absent one above
    ("write", 3 * C + 5, 10),       # past the end: a hole
    ("truncate", 9 * C),            # extend again
]


class Crash(Exception):
    """The daemon was killed here."""


class Syscalls:
    """Counts the calls that change a partial file on disk; with ``limit``,
    the call after the first ``limit`` raises :class:`Crash` instead."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.done = 0

    def wrap(self, real):
        def call(*args):
            if self.limit is not None and self.done >= self.limit:
                raise Crash
            result = real(*args)
            self.done += 1
            return result
        return call

    @contextlib.contextmanager
    def installed(self, monkeypatch):
        fake_os = types.SimpleNamespace(**vars(os))
        fake_os.pwrite = self.wrap(os.pwrite)
        fake_os.ftruncate = self.wrap(os.ftruncate)
        with monkeypatch.context() as patch:
            patch.setattr(partial_module, "os", fake_os)
            patch.setattr(chunkmap_module, "os", fake_os)
            patch.setattr(partial_module, "copy_range", self.wrap(partial_module.copy_range))
            yield


class Disk:
    """A lower file, its partial copy and chunk map, as a copy-up leaves them."""

    def __init__(self, root: Path, old: bytes):
        root.mkdir()
        self.root = root
        (root / "lower").write_bytes(old)
        (root / "chunks").mkdir()
        with open(root / "upper", "wb") as f:
            f.truncate(len(old))
        self.chunks_fd = os.open(root / "chunks", os.O_RDONLY | os.O_DIRECTORY)
        ChunkMap.create(self.chunks_fd, "map", Source(1, "lower"), len(old)).close()

    def start(self) -> PartialFile:
        """What a (re)started daemon makes of it (``PartialFiles._load``)."""
        upper = os.open(self.root / "upper", os.O_RDWR)
        chunk_map = ChunkMap.load(self.chunks_fd, "map", os.fstat(upper).st_size)
        return PartialFile("map", upper, os.open(self.root / "lower", os.O_RDONLY), chunk_map)

    def seen(self) -> bytes:
        partial = self.start()
        try:
            return partial.read(0, 1 << 24)
        finally:
            partial.close()

    def close(self):
        os.close(self.chunks_fd)


def apply(target, op) -> None:
    """Run one step of the script on a PartialFile or on a model bytearray."""
    if op[0] == "write":
        _, offset, length = op
        data = random.Random(offset * 31 + length).randbytes(length)
        if isinstance(target, bytearray):
            if offset > len(target):
                target.extend(bytes(offset - len(target)))
            target[offset:offset + length] = data
        else:
            assert target.write(offset, data) == length
    else:
        _, size = op
        if isinstance(target, bytearray):
            del target[size:]
            target.extend(bytes(size - len(target)))
        else:
            target.truncate(size)


def script_states(old: bytes) -> list[bytes]:
    states = [old]
    model = bytearray(old)
    for op in SCRIPT:
        apply(model, op)
        states.append(bytes(model))
    assert len(set(states)) == len(states)  # every step shows
    return states


def calls_per_step(tmp_path: Path, monkeypatch, old: bytes) -> list[int]:
    """How many counted calls had completed before each step (and at the end)."""
    disk = Disk(tmp_path / "dry", old)
    partial = disk.start()
    calls = Syscalls()
    before = []
    with calls.installed(monkeypatch):
        for op in SCRIPT:
            before.append(calls.done)
            apply(partial, op)
    before.append(calls.done)
    partial.close()
    disk.close()
    return before


def crash_after(disk: Disk, monkeypatch, k: int) -> int | None:
    """Run the script, killed after ``k`` calls; the step it died in."""
    partial = disk.start()
    calls = Syscalls(limit=k)
    try:
        with calls.installed(monkeypatch):
            for i, op in enumerate(SCRIPT):
                try:
                    apply(partial, op)
                except Crash:
                    return i
        return None
    finally:
        partial.close()  # the kernel closes a killed daemon's files


def test_a_crash_at_any_call_leaves_each_step_old_or_new(tmp_path, monkeypatch):
    old = random.Random(7).randbytes(SIZE0)
    states = script_states(old)
    before = calls_per_step(tmp_path, monkeypatch, old)
    assert before[-1] > 2 * len(SCRIPT)  # the steps are several calls each
    for k in range(before[-1] + 1):
        disk = Disk(tmp_path / f"k{k}", old)
        step = crash_after(disk, monkeypatch, k)
        seen = disk.seen()
        if step is None:
            assert k == before[-1]
            assert seen == states[-1]
        elif k == before[step]:
            assert seen == states[step], f"killed before step {step} did anything (k={k})"
        else:
            assert seen in (states[step], states[step + 1]), \
                f"step {step} {SCRIPT[step][0]} is half done after a kill at call {k}"
        # The map tells the truth: completing the copy puts the same bytes
        # in the upper file alone.
        partial = disk.start()
        partial.complete()
        partial.close()
        assert (disk.root / "upper").read_bytes() == seen, f"k={k}"
        disk.close()


def test_work_after_a_crash_survives_the_next_restart(tmp_path, monkeypatch):
    old = random.Random(7).randbytes(SIZE0)
    states = script_states(old)
    before = calls_per_step(tmp_path, monkeypatch, old)
    wrong = []
    for k in range(before[-1]):
        disk = Disk(tmp_path / f"k{k}", old)
        step = crash_after(disk, monkeypatch, k)
        partial = disk.start()  # restarted after the kill...
        seen = partial.read(0, 1 << 24)
        rest = step if seen == states[step] else step + 1
        for op in SCRIPT[rest:]:  # ...does the rest of the work...
            apply(partial, op)
        assert partial.read(0, 1 << 24) == states[-1]
        partial.close()
        if disk.seen() != states[-1]:  # ...and is restarted once more, cleanly
            wrong.append((k, SCRIPT[step]))
        disk.close()
    assert wrong == []


# -- 5: a real SIGKILL ----------------------------------------------------------------


def test_a_daemon_killed_while_writing_leaves_each_write_old_or_new(tmp_path, unions):
    size = 64 * MiB
    low = build(tmp_path / "low", {})
    write_big(low / "big", size)
    old = (low / "big").read_bytes()
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    pid = daemon.pid_of(str(mnt))
    rng = random.Random(5)
    # Distinct writes to distinct places, each one FUSE request: whole
    # chunks still below (~1 MiB), or an unaligned write inside one page,
    # which first brings its chunk up.  (A multi-page write in place can be
    # cut short by a kill inside its pwrite, like any file's.)
    writes = []
    for n, slot in enumerate(rng.sample(range(size // MiB), 48)):
        if n % 3:
            first = rng.randrange(2)
            offset, length = slot * MiB + first * CHUNK, MiB - rng.randrange(first, 3) * CHUNK
        else:
            page = slot * MiB + rng.randrange(256) * 4096
            start = rng.randrange(1, 4000)
            offset, length = page + start, rng.randrange(1, 4096 - start)
        writes.append((offset, rng.randbytes(length)))
    done: list[int] = []
    synced = [0]
    errors: list[OSError] = []

    def writer():
        fd = os.open(mnt / "big", os.O_WRONLY)
        try:
            for n, (offset, data) in enumerate(writes):
                assert os.pwrite(fd, data, offset) == len(data)
                done.append(n)
                if n % 4 == 3:
                    os.fsync(fd)
                    synced[0] = n + 1
                time.sleep(0.005)
        except OSError as exc:
            errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    assert wait_for(lambda: len(done) >= 10)
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive()
    assert errors and len(done) < len(writes), "the kill came too late to interrupt a write"
    assert wait_for(lambda: process_gone(pid))
    force_unmount(mnt)

    again = unions.mount([up, low], rw=True)
    seen = read_direct(again / "big")
    assert len(seen) == size
    expected_rest = bytearray(old)
    for n, (offset, data) in enumerate(writes):
        region = seen[offset:offset + len(data)]
        if n in done:
            assert region == data, f"write {n} returned, but its data is gone"
        else:
            assert region in (data, old[offset:offset + len(data)]), f"write {n} is torn"
        if n < synced[0]:
            assert region == data, f"write {n} was fsynced, but its data is gone"
        expected_rest[offset:offset + len(data)] = region
    assert seen == expected_rest  # nothing else changed
    assert "partial" in marks(up / "big")
    assert os.stat(up / "big").st_blocks * 512 < size // 2


# -- 6: flatten ---------------------------------------------------------------------


def partial_tree(tmp_path: Path, unions, *options: str):
    """Three partial copies (brought up by a write, a chmod and a setxattr),
    a file only below, and one made in the union."""
    contents = {"a": random.Random(1).randbytes(MiB + 17),
                "sub/b": random.Random(2).randbytes(3 * CHUNK + 5),
                "sub/deep/c": random.Random(3).randbytes(2 * MiB)}
    low = build(tmp_path / "low", {**contents, "below": "only below"})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], *options, rw=True)
    expected = {name: bytearray(data) for name, data in contents.items()}
    write_at(mnt / "a", CHUNK - 3, b"xyzzy")
    expected["a"][CHUNK - 3:CHUNK + 2] = b"xyzzy"
    os.chmod(mnt / "sub/b", 0o604)
    os.setxattr(mnt / "sub/deep/c", "user.y", b"1")
    (mnt / "new").write_bytes(b"made here")
    assert len(chunk_maps(up)) == 3
    return mnt, up, low, {name: bytes(data) for name, data in expected.items()}


def test_flatten_completes_every_partial_file(tmp_path, unions):
    mnt, up, low, expected = partial_tree(tmp_path, unions)
    done = flatten(mnt)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for name, data in expected.items():
        assert_plain(up, name, data)
        assert read_direct(mnt / name) == data
    assert chunk_maps(up) == []
    assert not (up / "below").exists()  # nothing else was copied up
    assert (up / "new").read_bytes() == b"made here"
    assert flatten(mnt).returncode == 0  # nothing left to do


def test_flatten_of_one_path_completes_only_what_is_there(tmp_path, unions):
    mnt, up, low, expected = partial_tree(tmp_path, unions)
    done = flatten(mnt, "sub/b")
    assert done.returncode == 0, done.stderr
    assert_plain(up, "sub/b", expected["sub/b"])
    assert "partial" in marks(up / "a") and "partial" in marks(up / "sub/deep/c")
    assert chunk_maps(up) == sorted([marks(up / "a")["partial"],
                                     marks(up / "sub/deep/c")["partial"]])
    done = flatten(mnt, "sub")  # a directory: what is below it
    assert done.returncode == 0, done.stderr
    assert_plain(up, "sub/deep/c", expected["sub/deep/c"])
    assert chunk_maps(up) == [marks(up / "a")["partial"]]
    assert flatten(mnt, "below").returncode == 0  # below only: nothing to do
    assert not (up / "below").exists()
    for name, data in expected.items():
        assert read_direct(mnt / name) == data


def flatten_during(mnt, step):
    """Flatten ``mnt`` while a thread repeats ``step()``; returns the
    finished command and how many steps ran while it ran."""
    steps = [0]
    stop = threading.Event()

    def repeat():
        while not stop.is_set():
            step()
            steps[0] += 1

    thread = threading.Thread(target=repeat)
    thread.start()
    try:
        assert wait_for(lambda: steps[0] > 0)
        before = steps[0]
        done = flatten(mnt)
        during = steps[0] - before
    finally:
        stop.set()
        thread.join()
    assert done.returncode == 0, done.stderr
    return during


def mount_big_file(tmp_path, unions, size):
    """A union over one lower file ``big``; returns (mnt, upper, its bytes)."""
    low = build(tmp_path / "low", {})
    write_big(low / "big", size)
    up = build(tmp_path / "up", {})
    return unions.mount([up, low], rw=True), up, bytearray((low / "big").read_bytes())


def test_flatten_while_the_file_is_read(tmp_path, unions):
    size = 64 * MiB
    mnt, up, expected = mount_big_file(tmp_path, unions, size)
    rng = random.Random(3)
    for _ in range(50):
        offset = rng.randrange(size - 1000)
        data = rng.randbytes(rng.randrange(1, 1000))
        write_at(mnt / "big", offset, data)
        expected[offset:offset + len(data)] = data
    expected = bytes(expected)
    wrong: list[int] = []
    fd = os.open(mnt / "big", os.O_RDONLY | os.O_DIRECT)
    read_rng = random.Random(4)

    def read():
        offset = read_rng.randrange(size)
        if os.pread(fd, 256 * KiB, offset) != expected[offset:offset + 256 * KiB]:
            wrong.append(offset)

    try:
        assert flatten_during(mnt, read) > 0
    finally:
        os.close(fd)
    assert wrong == []
    assert_plain(up, "big", expected)
    assert read_direct(mnt / "big") == expected
    assert chunk_maps(up) == []


def test_flatten_while_the_file_is_written(tmp_path, unions):
    size = 32 * MiB
    mnt, up, model = mount_big_file(tmp_path, unions, size)
    os.chmod(mnt / "big", 0o644)  # a partial copy with nothing up yet
    fd = os.open(mnt / "big", os.O_WRONLY)
    write_rng = random.Random(6)

    def write():
        offset = write_rng.randrange(size - 3 * CHUNK)
        data = write_rng.randbytes(write_rng.choice([100, CHUNK, 3 * CHUNK - 7]))
        assert os.pwrite(fd, data, offset) == len(data)
        model[offset:offset + len(data)] = data

    try:
        assert flatten_during(mnt, write) > 0
    finally:
        os.close(fd)
    assert_plain(up, "big", model)
    assert read_direct(mnt / "big") == model
    assert chunk_maps(up) == []


def test_flatten_option_leaves_a_plain_tree_at_unmount(tmp_path, unions):
    mnt, up, low, expected = partial_tree(tmp_path, unions, "flatten")
    pyunion("umount", str(mnt))
    for name, data in expected.items():
        assert_plain(up, name, data)
    assert chunk_maps(up) == []
    again = unions.mount([up, low], rw=True)
    for name, data in expected.items():
        assert read_direct(again / name) == data


def test_flatten_of_something_not_mounted_fails(tmp_path):
    assert_one_line_error(flatten(tmp_path))
    assert_one_line_error(flatten(tmp_path / "nothing"))


def test_flatten_of_a_missing_path_fails(tmp_path, unions):
    mnt, up, low, expected = partial_tree(tmp_path, unions)
    done = flatten(mnt, "no/such/file")
    assert_one_line_error(done)
    assert "No such file or directory" in done.stderr
    assert len(chunk_maps(up)) == 3  # nothing was flattened


def test_flatten_of_a_read_only_union_fails(tmp_path, unions):
    low = build(tmp_path / "low", {"f": "data"})
    mnt = unions.mount([low])
    done = flatten(mnt)
    assert_one_line_error(done)
    assert "Read-only file system" in done.stderr
    assert not (low / META).exists()
    other = unions.new_mountpoint()
    unions.track(other, [low])  # unmounted after the test should it mount
    assert_one_line_error(pyunion("mount", "-o", f"br={low}=ro,flatten", str(other),
                                  check=False))
    assert not mounted(other)


@pytest.mark.parametrize("how", ["cli", "option"])
def test_flatten_of_a_partial_file_with_two_names(tmp_path, unions, how):
    data = {"f": random.Random(1).randbytes(MiB), "sub/h": random.Random(2).randbytes(MiB)}
    low = build(tmp_path / "low", data)
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], *(["flatten"] if how == "option" else []), rw=True)
    write_at(mnt / "f", 70_000, b"x")
    os.link(mnt / "f", mnt / "g")
    os.chmod(mnt / "sub/h", 0o600)
    expected_f = bytearray(data["f"])
    expected_f[70_000] = ord("x")
    if how == "cli":
        done = flatten(mnt)
        assert done.returncode == 0, done.stderr
    else:
        pyunion("umount", str(mnt))
    for name in ("f", "g"):
        assert_plain(up, name, bytes(expected_f))
    assert_plain(up, "sub/h", data["sub/h"])
    assert chunk_maps(up) == []


def test_flatten_keeps_the_modification_time(tmp_path, unions):
    low = build(tmp_path / "low", {"f": random.Random(1).randbytes(MiB)})
    os.utime(low / "f", ns=(1_000_000_000, 2_000_000_000))
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.chmod(mnt / "f", 0o600)  # a copy-up that changes no data
    assert os.stat(up / "f").st_mtime_ns == 2_000_000_000
    assert flatten(mnt).returncode == 0
    assert os.stat(up / "f").st_mtime_ns == 2_000_000_000  # what the union shows


def test_flatten_keeps_holes(tmp_path, unions):
    low = build(tmp_path / "low", {})
    with open(low / "sparse", "wb") as f:
        f.seek(64 * MiB)
        f.write(b"tail")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    write_at(mnt / "sparse", 0, b"head")
    assert flatten(mnt).returncode == 0
    with open(up / "sparse", "rb") as f:
        assert f.read(8) == b"head\0\0\0\0"
        f.seek(64 * MiB)
        assert f.read() == b"tail"
    assert os.stat(up / "sparse").st_blocks * 512 < MiB


# -- 7: names going away -----------------------------------------------------------


def test_unlinking_a_partial_file_removes_its_chunk_map(tmp_path, unions):
    low = build(tmp_path / "low", {"a": b"a" * MiB, "b": b"b" * MiB})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    write_at(mnt / "a", 5, b"!")
    write_at(mnt / "b", 5, b"!")
    keep = marks(up / "b")["partial"]
    assert len(chunk_maps(up)) == 2
    os.unlink(mnt / "a")
    assert chunk_maps(up) == [keep]
    assert not (mnt / "a").exists()
    assert read_direct(mnt / "b") == b"b" * 5 + b"!" + b"b" * (MiB - 6)


def test_unlinking_one_of_two_names_keeps_the_chunk_map(tmp_path, unions):
    data = random.Random(1).randbytes(MiB + 3)
    low = build(tmp_path / "low", {"f": data})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.link(mnt / "f", mnt / "g")  # the link itself makes the partial copy
    map_id = marks(up / "g")["partial"]
    write_at(mnt / "f", CHUNK + 1, b"via f")
    expected = bytearray(data)
    expected[CHUNK + 1:CHUNK + 6] = b"via f"
    os.unlink(mnt / "f")
    assert chunk_maps(up) == [map_id]
    assert read_direct(mnt / "g") == expected
    write_at(mnt / "g", 3 * CHUNK - 2, b"via g")
    expected[3 * CHUNK - 2:3 * CHUNK + 3] = b"via g"
    assert read_direct(mnt / "g") == expected
    assert flatten(mnt, "g").returncode == 0
    assert_plain(up, "g", bytes(expected))
    assert chunk_maps(up) == []


def test_rename_over_a_partial_file_removes_its_chunk_map(tmp_path, unions):
    a, b = random.Random(1).randbytes(MiB), random.Random(2).randbytes(MiB)
    low = build(tmp_path / "low", {"a": a, "b": b})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    write_at(mnt / "a", 0, b"A")
    write_at(mnt / "b", 0, b"B")
    kept = marks(up / "a")["partial"]
    os.rename(mnt / "a", mnt / "b")
    assert chunk_maps(up) == [kept]
    assert marks(up / "b")["partial"] == kept
    assert read_direct(mnt / "b") == b"A" + a[1:]
    assert not (mnt / "a").exists()


def test_an_open_partial_file_works_after_unlink(tmp_path, unions):
    data = random.Random(1).randbytes(MiB + 100)
    low = build(tmp_path / "low", {"f": data})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    expected = bytearray(data)
    fd = os.open(mnt / "f", os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, b"before", CHUNK - 3) == 6
        expected[CHUNK - 3:CHUNK + 3] = b"before"
        os.unlink(mnt / "f")
        assert chunk_maps(up) == []
        assert not (mnt / "f").exists()
        assert pread_all(fd) == expected
        for offset, piece in [(5 * CHUNK - 1, b"after"), (8 * CHUNK, b"z" * CHUNK),
                              (MiB + 98, b"grows")]:
            assert os.pwrite(fd, piece, offset) == len(piece)
            expected[offset:offset + len(piece)] = piece
        assert os.fstat(fd).st_size == len(expected)
        assert pread_all(fd) == expected
    finally:
        os.close(fd)
    assert chunk_maps(up) == []


def test_a_reader_open_before_a_rename_copy_up_sees_later_writes(tmp_path, unions):
    low = build(tmp_path / "low", {"f": b"o" * MiB})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    reader = os.open(mnt / "f", os.O_RDONLY | os.O_DIRECT)
    try:
        os.rename(mnt / "f", mnt / "g")
        write_at(mnt / "g", 0, b"new")
        assert os.pread(reader, 4, 0) == b"newo"
    finally:
        os.close(reader)


# -- short writes ------------------------------------------------------------------


def test_a_short_write_on_a_full_branch_keeps_the_old_data_after_it(tmp_path, unions):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        up = build(small / "up", {})
        low = build(tmp_path / "low", {"f": b"o" * (4 * MiB)})
        mnt = unions.mount([up, low], rw=True)
        try:
            fd = os.open(mnt / "f", os.O_WRONLY)
            try:
                written = os.pwrite(fd, b"n" * MiB, 0)  # whole chunks; ENOSPC part way
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                written = 0
            finally:
                os.close(fd)
            assert written < MiB
            seen = read_direct(mnt / "f")
            assert seen == b"n" * written + b"o" * (4 * MiB - written)
        finally:
            pyunion("umount", str(mnt), check=False)
            force_unmount(mnt)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# -- 8: copyup= -----------------------------------------------------------------------


def test_copyup_full_makes_whole_copies(tmp_path, unions):
    data = random.Random(1).randbytes(4 * MiB + 5)
    low = build(tmp_path / "low", {"f": data})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], "copyup=full", rw=True)
    write_at(mnt / "f", 2 * MiB, b"!")
    expected = data[:2 * MiB] + b"!" + data[2 * MiB + 1:]
    assert os.stat(up / "f").st_blocks * 512 >= len(data)
    assert_plain(up, "f", expected)
    assert chunk_maps(up) == []
    os.chmod(mnt / "f", 0o600)
    assert read_direct(mnt / "f") == expected


def test_copyup_bogus_is_refused(tmp_path):
    up = build(tmp_path / "up", {})
    low = build(tmp_path / "low", {"f": "x"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = pyunion("mount", "-o", f"br={up}=rw:{low}=ro,copyup=bogus", str(mnt), check=False)
    assert_one_line_error(done)
    assert "copyup" in done.stderr
    assert not mounted(mnt)
    assert os.listdir(up) == []


def test_a_read_past_the_limit_inside_its_chunk_reads_zeros(tmp_path, unions):
    """Extended without a write, the tail of the limit's chunk is a hole."""
    low = build(tmp_path / "low", {})
    data = random.Random(9).randbytes(70_000)
    (low / "f").write_bytes(data)
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.truncate(mnt / "f", 200_000)  # a partial copy; no chunk brought up
    fd = os.open(mnt / "f", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 73_728) == bytes(4096)
    finally:
        os.close(fd)
    assert read_direct(mnt / "f") == data + bytes(130_000)


def test_flatten_refuses_a_path_outside_the_mount(tmp_path, unions):
    mnt, up, low, expected = partial_tree(tmp_path, unions)
    outside = build(tmp_path / "outside", {"f": "x"})
    for path in (str(outside), "../outside"):
        assert_one_line_error(flatten(mnt, path))
        assert "not inside" in flatten(mnt, path).stderr
    assert os.listxattr(outside) == []

