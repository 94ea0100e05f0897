"""The daemon's life: its limits, and failing loudly at its end."""

import errno
import os
import resource
import subprocess
import sys

import pytest

from helpers import PYUNION, build, force_unmount, mounted, process_gone, pyunion, wait_for
from unionfs import daemon

BIG = os.urandom(4 << 20)


def test_the_daemon_serves_past_the_soft_open_file_limit_it_inherits(tmp_path, unions):
    """Raised to the hard limit; beyond that, opens fail with EMFILE and the
    mount keeps serving."""
    files = {f"f{i}": str(i) for i in range(200)}
    low = build(tmp_path / "low", files)
    up = build(tmp_path / "up", {})
    mnt = unions.new_mountpoint()
    unions.track(mnt, [low])
    pyunion("mount", "-o", f"br={up}=rw:{low}=ro", str(mnt),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256)))
    opened = []
    try:
        opened += [open(mnt / name) for name in files]
        assert [f.read() for f in opened] == list(files.values())
        with pytest.raises(OSError) as at_the_limit:
            for _ in range(256):
                opened.append(open(mnt / "f0"))
        assert at_the_limit.value.errno == errno.EMFILE
    finally:
        for f in opened:
            f.close()
    assert (mnt / "f7").read_text() == "7"
    (mnt / "new").write_text("still serving")


@pytest.fixture
def small_upper(tmp_path):
    """A 1 MiB tmpfs for the writable branch: too small to flatten into."""
    up = tmp_path / "up"
    up.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(up)], check=True)
    try:
        yield up
    finally:
        force_unmount(up)


def lower_and_mountpoint(unions, tmp_path):
    low = build(tmp_path / "low", {"big": BIG})
    mnt = unions.new_mountpoint()
    unions.track(mnt, [low])
    return low, mnt


def write_one_byte(mnt):
    with open(mnt / "big", "r+b") as f:
        f.seek(10)
        f.write(b"x")


def check_branch_usable(unions, small_upper, low, mnt):
    """The partial copy stays as it was: the branch mounts with the data."""
    unions.mount([small_upper, low], rw=True, mnt=mnt)
    assert (mnt / "big").read_bytes() == BIG[:10] + b"x" + BIG[11:]


# small_upper comes first, so its tmpfs is unmounted after the unions over it.
def test_a_flatten_that_fails_at_unmount_is_reported_by_umount(small_upper, unions, tmp_path):
    low, mnt = lower_and_mountpoint(unions, tmp_path)
    pyunion("mount", "-o", f"br={small_upper}=rw:{low}=ro,flatten", str(mnt))
    pid = daemon.pid_of(str(mnt))
    write_one_byte(mnt)
    done = pyunion("umount", str(mnt), check=False)
    assert (done.returncode, done.stderr) == (
        1, f"Error: unmounted, but the daemon failed: flatten of {mnt} at unmount failed: "
           "No space left on device (its partial copies stay; mount it again to retry)\n")
    assert process_gone(pid) and not mounted(mnt)
    check_branch_usable(unions, small_upper, low, mnt)


def test_a_flatten_that_fails_at_unmount_ends_a_foreground_daemon_non_zero(
        small_upper, unions, tmp_path):
    low, mnt = lower_and_mountpoint(unions, tmp_path)
    proc = subprocess.Popen([PYUNION, "mount", "-f", "-o", f"br={small_upper}=rw:{low}=ro,flatten",
                             str(mnt)], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: mounted(mnt))
        write_one_byte(mnt)
        subprocess.run(["umount", str(mnt)], check=True)
        assert proc.wait(timeout=60) == 1
        assert proc.stderr.read() == (f"Error: flatten of {mnt} at unmount failed: No space left "
                                      "on device (its partial copies stay; mount it again to retry)\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    check_branch_usable(unions, small_upper, low, mnt)


def test_a_daemon_started_by_another_program_keeps_its_pid_record(tmp_path, unions):
    """A container runtime's daemon has no "pyunion" in its command line:
    the next daemon must still see it alive (by the lock on its record)."""
    first = build(tmp_path / "up1", {})
    mnt = tmp_path / "mnt-first"
    mnt.mkdir()
    unions.track(mnt, [])
    subprocess.run([sys.executable, "-c", (
        "import sys; from unionfs import daemon, options;"
        "daemon.spawn(options.parse([f'br={sys.argv[1]}=rw'], sys.argv[2]))"),
        str(first), str(mnt)], check=True, timeout=60)
    record = daemon.pidfile_path(str(mnt))
    assert daemon.pid_of(str(mnt)) is not None
    unions.mount([build(tmp_path / "up2", {})], rw=True)  # clears the records of dead ones
    assert os.path.exists(record)
    assert daemon.pid_of(str(mnt)) is not None
