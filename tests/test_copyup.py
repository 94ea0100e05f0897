"""Copy-up: data, holes and metadata; atomicity; open handles; concurrency."""

import hashlib
import os
import signal
import threading

import pytest

from deep import make_chain, remove_tree
from helpers import build, force_unmount, mounted, wait_for
from unionfs import daemon
from unionfs.copyup import copy_data

GiB = 1 << 30


def write_pattern(path, size, block=1 << 20):
    """A file of ``size`` bytes with real (not sparse) data in every block."""
    with open(path, "wb") as f:
        for i in range(size // block):
            f.write(i.to_bytes(8, "little") * (block // 8))


def digest(path, head=b""):
    """The file's sha256, as if its first bytes were ``head``."""
    found = hashlib.sha256(head)
    with open(path, "rb") as f:
        f.seek(len(head))
        while block := f.read(1 << 20):
            found.update(block)
    return found.hexdigest()


def test_copy_data_keeps_holes(tmp_path):
    src = tmp_path / "src"
    with open(src, "wb") as f:
        for offset in (0, 10 << 20, 50 << 20):
            f.seek(offset)
            f.write(os.urandom(100_000))
        f.truncate(80 << 20)
    dst = tmp_path / "dst"
    with open(src, "rb") as s, open(dst, "wb") as d:
        copy_data(s.fileno(), d.fileno(), os.stat(src).st_size)
    assert os.stat(dst).st_size == 80 << 20
    assert digest(dst) == digest(src)
    assert os.stat(dst).st_blocks <= os.stat(src).st_blocks + 64


def test_sparse_lower_file_stays_sparse_in_the_upper(tmp_path, unions):
    low = build(tmp_path / "low", {})
    with open(low / "sparse", "wb") as f:
        f.seek(GiB)
        f.write(b"tail")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    with open(mnt / "sparse", "r+b") as f:
        f.write(b"head")
    st = os.stat(up / "sparse")
    assert st.st_size == GiB + 4 and st.st_blocks * 512 < 1 << 20
    with open(mnt / "sparse", "rb") as f:
        assert f.read(8) == b"head\0\0\0\0"
        f.seek(GiB)
        assert f.read() == b"tail"


def whole_copy_by_open(mnt):
    os.close(os.open(mnt / "big", os.O_WRONLY))  # with copyup=full


def completion_by_flatten(mnt):
    with open(mnt / "big", "r+b") as f:  # a partial copy...
        f.write(b"x")
    os.setxattr(mnt / "big", "trusted.pyunion.flatten", b"")  # ...completed


@pytest.mark.parametrize("option, copy_up", [("copyup=full", whole_copy_by_open),
                                             ("copyup=partial", completion_by_flatten)])
def test_one_gib_copy_keeps_every_byte_and_the_mount_stays_responsive(tmp_path, unions,
                                                                      option, copy_up):
    low = build(tmp_path / "low", {"small": "s"})
    write_pattern(low / "big", GiB)
    expected = digest(low / "big", head=b"x")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], option, rw=True)
    copying = threading.Event()
    done = threading.Event()

    def copy():
        copying.set()
        copy_up(mnt)
        done.set()

    if copy_up is whole_copy_by_open:
        expected = digest(low / "big")
    worker = threading.Thread(target=copy)
    worker.start()
    copying.wait()
    answered_meanwhile = 0
    for i in range(100_000):
        if done.is_set():
            break
        # Fresh names, so the kernel must ask the daemon every time.
        assert not os.path.exists(mnt / f"nothing{i}")
        answered_meanwhile += 1
    worker.join()
    assert answered_meanwhile > 10, "the mount did not answer while copying"
    assert digest(up / "big") == expected


def test_a_reader_open_before_copy_up_sees_the_new_data(tmp_path, unions):
    low = build(tmp_path / "low", {"f": "old data"})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    with open(mnt / "f", "rb") as reader:
        assert reader.read() == b"old data"
        with open(mnt / "f", "r+b") as writer:
            writer.write(b"NEW")
        reader.seek(0)
        assert reader.read() == b"NEW data"


def test_truncating_open_copies_no_data(tmp_path, unions):
    low = build(tmp_path / "low", {"f": "x" * 100_000})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    ino = os.stat(mnt / "f").st_ino
    with open(mnt / "f", "w") as f:
        f.write("short")
    assert (mnt / "f").read_text() == "short"
    assert os.stat(mnt / "f").st_ino == ino


def test_stale_work_files_are_removed_at_mount(tmp_path, unions):
    up = build(tmp_path / "up", {".wh..wh.pyunion/work/123.0": "half a file",
                                 ".wh..wh.pyunion/work/123.1/inner": "half a dir"})
    low = build(tmp_path / "low", {"f": "x"})
    unions.mount([up, low], rw=True)
    assert os.listdir(up / ".wh..wh.pyunion/work") == []


def test_workdir_option_is_used_for_staging(tmp_path, unions):
    up = build(tmp_path / "up", {})
    work = build(tmp_path / "work", {"work/stale": "x", "mine": "left alone"})
    low = build(tmp_path / "low", {"f": "x"})
    mnt = unions.mount_overlay_style(lower=[low], upper=up, work=work)
    (mnt / "f").write_text("changed")
    assert sorted(os.listdir(work)) == ["chunks", "mine", "work"]
    assert os.listdir(work / "work") == []
    assert sorted(os.listdir(up)) == ["f"]


def test_a_daemon_killed_mid_copy_leaves_the_old_file_whole(tmp_path, unions):
    low = build(tmp_path / "low", {})
    write_pattern(low / "big", 256 << 20)
    expected = digest(low / "big")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], "copyup=full", rw=True)
    pid = daemon.pid_of(str(mnt))
    worker = threading.Thread(target=lambda: pytest.raises(OSError, os.open, mnt / "big",
                                                           os.O_WRONLY))
    worker.start()
    assert wait_for(lambda: any(os.scandir(up / ".wh..wh.pyunion/work")), 20)
    os.kill(pid, signal.SIGKILL)
    worker.join()
    assert os.path.exists(daemon.pidfile_path(str(mnt)))
    force_unmount(mnt)
    assert not (up / "big").exists()  # the half copy is in the work dir only
    again = unions.mount([up, low], "copyup=full", rw=True)
    assert not os.path.exists(daemon.pidfile_path(str(mnt)))  # the killed one's record
    assert os.listdir(up / ".wh..wh.pyunion/work") == []
    assert digest(again / "big") == expected
    assert not mounted(mnt)


def test_a_stale_tree_deeper_than_the_recursion_limit_is_removed_at_mount(tmp_path, unions):
    up = build(tmp_path / "up", {".wh..wh.pyunion/work/123.2/wide/f": "x"})
    make_chain(up / ".wh..wh.pyunion/work/123.2", ["d"] * 3000)
    for i in range(100):
        (up / f".wh..wh.pyunion/work/123.2/wide/{i}").mkdir()
    low = build(tmp_path / "low", {"f": "x"})
    try:
        unions.mount([up, low], rw=True)
        assert os.listdir(up / ".wh..wh.pyunion/work") == []
    finally:
        remove_tree(up)


def test_a_directory_copied_up_under_a_file_shows_its_new_link_count_at_once(tmp_path, unions):
    """Copying ``a`` and ``a/b`` up for ``a/b/f`` merges them (link count 1,
    as overlayfs shows a merged directory); the kernel's attributes of them,
    cached before, are dropped, not kept for their timeout."""
    low = build(tmp_path / "low", {"a/b/f": "x"})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    assert (os.stat(mnt / "a").st_nlink, os.stat(mnt / "a/b").st_nlink) == (3, 2)
    with open(mnt / "a/b/f", "a") as f:
        f.write("y")
    assert (os.stat(mnt / "a").st_nlink, os.stat(mnt / "a/b").st_nlink) == (1, 1)
