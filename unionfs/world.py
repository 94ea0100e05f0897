"""A process forked by the fork server takes on its caller's world.

A command the server runs must do what the caller would have done running
it itself: the same mounts seen (mount namespace, root, working
directory), the same network, host name, IPC and cgroup namespaces (a
container runtime makes bridges and links in its caller's network
namespace, and cgroups under the cgroup its caller sees as its own),
the same cgroups charged (the caller's memory and pids limits,
and a container's devices cgroup, which decides who may open /dev/fuse),
the same umask, resource limits, nice value, OOM score adjustment,
environment, stdio and signal state.  What cannot be taken on is refused
instead (:func:`refusal`), and the caller runs the command itself: a
process the server forks holds the server's credentials, capabilities,
user and PID namespaces, security label and seccomp state, so a caller
with fewer (a container's process with capabilities dropped, say) would
get a daemon stronger than itself, and one with more (the server was
started by a weaker caller) a daemon weaker than it would start itself.

Order matters: cgroups are joined through the server's view of
``/sys/fs/cgroup``, before the caller's mount namespace is entered.
"""

from __future__ import annotations

import ctypes
import io
import os
import resource
import signal
import socket
import struct
import sys
from dataclasses import dataclass

from . import wire

#: the namespaces taken on, by their names in /proc/PID/ns and setns(2)'s
#: types; the mount namespace last (the others are found through /proc)
_JOINED = (("net", 0x40000000), ("uts", 0x04000000), ("ipc", 0x08000000),
           ("cgroup", 0x02000000), ("mnt", 0x00020000))
_PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid
#: status lines that must be the same in the caller and the server
_SAME = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
         "NoNewPrivs", "Seccomp")
_NAMESPACES = ("user", "pid")
_LIMITS = sorted(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


class Unserved(Exception):
    """The caller's world cannot be taken on; the message is one line."""


@dataclass(frozen=True)
class Peer:
    """The caller at the other end of a connection, as the kernel tells it."""

    pid: int
    status: dict[str, str]  #: /proc/PID/status


def peer_of(connection: socket.socket) -> Peer:
    pid = peer_pid(connection)
    if pid == 0:
        raise Unserved("the caller is in a PID namespace the server cannot see")
    return Peer(pid, _status(f"/proc/{pid}/status"))


def peer_pid(connection: socket.socket) -> int:
    """The PID at the other end of a unix socket (0: not in our PID namespace)."""
    pid, _, _ = _CREDENTIALS.unpack(connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    return pid


def refusal(peer: Peer) -> str | None:
    """Why the server must not act for ``peer``, or None."""
    own = _status("/proc/self/status")
    for ns in _NAMESPACES:
        if _inode(f"/proc/{peer.pid}/ns/{ns}") != _inode(f"/proc/self/ns/{ns}"):
            return f"the caller is in another {ns} namespace"
    for field in _SAME:
        if peer.status.get(field) != own.get(field):
            return f"the caller's {field} differs from the server's"
    if _label(peer.pid) != _label(os.getpid()):
        return "the caller has another security label"
    return None


@dataclass(frozen=True)
class CgroupMount:
    """Where one cgroup hierarchy is mounted, and what it holds: its
    controllers (v1, ``name=`` included) or none (v2)."""

    path: str
    controllers: frozenset[str] | None


def cgroup_mounts() -> list[CgroupMount]:
    """The cgroup hierarchies as this process sees them (read once by the
    server: they do not move)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields[fields.index("-") + 1:]
            if fields[3] != "/" or after[0] not in ("cgroup", "cgroup2"):
                continue
            controllers = None if after[0] == "cgroup2" else frozenset(after[2].split(","))
            found.append(CgroupMount(fields[4], controllers))
    return found


def join_cgroups(peer: Peer, hierarchies: list[CgroupMount]) -> None:
    """Move this process into the caller's cgroup in every hierarchy
    (v1 and v2, or both on a hybrid host) where it is elsewhere."""
    own = set(_cgroups("/proc/self/cgroup"))
    for line in _cgroups(f"/proc/{peer.pid}/cgroup"):
        if line in own:
            continue
        _, controllers, path = line.split(":", 2)
        wanted = frozenset(controllers.split(",")) if controllers else None
        where = next((h for h in hierarchies if (h.controllers is None) == (wanted is None)
                      and (wanted is None or wanted <= h.controllers)), None)
        if where is None:
            raise Unserved(f"no mount of the caller's cgroup {line}")
        with open(f"{where.path}{path.rstrip('/')}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))


def take_on(peer: Peer, fds: list[int], environment: list[bytes]) -> None:
    """The caller's resource limits, namespaces (but user and PID: see
    :func:`refusal`), root, working directory, umask and environment
    (``fds``: as the request carries them)."""
    for limit in _LIMITS:
        wanted = resource.prlimit(peer.pid, limit)
        if resource.getrlimit(limit) != wanted:
            resource.setrlimit(limit, wanted)
    nice = os.getpriority(os.PRIO_PROCESS, peer.pid)
    if os.getpriority(os.PRIO_PROCESS, 0) != nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    oom = _read(f"/proc/{peer.pid}/oom_score_adj")
    if _read("/proc/self/oom_score_adj") != oom:
        with open("/proc/self/oom_score_adj", "wb") as f:
            f.write(oom)
    for name, kind in _JOINED:
        namespace = f"/proc/{peer.pid}/ns/{name}"
        if _inode(namespace) != _inode(f"/proc/self/ns/{name}"):
            fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, kind) != 0:
                    raise OSError(ctypes.get_errno(), f"setns to the caller's {name} namespace")
            finally:
                os.close(fd)
    os.fchdir(fds[wire.ROOT])
    os.chroot(".")
    os.fchdir(fds[wire.CWD])
    os.umask(int(peer.status["Umask"], 8))
    os.environb.clear()
    os.environb.update(item.partition(b"=")[::2] for item in environment)


def take_stdio(fds: list[int], streams: list[bytes]) -> None:
    """The caller's stdin, stdout and stderr, as file objects like those
    Python made for it (``streams``: encoding and errors of each, and
    whether stdout writes through).  New file objects, since the server's
    know their descriptors as what they were (/dev/null, seekable); like
    the interpreter's own they do not close their descriptor."""
    for fd in (wire.STDIN, wire.STDOUT, wire.STDERR):
        os.dup2(fds[fd], fd)
    said = [s.decode() for s in streams]
    sys.stdin = sys.__stdin__ = _text(0, "rb", said[0], said[1])
    sys.stdout = sys.__stdout__ = _text(1, "wb", said[2], said[3],
                                        line_buffering=os.isatty(1),
                                        write_through=said[6] == "1")
    sys.stderr = sys.__stderr__ = _text(2, "wb", said[4], said[5], line_buffering=True)


def _text(fd: int, mode: str, encoding: str, errors: str, **kwargs) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.open(fd, mode, closefd=False), encoding=encoding, errors=errors,
                            **kwargs)


def take_signals(peer: Peer) -> None:
    """Signal dispositions and mask as a Python started by the caller's
    parent has them: what the caller ignores stays ignored (Python itself
    ignores SIGPIPE and SIGXFSZ), SIGINT raises KeyboardInterrupt, the
    rest is the default; the caller's blocked signals stay blocked."""
    ignored = int(peer.status["SigIgn"], 16)
    blocked = int(peer.status["SigBlk"], 16)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if ignored >> (signum - 1) & 1:
            signal.signal(signum, signal.SIG_IGN)
        elif signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
        else:
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK,
                           {s for s in signal.valid_signals() if blocked >> (s - 1) & 1})


def take_name(argv0: str) -> None:
    """The process's name (``comm``: ps -C, pgrep) as the kernel gives a
    script it runs: its file's name.  Its command line (/proc/PID/cmdline)
    and initial environment (/proc/PID/environ) stay the server's: only
    exec sets them (or prctl with CAP_SYS_RESOURCE)."""
    name = os.fsencode(os.path.basename(argv0))[:15]
    if _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NAME")


def _status(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            return dict(line.rstrip("\n").partition(":\t")[::2] for line in f)
    except OSError as exc:
        raise Unserved(f"the caller is gone ({exc.strerror})") from None


def _cgroups(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def _inode(path: str) -> int:
    return os.stat(path).st_ino


def _label(pid: int) -> bytes:
    """The process's security module label (AppArmor, SELinux), if any."""
    try:
        return _read(f"/proc/{pid}/attr/current")
    except OSError:
        return b""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
