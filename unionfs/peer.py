"""Who is at the other end of a unix socket, and whether it is this
process's equal: the fork server asks it of each caller, the launcher of
the server before it sends it anything.

Import-light (``os``, ``sys``, ``_socket``, ``_signal``): the launcher runs it
before anything else is loaded.

A PID names a process only while that process lives: a caller that hands
its socket to a child and exits could have its number reused by another
process, which ``/proc/PID`` would then describe.  So the peer is pinned
by the pidfd the kernel gives for the process that connected
(``SO_PEERPIDFD``, Linux 6.5; without it there is no peer), ``/proc/PID``
is opened as a directory and the pidfd is then seen alive: from there on
the directory is that process's (once it is gone its reads fail, they
never describe another), and every read goes through it.  A value read by
PID (a resource limit, the scheduler) counts once the pidfd is seen alive
after the read (:meth:`Peer.check_alive`).

Equals have the same user and PID namespaces, credentials,
capabilities, no_new_privs and security label, and no seccomp filter at
all (two filters cannot be compared from /proc, only their mode).
**Landlock is not seen**: /proc shows no Landlock domain, so a caller
confined by one passes for its unconfined equal and its command would run
unconfined; a Landlock-confined root process must not be given the
server's socket (or it can reach the server as anyone's equal).
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

SO_PEERPIDFD = 77  # Linux 6.5; not named by Python 3.11's socket module
#: status lines that must be the same in both
_SAME = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
         "NoNewPrivs")
_NAMESPACES = ("user", "pid")
_INT = 4  # the ints of SO_PEERCRED's struct ucred: pid, uid, gid


class Unequal(Exception):
    """The peer is not this process's equal, or cannot be known; the
    message is one line."""


def credentials(sock) -> tuple[int, int, int]:
    """PID, UID and GID of the process that connected ``sock``'s other end
    (PID 0: it is in a PID namespace this process does not see)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 3 * _INT)
    return tuple(int.from_bytes(raw[i:i + _INT], sys.byteorder, signed=True)
                 for i in range(0, 3 * _INT, _INT))


def own_status() -> dict[str, str]:
    return _parse(_read_at("/proc/self/status", None))


class Peer:
    """The process at the other end of a connection, pinned (see the
    module's docstring); :meth:`close` lets go of it."""

    def __init__(self, sock):
        self.pid = credentials(sock)[0]
        if self.pid == 0:
            raise Unequal("the peer is in a PID namespace this process cannot see")
        if self.pid == os.getpid():
            raise Unequal("the peer is this process")
        try:
            self.pidfd = sock.getsockopt(_socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            raise Unequal("the kernel names no peer's pidfd (SO_PEERPIDFD)") from None
        try:
            self.proc = os.open(f"/proc/{self.pid}",
                                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.close(self.pidfd)
            raise Unequal("the peer is gone") from None
        try:
            self.check_alive()
            self.status = _parse(self.read("status"))
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        """Raise Unequal if the peer is gone (what was read of it by PID
        before this may be another process's)."""
        try:
            _signal.pidfd_send_signal(self.pidfd, 0)
        except ProcessLookupError:
            raise Unequal("the peer is gone") from None

    def read(self, name: str) -> bytes:
        """``/proc/PID/name`` of the peer."""
        try:
            return _read_at(name, self.proc)
        except OSError as exc:  # gone, or stronger than this process
            raise Unequal(f"cannot read the peer's {name} ({exc.strerror})") from None

    def namespace(self, kind: str) -> int:
        """The inode of the peer's namespace of ``kind`` (mnt, net, ...)."""
        try:
            return os.stat(f"ns/{kind}", dir_fd=self.proc).st_ino
        except OSError as exc:  # gone, or stronger than this process
            raise Unequal(f"cannot see the peer's {kind} namespace ({exc.strerror})") from None

    def unequal(self) -> str | None:
        """Why the peer is not this process's equal, or None."""
        own = own_status()
        for kind in _NAMESPACES:
            if self.namespace(kind) != os.stat(f"/proc/self/ns/{kind}").st_ino:
                return f"the peer is in another {kind} namespace"
        for field in _SAME:
            if self.status.get(field) != own.get(field):
                return f"the peer's {field} differs"
        if self.status.get("Seccomp") != "0" or own.get("Seccomp") != "0":
            return "a seccomp filter is in force (filters cannot be compared)"
        if _label(lambda: self.read("attr/current")) != \
                _label(lambda: _read_at("/proc/self/attr/current", None)):
            return "the peer has another security label"
        self.check_alive()
        return None

    def close(self) -> None:
        for fd in (self.proc, self.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _label(read) -> bytes:
    """A security module's label (AppArmor, SELinux); none without one."""
    try:
        return read()
    except (OSError, Unequal):
        return b""


def _read_at(path: str, directory: int | None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data
    finally:
        os.close(fd)


def _parse(status: bytes) -> dict[str, str]:
    return dict(line.partition(":\t")[::2] for line in status.decode().splitlines())

