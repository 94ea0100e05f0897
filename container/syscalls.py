"""The Linux calls Python 3.11 does not wrap, through ctypes, each raising
``OSError`` like the ``os`` module does.  Constants come from the kernel's
uapi headers.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437  # the same on x86_64 and aarch64

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36


def _check(result: int, what: str = "") -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what or None)
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), target)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(155 if os.uname().machine == "x86_64" else 41,
                         new_root.encode(), put_old.encode()), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(caps: set[int]) -> None:
    """Set this thread's effective and permitted sets to ``caps``, and its
    inheritable set to empty (as docker does since CVE-2022-24769)."""
    set_capabilities(caps, caps, set())


def set_capabilities(effective: set[int], permitted: set[int], inheritable: set[int]) -> None:
    """capset(2) of this thread's three sets."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    masks = [sum(1 << cap for cap in caps) for caps in (effective, permitted, inheritable)]
    for i in range(2):
        data[i].effective, data[i].permitted, data[i].inheritable = (
            (mask >> (32 * i)) & 0xFFFFFFFF for mask in masks)
    _check(_libc.capset(ctypes.byref(header), data), "capset")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2) (Linux 5.6): ``path`` opened under ``dir_fd`` as
    ``resolve`` says, e.g. RESOLVE_IN_ROOT: as if ``dir_fd`` were ``/``."""
    how = _OpenHow(flags, mode, resolve)
    return _check(_libc.syscall(_SYS_OPENAT2, dir_fd, path.encode(), ctypes.byref(how),
                                ctypes.sizeof(how)), path)


_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_filter(program: bytes, flags: int) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) of a BPF ``program`` (struct
    sock_filter instructions, 8 bytes each).  With TSYNC the kernel
    answers a positive thread ID for a thread it could not synchronise."""
    fprog = _SockFprog(len(program) // 8, program)
    result = _check(_libc.syscall(_SYS_SECCOMP[os.uname().machine], _SECCOMP_SET_MODE_FILTER,
                                  ctypes.c_uint(flags), ctypes.byref(fprog)), "seccomp")
    if result > 0:
        raise OSError(0, f"seccomp: thread {result} could not be synchronised")


KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}


def join_session_keyring(name: str) -> None:
    """Give this process a new session keyring named ``name``, so a
    container never shares the runtime's (or another's) keys."""
    _check(_libc.syscall(_SYS_KEYCTL[os.uname().machine], KEYCTL_JOIN_SESSION_KEYRING,
                         name.encode()), "keyctl")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in this network namespace (an ioctl: no netlink
    library needed for that)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def signal_quietly(pid: int, signum: int) -> None:
    """kill(2) to a process that may have ended meanwhile."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def signal_number(text: str) -> int | None:
    """A signal given by number or name (``9``, ``KILL``, ``SIGkill``);
    None if it is none."""
    if text.isdigit():
        return int(text) if int(text) in signal.valid_signals() else None
    name = text.upper() if text.upper().startswith("SIG") else f"SIG{text.upper()}"
    return signal.Signals[name].value if name in signal.Signals.__members__ else None
