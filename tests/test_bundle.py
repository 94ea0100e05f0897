"""The bundle ``pycontainer run`` writes (container/bundle.py): the core
reads it back whole, and the runtime's command line runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from container import bundle
from container import syscalls as sc
from container.oci import config as oci_config
from container.spec import BindMount, ContainerSpec

RUNTIME = str(Path(sys.executable).parent / "pycontainer-runtime")


def _spec(**changes) -> ContainerSpec:
    return ContainerSpec(**{"image": "busybox", "command": ("sh", "-c", "exit 5"), "name": "b1",
                            "hostname": "h1", "network": "none", **changes})


def test_it_reads_back_as_a_config(tmp_path):
    spec = _spec(env=(("A", "1"), ("PATH", "/bin")), workdir="/tmp", read_only=True,
                 mounts=(BindMount("/etc", "/host-etc", read_only=True),))
    config = oci_config.parse(bundle.config_for(spec, str(tmp_path), str(tmp_path), "x", None),
                              str(tmp_path))
    process = config.process
    assert process.args == ("sh", "-c", "exit 5") and process.cwd == "/tmp"
    assert "A=1" in process.env and "PATH=/bin" in process.env and "HOSTNAME=h1" in process.env
    assert len(process.capabilities.bounding) == 14 and not process.capabilities.ambient
    assert process.no_new_privileges and config.init and config.seccomp is not None
    assert config.mounts.read_only_root and config.hostname == "h1"
    assert [ns.kind for ns in config.namespaces] == ["pid", "ipc", "uts", "mount", "cgroup",
                                                      "network"]
    assert "/host-etc" in [m.destination for m in config.mounts.mounts]


def test_its_root_is_dockers(tmp_path):
    spec = _spec(read_only=True, mounts=(BindMount("/srv", "/data", True),))
    plan = oci_config.parse(bundle.config_for(spec, str(tmp_path), str(tmp_path), "x", None),
                            str(tmp_path)).mounts
    assert (plan.mounts[-1].destination, plan.mounts[-1].source) == ("/data", "/srv")
    assert plan.mounts[-1].flags & sc.MS_RDONLY and plan.mounts[-1].is_bind
    assert plan.mounts[-2].source == str(tmp_path / "resolv.conf")
    assert "/proc/kcore" in plan.masked and "*" not in "".join(plan.masked)
    assert plan.read_only_root and {"/proc", "/sys", "/dev"} <= set(plan.guarded)
    dev = next(m for m in plan.mounts if m.destination == "/dev")
    assert dev.flags & sc.MS_NODEV  # its devices are the host's, bound


def test_the_runtime_runs_it_from_its_command_line(tmp_path, image_root):
    """What ``pycontainer run`` hands the core in-process, the runtime's own
    command line runs too (runc cannot: the front end's ``/dev`` is
    ``nodev``, its devices bound from the host, which runc does not do)."""
    root = tmp_path / "rootfs"
    shutil.copytree(image_root, root, symlinks=True)
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("hostname", "hosts", "resolv.conf"):
        (etc / name).write_text(f"{name}\n")
    spec = _spec(command=("sh", "-c", "cat /etc/hostname; hostname; cat /proc/1/comm; exit 5"))
    directory = tmp_path / "bundle"
    directory.mkdir()
    bundle.write(str(directory), spec, str(root), str(etc), f"bundle-{uuid.uuid4().hex}", None)
    done = subprocess.run([RUNTIME, "--root", str(tmp_path / "state"), "run", "--bundle",
                           str(directory), "b1"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 5, done.stderr
    assert done.stdout == "hostname\nh1\npycontainer-ini\n"
