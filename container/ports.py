"""``-p HOSTPORT:CONTAINERPORT[/tcp|udp]``: a port of the host's loopback
that leads to a port of the container.

A userspace proxy in the supervisor does it (as docker-proxy does), so the
host's firewall is never touched: it listens on ``127.0.0.1:HOSTPORT`` in
the host's network namespace and relays each TCP connection, or each UDP
client's datagrams, to the container's address.  It lives and dies with
the supervisor.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass

from . import background

_PUBLISH = re.compile(r"(\d+):(\d+)(?:/(tcp|udp))?")
_LOOPBACK = "127.0.0.1"
_BUFFER = 64 * 1024
_UDP_IDLE_SECONDS = 60


class PortError(ValueError):
    """A bad ``-p`` or a port that cannot be had; the message is one line."""


@dataclass(frozen=True)
class Published:
    host_port: int
    container_port: int
    protocol: str = "tcp"


def parse_publish(text: str) -> Published:
    match = _PUBLISH.fullmatch(text)
    if not match:
        raise PortError(f"-p: {text!r} is not HOSTPORT:CONTAINERPORT[/tcp|udp]")
    host, inner = int(match[1]), int(match[2])
    for port in (host, inner):
        if not 1 <= port <= 65535:
            raise PortError(f"-p: port {port} is out of range")
    return Published(host, inner, match[3] or "tcp")


class PortProxy:
    """Relays every published port to ``address`` until closed."""

    def __init__(self, published: tuple[Published, ...], address: str):
        self._address = address
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        try:
            for port in published:
                self._sockets.append(self._listen(port))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _listen(self, port: Published) -> socket.socket:
        kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM:  # (for UDP it would let two bind one port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_LOOPBACK, port.host_port))
        except OSError as exc:
            sock.close()
            raise PortError(f"-p: cannot use {port.protocol} port {port.host_port}: "
                            f"{exc.strerror}") from None
        target = (self._address, port.container_port)
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
            self._thread(self._accept, sock, target)
        else:
            self._thread(self._relay_datagrams, sock, target)
        return sock

    @staticmethod
    def _thread(target, *args) -> None:
        background.start(target, *args)

    def _accept(self, listener: socket.socket, target: tuple[str, int]) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._thread(self._serve_connection, client, target)

    def _serve_connection(self, client: socket.socket, target: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        replies = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        replies.start()
        _pump(client, upstream)
        replies.join()
        client.close()
        upstream.close()

    def _relay_datagrams(self, sock: socket.socket, target: tuple[str, int]) -> None:
        upstreams: dict[tuple[str, int], socket.socket] = {}
        while not self._closed.is_set():
            try:
                data, client = sock.recvfrom(_BUFFER)
            except OSError:
                break
            if self._closed.is_set():  # woken by close()
                break
            upstream = upstreams.get(client)
            if upstream is None:
                upstream = upstreams[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                upstream.connect(target)
                self._thread(self._answer_datagrams, upstream, sock, client, upstreams)
            with contextlib.suppress(OSError):
                upstream.send(data)

    @staticmethod
    def _answer_datagrams(upstream: socket.socket, sock: socket.socket, client,
                          upstreams: dict) -> None:
        """Replies go back to the client; a client quiet for a minute is forgotten."""
        upstream.settimeout(_UDP_IDLE_SECONDS)
        try:
            while True:
                sock.sendto(upstream.recv(_BUFFER), client)
        except OSError:
            pass
        finally:
            upstreams.pop(client, None)
            upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction of a connection; pass its end on."""
    try:
        while data := source.recv(_BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)
