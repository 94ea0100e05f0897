"""pagecache=keep|drop|direct: what the kernel keeps of lower files read
through the mount, and that mmap keeps working where the mode allows it."""

import mmap
import os
import subprocess

import pytest

from helpers import build, wait_for

MiB = 1 << 20
SIZE = 128 * MiB  # big enough that other page cache traffic is noise


def cached_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Cached:"))


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")


def read_all(path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


@pytest.fixture
def base(tmp_path):
    low = build(tmp_path / "low", {})
    (low / "f").write_bytes(os.urandom(SIZE))
    return low


def mounts_of(unions, tmp_path, base, mode, count):
    return [unions.mount([build(tmp_path / f"up{i}", {}), base], f"pagecache={mode}", rw=True)
            for i in range(count)]


def growth_reading(paths, settle: float = 0) -> int:
    """How much the page cache grew by reading ``paths``, once it is at most
    one copy, or after ``settle`` seconds."""
    drop_caches()
    before = cached_bytes()
    for path in paths:
        read_all(path)
    wait_for(lambda: cached_bytes() - before < SIZE * 1.5, settle)
    return cached_bytes() - before


@pytest.mark.parametrize("mode", ["drop", "direct"])
def test_shared_modes_keep_one_copy_for_many_mounts(tmp_path, unions, base, mode):
    mnts = mounts_of(unions, tmp_path, base, mode, 3)
    expected = (base / "f").read_bytes()
    assert all(read_all(m / "f") == expected for m in mnts)
    # The last close reaches the daemon after close(2) returned.
    grown = growth_reading([m / "f" for m in mnts], settle=5)
    assert SIZE * 0.9 < grown < SIZE * 1.5, f"{grown / MiB:.0f} MiB for three mounts"


def test_keep_mode_keeps_a_copy_per_mount(tmp_path, unions, base):
    mnts = mounts_of(unions, tmp_path, base, "keep", 2)
    grown = growth_reading([m / "f" for m in mnts])
    assert grown > SIZE * 2.5, f"{grown / MiB:.0f} MiB: the mounts' own copies are gone"


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_shared_read_only_maps_work_where_pages_are_cached(tmp_path, unions, base, mode):
    (mnt,) = mounts_of(unions, tmp_path, base, mode, 1)
    expected = (base / "f").read_bytes()
    with open(mnt / "f", "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED,
                                             mmap.PROT_READ) as mapped:
        assert mapped[:] == expected
    # After the last close (drop mode: the cache went), a new map reads right.
    with open(mnt / "f", "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED,
                                             mmap.PROT_READ) as mapped:
        assert mapped[SIZE - 4096:] == expected[SIZE - 4096:]


def test_direct_mode_allows_private_and_shared_maps(tmp_path, unions, base):
    """Shared maps of files read with direct I/O need the kernel's
    FUSE_DIRECT_IO_ALLOW_MMAP, which the patched pyfuse3 asks for."""
    (mnt,) = mounts_of(unions, tmp_path, base, "direct", 1)
    expected = (base / "f").read_bytes()
    with open(mnt / "f", "rb") as f:
        with mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ) as mapped:
            assert mapped[:MiB] == expected[:MiB]
        with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
            assert mapped[:MiB] == expected[:MiB]


def test_direct_mode_caches_files_once_they_are_written(tmp_path, unions, base):
    (mnt,) = mounts_of(unions, tmp_path, base, "direct", 1)
    with open(mnt / "f", "r+b") as f:
        f.write(b"changed")
    with open(mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        assert mapped[:7] == b"changed"
        mapped[:7] = b"mmapped"
    assert read_all(mnt / "f")[:7] == b"mmapped"
    assert (base / "f").read_bytes()[:7] != b"mmapped"


def test_bad_pagecache_value_is_refused(tmp_path):
    low, up, mnt = (build(tmp_path / n, {}) for n in ("low", "up", "mnt"))
    done = subprocess.run(["pyunion", "mount", "-o", f"br={up}=rw:{low}=ro,pagecache=some",
                           str(mnt)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == ("Error: pagecache= must be one of keep, drop, direct, "
                                   "not 'some'")
    assert not os.path.ismount(mnt)
