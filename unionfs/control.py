"""The daemon's control channel: how ``pyunion branch`` and a remount
reach the daemon of a live mount.

A unix socket beside the daemon's PID record (``/run/pyunion/``, root's
only), mode 0600, and on each connection the caller's credentials
(``SO_PEERCRED``): only root or the user the daemon runs as (the mount's
owner) is served.  Nothing appears inside the mount, so a container on it
sees no control file.

One request per connection: the client sends a JSON object and shuts its
side; the daemon answers with one JSON object, ``{"branches": [...]}`` or
``{"error": "one line"}``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from typing import Awaitable, Callable

import trio

from . import peer

log = logging.getLogger(__name__)

_MAX_REQUEST = 1 << 20


class ControlError(RuntimeError):
    """The request could not be made or was refused; the message is one line."""


async def serve(path: str, handle: Callable[[dict], Awaitable[dict]],
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests on a socket at ``path`` until cancelled (started
    once it takes them); the socket is removed at the end."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # of a daemon that was killed
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await listener.bind(path)
            os.chmod(path, 0o600)  # before listen: nobody can connect until then
            listener.listen(8)
        except OSError as exc:  # the mount serves on without
            log.warning("no control channel at %s: %s", path, exc.strerror)
            task_status.started()
            return
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                connection, _ = await listener.accept()
                nursery.start_soon(_answer, connection, handle)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _answer(connection, handle) -> None:
    """One request; nothing a client does or sends can end the daemon."""
    stream = trio.SocketStream(connection)
    async with stream:
        _, uid, _ = peer.credentials(connection)
        try:
            request = await _read_request(stream)  # all of it: the caller then reads
            if uid not in (0, os.geteuid()):
                reply = {"error": f"only root or the mount's owner (uid {os.geteuid()}) may "
                                  "list or change its branches"}
            else:
                reply = await handle(request)
        except ValueError as exc:
            reply = {"error": f"malformed request: {exc}"}
        except Exception as exc:  # noqa: BLE001 - the mount must go on serving
            log.exception("control request failed")
            reply = {"error": f"the daemon failed: {exc}"}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(reply).encode())


async def _read_request(stream: trio.SocketStream) -> dict:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("too long")
    try:
        request = json.loads(data)
    except RecursionError:  # not the daemon's failure: the caller's rubbish
        raise ValueError("nested too deeply") from None
    if not isinstance(request, dict):
        raise ValueError("not an object")
    return request


def request(path: str, message: dict) -> dict:
    """Send ``message`` to the daemon listening at ``path``; its answer,
    or :class:`ControlError` with the reason in one line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError("its daemon has no control channel (not running, or not "
                               "started by root)") from None
        except PermissionError:
            raise ControlError("permission denied: only root or the mount's owner may "
                               "list or change its branches") from None
        except ConnectionRefusedError:
            raise ControlError("its daemon is not running") from None
        try:
            sock.sendall(json.dumps(message).encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            raise ControlError(f"the daemon did not answer: "
                               f"{exc.strerror or errno.errorcode.get(exc.errno)}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the daemon ended without answering") from None
    if "error" in reply:
        raise ControlError(reply["error"])
    return reply
