"""Docker's default seccomp profile, as plain data: what the container's
command may call; and ``oci``, which resolves it for a capability set on
this machine into the ``linux.seccomp`` object docker hands its runtime
(``pycontainer run`` puts it in its bundles: ``bundle.py``).

The data follows the semantics of moby's ``profiles/seccomp/default.json``
(read there, restated here): every call not allowed fails with EPERM; the
native architecture's compat ABIs are filtered too (i386 and x32 beside
x86_64); ``clone`` may not make namespaces, ``clone3`` answers ENOSYS (its
flags sit in memory a filter cannot read, and glibc falls back to
``clone``), ``socket`` may not open AF_VSOCK, ``personality`` takes only a
few values; and some calls are allowed only with the capability that
guards them in the kernel.  ``io_uring_*`` is not allowed: docker took it
out of its profile.
"""

from __future__ import annotations

from dataclasses import dataclass
import errno
import os
import re

import seccomp as libseccomp

# The capabilities some entries depend on (numbers from linux/capability.h).
DAC_READ_SEARCH = 2
SYS_MODULE = 16
SYS_RAWIO = 17
SYS_CHROOT = 18
SYS_PTRACE = 19
SYS_PACCT = 20
SYS_ADMIN = 21
SYS_BOOT = 22
SYS_NICE = 23
SYS_TIME = 25
SYS_TTY_CONFIG = 26
SYSLOG = 34
PERFMON = 38
BPF = 39

DEFAULT_ERRNO = errno.EPERM

#: Native architecture -> the other ABIs its kernel may run (libseccomp's
#: names, as in ``seccomp.Arch``).
COMPAT_ARCHES = {
    "X86_64": ("X86", "X32"),
    "AARCH64": ("ARM",),
    "MIPS64": ("MIPS", "MIPS64N32"),
    "MIPS64N32": ("MIPS", "MIPS64"),
    "MIPSEL64": ("MIPSEL", "MIPSEL64N32"),
    "MIPSEL64N32": ("MIPSEL", "MIPSEL64"),
    "S390X": ("S390",),
}

# The clone flags that make new namespaces: NEWNS, NEWCGROUP, NEWUTS,
# NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = 0x7E020000


@dataclass(frozen=True)
class Rule:
    """An entry: ``names`` are allowed (or fail with ``errno``) when each
    argument test holds, the container has ``needs_cap`` and lacks
    ``unless_cap``, the native architecture is one of ``arches`` (if any)
    and none of ``except_arches``, and the kernel is at least
    ``min_kernel``.

    An argument test is (index, op, a, b), op as in libseccomp's
    comparisons: "EQ"/"LT"/"GT" compare with ``a``; "MASKED_EQ" holds when
    ``arg & a == b``.
    """

    names: tuple[str, ...]
    errno: int | None = None
    args: tuple[tuple[int, str, int, int], ...] = ()
    needs_cap: int | None = None
    unless_cap: int | None = None
    arches: tuple[str, ...] = ()
    except_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] = (0, 0)


ALLOWED = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close",
    "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve",
    "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync",
    "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat",
    "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64",
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat",
    "listen", "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink",
    "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat",
    "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address",
    "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev",
)

RULES = (
    Rule(("process_vm_readv", "process_vm_writev", "ptrace"), min_kernel=(4, 8)),
    Rule(("socket",), args=((0, "LT", 38, 0),)),  # below AF_KCM
    Rule(("socket",), args=((0, "EQ", 39, 0),)),  # AF_QIPCRTR
    Rule(("socket",), args=((0, "GT", 40, 0),)),  # above AF_VSOCK (40)
    # PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    *(Rule(("personality",), args=((0, "EQ", value, 0),))
      for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    Rule(("sync_file_range2", "swapcontext"), arches=("PPC64LE",)),
    Rule(("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
          "cacheflush", "set_tls"), arches=("ARM", "AARCH64")),
    Rule(("arch_prctl",), arches=("X86_64", "X32")),
    Rule(("modify_ldt",), arches=("X86_64", "X32", "X86")),
    Rule(("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
         arches=("S390", "S390X")),
    Rule(("riscv_flush_icache",), arches=("RISCV64",)),
    Rule(("open_by_handle_at",), needs_cap=DAC_READ_SEARCH),
    Rule(("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
          "fspick", "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules",
          "lsm_set_self_attr", "mount", "mount_setattr", "move_mount", "open_tree",
          "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
          "setns", "syslog", "umount", "umount2", "unshare"), needs_cap=SYS_ADMIN),
    Rule(("clone",), args=((0, "MASKED_EQ", NAMESPACE_FLAGS, 0),), unless_cap=SYS_ADMIN,
         except_arches=("S390", "S390X")),
    Rule(("clone",), args=((1, "MASKED_EQ", NAMESPACE_FLAGS, 0),), unless_cap=SYS_ADMIN,
         arches=("S390", "S390X")),  # s390 swaps clone's first two arguments
    Rule(("clone3",), errno=errno.ENOSYS, unless_cap=SYS_ADMIN),
    Rule(("reboot",), needs_cap=SYS_BOOT),
    Rule(("chroot",), needs_cap=SYS_CHROOT),
    Rule(("delete_module", "init_module", "finit_module"), needs_cap=SYS_MODULE),
    Rule(("acct",), needs_cap=SYS_PACCT),
    Rule(("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
          "process_vm_writev", "ptrace"), needs_cap=SYS_PTRACE),
    Rule(("iopl", "ioperm"), needs_cap=SYS_RAWIO),
    Rule(("settimeofday", "stime", "clock_settime", "clock_settime64"), needs_cap=SYS_TIME),
    Rule(("vhangup",), needs_cap=SYS_TTY_CONFIG),
    Rule(("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
         needs_cap=SYS_NICE),
    Rule(("syslog",), needs_cap=SYSLOG),
    Rule(("bpf",), needs_cap=BPF),
    Rule(("perf_event_open",), needs_cap=PERFMON),
)


def oci(capabilities: frozenset[int]) -> dict:
    """The profile as a bundle's ``linux.seccomp`` holds it, for a container
    holding ``capabilities`` on this machine: docker's own rendering."""
    native, rules = rules_for(capabilities)
    arches = (native, *COMPAT_ARCHES.get(native, ()))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": DEFAULT_ERRNO,
        "architectures": [f"SCMP_ARCH_{arch}" for arch in arches],
        "syscalls": [{"names": list(ALLOWED), "action": "SCMP_ACT_ALLOW"},
                     *map(_oci_rule, rules)],
    }


def _oci_rule(rule: Rule) -> dict:
    entry = {"names": list(rule.names),
             "args": [{"index": index, "value": a, "valueTwo": b, "op": f"SCMP_CMP_{op}"}
                      for index, op, a, b in rule.args]}
    if rule.errno is None:
        return {**entry, "action": "SCMP_ACT_ALLOW"}
    return {**entry, "action": "SCMP_ACT_ERRNO", "errnoRet": rule.errno}


def rules_for(capabilities: frozenset[int]) -> tuple[str, list[Rule]]:
    """This machine's native architecture (libseccomp's name) and the
    profile's rules that apply on it to a container holding
    ``capabilities``, as docker resolves them before handing its runtime
    a filter."""
    native, kernel = _native_arch(), _kernel_version()
    return native, [rule for rule in RULES if _applies(rule, capabilities, native, kernel)]


def _applies(rule: Rule, capabilities: frozenset[int], native: str,
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
