"""What the container's command may do, set just before it is executed:
resource limits, capabilities (docker's default set, in every set
including the bounding one), ``no_new_privs``, and a seccomp filter like
docker's default profile.

Docker's profile is an allow-list of some 350 system calls; this filter is
the complement that matters, a deny-list of the calls that profile leaves
out (kernel modules, kexec, keyrings, mount and namespace calls, clock
setting, swap, ptrace-like memory access, BPF, perf...), answered with
EPERM.  libseccomp (Debian's libseccomp2) compiles it for the machine's
architecture.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource

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
BLOCKED_SYSCALLS = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
    "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "query_module", "quotactl", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapoff",
    "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib",
    "userfaultfd", "ustat", "vm86", "vm86old",
)
NOFILE = 1_048_576  # docker's usual default for open files
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000


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
    """The deny-list, compiled by libseccomp.  Build it while the host's
    libraries are still reachable (before ``pivot_root``); load it in the
    process about to exec."""

    def __init__(self):
        lib = self._lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                         ctypes.c_uint]
        lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self._context = lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not self._context:
            raise OSError(errno.ENOMEM, "seccomp_init failed")
        for name in BLOCKED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a call on this architecture
                continue
            _check(lib.seccomp_rule_add(self._context, _SCMP_ACT_ERRNO | errno.EPERM,
                                        number, 0), f"seccomp rule for {name}")

    def load(self) -> None:
        _check(self._lib.seccomp_load(self._context), "seccomp_load")


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
