"""The verbs on a created container: ``start``, ``kill``, ``delete``,
``pause``/``resume``, and what ``state``, ``list`` and ``ps`` show.
Each holds the container's lock, and reads the container's status from
the world under it (``state.status``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import signal
import sys

from .. import cgroups
from .. import syscalls as sc
from . import config as oci_config
from . import hooks as oci_hooks
from .reader import ConfigError
from .state import Record, StateError, Store, init_alive, oci_state, status

#: how long ``start`` waits on the FIFO before it looks again whether the
#: created container's process died meanwhile (its status says stopped
#: then); the process's word itself wakes it at once
_FIFO_POLL = 0.01


def start(store: Store, container_id: str) -> None:
    with store.locked(container_id) as record:
        current = status(store, record)
        if current == "stopped":
            raise StateError("cannot start a container that has stopped")
        if current != "created":
            raise StateError(f"cannot start an already {current} container")
        _open_fifo(store, record)
        os.unlink(store.fifo(container_id))
    config = stored_config(store, container_id)
    if config is not None:
        try:
            oci_hooks.run(config.hooks, "poststart", oci_state(store, record))
        except oci_hooks.HookError as exc:  # the container runs: only reported
            print(f"pycontainer-runtime: warning: {exc}", file=sys.stderr)


def _open_fifo(store: Store, record: Record) -> None:
    """Open the FIFO to read, which lets the waiting process go on; never
    block on one whose process has died (nobody would open the other end)."""
    fd = os.open(store.fifo(record.id), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            try:
                if os.read(fd, 1):
                    return
            except BlockingIOError:
                pass
            if not init_alive(record):
                raise StateError("cannot start a container that has stopped")
            select.select([fd], [], [], _FIFO_POLL)
    finally:
        os.close(fd)


def kill(store: Store, container_id: str, signum: int, all_processes: bool = False) -> None:
    """``all_processes`` reaches what outlives a stopped container's init
    too (it has no pid namespace of its own), as runc's ``kill --all``."""
    with store.locked(container_id) as record:
        current = status(store, record)
        group = cgroups.reopen(record.cgroup_paths, in_share=False)
        if all_processes:
            for pid in group.pids():
                sc.signal_quietly(pid, signum)
        elif current == "stopped":
            raise StateError("container not running")
        else:
            sc.signal_quietly(record.pid, signum)
        if current == "paused" and signum == signal.SIGKILL:
            group.thaw()  # a frozen process dies only once thawed


def delete(store: Store, container_id: str, force: bool = False) -> None:
    """Remove a stopped container (or, with ``force``, kill it first);
    a container already gone is fine with ``force``, as runc does."""
    try:
        with store.locked(container_id) as record:
            current = status(store, record)
            if current not in ("stopped", "created") and not force:
                raise StateError(f"cannot delete container {container_id} that is not "
                                 f"stopped: {current}")
            config = stored_config(store, container_id)
            _destroy(store, record)
    except StateError as exc:
        if force and str(exc) == "container does not exist":
            return
        raise
    if config is not None:
        try:
            oci_hooks.run(config.hooks, "poststop", oci_state(store, record))
        except oci_hooks.HookError as exc:
            print(f"pycontainer-runtime: warning: {exc}", file=sys.stderr)


def _destroy(store: Store, record: Record) -> None:
    """Kill every process of the container, remove its cgroup, forget it
    (a cgroup removed already, by hand or by another, is fine: a frozen
    one is thawed only by the killing, which needs it)."""
    if record.cgroup_paths:
        group = cgroups.reopen(record.cgroup_paths, in_share=False)
        group.kill_all()
        group.remove()
    elif init_alive(record):
        sc.signal_quietly(record.pid, signal.SIGKILL)
    shutil.rmtree(store.directory(record.id))


def pause(store: Store, container_id: str) -> None:
    with store.locked(container_id) as record:
        current = status(store, record)
        if current not in ("running", "created"):
            raise StateError(f"container not running: {current}")
        cgroups.reopen(record.cgroup_paths, in_share=False).freeze()


def resume(store: Store, container_id: str) -> None:
    with store.locked(container_id) as record:
        if status(store, record) != "paused":
            raise StateError("container not paused")
        cgroups.reopen(record.cgroup_paths, in_share=False).thaw()


def state(store: Store, container_id: str) -> dict:
    return oci_state(store, store.load(container_id))


def listing(store: Store) -> list[dict]:
    """Every container's state; one removed meanwhile is left out."""
    states = []
    for container_id in store.ids():
        with contextlib.suppress(StateError):
            states.append(state(store, container_id))
    return states


def processes(store: Store, container_id: str) -> list[int]:
    """Every process in the container's cgroup: a stopped one's too, while
    something outlives its init (as runc's ``ps`` shows)."""
    record = store.load(container_id)
    return sorted(cgroups.reopen(record.cgroup_paths, in_share=False).pids())


def stored_config(store: Store, container_id: str) -> oci_config.Config | None:
    """The config as it was at create (for hooks and exec); None if it no
    longer reads (its bundle's root gone is fine: only its text is used)."""
    try:
        with open(store.config_copy(container_id)) as f:
            data = json.load(f)
        record = store.load(container_id)
        return oci_config.parse(data, record.bundle)
    except (OSError, ValueError, ConfigError, StateError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOENT:
            raise
        return None
