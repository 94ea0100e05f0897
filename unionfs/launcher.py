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
root, fds 0-2 not all open, no server and none can be started, or the
server refuses (``world.py``).
Once the server has accepted, its answer is final: the command is never
run twice.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

from . import wire


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
_ATTEMPTS = 3  # a stale server replaced, a server starting beside another


def main(program: str) -> None:
    entry = PROGRAMS[program]
    args = sys.argv[1:]
    if os.geteuid() == 0 and resolve(entry.served)(args):
        forwarder = _Forwarder()
        try:
            status = _served(program, args, forwarder)
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


def _served(program: str, args: list[str], forwarder: _Forwarder) -> int | None:
    """The command's status as the server ran it, or None to run it here."""
    directory = package_dir()
    path = wire.socket_path(directory, sys.executable)
    for _ in range(_ATTEMPTS):
        sock = _connect(path)
        if sock is None:
            if not _start_server(directory):
                return None
            continue
        try:
            kind = _ask(sock, program, args)
            if kind == wire.REFUSED:
                return None
            if kind == wire.ACCEPTED:
                return _status(sock, forwarder, program)
            # stale, or closed as it was going: try again
        finally:
            sock.close()
    return None


def _ask(sock: _socket.socket, program: str, args: list[str]) -> bytes:
    places = _places()
    try:
        wire.send_request(sock, _request(program, args), [0, 1, 2, *places])
        kind, _ = wire.receive_answer(sock)
    except (BrokenPipeError, ConnectionResetError):
        return b""  # a server that was going
    finally:
        for fd in places:
            os.close(fd)
    return kind


def _status(sock: _socket.socket, forwarder: _Forwarder, program: str) -> int:
    """The accepted command's status: from here on it is never run here."""
    try:
        forwarder.forward_to(wire.receive_process(sock))
        return wire.receive_status(sock)
    except Exception:  # noqa: BLE001 - whatever it is, the command is not run twice
        sys.stderr.write(f"{program}: the fork server's process ended without a status\n")
        return 1


def _request(program: str, args: list[str]) -> bytes:
    streams = [sys.stdin, sys.stdout, sys.stderr]
    return wire.pack([
        [program.encode()],
        [os.fsencode(a) for a in sys.argv[:1] + args],
        [k + b"=" + v for k, v in os.environb.items()],
        [*(s.encode() for stream in streams for s in (stream.encoding, stream.errors)),
         b"1" if sys.stdout.write_through else b"0"],
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


def _connect(path: str) -> _socket.socket | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


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
    """The signals of :data:`_FORWARDED` go to the process running the command;
    those that come before it is known wait for it (or, if the command
    runs here after all, are raised again here)."""

    def __init__(self):
        self._pidfd: int | None = None
        self._pending: list[int] = []
        self._saved = {s: _signal.signal(s, self._received) for s in _FORWARDED}

    def _received(self, signum, frame) -> None:
        if self._pidfd is None:
            self._pending.append(signum)
            return
        try:
            _signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def forward_to(self, pidfd: int) -> None:
        self._pidfd = pidfd
        for signum in self._pending:
            self._received(signum, None)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            _signal.signal(signum, handler)
        for signum in self._pending:
            os.kill(os.getpid(), signum)


def _exit_with(status: int) -> None:
    """Exit as the command did: with its code, or by its signal."""
    if status < 0:
        _signal.signal(-status, _signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    sys.stdout.flush()
    os._exit(status)


def resolve(spec: str):
    """The function ``module:name`` names, imported."""
    module, _, name = spec.partition(":")
    __import__(module)
    return getattr(sys.modules[module], name)


if __name__ == "__main__":  # python -m unionfs.launcher PATH PROGRAM
    write(sys.argv[1], sys.argv[2])
