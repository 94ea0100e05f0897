"""What the container's command may do, set just before it is executed:
resource limits, capabilities (docker's default set, in every set
including the bounding one), ``no_new_privs``, and docker's default
seccomp profile (``seccomp_profile``: an allow-list with argument filters
and capability-dependent entries, over the native architecture and its
compat ABIs).

libseccomp compiles the filter, through its own Python bindings, the
``seccomp`` module (Debian's python3-seccomp, kept with the libseccomp2 it
matches; scripts/setup.sh makes the venv see that one module).  Calls
newer than the installed libseccomp knows are refused with EPERM, not the
ENOSYS runc gives them.
"""

from __future__ import annotations

import os
import re
import resource

import seccomp as libseccomp

from . import seccomp_profile as profile
from . import syscalls as sc

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
_UNKNOWN = -1  # libseccomp's __NR_SCMP_ERROR: a name it does not know


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
    ``capabilities``, compiled by libseccomp.  Build it while the host's
    libraries are still reachable (before ``pivot_root``); load it in the
    process about to exec."""

    def __init__(self, capabilities: frozenset[int] = DEFAULT_CAPABILITIES):
        native, rules = rules_for(capabilities)
        self._filter = libseccomp.SyscallFilter(libseccomp.ERRNO(profile.DEFAULT_ERRNO))
        for name in profile.COMPAT_ARCHES.get(native, ()):
            self._filter.add_arch(getattr(libseccomp.Arch, name))
        for name in profile.ALLOWED:
            self._add(libseccomp.ALLOW, name, [])
        for rule in rules:
            action = libseccomp.ALLOW if rule.errno is None else libseccomp.ERRNO(rule.errno)
            args = [libseccomp.Arg(index, getattr(libseccomp, op), a, b)
                    for index, op, a, b in rule.args]
            for name in rule.names:
                self._add(action, name, args)

    def _add(self, action, name: str, args: list) -> None:
        """Add a rule for every architecture of the filter, unless this
        libseccomp does not know the call (docker skips those too)."""
        if libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, name) != _UNKNOWN:
            self._filter.add_rule(action, name, *args)

    def load(self) -> None:
        self._filter.load()


def rules_for(capabilities: frozenset[int]) -> tuple[str, list[profile.Rule]]:
    """This machine's native architecture (libseccomp's name) and the
    profile's rules that apply on it to a container holding
    ``capabilities``, as docker resolves them before handing its runtime
    a filter."""
    native, kernel = _native_arch(), _kernel_version()
    return native, [rule for rule in profile.RULES
                    if _applies(rule, capabilities, native, kernel)]


def _applies(rule: profile.Rule, capabilities: frozenset[int], native: str,
             kernel: tuple[int, int]) -> bool:
    return ((rule.needs_cap is None or rule.needs_cap in capabilities)
            and rule.unless_cap not in capabilities
            and (not rule.arches or native in rule.arches)
            and native not in rule.except_arches
            and kernel >= rule.min_kernel)


def _native_arch() -> str:
    """libseccomp's name of this machine's architecture (e.g. X86_64)."""
    native = libseccomp.system_arch() & 0xFFFFFFFF  # Arch's values are signed
    return next(name for name in dir(libseccomp.Arch)
                if name.isupper() and name != "NATIVE"
                and getattr(libseccomp.Arch, name) & 0xFFFFFFFF == native)


def _kernel_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()
    return int(major), int(minor)
