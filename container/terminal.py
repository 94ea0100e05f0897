"""Terminals for ``-t``, made the way runc's console socket does: the
pseudo-terminal is opened inside the container (from its own devpts), so
``tty`` names a device the container can see; its master side is passed to
the supervisor over a socket.  The command gets the slave side as its
controlling terminal (a shell has job control); the supervisor relays
between the caller's terminal, put in raw mode, and the master side, and
passes window size changes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import termios
import tty


def open_in_container(channel: socket.socket) -> int:
    """In the container: open a terminal, send its master side to the
    supervisor, and return the slave side."""
    master, slave = os.openpty()
    socket.send_fds(channel, [b"pty"], [master])
    os.close(master)
    channel.close()
    return slave


def use_as_stdio(fd: int) -> None:
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


class Console:
    """The supervisor's side."""

    def __init__(self):
        self._ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def relay(self) -> None:
        """Wait for the container's terminal, then copy both ways until the
        container side closes.  Returns at once if none ever comes."""
        self.theirs.close()
        _, fds, _, _ = socket.recv_fds(self._ours, 16, 1)
        self._ours.close()
        if not fds:
            return
        self.master = fds[0]
        self._copy_window_size()
        saved = None
        if os.isatty(0):
            saved = termios.tcgetattr(0)
            tty.setraw(0)
        previous = signal.signal(signal.SIGWINCH, lambda *_: self._copy_window_size())
        try:
            self._copy_loop()
        finally:
            signal.signal(signal.SIGWINCH, previous)
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            os.close(self.master)

    def _copy_loop(self) -> None:
        sources = [0, self.master]
        while True:
            readable, _, _ = select.select(sources, [], [])
            if self.master in readable:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every holder of the slave side is gone
                    return
                if not data:
                    return
                _write_all(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if data:
                    _write_all(self.master, data)
                else:  # our input ended: say so on the terminal, then stop reading
                    _write_all(self.master, b"\x04")
                    sources.remove(0)

    def _copy_window_size(self) -> None:
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
