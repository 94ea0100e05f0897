"""The bundle ``pycontainer run`` writes for a container: a
``config.json`` whose root is the container's union mount, so the front
end drives the same OCI core (``container/oci/``) as an engine does, the
way docker drives containerd and runc.  What a ContainerSpec leaves unsaid
is docker's default: its capabilities in the bounding, effective and
permitted sets, its mounts, masked and read-only paths, seccomp profile
and device rules, ``no_new_privs``, and an init as PID 1
(``io.pycontainer.init``).  The cgroup is the front end's own (made and
limited by it, ``cgroups``): the config names it and adds its devices."""

from __future__ import annotations

import glob
import json
import os
import resource

from . import seccomp_profile, security
from .cgroups.devices import DEFAULT_ALLOWED
from .oci.config import INIT_ANNOTATION
from .oci.process import CAPABILITIES
from .spec import ContainerSpec, default_env

#: docker's list (moby's default spec); the globs match per-CPU entries
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
                "/sys/devices/system/cpu/cpu*/thermal_throttle")
READ_ONLY_PATHS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
ETC_FILES = ("hostname", "hosts", "resolv.conf")
_HARDENED = ["nosuid", "nodev", "noexec"]
#: docker's mounts (moby's default spec), with ``/dev`` nodev: its standard
#: devices are the host's, bound, and no node made in the container opens
_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": _HARDENED},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*_HARDENED, "ro"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": [*_HARDENED, "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": _HARDENED},
]


def write(directory: str, spec: ContainerSpec, root: str, etc_dir: str, cgroups_path: str,
          network_namespace: str | None) -> None:
    """Write the bundle into ``directory``.  ``network_namespace``:
    the path of the one to join, or None for a new one without links
    (``--network none``); ``--network host`` joins none."""
    config = config_for(spec, root, etc_dir, cgroups_path, network_namespace)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def config_for(spec: ContainerSpec, root: str, etc_dir: str, cgroups_path: str,
               network_namespace: str | None) -> dict:
    linux = {
        "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "cgroup")]
        + _network(spec, network_namespace),
        "cgroupsPath": cgroups_path,
        "resources": {"devices": [{"allow": False, "access": "rwm"},
                                  *map(_device, DEFAULT_ALLOWED)]},
        "maskedPaths": [found for pattern in MASKED_PATHS
                        for found in (sorted(glob.glob(pattern)) if "*" in pattern
                                      else (pattern,))],
        "readonlyPaths": list(READ_ONLY_PATHS),
        "rootfsPropagation": "rprivate",
    }
    if spec.seccomp:
        linux["seccomp"] = seccomp_profile.oci(security.DEFAULT_CAPABILITIES)
    return {
        "ociVersion": "1.0.2",
        "process": process_for(spec),
        "root": {"path": root, "readonly": spec.read_only},
        "hostname": spec.hostname,
        "mounts": [*_MOUNTS,
                   *({"destination": f"/etc/{name}", "type": "bind",
                      "source": os.path.join(etc_dir, name), "options": ["rbind"]}
                     for name in ETC_FILES),
                   *({"destination": volume.target, "type": "bind", "source": volume.source,
                      "options": ["rbind", *(["ro"] if volume.read_only else [])]}
                     for volume in spec.mounts)],
        "annotations": {INIT_ANNOTATION: "true"},
        "linux": linux,
    }


def process_for(spec: ContainerSpec) -> dict:
    """The process of ``run`` (or ``exec``) as a config holds it."""
    capabilities = sorted(CAPABILITIES[cap] for cap in security.DEFAULT_CAPABILITIES)
    env = {name: value for name, value in (*default_env(spec.hostname, spec.tty), *spec.env)}
    return {
        "terminal": spec.tty,
        "user": {"uid": spec.user.uid, "gid": spec.user.gid},
        "args": list(spec.command),
        "env": [f"{name}={value}" for name, value in env.items()],
        "cwd": spec.workdir,
        "capabilities": {kind: capabilities for kind in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": _nofile(), "hard": _nofile()}],
        "noNewPrivileges": True,
    }


def _network(spec: ContainerSpec, path: str | None) -> list[dict]:
    if spec.network == "host":
        return []
    return [{"type": "network", **({"path": path} if path else {})}]


def _device(rule) -> dict:
    return {"allow": True, "type": rule.type, "major": -1 if rule.major is None else rule.major,
            "minor": -1 if rule.minor is None else rule.minor, "access": rule.access}


def _nofile() -> int:
    """docker's open-files limit, never past the hard limit we have
    (raising one needs CAP_SYS_RESOURCE)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return security.NOFILE if hard == resource.RLIM_INFINITY else min(security.NOFILE, hard)
