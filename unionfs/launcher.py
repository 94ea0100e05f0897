"""The launcher of ``pyunion`` and ``pycontainer``: a thin client of the
fork server (``forkserver.py``) for the commands that gain from it, the
full CLI in this process for the others.

The launcher script (written by :func:`write`, which ``scripts/setup.sh``
runs after pip) starts Python with ``-S``: site processing (the venv's
``.pth`` files, the editable install's finder) costs more than the
request.  The script appends the directory holding this package to
``sys.path`` itself, after PYTHONPATH's entries, so a worktree named in
PYTHONPATH is what runs, as with pip's script.  Until it knows the command
is served it loads only the interpreter's own modules and ``_socket``.

A command runs in this process, exactly as pip's script would run it
(site first), whenever the server is not the way: another command, not
root, PYTHONPATH naming anything but this package's root, fds 0-2 not all
open, no server and none can be started, a server that is not this
process's equal (``peer.py``: a server started by a weaker root, or an
impostor at its path, is sent nothing), one that does not answer within
:data:`_ANSWER_SECONDS`, or one that refuses (with ``--debug`` its reason
is printed).  A signal that comes before the server has accepted ends the
launcher by that signal.  Once the server has accepted, its answer is
final: the command is never run twice.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

from . import peer, wire


class Entry:
    """A program the server can run: ``module:function`` of its ``main``,
    of the function that takes back what it left for a caller that went
    away (``undo(args, pids)``), of the test of which command lines are
    served, and of what the server runs once before it forks, to pay what
    every command's first run would pay (lazy imports, caches).  (A plain
    class: ``typing`` and ``dataclasses`` cost the launcher milliseconds.)"""

    def __init__(self, main: str, undo: str, served: str, warm: str):
        self.main, self.undo, self.served, self.warm = main, undo, served, warm


PROGRAMS = {"pyunion": Entry("unionfs.cli:main", "unionfs.cli:undo_mount",
                             "unionfs.forms:served", "unionfs.cli:warm"),
            "pycontainer": Entry("container.cli:main", "container.cli:undo",
                                 "container.served:served", "container.cli:warm")}
#: what a terminal or a user sends the caller, which the command would have
#: got running in it (a container's supervisor passes them all on)
_FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
              _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH)
#: a stale server replaced (two attempts: STALE, then a new one started),
#: twice: a server started within a clock tick or two of an edit takes
#: itself for stale too (``codewatch``); or a server starting beside another
_ATTEMPTS = 5
#: how long a server may take to accept or refuse: a stopped or stuck
#: server must not hang its callers
_ANSWER_SECONDS = 5.0


class _Interrupted(Exception):
    """A signal came before the server accepted."""


def main(program: str) -> None:
    entry = PROGRAMS[program]
    args = sys.argv[1:]
    if os.geteuid() == 0 and _own_path() and resolve(entry.served)(args):
        ignored = {s for s in _signal.valid_signals()
                   if _signal.getsignal(s) == _signal.SIG_IGN}
        forwarder = _Forwarder(ignored)
        try:
            status = _served(program, args, forwarder, ignored)
        except _Interrupted as exc:
            status = -exc.args[0]
        except Exception:  # noqa: BLE001 - before the server accepted: run it here
            status = None
        if status is not None:
            _exit_with(status)
        forwarder.restore()
    if sys.flags.no_site:  # what pip's script has had before its first line
        import site
        site.main()
    resolve(entry.main)()


def pyunion() -> None:
    """pip's ``pyunion`` script (pyproject.toml): site has run, and the
    mounts still go to the server."""
    main("pyunion")


def pycontainer() -> None:
    """pip's ``pycontainer`` script, likewise."""
    main("pycontainer")


def package_dir() -> str:
    """This package's directory, resolved: half of what names a server."""
    return os.path.dirname(os.path.realpath(__file__))


def package_of(spec: str) -> str:
    """The directory of the top-level package of ``module:name``, resolved
    (imported by now)."""
    return os.path.dirname(os.path.realpath(sys.modules[spec.partition(".")[0]].__file__))


def write(path: str, program: str) -> None:
    """Write the launcher script of ``program`` at ``path``, for this
    interpreter and this package's location."""
    root = os.path.dirname(package_dir())
    module, _, function = PROGRAMS[program].main.partition(":")
    text = (f"#!{sys.executable} -S\n"
            f"# {program}: written by unionfs/launcher.py (see there); without -S\n"
            f"# Python's site processing would cost more than the whole request.\n"
            f"import sys\n"
            f"sys.path.append({root!r})\n"
            f"try:\n"
            f"    from unionfs.launcher import main\n"
            f"except ImportError:  # code from before the launcher, on PYTHONPATH\n"
            f"    import site\n"
            f"    site.main()\n"
            f"    from {module} import {function}\n"
            f"    sys.exit({function}())\n"
            f"main({program!r})\n")
    staged = f"{path}.{os.getpid()}"
    with open(staged, "w") as f:
        f.write(text)
    os.chmod(staged, 0o755)
    os.rename(staged, path)


def _own_path() -> bool:
    """True if PYTHONPATH names nothing but this package's root (what the
    server imports from): another entry could shadow what it runs."""
    root = os.path.dirname(package_dir())
    entries = os.environ.get("PYTHONPATH", "")
    return all(entry and os.path.realpath(entry) == root
               for entry in entries.split(":") if entries)


def _served(program: str, args: list[str], forwarder: _Forwarder,
            ignored: set[int]) -> int | None:
    """The command's status as the server ran it, or None to run it here."""
    directory = package_dir()
    path = wire.socket_path(directory, sys.executable)
    for _ in range(_ATTEMPTS):
        sock = wire.connect(path)
        if sock is None:
            if not _start_server(directory):
                return None
            continue
        try:
            kind, reason = _ask(sock, program, args, ignored, forwarder)
            if kind == wire.REFUSED:
                if args[:1] == ["--debug"]:
                    sys.stderr.write(f"{program}: the fork server refused: "
                                     f"{reason.decode(errors='replace')}\n")
                return None
            if kind == wire.ACCEPTED:
                forwarder.accepted()
                return _status(sock, forwarder, program)
            # stale, or closed as it was going: try again
        finally:
            sock.close()
    return None


def _ask(sock: _socket.socket, program: str, args: list[str], ignored: set[int],
         forwarder: _Forwarder) -> tuple[bytes, bytes]:
    """Send the request to the server, if it is this process's equal, and
    wait a bounded time for its answer."""
    try:
        server = peer.Peer(sock)
        try:
            reason = server.unequal()
        finally:
            server.close()
    except peer.Unequal as exc:
        reason = str(exc)
    if reason:
        return wire.REFUSED, f"not served by an unequal server: {reason}".encode()
    sock.settimeout(_ANSWER_SECONDS)
    forwarder.watch(sock)
    places = _places()
    try:
        kind, reason = wire.receive_answer(sock)
        if kind != wire.READY:
            return kind, reason
        wire.send_request(sock, _request(program, args, ignored), [0, 1, 2, *places])
        return wire.receive_answer(sock)
    except TimeoutError:
        return _too_late(sock)
    except (BrokenPipeError, ConnectionResetError):
        return b"", b""  # a server that was going
    finally:
        forwarder.watch(None)
        for fd in places:
            os.close(fd)


def _too_late(sock: _socket.socket) -> tuple[bytes, bytes]:
    """The server did not answer in time: cut the connection, so that it
    cannot accept from here on, and see whether it had just done so."""
    sock.shutdown(_socket.SHUT_RDWR)
    try:
        kind = sock.recv(1, _socket.MSG_DONTWAIT)
    except BlockingIOError:
        kind = b""
    if kind == wire.ACCEPTED:
        return kind, b""  # its status will not come: said by _status
    return wire.REFUSED, b"the server did not answer in time"


def _status(sock: _socket.socket, forwarder: _Forwarder, program: str) -> int:
    """The accepted command's status: from here on it is never run here."""
    try:
        sock.settimeout(None)
        forwarder.forward_to(wire.receive_process(sock))
        return wire.receive_status(sock)
    except Exception:  # noqa: BLE001 - whatever it is, the command is not run twice
        sys.stderr.write(f"{program}: the fork server's process ended without a status\n")
        return 1


def _request(program: str, args: list[str], ignored: set[int]) -> bytes:
    streams = [sys.stdin, sys.stdout, sys.stderr]
    return wire.pack([
        [program.encode()],
        [os.fsencode(a) for a in sys.argv[:1] + args],
        [k + b"=" + v for k, v in os.environb.items()],
        [*(s.encode() for stream in streams for s in (stream.encoding, stream.errors)),
         b"1" if sys.stdout.write_through else b"0"],
        [str(signum).encode() for signum in sorted(ignored)],
        [os.fsencode(a) for a in sys.orig_argv],
        [sys.getfilesystemencoding().encode()],
    ])


def _places() -> list[int]:
    """This process's root and working directory (after stdio, in the
    request's descriptors)."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    root = os.open("/", flags)
    try:
        return [root, os.open(".", flags)]
    except OSError:
        os.close(root)
        raise


def _start_server(directory: str) -> bool:
    """Start a server, detached, and wait until it takes requests."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                _become_server(directory, ready_w)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.waitpid(pid, 0)
    answer = b""
    while chunk := os.read(ready_r, 16):
        answer += chunk
    os.close(ready_r)
    return answer == b"ok"


def _become_server(directory: str, ready: int) -> None:
    try:
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.dup2(ready, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "PYTHONPATH": os.path.dirname(directory)}
        os.execve(sys.executable, [sys.executable, "-P", "-m", "unionfs.forkserver", "3"], env)
    finally:
        os._exit(127)


class _Forwarder:
    """The signals of :data:`_FORWARDED`, those not ignored when the
    launcher started (``nohup``), go to the process running the command.
    One that comes before the server accepted ends the launcher by it
    (the connection of :meth:`watch` cut first, so the server can no
    longer accept); one that comes after but before the process is known
    waits for it."""

    def __init__(self, ignored: set[int]):
        self._pidfd: int | None = None
        self._accepted = False
        self._asking: _socket.socket | None = None
        self._pending: list[int] = []
        self._saved = {s: _signal.signal(s, self._received)
                       for s in _FORWARDED if s not in ignored}

    def _received(self, signum, frame) -> None:
        if not self._accepted:
            if self._asking is not None:
                self._asking.shutdown(_socket.SHUT_RDWR)
            raise _Interrupted(signum)
        if self._pidfd is None:
            self._pending.append(signum)
            return
        try:
            _signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def watch(self, sock: _socket.socket | None) -> None:
        self._asking = sock

    def accepted(self) -> None:
        self._accepted = True

    def forward_to(self, pidfd: int) -> None:
        self._pidfd = pidfd
        for signum in self._pending:
            self._received(signum, None)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            _signal.signal(signum, handler)


def _exit_with(status: int) -> None:
    """Exit as the command did: with its code, or by its signal."""
    sys.stdout.flush()
    if status < 0:
        if -status != _signal.SIGKILL:  # whose disposition cannot be set
            _signal.signal(-status, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [-status])
        os.kill(os.getpid(), -status)
        status = 128 - status
    os._exit(status)


def resolve(spec: str):
    """The function ``module:name`` names, imported."""
    module, _, name = spec.partition(":")
    __import__(module)
    return getattr(sys.modules[module], name)


if __name__ == "__main__":  # python -m unionfs.launcher PATH PROGRAM
    write(sys.argv[1], sys.argv[2])
