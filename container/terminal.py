"""The caller's side of a container's terminal (``-t``): the pty is made
inside the container, from its own devpts, and its master side sent over
a socket, as runc's console socket gets it (``oci/inside.take_terminal``);
this relays between the caller's terminal, put in raw mode, and that
master side, and passes window size changes on.
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


class Console:
    """The caller's end of the socket, and the relay."""

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
