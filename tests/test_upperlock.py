"""One daemon per writable branch and per work dir, for as long as it lives."""

import os
import signal
import subprocess

import pytest

from helpers import build, mounted, process_gone, pyunion, snapshot, wait_for
from unionfs import daemon


@pytest.fixture
def tree(tmp_path):
    build(tmp_path / "up", {})
    build(tmp_path / "low", {"f": "lower"})
    return tmp_path


def refused(tmp_path, options: str, mnt) -> str:
    """Try a mount that must be refused; return its one-line error."""
    before = snapshot(tmp_path / "up")
    done = pyunion("mount", "-o", options, str(mnt), check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert snapshot(tmp_path / "up") == before
    return done.stderr


def test_a_second_mount_of_the_upper_is_refused(tree, unions):
    mnt = unions.mount([tree / "up", tree / "low"], rw=True)
    pid = daemon.pid_of(str(mnt))
    (mnt / "g").write_text("first")
    other = unions.new_mountpoint()
    unions.track(other, [])
    error = refused(tree, f"br={tree}/up=rw:{tree}/low=ro", other)
    assert error == f"Error: upper branch {tree}/up is in use by another mount (process {pid})\n"
    assert not mounted(other)
    # Stacked on the first mount; over other branches below, or none.
    refused(tree, f"br={tree}/up=rw:{tree}/low=ro", mnt)
    refused(tree, f"br={tree}/up=rw", other)
    assert (mnt / "g").read_text() == "first"


def test_the_lock_outlives_a_lazy_umount_while_the_daemon_serves(tree, unions):
    mnt = unions.mount([tree / "up", tree / "low"], rw=True)
    pid = daemon.pid_of(str(mnt))
    held = open(mnt / "f", "a")
    try:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        assert not mounted(mnt) and not process_gone(pid)
        refused(tree, f"br={tree}/up=rw:{tree}/low=ro", mnt)
        held.write(" and more")
    finally:
        held.close()
    assert wait_for(lambda: process_gone(pid))
    unions.mount([tree / "up", tree / "low"], rw=True, mnt=mnt)
    assert (mnt / "f").read_text() == "lower and more"


def test_the_lock_dies_with_a_killed_daemon(tree, unions):
    mnt = unions.mount([tree / "up", tree / "low"], rw=True)
    pid = daemon.pid_of(str(mnt))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: process_gone(pid))
    subprocess.run(["umount", "-l", str(mnt)], check=True)
    unions.mount([tree / "up", tree / "low"], rw=True, mnt=mnt)
    assert (mnt / "f").read_text() == "lower"


def test_two_uppers_cannot_share_a_workdir(tree, unions):
    build(tree / "up2", {})
    (tree / "work").mkdir()
    mnt = unions.mount_overlay_style([tree / "low"], tree / "up", tree / "work")
    assert mounted(mnt)
    other = unions.new_mountpoint()
    unions.track(other, [])
    before = snapshot(tree / "up2")
    error = refused(tree, f"lowerdir={tree}/low,upperdir={tree}/up2,workdir={tree}/work", other)
    assert error.startswith(f"Error: workdir {tree}/work is in use by another mount")
    assert snapshot(tree / "up2") == before
