"""``create``: make a container whose first process waits, set up, for
``start``.

The runtime (whose stdio become the container's, as runc's do) forks a
helper that joins the container's cgroup and its pid namespace, forks the
container's first process, reports its PID and exits: that process is
left a child of whoever called the runtime if it is a subreaper (conmon
is), and its exit status is theirs to collect.  The runtime follows the
process's set-up over a channel (``sync``), runs the ``prestart`` and
``createRuntime`` hooks when it asks, and once it reports ready records
the container, writes ``--pid-file`` (whole, by rename) and returns.  Any
failure undoes everything: the process is killed, its cgroup and record
removed, and the error says why in one line.  A create killed outright
leaves a provisional record (see ``state``): a stopped container, which
``delete`` removes whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
from typing import NoReturn

from .. import cgroups
from ..cgroups.resources import inner_path
from . import config as oci_config
from . import hooks as oci_hooks
from . import inside, state as oci_state
from .inside import CreateOptions
from .namespaces import Joiner
from .state import Record, Store
from .sync import GO, HOOKS, READY, Channel, spawn


class CreateError(RuntimeError):
    """Why a container could not be created; one line."""


def create(store: Store, container_id: str, bundle: str, pid_file: str | None = None,
           console: socket.socket | None = None,
           options: CreateOptions = CreateOptions()) -> Record:
    """``console``: where the terminal's master side goes (see
    :func:`connect_console`), needed by a process with a terminal."""
    config = oci_config.load(bundle)
    process = config.process
    if process is None:
        raise CreateError("config.json has no process to run")
    if process.terminal and console is None:
        raise CreateError("cannot allocate a tty without --console-socket")
    if console is not None and not process.terminal:
        raise CreateError("--console-socket needs process.terminal set in config.json")
    if not os.path.isdir(config.root):
        raise CreateError(f"root.path {config.root}: not a directory")
    with store.claimed(container_id):
        made = _Made(store, container_id)
        try:
            shutil.copyfile(os.path.join(config.bundle, "config.json"),
                            store.config_copy(container_id))
            os.mkfifo(store.fifo(container_id), 0o600)
            made.group = _new_cgroup(config, container_id)
            record = Record(id=container_id, bundle=config.bundle, rootfs=config.root, pid=0,
                            pid_start=None, created=oci_state.now_rfc3339(),
                            annotations=dict(config.annotations),
                            cgroup_paths=made.group.paths, console=config.process.terminal)
            store.save(record)  # provisional: what a delete finds if this create dies
            made.group.apply(config.resources)
            record = _start_process(store, record, config, made, console, options)
            if pid_file:
                write_pid_file(pid_file, record.pid)
        except BaseException:
            made.undo()
            raise
    return record


def _new_cgroup(config: oci_config.Config, container_id: str):
    """The container's cgroup; one that holds processes already (another
    container's) is refused, as runc does: undoing this create would kill them."""
    group = cgroups.create_at(inner_path(config.cgroups_path, container_id))
    found = group.pids()
    if found:
        raise CreateError(f"container's cgroup is not empty: {len(found)} process(es) found")
    return group


class _Made:
    """What a create has made so far, to undo on failure."""

    def __init__(self, store: Store, container_id: str):
        self.store, self.id = store, container_id
        self.group = None
        self.pid = None

    def undo(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.group is not None:
            self.group.kill_all()
            self.group.remove()
        shutil.rmtree(self.store.directory(self.id), ignore_errors=True)


def _start_process(store: Store, record: Record, config: oci_config.Config, made: _Made,
                   console: socket.socket | None, options: CreateOptions) -> Record:
    seccomp = config.seccomp.compile() if config.seccomp else None
    joiner = Joiner(config.namespaces)
    fifo_fd = os.open(store.fifo(record.id), os.O_PATH | os.O_CLOEXEC)
    keep = (*range(3, 3 + options.preserve_fds), *joiner.fds, fifo_fd,
            *([console.fileno()] if console else []),
            *([options.lifeline] if options.lifeline is not None else []))

    def first_process(channel: Channel) -> NoReturn:
        inside.boot(config, record.id, channel, joiner, fifo_fd, console, seccomp,
                    made.group.paths, options)

    try:
        made.pid, channel = spawn(made.group, keep, joiner.pid_step, first_process,
                                  options.stdio)
    except Exception as exc:
        raise CreateError(f"container create failed: {exc}") from None
    finally:
        os.close(fifo_fd)
        joiner.close()
        if console is not None:
            console.close()
    with contextlib.closing(channel):
        record = dataclasses.replace(record, pid=made.pid,
                                     pid_start=oci_state.start_time(made.pid))
        state = oci_state.oci_state(store, record) | {"status": "creating"}
        try:
            channel.expect(HOOKS)
            oci_hooks.run(config.hooks, "prestart", state)
            oci_hooks.run(config.hooks, "createRuntime", state)
            channel.send(GO, json.dumps(state))
            channel.expect(READY)
        except Exception as exc:
            raise CreateError(f"container create failed: {exc}") from None
    store.save(record)
    return record


def connect_console(path: str) -> socket.socket:
    """The engine's console socket (conmon listens on it for the master)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise CreateError(f"--console-socket {path}: {exc.strerror}") from None
    return sock


def write_pid_file(path: str, pid: int) -> None:
    """Whole or not at all: written beside, then renamed (as runc does).
    The file beside is made anew (O_EXCL), never opened through what is
    there: the directory may be a user's, who could plant there a link to
    a file of root's."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)),
                             "." + os.path.basename(path))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(str(pid))
    os.rename(temporary, path)
