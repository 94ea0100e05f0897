"""Descriptors and inodes the kernel holds while names change under them:
listings that span renames, files and directories used after they were
removed, and inode numbers the branch reuses for new files.  Each answer is
what ext4 gives."""

from __future__ import annotations

import ctypes
import os
import stat

import pytest

from helpers import DIR, build, wait_for
from unionfs import daemon

RENAME_EXCHANGE = 2


@pytest.fixture
def union(tmp_path, unions):
    lower = build(tmp_path / "lower", {"a/f": "a's file", "b/f": "b's file", "b/g": "b's",
                                       "big": os.urandom(300_000), "e": DIR})
    return unions.mount([build(tmp_path / "upper", {}), lower], rw=True)


@pytest.mark.parametrize("made", ["below", "through the mount"])
def test_a_listing_follows_its_directory_across_renames(union, made):
    if made == "through the mount":
        for name in ("a", "b"):
            (union / name).rename(union / f"old-{name}")
            (union / name).mkdir()
            for child in (union / f"old-{name}").iterdir():
                child.rename(union / name / child.name)
    fd = os.open(union / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        (union / "a").rename(union / "c")
        (union / "b").rename(union / "a")
        assert sorted(os.listdir(fd)) == ["f"]
        # Names found by that listing lead to a's file, now at c/f.
        out = os.open("f", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(out, b", changed")
        os.close(out)
    finally:
        os.close(fd)
    assert (union / "c/f").read_text() == "a's file, changed"
    assert (union / "a/f").read_text() == "b's file"
    assert sorted(os.listdir(union / "a")) == ["f", "g"]


def test_a_listing_cannot_make_a_directory_its_own_ancestor(union):
    (union / "A/B").mkdir(parents=True)
    fd = os.open(union / "A", os.O_RDONLY | os.O_DIRECTORY)
    try:
        (union / "A/B").rename(union / "C")
        (union / "A").rename(union / "C/A")
        (union / "A/B").mkdir(parents=True)
        (union / "C/A").rename(union / "A/B/A")
        assert os.listdir(fd) == []  # the old A, whose B moved out
        (union / "A/B/A/new").write_text("x")
    finally:
        os.close(fd)
    assert os.listdir(union / "A/B/A") == ["new"]
    assert sorted(os.listdir(union / "A/B")) == ["A"]
    assert sorted(os.listdir(union / "C")) == []


@pytest.mark.parametrize("which", ["lower file, read-only", "copied up", "partial copy",
                                   "made through the mount"])
def test_an_open_unlinked_file_can_still_be_changed(union, which):
    name = {"lower file, read-only": "a/f", "copied up": "b/f", "partial copy": "big",
            "made through the mount": "new"}[which]
    if which == "made through the mount":
        (union / name).write_text("fresh")
    before = (union / name).read_bytes()
    fd = os.open(union / name, os.O_RDONLY if which.endswith("read-only") else os.O_RDWR)
    try:
        if which == "copied up":
            os.pwrite(fd, b"B", 0)
        os.unlink(union / name)
        if not which.endswith("read-only"):
            os.ftruncate(fd, 3)
        os.fchmod(fd, 0o640)
        os.fchown(fd, 123, 456)
        os.utime(fd, ns=(10**18, 2 * 10**18))
        os.setxattr(fd, "user.kept", b"yes")
        assert os.getxattr(fd, "user.kept") == b"yes"
        assert "user.kept" in os.listxattr(fd)
        st = os.fstat(fd)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 123, 456)
        assert (st.st_mtime_ns, st.st_nlink) == (2 * 10**18, 0)
        os.removexattr(fd, "user.kept")
        assert os.listxattr(fd) == []
        data = os.pread(fd, 1 << 20, 0)
        if which.endswith("read-only"):
            assert data == before
        else:
            assert st.st_size == 3 and data == (b"B" + before[1:] if which == "copied up"
                                                else before)[:3]
    finally:
        os.close(fd)
    assert not (union / name).exists()


@pytest.mark.parametrize("name", ["e", "made"])
def test_an_open_removed_directory_lists_nothing_and_can_be_changed(union, name):
    if name == "made":
        (union / name).mkdir()
    fd = os.open(union / name, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(union / name)
        assert os.listdir(fd) == []
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        assert os.fstat(fd).st_nlink == 0
        os.fchmod(fd, 0o701)
        os.setxattr(fd, "user.kept", b"yes")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o701
        assert os.getxattr(fd, "user.kept") == b"yes"
        os.fsync(fd)
    finally:
        os.close(fd)


def new_directories(union, prefix: str, count: int) -> list[int]:
    """Make directories and use them; their inode numbers."""
    numbers = []
    for i in range(count):
        new = union / f"{prefix}{i}"
        new.mkdir()
        (new / "f").write_text("inside")
        (new / "sub").mkdir()
        assert sorted(os.listdir(new)) == ["f", "sub"]
        numbers.append(new.stat().st_ino)
    return numbers


def test_a_removed_directorys_number_is_not_reused_while_the_kernel_holds_it(union):
    (union / "d").mkdir()
    daemon_fds = f"/proc/{daemon.pid_of(str(union))}/fd"
    before = len(os.listdir(daemon_fds))
    fd = os.open(union / "d", os.O_RDONLY | os.O_DIRECTORY)  # held, as a cwd is
    try:
        number = os.fstat(fd).st_ino
        os.rmdir(union / "d")
        assert number not in new_directories(union, "while", 20)
        assert os.listdir(fd) == []  # ext4's answers, not EIO
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    drop_kernel_caches()  # the kernel forgets it, and the daemon lets go
    assert wait_for(lambda: len(os.listdir(daemon_fds)) == before)


def drop_kernel_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def test_an_exchange_that_moves_a_directory_resolves_open_files_afresh(union):
    """The swapped file's other name lies inside the directory swapped with
    it: resolving it with the directory's old path failed the (done)
    rename with ENOENT.  Several rounds, since which name is tried first
    varies."""
    libc = ctypes.CDLL(None, use_errno=True)
    for i in range(12):
        (union / f"d{i}/sub").mkdir(parents=True)
        (union / f"g{i}").write_text("file")
        os.link(union / f"g{i}", union / f"d{i}/sub/other")
        fd = os.open(union / f"g{i}", os.O_RDONLY)
        try:
            os.stat(union / f"d{i}/sub/other")
            assert libc.renameat2(-100, os.fsencode(union / f"d{i}"), -100,
                                  os.fsencode(union / f"g{i}"), RENAME_EXCHANGE) == 0, \
                os.strerror(ctypes.get_errno())
            assert os.pread(fd, 10, 0) == b"file"
        finally:
            os.close(fd)
        assert (union / f"d{i}").read_text() == "file"
        assert (union / f"g{i}/sub/other").read_text() == "file"
