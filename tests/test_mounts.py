"""The mount table and mount points are bytes: names that are not UTF-8.

These tests make mounts with such names, so they run in a mount namespace
of their own: other programs on the machine that read the mount table as
text never see them.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import PYUNION, build, process_gone, wait_for
from unionfs import daemon


class PrivateMounts:
    """A mount namespace held by a sleeping process; commands run in it with
    ``nsenter`` and files are reached through ``/proc/PID/root``."""

    def __init__(self, holder: subprocess.Popen):
        self.holder = holder

    def run(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *args],
                              capture_output=True, check=check, timeout=60)

    def pyunion(self, *args) -> subprocess.CompletedProcess:
        return self.run(PYUNION, *args, check=False)

    def path(self, path: Path) -> Path:
        """``path`` as the namespace sees it."""
        return Path(f"/proc/{self.holder.pid}/root{path}")

    def mounted(self, mnt: Path) -> bool:
        """Whether the namespace's mount table (read by ``mounts``) has ``mnt``."""
        done = self.run(PYTHON, "-c", "import sys; from unionfs import mounts; "
                        "print(mounts.find(sys.argv[1]) is not None)", str(mnt))
        return done.stdout == b"True\n"

    def processes(self) -> list[int]:
        """Every process in the namespace but its holder: all started here."""
        ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        found = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{name}/ns/mnt") == ns and int(name) != self.holder.pid:
                    found.append(int(name))
            except OSError:
                pass
        return found


PYTHON = str(Path(PYUNION).parent / "python")


@pytest.fixture
def private_mounts():
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                               "sleep", "infinity"])
    try:
        own = os.readlink("/proc/self/ns/mnt")
        assert wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/mnt") != own)
        space = PrivateMounts(holder)
        yield space
        # A daemon a failed test left: SIGTERM unmounts it; the namespace's
        # mounts go with its last process.
        for pid in space.processes():
            os.kill(pid, signal.SIGTERM)
        for pid in space.processes():
            if not wait_for(lambda: process_gone(pid)):
                os.kill(pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()


NAMES = {
    "plain": (b"up", b"low", b"mnt"),
    "not-utf8": (b"up\xfe", b"low \xfd", b"mnt\xff\\x"),
}


@pytest.mark.parametrize("names", NAMES.values(), ids=NAMES.keys())
def test_mount_write_flatten_umount_with_non_utf8_bytes_in_the_mount_table(
        tmp_path, private_mounts, names):
    """Another mount named with bytes that are not UTF-8 (a tmpfs) is in the
    table; the union's own mount point and branches may be named so too."""
    odd = tmp_path / os.fsdecode(b"other\xff mount")
    odd.mkdir()
    private_mounts.run("mount", "-t", "tmpfs", "none", str(odd))
    up, low, mnt = (tmp_path / os.fsdecode(name) for name in names)
    build(up, {})
    build(low, {"f": "lower"})
    mnt.mkdir()

    done = private_mounts.pyunion("mount", "-o", f"br={up}=rw:{low}=ro", str(mnt))
    assert (done.returncode, done.stderr) == (0, b"")
    seen = private_mounts.path(mnt)
    assert (seen / "f").read_text() == "lower"
    (seen / "g").write_text("new")
    with open(seen / "f", "r+") as f:
        f.write("LOW")
    assert private_mounts.mounted(mnt)
    pid = daemon.pid_of(str(mnt))
    assert pid is not None

    done = private_mounts.pyunion("flatten", str(mnt))
    assert (done.returncode, done.stderr) == (0, b"")
    with open(seen / "f"):
        done = private_mounts.pyunion("umount", str(mnt))
        assert done.returncode == 1 and done.stderr.endswith(b"Device or resource busy\n")
        assert done.stderr.count(b"\n") == 1 and os.fsencode(mnt) in done.stderr
    done = private_mounts.pyunion("umount", str(mnt))
    assert (done.returncode, done.stderr) == (0, b"")
    assert process_gone(pid)
    assert not private_mounts.mounted(mnt)
    assert (up / "g").read_text() == "new" and (up / "f").read_text() == "LOWer"

    # The mount.fuse3 form: the branch list is the source (and fsname=).
    done = private_mounts.pyunion(f"{up}=rw:{low}=ro", str(mnt))
    assert (done.returncode, done.stderr) == (0, b"")
    assert (seen / "g").read_text() == "new"
    done = private_mounts.pyunion("umount", str(mnt))
    assert (done.returncode, done.stderr) == (0, b"")
