"""PID 1 inside the container, and the command it starts.

The first process in the container's pid namespace sets up the root file
system, then forks the user's command and stays as its init: it reaps every
orphan that is reparented to it, forwards the signals a container is sent
(SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH) to the
command, and exits with the command's status (128+N when it died of
signal N), which ends the namespace and every process left in it.

PID 1 is confined as the command is (capabilities, ``no_new_privs``,
seccomp) before it forks the command, and keeps only CAP_KILL once the
command has its own; the command waits for that before it goes on.  It
never execs, so it stays as its host-side parent made it: not dumpable,
out of reach of ptrace and of ``/proc/1/fd`` from inside.

Errors before the command runs are written to ``errors`` (one line) and
give docker's codes: 125 for the runtime, 126 for a command that cannot be
executed, 127 for one that is not found.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import termios
from typing import NoReturn

from . import rootfs, security, terminal
from . import syscalls as sc
from .spec import ContainerSpec, default_env

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
RUNTIME_ERROR, CANNOT_EXECUTE, NOT_FOUND = 125, 126, 127
INIT_CAPABILITIES = frozenset({5})  # CAP_KILL
TITLE = "pycontainer-init"


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run(spec: ContainerSpec, root: str, etc_dir: str, pipes: tuple[int, int],
        console: socket.socket | None) -> NoReturn:
    """Be the container's PID 1 (call in the child that is PID 1); with
    ``console``, the command gets a terminal made in the container.
    ``pipes``: errors, and began, whose write end the command's exec closes.

    The signals to forward come blocked (from C) and stay so until there is
    a command to forward them to: a PID 1 without a handler would lose them."""
    errors, began = pipes
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        set_process_title(TITLE)
        seccomp = security.SeccompFilter() if spec.seccomp else None
        rootfs.prepare(root, spec, etc_dir)
        sc.sethostname(spec.hostname)
        if spec.network == "none":
            sc.loopback_up()
        if console is not None:
            terminal.use_as_stdio(terminal.open_in_container(console))
        security.confine(0, 0, seccomp)
    except Exception as exc:  # noqa: BLE001 - reported, then the container ends
        _fail(errors, RUNTIME_ERROR, f"container setup failed: {exc}")
    command = _start_command(spec, errors)
    os.close(errors)
    os.close(began)
    serve(command)


def serve(command: int) -> NoReturn:
    """Be init to ``command``: forward it the signals the container is
    sent, reap every orphan, and exit with its status."""
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _: _forward(command, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        pid, status = os.wait()
        if pid == command:
            os._exit(exit_code(status))


def _start_command(spec: ContainerSpec, errors: int) -> int:
    """Fork the command while init still holds the capabilities it needs
    (a child cannot gain what its parent gave up); the command goes on only
    once init has given them up, so nothing it runs ever sees a PID 1
    stronger than itself."""
    confined_r, confined_w = os.pipe()
    command = os.fork()
    if command == 0:
        os.close(confined_w)
        os.read(confined_r, 1)  # end of file: init is confined
        os.close(confined_r)
        exec_command(spec, errors)
    os.close(confined_r)
    try:
        keep_only_init_capabilities()
    except OSError as exc:
        _fail(errors, RUNTIME_ERROR, f"cannot confine the container's init: {exc}")
    os.close(confined_w)
    return command


def keep_only_init_capabilities() -> None:
    """Give up every capability, once the command has its own, but
    CAP_KILL: forwarding a signal to a command of another uid needs it;
    reaping needs none."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in set(range(last + 1)) - INIT_CAPABILITIES:
        sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.capset(set(INIT_CAPABILITIES))


def set_process_title(title: str) -> None:
    """What ``ps`` shows for PID 1: its name, not the host's path to the
    pycontainer program it was forked from.  The command line lives in this
    process's own memory (between ``arg_start`` and ``arg_end``); it is
    overwritten in place, padded with NULs, through /proc/self/mem."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    raw = title.encode()[: end - start - 1]
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        memory.seek(start)
        memory.write(raw + b"\0" * (end - start - len(raw)))
    name = ctypes.create_string_buffer(title.encode()[:15])
    sc.prctl(sc.PR_SET_NAME, ctypes.addressof(name))


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def exec_command(spec: ContainerSpec, errors: int) -> NoReturn:
    """Become the user's command (``run``'s, or ``exec``'s in a running
    container): session, terminal, confinement, environment, exec.  The
    seccomp filter is already loaded: the parent loads it before it forks
    this process into the container's view."""
    try:
        os.setsid()
        if spec.tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        os.makedirs(spec.workdir, exist_ok=True)
        os.chdir(spec.workdir)
        security.confine(spec.user.uid, spec.user.gid, None)
        env = dict(default_env(spec.hostname, spec.tty))
        env.update(spec.env)
    except Exception as exc:  # noqa: BLE001
        _fail(errors, RUNTIME_ERROR, f"container setup failed: {exc}")
    try:
        os.execvpe(spec.command[0], list(spec.command), env)
    except OSError as exc:
        code = NOT_FOUND if exc.errno == errno.ENOENT else CANNOT_EXECUTE
        reason = "not found" if code == NOT_FOUND else exc.strerror
        _fail(errors, code, f"cannot run {spec.command[0]!r}: {reason}")


def _fail(errors: int, code: int, message: str) -> NoReturn:
    try:
        os.write(errors, (message.replace("\n", " ") + "\n").encode())
    finally:
        os._exit(code)
