"""Device confinement (docker's default rules): each cgroup driver with a
real process in a real cgroup, then a hostile container that makes nodes
for the host's disk and kernel log.  Disks are only ever opened to read."""

import os
import stat
import subprocess

import pytest

from container import cgroups
from container.cgroups import devices, devices_bpf, v1, v2
from container.spec import Limits
from conftest import PYCONTAINER
from helpers import open_nodes

HOST_DISK = (os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev))
#: Some hosts refuse even their root the disk (EPERM) whatever the rules;
#: a loop device, which the host lets root open, shows what they deny.
LOOP = (7, 0)

def probe(tmp_path, *procs_files):
    nodes = {"disk": ["b", *HOST_DISK], "loop": ["b", 7, 0], "kmsg": ["c", 1, 11],
             "null": ["c", 1, 3], "pts": ["c", 136, 1 << 19]}
    return open_nodes(tmp_path / "nodes", nodes, procs_files)


#: no such pts exists, but the device rules let it be tried
CONFINED = {"disk": "EPERM", "loop": "EPERM", "kmsg": "EPERM", "null": "opened",
            "pts": "EIO"}


def test_the_rules_are_dockers():
    assert [str(rule) for rule in devices.DEFAULT_ALLOWED] == [
        "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
        "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"]


@pytest.mark.skipif(not os.path.exists("/sys/fs/cgroup/devices/devices.list"),
                    reason="no cgroup v1 devices hierarchy")
def test_v1_devices_controller(tmp_path):
    group = v1.CgroupV1.create(f"test-{os.getpid()}")
    try:
        group.apply(Limits().as_resources())
        with open(f"{group.paths['devices']}/devices.list") as f:
            assert f.read().split("\n")[:3] == ["c *:* m", "b *:* m", "c 1:3 rwm"]
        said = probe(tmp_path, *(f"{path}/cgroup.procs" for path in group.paths.values()))
    finally:
        group.remove()
    assert said == CONFINED


def test_v2_device_program(tmp_path):
    root = "/sys/fs/cgroup/unified" if not cgroups.is_pure_v2() else cgroups.ROOT
    if not os.path.exists(f"{root}/cgroup.procs"):
        pytest.skip("no cgroup v2 hierarchy")
    group = v2.CgroupV2.create(f"test-{os.getpid()}", root=root)
    try:
        group.apply(Limits().as_resources())
        said = probe(tmp_path, f"{group.path}/cgroup.procs")
    finally:
        group.remove()
    assert said == CONFINED


def test_the_device_program_matches_rule_by_rule():
    """One block per rule: type, access (unless all), numbers, allow."""
    rules = (devices.Rule("c", 1, 3, "rwm"), devices.Rule("b", None, None, "m"))
    code = devices_bpf.program(rules)
    assert len(code) == 8 * (6 + 5 + 6 + 2)
    os.close(devices_bpf.load(devices.DEFAULT_ALLOWED))  # the verifier takes it


def test_a_hostile_container_cannot_use_host_devices(pyc, tmp_path):
    """Nodes for the host's disk, a loop device and the kernel log, made on
    a volume (a file system that honours device nodes), are refused by the
    device rules; one made in /dev by its nodev; the standard devices work."""
    major, minor = HOST_DISK
    done = pyc("run", "--rm", "-v", f"{tmp_path}:/vol", "busybox", "sh", "-c",
               f"mknod /vol/disk b {major} {minor} && head -c 1 /vol/disk >/dev/null;"
               f"mknod /vol/loop b {LOOP[0]} {LOOP[1]} && head -c 1 /vol/loop >/dev/null;"
               "mknod /vol/kmsg c 1 11 && head -c 1 /vol/kmsg >/dev/null;"
               f"mknod /dev/disk b {major} {minor} && head -c 1 /dev/disk >/dev/null;"
               "head -c 1 /dev/kmsg;"
               "echo x >/dev/null && head -c 3 /dev/zero | wc -c")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    errors = done.stderr.splitlines()
    assert errors == ["head: /vol/disk: Operation not permitted",
                      "head: /vol/loop: Operation not permitted",
                      "head: /vol/kmsg: Operation not permitted",
                      "head: /dev/disk: Permission denied",
                      "head: /dev/kmsg: No such file or directory"]
    assert stat.S_ISBLK(os.stat(tmp_path / "disk").st_mode)  # made, as docker lets it be


def test_a_container_on_a_pure_cgroup2_host(pyc, tmp_path):
    """This host is hybrid: a private mount namespace that shows only its
    cgroup2 hierarchy makes pycontainer take the v2 driver, end to end."""
    if not (cgroups.is_pure_v2() or os.path.exists("/sys/fs/cgroup/unified/cgroup.procs")):
        pytest.skip("no cgroup v2 hierarchy")
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', "-",
         *PYCONTAINER, "run", "--rm", "-v", f"{tmp_path}:/vol", "busybox", "sh", "-c",
         f"mknod /vol/loop b {LOOP[0]} {LOOP[1]}; head -c 1 /vol/loop;"
         "mknod /vol/kmsg c 1 11; head -c 1 /vol/kmsg; head -c 3 /dev/zero | wc -c"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3"
    assert run.stderr.splitlines() == ["head: /vol/loop: Operation not permitted",
                                       "head: /vol/kmsg: Operation not permitted"]
