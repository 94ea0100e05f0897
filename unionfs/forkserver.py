"""The fork server: a process that has imported its programs
(``pyunion``'s CLI: click, trio, pyfuse3; ``pycontainer``'s: pyroute2,
libseccomp too) once, and forks a ready copy of itself per command, so a
mount or a container start does not pay Python's start-up (~200-500 ms)
each time.  Forked copies also share the pages of those imports.

    launcher (python -S)  --unix socket-->  server --fork--> guardian --fork--> worker
                                                                               (runs the CLI,
                                                                                forks the daemon)

* **Started** on demand by the launcher (``launcher.py``), detached (its
  own session, stdio on /dev/null, no descriptor of its starter), as
  ``python -P -m unionfs.forkserver``.  It listens on a socket in
  ``/run/pyunion/server/`` (root's only, mode 0700), named after the code
  it runs (:func:`wire.socket_path`: the resolved package directory and
  the interpreter), so a worktree's code is never served by another
  checkout's server.  It serves only its equals (``peer.py``), so only
  root, and does not start under a seccomp filter (filters cannot be
  compared).  It drops what its starter gave it that a caller would
  otherwise inherit (``world.reset``).
* **Stale code**: before each request it checks whether its code changed
  on disk (``codewatch.py``); if so it withdraws its socket, answers
  STALE (the launcher starts a new server) and exits.
* **Ends** after :data:`IDLE_SECONDS` without a request, and on SIGTERM.
* **No threads, no trio** in the server: it forks, and forking a process
  with threads or inside ``trio.run`` leaves the child with locks held by
  threads that are not there.
* **Per request** the server forks a *guardian*, and goes back to accept:
  it never waits for a caller.  The guardian pins the caller and checks it is
  the server's equal (``peer.py``), reads the request, takes on the
  caller's world (``world.py``), and forks a *worker* that takes on its
  stdio, signal state and command line and runs the program's ``main``
  with the caller's argv.  Whatever fails before that is answered REFUSED
  with its reason (the caller runs the command itself).  The guardian
  relays the worker's exit status; the launcher exits with it and forwards
  the signals a caller is sent from a terminal or by hand
  (``launcher._FORWARDED``), those it does not ignore, to the worker
  meanwhile.
* **A caller gone mid-request** leaves nothing half-started: the worker
  stands for the caller, so the guardian, which watches the connection,
  kills it when the caller's end closes before the status is sent (as the
  command would have died with a caller killed while running it: a
  container's supervisor, say).  The guardian is the worker's child
  subreaper, so what the worker leaves running (the mount daemon, which
  ``daemon.spawn`` forks as it always did; a container's init) is
  reparented to it.  If the worker failed, or its status cannot be
  delivered because the caller is gone, the guardian hands those
  processes, once the status is sent, to the program's ``undo`` (for
  ``pyunion``: ``cli.undo_mount``, which waits for the daemon to serve
  and unmounts; for ``pycontainer``: ``cli.undo``, which cleans up after
  containers whose supervisor died).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import select
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

from . import codewatch, launcher, libc, peer, wire, world
from .oneline import one_line

#: how long a server waits for a request before it exits: long enough for
#: a burst of mounts (a test run, podman starting a pod), short enough that
#: an idle machine does not keep a 40 MiB process around for nothing
IDLE_SECONDS = 600.0


@dataclass(frozen=True)
class Program:
    """A program the server runs, loaded: its ``main`` and its ``undo``."""

    main: Callable[[], None]
    undo: Callable[[list[str], list[int]], None]


def load(name: str) -> Program:
    """Import the program, and pay once what its first run would pay."""
    entry = launcher.PROGRAMS[name]
    program = Program(launcher.resolve(entry.main), launcher.resolve(entry.undo))
    launcher.resolve(entry.warm)()
    return program


def _loadable() -> dict[str, Program]:
    """Every program that loads here; one that does not (not installed
    beside this code, or broken) is not served, and its launcher runs it
    in-process, where its error shows."""
    programs = {}
    for name in launcher.PROGRAMS:
        try:
            programs[name] = load(name)
        except Exception:  # noqa: BLE001 - told by the command run in-process
            continue
    return programs


def main() -> None:
    """``python -P -m unionfs.forkserver READY_FD``: serve until idle,
    stale or SIGTERM; ``ok`` on READY_FD once requests are taken (or
    another server takes them), nothing if this one cannot serve."""
    ready = int(sys.argv[1])
    package_dir = launcher.package_dir()
    code = codewatch.Code()
    if peer.own_status().get("Seccomp") != "0":
        return  # it could serve nobody
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # guardians are nobody's to wait for
    world.reset()
    os.umask(0o077)  # the socket is root's only from its creation
    programs = _loadable()
    code.loaded(sorted({launcher.package_of(launcher.PROGRAMS[name].main)
                        for name in programs}))
    hierarchies = world.cgroup_mounts()
    # Whatever is loaded now stays out of the collector's sight: a
    # collection in a forked copy would otherwise touch, and so copy, every
    # page the copies share.
    gc.freeze()
    path = wire.socket_path(package_dir, sys.executable)
    listener = _listen(path)
    os.write(ready, b"ok")
    os.close(ready)
    if listener is None:
        return
    try:
        _serve(listener, code, programs, hierarchies)
    finally:
        _withdraw(listener)


def serving(path: str) -> int | None:
    """The PID of the server listening at ``path`` (see
    :func:`wire.socket_path`), if one does."""
    probe = wire.connect(path)
    if probe is None:
        return None
    try:
        return peer.credentials(probe)[0]
    finally:
        probe.close()


def _serve(listener: _Listener, code: codewatch.Code, programs: dict[str, Program],
           hierarchies: list[world.CgroupMount]) -> None:
    """Take requests until idle, stale or SIGTERM.  SIGTERM is heard on
    the interpreter's wakeup descriptor, polled with the socket: its
    handler alone (which raises SystemExit) was seen to miss one now and
    then, a SIGTERM sent just after a request, and leave the server in
    accept (CPython 3.11)."""
    signal.set_wakeup_fd(listener.woken, warn_on_full_buffer=False)
    poller = select.poll()
    poller.register(listener.sock, select.POLLIN)
    poller.register(listener.stop, select.POLLIN)
    while True:
        ready = [fd for fd, _ in poller.poll(IDLE_SECONDS * 1000)]
        if not ready or listener.stop in ready:
            return
        connection, _ = listener.sock.accept()
        with connection:
            if code.changed():
                _withdraw(listener)
                with contextlib.suppress(OSError):
                    connection.sendall(wire.STALE)
                return
            try:
                guardian = os.fork()
            except OSError:  # closed unanswered: the launcher tries again, then runs it itself
                continue
            if guardian == 0:
                _guard(connection, listener, programs, hierarchies)


def _guard(connection: socket.socket, listener: _Listener, programs: dict[str, Program],
           hierarchies: list[world.CgroupMount]) -> None:
    """The guardian of one request (see the module's docstring); never returns."""
    try:
        signal.set_wakeup_fd(-1)
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        connection.settimeout(None)
        try:
            caller = peer.Peer(connection)
            reason = caller.unequal()
            if reason:
                raise world.Unserved(reason)
            connection.sendall(wire.READY)
            sections, fds = wire.receive_request(connection)
            request = _Request.of(sections, fds)
            program = programs.get(request.program)
            if program is None:
                raise world.Unserved(f"no program {request.program!r} here")
            world.check_streams(request.streams)
            world.join_cgroups(caller, hierarchies)
            world.take_on(caller, fds, request.environment)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the caller runs it itself
            with contextlib.suppress(OSError):
                connection.sendall(wire.REFUSED + os.fsencode(one_line(exc)))
            return
        _run(connection, caller, program, request)
    finally:
        os._exit(0)


@dataclass(frozen=True)
class _Request:
    program: str
    argv: list[str]
    environment: list[bytes]
    streams: list[bytes]
    ignored: set[int]  #: the signals the caller ignored when it started
    cmdline: list[bytes]  #: the caller's, as /proc/PID/cmdline has it
    fds: list[int]

    @classmethod
    def of(cls, sections: list[list[bytes]], fds: list[int]) -> _Request:
        try:
            (program,), argv, environment, streams, ignored, cmdline, (fs_encoding,) = sections
            ignored = {int(signum) for signum in ignored}
        except ValueError:
            raise world.Unserved("a malformed request") from None
        if fs_encoding.decode() != sys.getfilesystemencoding():
            raise world.Unserved("the caller decodes file names otherwise")
        return cls(program.decode(), [os.fsdecode(a) for a in argv], environment, streams,
                   ignored, cmdline, fds)


def _run(connection: socket.socket, caller: peer.Peer, program: Program,
         request: _Request) -> None:
    """Accept, fork the worker, relay its status, undo what it leaves if
    it failed or nobody hears of it.  ACCEPTED goes before the fork: a
    guardian that failed between the two must not leave the caller to run
    it again.  The status goes before an undo, which can take seconds."""
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    try:
        connection.sendall(wire.ACCEPTED)
    except OSError:  # the caller is gone: nobody to run it for
        return
    try:
        worker = os.fork()
    except OSError as exc:  # the launcher says the command ended without a status
        _complain(request.fds[wire.STDERR], f"cannot run the command: {one_line(exc)}")
        return
    if worker == 0:
        _work(connection, caller, program, request)
    complaints = os.dup(request.fds[wire.STDERR])  # for an undo that fails
    for fd in request.fds:
        os.close(fd)
    pidfd = os.pidfd_open(worker)
    with contextlib.suppress(OSError):
        wire.send_process(connection, pidfd)
    _kill_if_caller_goes(connection, pidfd)
    os.close(pidfd)
    status = os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1])
    try:
        wire.send_status(connection, status)
        heard = True
    except OSError:  # the caller is gone and will never know: take it back
        heard = False
    connection.close()
    if status != 0 or not heard:
        _undo(program, request.argv[1:], complaints)


def _kill_if_caller_goes(connection: socket.socket, pidfd: int) -> None:
    """Return once the worker has ended; kill it first if the caller's
    end of the connection closes meanwhile (the caller sends nothing after
    its request: anything readable is its end).  The worker dies as the
    command would have died with its caller."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(connection, select.POLLIN | select.POLLRDHUP)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            return
        if ready:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            poller.unregister(connection)


def _work(connection: socket.socket, caller: peer.Peer, program: Program,
          request: _Request) -> None:
    """The worker: the caller's stdio, signals, command line and argv,
    then the program; never returns."""
    status = 1
    try:
        connection.close()
        world.take_stdio(request.fds, request.streams)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # nothing of the server's goes on
        try:
            world.take_signals(caller, request.ignored)
            world.take_name(request.argv[0], request.cmdline)
        except Exception as exc:  # noqa: BLE001 - told to the caller
            _complain(wire.STDERR, f"cannot run the command: {one_line(exc)}")
            return
        sys.argv = request.argv
        status = _status_of(program.main)
    finally:
        os._exit(status)


def _status_of(main: Callable[[], None]) -> int:
    """What the interpreter would exit with after ``main``, as it would."""
    try:
        main()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return (exc.code or 0) & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Python ends by the signal
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:  # noqa: BLE001 - the interpreter prints it too
        traceback.print_exc()
        return 1
    finally:
        _flush()


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _undo(program: Program, args: list[str], complaints: int) -> None:
    """Hand what the worker left running to the program's undo."""
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        left = [int(pid) for pid in f.read().split()]
    if not left:
        return
    try:
        program.undo(args, left)
    except BaseException as exc:  # noqa: BLE001 - told to the caller's stderr
        _complain(complaints, f"cannot take back what the abandoned command left: "
                              f"{one_line(exc)}")


def _complain(fd: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, os.fsencode(f"pyunion: {message}\n"))


@dataclass
class _Listener:
    sock: socket.socket
    path: str
    inode: int  #: of the socket's file, to remove only our own
    stop: int  #: a pipe's ends: signals are written to ``woken``
    woken: int

    def close(self) -> None:
        """What a forked copy does with it: let go."""
        self.sock.close()
        os.close(self.stop)
        os.close(self.woken)


def _listen(path: str) -> _Listener | None:
    """Listen at ``path``, unless a live server does already (then None).
    Servers starting at once take turns on a lock of the directory."""
    parent = os.path.dirname(wire.SERVER_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(parent)
        os.chmod(parent, 0o755)  # whatever the umask: others reach mounts' control sockets there
    with contextlib.suppress(FileExistsError):
        os.mkdir(wire.SERVER_DIR, 0o700)
    st = os.stat(wire.SERVER_DIR)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{wire.SERVER_DIR} is not this user's only")
    with _directory_locked():
        probe = wire.connect(path)
        if probe is not None:
            probe.close()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # of a server that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(64)
        stop, woken = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return _Listener(sock, path, os.stat(path).st_ino, stop, woken)


def _withdraw(listener: _Listener) -> None:
    """Stop taking requests: the socket's file goes (if still ours), then
    the socket; a request queued meanwhile is refused, and its launcher
    tries again."""
    if listener.sock.fileno() < 0:
        return
    with _directory_locked():
        with contextlib.suppress(FileNotFoundError):
            if os.stat(listener.path).st_ino == listener.inode:
                os.unlink(listener.path)
        listener.sock.close()


@contextlib.contextmanager
def _directory_locked():
    fd = os.open(wire.SERVER_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
