"""runc as docker drives it: an OCI bundle on a copy of the busybox image
with docker's defaults (capabilities, mounts, masked and read-only paths,
device rules, seccomp profile), run under a throwaway state root and a
cgroup path of its own, and nothing of it left behind.

Docker's defaults are restated from moby's ``daemon/pkg/oci/defaults.go``
and ``caps.DefaultCapabilities``; the seccomp profile is not restated: it
is made from pycontainer's own ``container/seccomp_profile.py``, resolved
for docker's capabilities as docker resolves its ``default.json`` before
it hands runc the filter (or another profile is given).
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import subprocess
import uuid
from pathlib import Path

from bench.containers import oci_bundle
from container import seccomp_profile
from container import security

CAPABILITIES = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
                *sorted(glob.glob("/sys/devices/system/cpu/cpu*/thermal_throttle"))]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
#: Deny all, then the standard character devices; /dev/fuse stays denied.
#: runc adds its own defaults after these: any mknod, the ptys, and
#: /dev/net/tun (kept for docker's users since its early days).
DEVICE_RULES = [{"allow": False, "access": "rwm"},
                *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
                  for major, minor in ((1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1))),
                {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]
_NO_EXEC_DEV = ["nosuid", "noexec", "nodev"]
MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": _NO_EXEC_DEV},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_NO_EXEC_DEV, "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["ro", *_NO_EXEC_DEV]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": _NO_EXEC_DEV},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": [*_NO_EXEC_DEV, "mode=1777"]},
]
NAMESPACES = ["mount", "network", "uts", "pid", "ipc"]


def run(workdir: Path, image: str, args: list[str], *, binds: dict[str, tuple[str, bool]],
        memory: int, pids: int, pass_fds=(), via_exec: bool = False,
        seccomp: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` in a runc container with docker's defaults (and the
    ``memory`` and ``pids`` limits docker's ``--memory``/``--pids-limit``
    set) on a writable copy of ``image``, with ``binds`` ({container path:
    (host path, read-only)}): as the container's command, or ``via_exec``
    in a container whose command sleeps (as ``docker exec`` would);
    ``seccomp`` is its ``linux.seccomp`` in place of docker's default.  Its
    state, cgroups, root and bundle go after."""
    container = f"side-by-side-{uuid.uuid4().hex[:12]}"
    state, rootfs, bundle = workdir / "runc-state", workdir / "rootfs", workdir / "bundle"
    runc = ["runc", "--root", str(state)]
    try:
        shutil.copytree(image, rootfs, symlinks=True)
        _write_bundle(bundle, rootfs, ["sleep", "600"] if via_exec else args, container, binds,
                      memory, pids, seccomp or seccomp_profile.oci(security.DEFAULT_CAPABILITIES))
        command = [*runc, "run", "--bundle", str(bundle), container]
        if via_exec:
            _start_detached([*runc, "run", "--detach", "--bundle", str(bundle), container],
                            workdir / "runc.log")
            command = [*runc, "exec", container, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120,
                              pass_fds=pass_fds)
    finally:
        subprocess.run([*runc, "delete", "--force", container], capture_output=True)
        left = glob.glob(f"/sys/fs/cgroup/*/{container}")
        for group in left:
            os.rmdir(group)
        for path in (state, rootfs, bundle):  # the root may hold device nodes made in it
            shutil.rmtree(path, ignore_errors=True)
        assert not left, f"runc left its cgroups: {left}"


def _start_detached(command: list[str], log: Path) -> None:
    """Start a container with ``command`` (a ``runc run --detach``); it keeps
    the standard streams it is given, so they are /dev/null and a file,
    never a pipe we would wait on."""
    with open(log, "w+") as stderr:
        started = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=stderr, timeout=60)
        stderr.seek(0)
        assert started.returncode == 0, stderr.read()


def _write_bundle(bundle: Path, rootfs: Path, args: list[str], container: str,
                  binds: dict[str, tuple[str, bool]], memory: int, pids: int,
                  seccomp: dict) -> None:
    oci_bundle(bundle, str(rootfs), "runc", args, readonly=False)
    config = json.loads((bundle / "config.json").read_text())
    # containerd runs docker's containers with its own open-files limit,
    # unlimited (1048576) in its systemd unit; clamped to what this host allows.
    nofile = min(security.NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    config["process"].update(
        capabilities={"bounding": CAPABILITIES, "effective": CAPABILITIES,
                      "permitted": CAPABILITIES},
        noNewPrivileges=False,
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile}])
    config["mounts"] = [*MOUNTS, *({"destination": target, "type": "bind", "source": source,
                                    "options": ["rbind", "rprivate", *(["ro"] if ro else [])]}
                                   for target, (source, ro) in binds.items())]
    config["linux"] = {
        "namespaces": [{"type": kind} for kind in NAMESPACES],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "seccomp": seccomp,
        "cgroupsPath": f"/{container}",
        "resources": {"devices": DEVICE_RULES,
                      "memory": {"limit": memory, "swap": 2 * memory},  # docker's swap default
                      "pids": {"limit": pids}},
    }
    (bundle / "config.json").write_text(json.dumps(config))
