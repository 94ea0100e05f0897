"""The ``pyunion`` command: mounting, unmounting, signals, bad input."""

import os
import signal
import subprocess

import pytest

from helpers import PYUNION, build, mounted, process_gone, pyunion, snapshot, wait_for
from unionfs import daemon


@pytest.fixture
def branches(tmp_path):
    up = build(tmp_path / "up", {})
    low = build(tmp_path / "low", {"hello": "world", "d/x": "x"})
    (tmp_path / "mnt").mkdir()
    return up, low, tmp_path / "mnt"


def test_mount_returns_ready_and_umount_ends_the_daemon(branches, unions):
    up, low, mnt = branches
    unions.track(mnt, [low])
    pyunion("mount", "-o", f"br={up}=rw:{low}=ro", str(mnt))
    assert (mnt / "hello").read_text() == "world"
    pid = daemon.pid_of(str(mnt))
    assert pid is not None
    pyunion("umount", str(mnt))
    assert not mounted(mnt)
    assert process_gone(pid)
    assert daemon.pid_of(str(mnt)) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_to_the_daemon_unmount_cleanly(branches, unions, signum):
    up, low, mnt = branches
    mnt = unions.mount([up, low], rw=True, mnt=mnt)
    pid = daemon.pid_of(str(mnt))
    os.kill(pid, signum)
    assert wait_for(lambda: process_gone(pid) and not mounted(mnt))


def test_foreground_mode_and_debug_log(branches, unions):
    up, low, mnt = branches
    unions.track(mnt, [low])
    proc = subprocess.Popen([PYUNION, "--debug", "mount", "-f", "-o", f"br={low}=ro", str(mnt)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: mounted(mnt))
        assert (mnt / "d/x").read_text() == "x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not mounted(mnt)
        assert "signal 15: unmounting" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_plain_umount_ends_the_daemon(branches, unions):
    up, low, mnt = branches
    mnt = unions.mount([low], mnt=mnt)
    pid = daemon.pid_of(str(mnt))
    subprocess.run(["umount", str(mnt)], check=True)
    assert wait_for(lambda: process_gone(pid))


def test_mount_fuse_helper_and_fstab_form(branches, unions):
    """mount(8) runs mount.fuse3, which runs ``pyunion SOURCE MNT -o ...``
    found on the system PATH, where the set-up links this checkout's."""
    assert os.path.realpath("/usr/local/bin/pyunion") == os.path.realpath(PYUNION)
    up, low, mnt = branches
    unions.track(mnt, [low])
    subprocess.run(["mount", "-t", "fuse.pyunion", "-o", "noauto,_netdev",
                    f"{up}=rw:{low}=ro", str(mnt)], check=True)
    assert (mnt / "hello").read_text() == "world"
    with open("/proc/self/mounts") as f:
        assert f"{up}=rw:{low}=ro {mnt} fuse.pyunion " in f.read()
    pyunion("umount", str(mnt))
    subprocess.run(["mount", "-t", "fuse.pyunion", "-o", f"br={low}=ro", "myunion", str(mnt)],
                   check=True)
    assert (mnt / "hello").read_text() == "world"


def test_the_mount_fuse_form_takes_a_comma_in_a_branch_path(branches, unions, tmp_path):
    """``-o`` cannot hold one (commas separate options) but the source can."""
    up, low, mnt = branches
    upper = build(tmp_path / "a,b", {})
    unions.track(mnt, [low])
    pyunion(f"{upper}=rw:{low}=ro", str(mnt))
    (mnt / "new").write_text("new")
    assert (upper / "new").read_text() == "new"
    assert daemon.pid_of(str(mnt)) is not None


def test_overlay_style_options(branches, unions, tmp_path):
    up, low, mnt = branches
    (tmp_path / "work").mkdir()
    unions.track(mnt, [low])
    pyunion("mount", "-o", f"lowerdir={low},upperdir={up},workdir={tmp_path / 'work'}", str(mnt))
    assert sorted(os.listdir(mnt)) == ["d", "hello"]


def test_umount_of_something_else_is_refused(tmp_path):
    done = pyunion("umount", str(tmp_path), check=False)
    assert done.returncode == 1
    assert done.stderr == f"Error: {tmp_path} is not a pyunion mount\n"


@pytest.mark.parametrize("args", [
    ["-o", "br={low}=rx", "{mnt}"],
    ["-o", "br={up}=rw:{up}=ro", "{mnt}"],
    ["-o", "br={up}=rw:{low}/d=ro:{low}=ro", "{mnt}"],
    ["-o", "br={tmp}/missing", "{mnt}"],
    ["-o", "br={low}/hello", "{mnt}"],
    ["-o", "br=", "{mnt}"],
    ["-o", "br={low},colour=blue", "{mnt}"],
    ["-o", "br={low}", "{tmp}/nowhere"],
    ["-o", "br={up}=rw:{low}=ro", "{low}"],
    ["-o", "br={up}=rw:{low}=ro", "{low}/d"],
    ["-o", "br={up}=rw:{low}=ro", "{tmp}"],
    ["-o", "br={low},max_read=lots", "{mnt}"],
    ["-o", "lowerdir={low},upperdir={up},workdir={mnt}", "{mnt}"],
    ["-o", "br={up}=rw:{low}/d,x=ro", "{mnt}"],
    ["-o", "br={low},blkdev", "{mnt}"],
    ["{mnt}"],
])
def test_bad_input_is_one_line_and_changes_nothing(branches, tmp_path, args):
    up, low, mnt = branches
    before = snapshot(tmp_path)
    args = [a.format(up=up, low=low, mnt=mnt, tmp=tmp_path) for a in args]
    done = pyunion("mount", *args, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert not mounted(mnt) and not mounted(low) and not mounted(tmp_path)
    assert snapshot(tmp_path) == before
