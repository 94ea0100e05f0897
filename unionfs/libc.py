"""The C library calls Python's ``os`` does not wrap, in one place:
``prctl``, ``setns``, the I/O priority system calls, and setting the
process's command line."""

from __future__ import annotations

import ctypes
import errno
import os
import platform

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_PR_SET_MM = 35
_PR_SET_MM_MAP = 14
PR_SET_CHILD_SUBREAPER = 36
_IOPRIO_WHO_PROCESS = 1
#: (ioprio_set, ioprio_get) by machine
_IOPRIO_CALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sbrk.restype = ctypes.c_void_p


class _MmMap(ctypes.Structure):
    """``struct prctl_mm_map`` (linux/prctl.h)."""

    _fields_ = [*((name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
        "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")),
        ("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


def prctl(option: int, *args: int | bytes) -> None:
    values = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    if _libc.prctl(option, *values, *[ctypes.c_ulong(0)] * (4 - len(args))) != 0:
        raise OSError(ctypes.get_errno(), f"prctl {option}")


def setns(fd: int, kinds: int) -> None:
    """Enter the namespaces ``kinds`` (CLONE_NEW* bits) of ``fd``: a
    namespace's file, or a pidfd (then several at once)."""
    if _libc.setns(fd, kinds) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def set_cmdline(argv: list[bytes]) -> None:
    """Make /proc/self/cmdline read ``argv``.  PR_SET_MM_MAP, since the
    single PR_SET_MM fields need CAP_SYS_RESOURCE, which a container's
    root may lack; every other field is given as it is."""
    global _cmdline
    _cmdline = ctypes.create_string_buffer(b"".join(arg + b"\0" for arg in argv))
    with open("/proc/self/stat") as f:
        fields = f.read().rpartition(")")[2].split()

    def field(n: int) -> int:  # as proc(5) numbers them
        return int(fields[n - 3])

    start = ctypes.addressof(_cmdline)
    new = _MmMap(field(26), field(27), field(45), field(46), field(47), _libc.sbrk(0),
                 field(28), start, start + len(_cmdline) - 1, field(50), field(51), 0, 0,
                 0xFFFFFFFF)  # no auxv, no exe_fd: both stay
    if _libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.byref(new), ctypes.sizeof(new), 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MM_MAP")


#: the command line the kernel reads (:func:`set_cmdline`): it must live as
#: long as the process
_cmdline = None


def ioprio_get(pid: int) -> int:
    """The I/O priority (class and level, as ioprio_get(2) gives them) of ``pid``."""
    return _ioprio(1, _IOPRIO_WHO_PROCESS, pid)


def ioprio_set(pid: int, value: int) -> None:
    _ioprio(0, _IOPRIO_WHO_PROCESS, pid, value)


def _ioprio(which: int, *args: int) -> int:
    calls = _IOPRIO_CALLS.get(platform.machine())
    if calls is None:
        raise OSError(errno.ENOSYS, f"no I/O priority calls known on {platform.machine()}")
    result = _libc.syscall(calls[which], *args)
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result
