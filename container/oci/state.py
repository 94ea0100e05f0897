"""Where the runtime keeps its containers: one directory per container
under the root (``--root``, ``/run/pycontainer-runtime`` by default, as
runc's is ``/run/runc``), root's alone, holding

    state.json    the record below, replaced whole (write, then rename)
    config.json   the bundle's config as it was at create: exec and delete
                  use it, whatever happens to the bundle since
    exec.fifo     while the container is created and not yet started

A container's status is never stored: it is read from the world.  Its
init gone (its PID and start time are checked, so a reused PID does not
count) is ``stopped``; the FIFO still there is ``created``; a frozen
cgroup is ``paused``; else ``running``.  Commands on one container hold
the lock of its directory, and look it up again once they hold it.
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

    def claim(self, container_id: str) -> str:
        """Make a new container's directory, or refuse an id in use."""
        os.makedirs(self.root, 0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        directory = self.directory(container_id)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            raise StateError(f"container with id exists: {container_id}") from None
        return directory

    def save(self, record: Record) -> None:
        directory = self.directory(record.id)
        temporary = os.path.join(directory, "state.json.tmp")
        with open(temporary, "w") as f:
            json.dump(asdict(record), f)
        os.rename(temporary, os.path.join(directory, "state.json"))

    def load(self, container_id: str) -> Record:
        try:
            with open(os.path.join(self.directory(container_id), "state.json")) as f:
                return Record(**json.load(f))
        except FileNotFoundError:
            raise StateError("container does not exist") from None
        except (ValueError, TypeError) as exc:
            raise StateError(f"{container_id}: its state file is unreadable ({exc})") from None

    def ids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(name for name in os.listdir(self.root)
                          if os.path.exists(os.path.join(self.root, name, "state.json")))
        return []

    @contextlib.contextmanager
    def locked(self, container_id: str):
        """Hold the container's lock; yields its record, read under the
        lock (StateError if it does not exist, or went while we waited)."""
        try:
            fd = os.open(self.directory(container_id),
                         os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StateError("container does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load(container_id)
        finally:
            os.close(fd)

    def fifo(self, container_id: str) -> str:
        return os.path.join(self.directory(container_id), "exec.fifo")

    def config_copy(self, container_id: str) -> str:
        return os.path.join(self.directory(container_id), "config.json")


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
