"""What the launcher and the fork server say to each other on the server's
unix socket (``launcher.py``, ``forkserver.py``).

Import-light on purpose: ``os``, loaded at start-up anyway, and
``_socket``; not ``socket``, ``struct`` or ``hashlib``, which cost the
launcher a millisecond or more each (``enum``, shared libraries): the
launcher runs it before anything else is loaded.

One connection per command:

* the server says :data:`READY` once it has checked the client (or
  REFUSED, or STALE, as below); nothing is sent before, so that a server
  that does not answer holds none of the client's descriptors;
* the client sends one request (:func:`pack`) with its descriptors
  attached (stdin, stdout, stderr, its root and its working directory);
* the server answers one byte: :data:`ACCEPTED` (from here on the client
  never runs the command itself), :data:`REFUSED` followed by a one-line
  reason, or :data:`STALE` (the server's code changed on disk: it is
  going, start another);
* after :data:`ACCEPTED`, :data:`PROCESS` with a pidfd of the process that
  runs the command attached (signals for it go there), then the
  command's status as a signed 32-bit integer: an exit code, or minus the
  signal that ended it.
"""

from __future__ import annotations

import _socket
import os
import sys

READY = b"R"
ACCEPTED = b"A"
REFUSED = b"F"
STALE = b"S"
PROCESS = b"P"

#: the descriptors a request carries, in this order
STDIN, STDOUT, STDERR, ROOT, CWD = range(5)
FDS_PER_REQUEST = 5

_MAGIC = b"PYU1"
_HEADER_SIZE = 8  # the magic, the length of the rest
_LENGTH_SIZE = 4  # big-endian, unsigned; a status is signed
_FD_SIZE = 4  # a descriptor in SCM_RIGHTS: a native int
SERVER_DIR = "/run/pyunion/server"
#: a request larger than this is refused (argv and environment are at most
#: a few MiB on Linux)
MAX_REQUEST = 16 << 20


class WireError(OSError):
    """A request or answer that is cut short or malformed."""


def socket_path(package_dir: str, interpreter: str) -> str:
    """Where the server of the code in ``package_dir`` (resolved) run by
    ``interpreter`` listens: named by a digest of both (FNV-1a, 64 bits:
    a socket's path must fit in 108 bytes, and hashlib costs the launcher
    more than its whole request)."""
    digest = 0xCBF29CE484222325
    for byte in os.fsencode(package_dir) + b"\0" + os.fsencode(interpreter):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{SERVER_DIR}/{digest:016x}.sock"


def connect(path: str):
    """A connection to the server at ``path``, or None if none listens."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def pack(sections: list[list[bytes]]) -> bytes:
    """A request: lists of byte strings (program, argv, environment, ...),
    each item and each list prefixed by its length."""
    parts = []
    for section in sections:
        parts.append(_length(len(section)))
        for item in section:
            parts.append(_length(len(item)))
            parts.append(item)
    body = b"".join(parts)
    return _MAGIC + _length(len(body)) + body


def unpack(body: bytes) -> list[list[bytes]]:
    sections, at = [], 0

    def length() -> int:
        nonlocal at
        if at + _LENGTH_SIZE > len(body):
            raise WireError("request cut short")
        at += _LENGTH_SIZE
        return int.from_bytes(body[at - _LENGTH_SIZE:at], "big")

    while at < len(body):
        section = []
        for _ in range(length()):
            size = length()
            if at + size > len(body):
                raise WireError("request cut short")
            section.append(body[at:at + size])
            at += size
        sections.append(section)
    return sections


def send_request(sock: _socket.socket, request: bytes, fds: list[int]) -> None:
    """Send ``request`` with ``fds`` attached to its first bytes."""
    sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                     b"".join(_fd(fd) for fd in fds))])
    if sent < len(request):
        sock.sendall(request[sent:])


def receive_request(sock) -> tuple[list[list[bytes]], list[int]]:
    """The request on ``sock`` and the descriptors that came with it (now
    this process's; the caller closes them)."""
    data, fds = _receive_with_fds(sock, _HEADER_SIZE, FDS_PER_REQUEST)
    try:
        if len(fds) != FDS_PER_REQUEST:
            raise WireError("a request without its descriptors")
        while len(data) < _HEADER_SIZE:
            data += _receive(sock, _HEADER_SIZE - len(data))
        size = int.from_bytes(data[4:_HEADER_SIZE], "big")
        if data[:4] != _MAGIC or size > MAX_REQUEST:
            raise WireError("not a request")
        body = bytearray()
        while len(body) < size:
            body += _receive(sock, min(size - len(body), 1 << 20))
        return unpack(bytes(body)), fds
    except BaseException:
        for fd in fds:
            _close(fd)
        raise


def send_process(sock, pidfd: int) -> None:
    sock.sendmsg([PROCESS], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fd(pidfd))])


def receive_answer(sock) -> tuple[bytes, bytes]:
    """The server's first answer: (kind, the reason of a REFUSED).  An
    empty kind is a connection the server closed."""
    kind = sock.recv(1)
    reason = b""
    if kind == REFUSED:
        while chunk := sock.recv(4096):
            reason += chunk
    return kind, reason


def receive_process(sock) -> int:
    """The pidfd of the process running an accepted command."""
    data, fds = _receive_with_fds(sock, 1, 1)
    if data != PROCESS or len(fds) != 1:
        for fd in fds:
            _close(fd)
        raise WireError("accepted, but no process")
    return fds[0]


def send_status(sock, status: int) -> None:
    sock.sendall(status.to_bytes(_LENGTH_SIZE, "big", signed=True))


def receive_status(sock) -> int:
    data = b""
    while len(data) < _LENGTH_SIZE:
        data += _receive(sock, _LENGTH_SIZE - len(data))
    return int.from_bytes(data, "big", signed=True)


def _receive_with_fds(sock, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    data, ancillary, flags, _ = sock.recvmsg(size, _socket.CMSG_SPACE(max_fds * _FD_SIZE))
    fds = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds += [int.from_bytes(payload[i:i + _FD_SIZE], sys.byteorder, signed=True)
                    for i in range(0, usable, _FD_SIZE)]
    if flags & _socket.MSG_CTRUNC:
        for fd in fds:
            _close(fd)
        raise WireError("too many descriptors")
    return data, fds


def _length(n: int) -> bytes:
    return n.to_bytes(_LENGTH_SIZE, "big")


def _fd(fd: int) -> bytes:
    return fd.to_bytes(_FD_SIZE, sys.byteorder, signed=True)


def _receive(sock, size: int) -> bytes:
    data = sock.recv(size)
    if not data:
        raise WireError("connection closed")
    return data


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
