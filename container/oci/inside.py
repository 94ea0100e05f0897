"""What the container's first process does before it becomes the user's
command: join and make its namespaces, set up its root (the runtime runs
``prestart`` and ``createRuntime`` hooks meanwhile, and ``createContainer``
hooks run here before ``pivot_root``), hostname, terminal, limits, look
the command up with the user's effective IDs, report the container
created, then wait on the exec FIFO until ``start`` opens it; only then
become the user with its capabilities (unlike runc, which does so before
the FIFO: the process stays root so only root may open its FIFO), run
``startContainer`` hooks, and exec.  With no ``noNewPrivileges`` the
seccomp filter is loaded while it still may be (with CAP_SYS_ADMIN),
otherwise as the very last step, as runc does.

The same steps, less the root and the FIFO, give ``exec`` its process.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
from dataclasses import dataclass
from typing import NoReturn

from .. import init
from .. import syscalls as sc
from . import hooks as oci_hooks
from . import mounts as oci_mounts
from . import process as oci_process
from .config import Config
from .namespaces import Joiner
from .sync import GO, HOOKS, READY, Channel

FAILED_AFTER_START = 127  # the exit code when the command cannot run after ``start``


@dataclass(frozen=True)
class CreateOptions:
    """What ``create``'s command line adds to the config."""
    preserve_fds: int = 0      # descriptors 3.. passed on to the command
    new_keyring: bool = True   # a session keyring of the container's own
    no_pivot: bool = False     # chroot, not pivot_root
    stdio: tuple[int, int, int] | None = None  # the process's, if not the runtime's
    #: with an init: the read end of a pipe whose writer is the caller; the
    #: init ends the container when it closes (the caller died)
    lifeline: int | None = None


def boot(config: Config, container_id: str, channel: Channel, joiner: Joiner, fifo_fd: int,
         console: socket.socket | None, seccomp, cgroup_paths: dict[str, str],
         options: CreateOptions) -> NoReturn:
    """Be the container's first process until its command runs (call in
    the forked child, which is PID 1 of a new pid namespace if it has one)."""
    state = {}
    try:
        joiner.rest()
        if options.new_keyring:
            sc.join_session_keyring(container_id)
        if config.hostname:
            sc.sethostname(config.hostname)
        if config.domainname:
            sc.setdomainname(config.domainname)

        def before_pivot() -> None:
            channel.send(HOOKS)
            state.update(json.loads(channel.expect(GO)))
            oci_hooks.run(config.hooks, "createContainer", state)
            _write_sysctls(config)

        oci_mounts.setup(config.root, config.mounts, cgroup_paths, before_pivot,
                         options.no_pivot)
        if console is not None:
            oci_mounts.bind_console(take_terminal(config.process, console))
        if config.init:
            _fork_under_init(channel, fifo_fd, seccomp, options.lifeline)
        path = prepare(config.process)
        _end_on_stop_signals()
        channel.send(READY)
    except Exception as exc:  # noqa: BLE001 - reported to the runtime, which fails create
        channel.fail(exc)
        os._exit(1)
    channel.close()
    try:
        _wait_for_start(fifo_fd)
        confine(config.process, seccomp)
        oci_hooks.run(config.hooks, "startContainer", state)
        run(config.process, path, seccomp, options.preserve_fds)
    except Exception as exc:  # noqa: BLE001 - the container's stderr is the engine's log
        print(f"pycontainer-runtime: {exc}", file=sys.stderr, flush=True)
    os._exit(FAILED_AFTER_START)


def _fork_under_init(channel: Channel, fifo_fd: int, seccomp, lifeline: int | None) -> None:
    """With ``io.pycontainer.init``: fork the command's process, which
    returns to go on with the set-up once this one, PID 1, is confined:
    only CAP_KILL, no_new_privs, the container's seccomp filter (nothing in
    the container ever sees a PID 1 stronger than itself).  This one then
    forwards signals to the command, reaps, and exits with its status."""
    confined_r, confined_w = os.pipe()
    command = os.fork()
    if command == 0:
        os.close(confined_w)
        if lifeline is not None:
            os.close(lifeline)
        os.read(confined_r, 1)  # end of file: init is confined
        os.close(confined_r)
        return
    os.close(confined_r)
    os.close(fifo_fd)
    try:
        init.set_process_title(init.TITLE)
        init.keep_only_init_capabilities()
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if seccomp is not None:
            seccomp.load()
    except Exception as exc:  # noqa: BLE001 - reported to the runtime, which fails create
        channel.fail(exc)
        os.kill(command, signal.SIGKILL)
        os._exit(1)
    channel.close()
    os.close(confined_w)
    if lifeline is not None:
        init.end_with(lifeline)
    init.serve(command)


def _write_sysctls(config: Config) -> None:
    """Through the container's own /proc, mounted by now under its root."""
    for key, value in config.sysctl.items():
        with open(os.path.join(config.root, "proc/sys", key.replace(".", "/")), "w") as f:
            f.write(value)


def prepare(process: oci_process.Process) -> str:
    """As root: limits set, the working directory made; then, with the
    user's effective IDs (the permissions are the user's), into it, and
    the command looked up: its path.  The process stays root, so it can
    still wait on the FIFO that only root may open."""
    oci_process.set_limits(process)
    os.makedirs(process.cwd, exist_ok=True)
    with oci_process.effective_user(process.user):
        os.chdir(process.cwd)
        return oci_process.look_up(process)


def confine(process: oci_process.Process, seccomp) -> None:
    """Become the user with the capabilities asked for; a seccomp filter
    loaded first if it needs CAP_SYS_ADMIN to load (no noNewPrivileges)."""
    if seccomp is not None and not process.no_new_privileges:
        seccomp.load()
    oci_process.become_user(process)


def run(process: oci_process.Process, path: str, seccomp, preserve_fds: int) -> None:
    """The last steps: a filter that could wait for noNewPrivileges, exec."""
    if seccomp is not None and process.no_new_privileges:
        seccomp.load()
    oci_process.execute(process, path, preserve_fds)


def take_terminal(process: oci_process.Process, console: socket.socket) -> str:
    """A terminal from the container's own devpts: its master side goes to
    whoever listens on the console socket (SCM_RIGHTS, as runc sends it),
    its slave side becomes stdio and the controlling terminal; its name."""
    master, slave = os.openpty()
    if process.console_size:
        rows, columns = process.console_size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    name = os.ttyname(slave)
    socket.send_fds(console, [name.encode()], [master])
    os.close(master)
    console.close()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)  # a session leader already (sync.spawn)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)
    return name


def _end_on_stop_signals() -> None:
    """Until its exec, a created process ends on the signals that stop a
    container (128+N, as runc's does), which as PID 1 of its namespace it
    would otherwise never get: ``kill`` and ``podman stop`` of a created
    container work.  The exec gives every signal its default back."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, lambda signum, _: os._exit(128 + signum))


def _wait_for_start(fifo_fd: int) -> None:
    """Block until ``start`` opens the FIFO to read, then say so."""
    fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_fd)
