"""What a container plants (a set-uid-root program, device nodes) is of no
use to a host user: tried as ``nobody`` through every host path to a
running container's files."""

import json
import os
import shutil
import subprocess
from pathlib import Path

from helpers import wait_for
from test_devices import LOOP

AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


def as_nobody(*command):
    return subprocess.run([*AS_NOBODY, *command], capture_output=True, text=True, timeout=10)


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def test_a_host_user_cannot_use_what_a_container_made(pyc, tmp_path):
    shutil.copy(shutil.which("id"), tmp_path / "id")  # runs on the host's libraries
    major, minor = LOOP  # a block device the host lets root open
    name = pyc.name()
    done = pyc("run", "-d", "--name", name, "-v", f"{tmp_path}:/vol", "busybox", "sh", "-c",
               "cp /vol/id /id && chmod 4755 /id"
               f" && mknod -m 666 /disk b {major} {minor}"
               f" && mknod -m 666 /dev/disk b {major} {minor}"
               " && cat /id >/etc/hosts && chmod 4755 /etc/hosts && touch /vol/ready;"
               " su -s /bin/sh nobody -c 'exec sleep 1000' & exec sleep 1000")
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: (tmp_path / "ready").exists())
    with open(f"/run/pycontainer/{name}/state.json") as f:
        state = json.load(f)
    init = state["init_pid"]

    def run_by_nobody():
        with open(f"{state['cgroup_paths']['pids']}/cgroup.procs") as f:
            return [pid for pid in map(int, f) if uid_of(pid) == 65534]

    assert wait_for(run_by_nobody)
    same_uid = run_by_nobody()[0]

    data = f"/var/lib/pycontainer/containers/{name}"
    unreachable = [f"{data}/rootfs/id", f"{data}/rootfs/disk", f"{data}/upper/id",
                   f"{data}/upper/disk", f"/run/pycontainer/{name}/etc/hosts",
                   f"/proc/{init}/root/id", f"/proc/{init}/root/disk",
                   f"/proc/{init}/root/dev/disk"]
    for path in unreachable:
        assert os.path.exists(path)
        stat = as_nobody("stat", path)
        assert stat.returncode != 0 and "Permission denied" in stat.stderr, path
    # A process of the container run by the same uid as the host user lets
    # it into the container's mounts: set-uid and device nodes count for nothing there.
    for root in (f"/proc/{same_uid}/root", f"/proc/{same_uid}/cwd"):
        assert as_nobody(f"{root}/id", "-u").stdout.strip() == "65534", root
        for node in ("disk", "dev/disk"):
            opened = as_nobody("head", "-c", "1", f"{root}/{node}")
            assert opened.returncode != 0 and "Permission denied" in opened.stderr, node
    assert Path(f"{data}/upper/id").stat().st_mode & 0o4000  # it was planted
    with open("/proc/self/mountinfo") as f:
        options = next(line.split()[5] for line in f if line.split()[4] == f"{data}/rootfs")
    assert {"nosuid", "nodev"} <= set(options.split(","))
    for directory in (data, os.path.dirname(data), f"/run/pycontainer/{name}", "/run/pycontainer"):
        info = os.stat(directory)
        assert (info.st_mode & 0o777, info.st_uid) == (0o700, 0), directory
