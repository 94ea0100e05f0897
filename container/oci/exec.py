"""``exec``: run another process in a created or running container, in
all of its namespaces and its cgroup, under its seccomp filter, confined
as its ``process`` (or the ``--process`` file) says.

As with ``create``, a helper joins the cgroup and namespaces and forks the
process, which is left to the caller (conmon reaps it as a subreaper).
With ``--detach`` the runtime returns once the process runs and its PID is
written; otherwise the runtime is the subreaper, relays its terminal if it
has one, forwards signals to it, and exits with its code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import NoReturn

from .. import cgroups, init
from .. import syscalls as sc
from ..terminal import Console
from . import inside
from . import namespaces as oci_namespaces
from .create import CreateError, write_pid_file
from .lifecycle import stored_config
from .process import Process
from .state import StateError, Store, start_time, status
from .sync import READY, Channel, spawn

#: an init's, less SIGWINCH: the terminal relay passes window sizes on
FORWARDED = tuple(signum for signum in init.FORWARDED if signum != signal.SIGWINCH)


def exec_process(store: Store, container_id: str, process: Process, detach: bool,
                 pid_file: str | None = None, console: socket.socket | None = None,
                 preserve_fds: int = 0, stdio: tuple[int, int, int] | None = None) -> int:
    """Start ``process``; its exit code, or 0 once it runs with ``detach``.
    Its stdio are the runtime's, or ``stdio``."""
    record = store.load(container_id)
    current = status(store, record)
    if current not in ("running", "created"):
        raise StateError(f"cannot exec in a {current} container")
    config = stored_config(store, container_id)
    if config is None:
        raise StateError("container does not exist")
    relay = None
    if process.terminal and console is None:
        if detach:
            raise CreateError("cannot allocate a tty without --console-socket")
        relay = Console()
        console = relay.theirs
    namespaces = _open_namespaces(record.pid, config.namespaces, record.pid_start)
    seccomp = config.seccomp.compile() if config.seccomp else None
    group = cgroups.reopen(record.cgroup_paths, in_share=False)
    if not detach:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)

    def enter() -> None:
        for fd in namespaces:
            sc.setns(fd)

    def run(channel: Channel) -> NoReturn:
        _become(process, channel, console, seccomp, preserve_fds)

    keep = (*range(3, 3 + preserve_fds), *namespaces, *([console.fileno()] if console else []))
    try:
        pid, channel = spawn(group, keep, enter, run, stdio)
        with contextlib.closing(channel):
            channel.expect(READY)
    except Exception as exc:
        raise CreateError(f"exec failed: {exc}") from None
    finally:
        for fd in namespaces:
            os.close(fd)
    if pid_file:
        write_pid_file(pid_file, pid)
    if detach:
        return 0
    return wait_for(pid, relay)


def _open_namespaces(pid: int, namespaces, started: int | None) -> list[int]:
    """The container's own namespaces, through its init; the mount
    namespace last (joined last: the others are found through the host's
    /proc).  Checked to be the init's still, not a reused PID's."""
    kinds = [ns.kind for ns in namespaces if ns.kind != "mount"] + ["mount"]
    fds = []
    try:
        for kind in kinds:
            fds.append(os.open(f"/proc/{pid}/ns/{oci_namespaces.PROC_NAMES[kind]}",
                               os.O_RDONLY | os.O_CLOEXEC))
    except (FileNotFoundError, ProcessLookupError):
        started = None
    if started is None or start_time(pid) != started:
        for fd in fds:
            os.close(fd)
        raise StateError("cannot exec in a stopped container")
    return fds


def _become(process: Process, channel: Channel, console, seccomp, preserve_fds: int):
    try:
        if console is not None:
            inside.take_terminal(process, console)
        path = inside.prepare(process)
        inside.confine(process, seccomp)
        channel.send(READY)
        channel.close()
        inside.run(process, path, seccomp, preserve_fds)
    except BaseException as exc:  # noqa: BLE001 - reported, then this process ends
        channel.fail(exc)
    os._exit(inside.FAILED_AFTER_START)


def wait_for(pid: int, relay: Console | None) -> int:
    """Wait for ``pid`` (our child by now: we are its subreaper), relaying
    its terminal and forwarding signals; its exit code (128+N for signal N)."""
    previous = {signum: signal.signal(signum, lambda signum, _: sc.signal_quietly(pid, signum))
                for signum in FORWARDED}
    try:
        if relay is not None:
            relay.relay()
        _, wait_status = os.waitpid(pid, 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return init.exit_code(wait_status)
