"""What ``spec`` writes and ``features`` tells: runc's template config (a
shell in ``rootfs``, read-only, with a terminal and three capabilities),
and the parts of the spec this runtime honours."""

from __future__ import annotations

from . import mounts as oci_mounts
from . import seccomp as oci_seccomp
from .hooks import POINTS
from .namespaces import FLAGS
from .process import CAPABILITIES
from .state import OCI_VERSION

_TEMPLATE_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_NO_EXEC = ["nosuid", "noexec", "nodev"]


def default_config() -> dict:
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {name: list(_TEMPLATE_CAPABILITIES)
                             for name in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "pycontainer",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": [*_NO_EXEC, "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": list(_NO_EXEC)},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": [*_NO_EXEC, "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": [*_NO_EXEC, "relatime", "ro"]}],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts",
                                                        "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]}}


def features() -> dict:
    """runc's ``features`` document, for what this runtime does."""
    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": OCI_VERSION,
        "hooks": list(POINTS),
        "mountOptions": sorted(oci_mounts.OPTIONS),
        "linux": {
            "namespaces": sorted(FLAGS),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": oci_seccomp.features(),
            "apparmor": {"enabled": False}, "selinux": {"enabled": False}},
        "annotations": {}}
