"""What the container's command may do, set just before it is executed:
resource limits, capabilities (docker's default set, in every set
including the bounding one), ``no_new_privs``, and docker's default
seccomp profile (``seccomp_profile``: an allow-list with argument filters
and capability-dependent entries, over the native architecture and its
compat ABIs).

The profile is rendered as a bundle's ``linux.seccomp`` and compiled by
``oci.seccomp``, the one compiler of both faces: libseccomp, through its
own Python bindings, the ``seccomp`` module (Debian's python3-seccomp,
kept with the libseccomp2 it matches; scripts/setup.sh makes the venv see
that one module).  Calls newer than the installed libseccomp knows are
refused with EPERM, not the ENOSYS runc gives them.
"""

from __future__ import annotations

import os
import resource

from . import seccomp_profile as profile
from . import syscalls as sc
from .oci import seccomp as oci_seccomp
from .oci.reader import Reader

DEFAULT_CAPABILITIES = frozenset({
    0,   # CHOWN
    1,   # DAC_OVERRIDE
    3,   # FOWNER
    4,   # FSETID
    5,   # KILL
    6,   # SETGID
    7,   # SETUID
    8,   # SETPCAP
    10,  # NET_BIND_SERVICE
    13,  # NET_RAW
    18,  # SYS_CHROOT
    27,  # MKNOD
    29,  # AUDIT_WRITE
    31,  # SETFCAP
})
NOFILE = 1_048_576  # docker's usual default for open files


def confine(uid: int, gid: int, seccomp: SeccompFilter | None) -> None:
    """Apply every restriction, then become ``uid``/``gid`` (call as root,
    in the process about to exec the command)."""
    _set_rlimits()
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(_last_capability() + 1):
        if cap not in DEFAULT_CAPABILITIES:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    sc.capset(set(DEFAULT_CAPABILITIES))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # a non-root uid loses every capability here
    if seccomp is not None:
        seccomp.load()


def _set_rlimits() -> None:
    """Raise the open-files limit as docker does, never past the hard limit
    we have (raising a hard limit needs CAP_SYS_RESOURCE)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


class SeccompFilter:
    """Docker's default profile for a container whose command holds
    ``capabilities``, rendered as a bundle's ``linux.seccomp`` and compiled
    as one is.  Build it while the host's libraries are still reachable
    (before ``pivot_root``); load it in the process about to exec."""

    def __init__(self, capabilities: frozenset[int] = DEFAULT_CAPABILITIES):
        section = Reader(profile.oci(capabilities), "docker's default seccomp profile")
        self._filter = oci_seccomp.parse(section).compile()

    def load(self) -> None:
        self._filter.load()
