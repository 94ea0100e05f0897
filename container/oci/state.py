"""Where the runtime keeps its containers: one directory per container
under the root (``--root``, ``/run/pycontainer-runtime`` by default, as
runc's is ``/run/runc``), root's alone, holding

    state.json    the record below, replaced whole (write, then rename)
    config.json   the bundle's config as it was at create: exec and delete
                  use it, whatever happens to the bundle since
    exec.fifo     while the container is created and not yet started

A container's status is never stored: it is read from the world.  Its
init gone (its PID and start time are checked, so a reused PID does not
count) is ``stopped``; a frozen cgroup is ``paused`` (before start too, as
runc says: else it could be neither resumed nor started); the FIFO still
there is ``created``; else ``running``.  Commands on one container hold
the lock of its directory, and look it up again once they hold it.

``create`` holds that lock from the directory's making to its end, and
records the container as soon as its cgroup exists, with no process yet
(PID 0): only a command holding the lock sees that provisional record, so
a create that died at any step is a stopped container that ``delete``
removes whole, and one still under way is not there yet (as under runc;
a hook of its calling the runtime on it is told so, rather than waiting).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field

from .. import cgroups

DEFAULT_ROOT = "/run/pycontainer-runtime"
OCI_VERSION = "1.0.2"
_ID = re.compile(r"^[\w+.-]+$")


class StateError(RuntimeError):
    """What the runtime cannot do to a container; the message is one line."""


def check_id(container_id: str) -> str:
    if not _ID.match(container_id) or container_id in (".", ".."):
        raise StateError(f"invalid container id {container_id!r}: letters, digits, "
                         f"and _ + . - only")
    return container_id


@dataclass
class Record:
    """What the runtime knows of a container beside what it reads."""
    id: str
    bundle: str
    rootfs: str
    pid: int
    pid_start: int | None
    created: str                                   # RFC 3339, UTC
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    console: bool = False                          # its process has a terminal


class Store:
    def __init__(self, root: str = DEFAULT_ROOT):
        self.root = root

    def directory(self, container_id: str) -> str:
        return os.path.join(self.root, check_id(container_id))

    @contextlib.contextmanager
    def claimed(self, container_id: str):
        """Make a new container's directory, or refuse an id in use; hold
        its lock while the container is made."""
        os.makedirs(self.root, 0o700, exist_ok=True)  # an existing one keeps its mode
        directory = self.directory(container_id)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            raise StateError(f"container with id exists: {container_id}") from None
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield directory
        finally:
            os.close(fd)

    def save(self, record: Record) -> None:
        directory = self.directory(record.id)
        temporary = os.path.join(directory, "state.json.tmp")
        with open(temporary, "w") as f:
            json.dump(asdict(record), f)
        os.rename(temporary, os.path.join(directory, "state.json"))

    def load(self, container_id: str, provisional: bool = False) -> Record:
        """The container's record.  ``provisional`` (for a command holding
        the lock) also gives what a create that died left: its provisional
        record, or an empty one if it died before writing that."""
        try:
            with open(os.path.join(self.directory(container_id), "state.json")) as f:
                record = Record(**json.load(f))
        except FileNotFoundError:
            if provisional and os.path.isdir(self.directory(container_id)):
                return Record(container_id, bundle="", rootfs="", pid=0, pid_start=None,
                              created="")
            raise StateError("container does not exist") from None
        except (ValueError, TypeError) as exc:
            raise StateError(f"{container_id}: its state file is unreadable ({exc})") from None
        if record.pid == 0 and not provisional:
            raise StateError("container does not exist")
        return record

    def ids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(name for name in os.listdir(self.root)
                          if os.path.exists(os.path.join(self.root, name, "state.json")))
        return []

    @contextlib.contextmanager
    def locked(self, container_id: str):
        """Hold the container's lock; yields its record, read under the
        lock (StateError if it does not exist, went or was replaced while
        we waited, or is still being created)."""
        directory = self.directory(container_id)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateError("container does not exist") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.load(container_id)  # not there while a create holds the lock
                fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_directory(fd, directory):
                raise StateError("container does not exist")
            yield self.load(container_id, provisional=True)
        finally:
            os.close(fd)

    def fifo(self, container_id: str) -> str:
        return os.path.join(self.directory(container_id), "exec.fifo")

    def config_copy(self, container_id: str) -> str:
        return os.path.join(self.directory(container_id), "config.json")


def _same_directory(fd: int, directory: str) -> bool:
    """Whether ``directory`` is still the one ``fd`` opened (a container
    deleted while we waited, and made again under its id, is another)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(directory))
    except FileNotFoundError:
        return False


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot); None if it is gone
    or a zombie (a container whose init is a zombie has stopped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def init_alive(record: Record) -> bool:
    return record.pid_start is not None and start_time(record.pid) == record.pid_start


def status(store: Store, record: Record) -> str:
    if not init_alive(record):
        return "stopped"
    if record.cgroup_paths and cgroups.reopen(record.cgroup_paths, in_share=False).is_frozen():
        return "paused"
    if os.path.exists(store.fifo(record.id)):
        return "created"
    return "running"


def oci_state(store: Store, record: Record) -> dict:
    """The state as the runtime spec and runc show it."""
    current = status(store, record)
    return {"ociVersion": OCI_VERSION, "id": record.id, "status": current,
            "pid": record.pid if current != "stopped" else 0, "bundle": record.bundle,
            "rootfs": record.rootfs, "created": record.created, "owner": record.owner,
            "annotations": record.annotations}
