"""The runtime's talk with the container's first process while it sets
up: short messages over a SOCK_SEQPACKET pair, each read whole.  The
process reports each step; a runtime that dies closes its end, which the
process reads as the end of its work (it exits, nothing half made runs)."""

from __future__ import annotations

import os
import signal
import socket
from typing import Callable, NoReturn

from .. import syscalls as sc

HOOKS, READY, ERROR, GO = b"hooks", b"ready", b"error", b"go"


class Ended(RuntimeError):
    """The other side is gone."""


class Channel:
    def __init__(self, sock: socket.socket):
        self._sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(ours), cls(theirs)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, kind: bytes, text: str = "") -> None:
        self._sock.send(kind + b" " + text.encode())

    def receive(self) -> tuple[bytes, str]:
        message = self._sock.recv(65536)
        if not message:
            raise Ended("the other side of the set-up ended")
        kind, _, text = message.partition(b" ")
        return kind, text.decode(errors="replace")

    def expect(self, kind: bytes) -> str:
        got, text = self.receive()
        if got == ERROR:
            raise RuntimeError(text)
        if got != kind:
            raise RuntimeError(f"expected {kind.decode()}, got {got.decode()}")
        return text

    def fail(self, exc: BaseException) -> None:
        """Report ``exc`` in one line, if anyone still listens."""
        text = str(exc).replace("\n", " ") or type(exc).__name__
        try:
            self.send(ERROR, text)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()


def close_all_but(keep: tuple[int, ...]) -> None:
    """Close every descriptor but stdio and ``keep``: what the caller holds
    without close-on-exec, and what the runtime opened, must not reach the
    container, whose first process does not exec before it is set up."""
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)


def spawn(group, keep: tuple[int, ...], enter: Callable[[], None],
          body: Callable[[Channel], NoReturn],
          stdio: tuple[int, int, int] | None = None) -> tuple[int, Channel]:
    """Fork a helper that joins ``group``, calls ``enter`` (into the
    namespaces; a pid namespace applies to its children only), forks the
    process that runs ``body`` and reports it, then exits, so that process
    is left to the caller's subreaper.  The helper dies with the runtime,
    keeps only stdio and ``keep``, and cannot be traced (not dumpable: the
    container's processes come from it); its stdio, and so the process's,
    are the runtime's, or ``stdio``.  Returns the process's PID and
    the runtime's end of its channel; raises what the helper reports."""
    ours, theirs = Channel.pair()
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        ours.close()
        os.close(go_w)
        os.close(pid_r)
        _helper(keep, theirs, go_r, pid_w, enter, body, stdio)
    theirs.close()
    os.close(go_r)
    os.close(pid_w)
    try:
        group.add(helper)
    except BaseException:
        os.kill(helper, signal.SIGKILL)
        raise
    finally:
        os.close(go_w)
        with os.fdopen(pid_r) as answer:
            text = answer.read()
        os.waitpid(helper, 0)
    if not text:  # the helper failed, and said why
        ours.expect(b"pid")
    return int(text), ours


def _helper(keep: tuple[int, ...], channel: Channel, go_r: int, pid_w: int,
            enter: Callable[[], None], body: Callable[[Channel], NoReturn],
            stdio: tuple[int, int, int] | None) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        for target, fd in enumerate(stdio or ()):
            if fd != target:
                os.dup2(fd, target)
        close_all_but((*keep, channel.fileno(), go_r, pid_w))
        if os.read(go_r, 1) != b"":
            raise RuntimeError("unexpected word from the runtime")
        os.close(go_r)
        enter()
        child = os.fork()
        if child == 0:
            os.close(pid_w)
            # A session of its own, as runc's: never the caller's terminal
            # as a controlling one (TIOCSTI would type into the caller's shell).
            os.setsid()
            body(channel)
        os.write(pid_w, str(child).encode())
    except BaseException as exc:  # noqa: BLE001 - reported, then this process ends
        channel.fail(exc)
        os._exit(1)
    os._exit(0)
