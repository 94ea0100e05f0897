"""cgroups: one interface, two drivers (v1 and v2), picked by what the
machine mounts.

A container's cgroups are made under ``pycontainer/`` inside the cgroup
that ``pycontainer`` itself runs in, never elsewhere, and removed when the
container ends::

    pycontainer/NAME/            its share: --cpus and --cpu-shares, so the work
                                 it makes its union daemon do counts against them
    pycontainer/NAME/container   its processes: memory, pids, cpuset, devices
    pycontainer/NAME/union       its union daemon: a memory limit of its own
                                 (see ``union_memory``), a large CPU weight

The daemon is beside the container, not in it: a container at its memory
limit is reclaimed and OOM-killed in its own cgroup, never the daemon that
serves its root (which is also kept from the OOM killer), so it can still be
served, stopped and removed.  On a hybrid host (v1 controllers plus a v2 ``unified``
mount, as this project's machines are) the v1 driver is used; on a pure v2
host, the v2 one.

The OCI face (``pycontainer-runtime``) makes one cgroup at the config's
``linux.cgroupsPath`` instead, as runc's cgroupfs driver does
(:func:`create_at`): an absolute path under each hierarchy's root, a
relative one (by default the container's ID) under the runtime's own
cgroup.  Removing it leaves its parents, as runc does: others may use them.

A driver offers ``add(pid)``, ``apply(resources)`` (``resources.py``),
``freeze()``, ``thaw()``, ``is_frozen()``, ``stats()``, ``pids()``,
``kill_all()``, ``remove()`` and ``paths`` (the container's cgroup per
hierarchy: what to record so a later command can find it again, see
:func:`reopen`); for the front end's layout also
``add_union_daemon(pid, memory)`` and ``releaser()``.  ``apply`` confines
the container's devices to its rules (``devices.py``): the v1 devices
controller, or on v2 an eBPF program (``devices_bpf.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass

PARENT = "pycontainer"
ROOT = "/sys/fs/cgroup"
CONTAINER, UNION = "container", "union"
#: what a union daemon needs beside its container's inodes: its own heap,
#: the files the container holds open (bounded: ``max_open``) and room for
#: the page cache it dirties in the upper while the disk catches up
UNION_MEMORY_BASE = 128 << 20
#: the union daemon's CPU weight beside its container's (8 to 1): a
#: container that spends its CPU quota still has its files served
UNION_CPU_SHARES = 8 * 1024


def union_memory(container_memory: int | None) -> int | None:
    """The union daemon's memory limit for a container limited to
    ``container_memory``; none for a container without one (it may use
    the whole machine anyway).

    The daemon keeps a node for each inode the kernel caches for the
    container's mount, and that cache (about 1 KiB an inode, as the
    node) is charged to the container, whose memory pressure makes the
    kernel drop and forget it: the nodes are bounded by the container's
    limit, so the daemon gets as much again, plus its base."""
    if container_memory is None:
        return None
    return container_memory + UNION_MEMORY_BASE


def share_of(container_path: str) -> str:
    """The container's share, holding it and its union daemon."""
    return os.path.dirname(container_path)


def union_of(container_path: str) -> str:
    return os.path.join(share_of(container_path), UNION)


def home_of(container_path: str) -> str:
    """The cgroup pycontainer itself runs in."""
    return os.path.dirname(os.path.dirname(share_of(container_path)))


def make_dirs(container_path: str) -> None:
    """``pycontainer/``, the share, and its two cgroups, where missing."""
    for directory in (os.path.dirname(share_of(container_path)), share_of(container_path),
                      container_path, union_of(container_path)):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)


def remove_dirs(container_path: str) -> None:
    """Undo :func:`make_dirs` once the container's processes are gone: a
    union daemon still unmounting moves back home; ``pycontainer/`` stays
    while other containers use it."""
    union = union_of(container_path)
    with contextlib.suppress(FileNotFoundError), open(f"{union}/cgroup.procs") as f:
        for pid in f.read().split():
            with contextlib.suppress(ProcessLookupError):
                write(f"{home_of(container_path)}/cgroup.procs", pid)
    for directory in (container_path, union, share_of(container_path)):
        rmdir_patiently(directory)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(share_of(container_path)))


class CgroupError(RuntimeError):
    """A limit the machine's cgroups cannot apply; the message is one line."""


@dataclass(frozen=True)
class Stats:
    memory_usage: int | None = None
    memory_max_usage: int | None = None
    memory_limit: int | None = None
    memory_failcnt: int | None = None
    oom_kills: int | None = None
    cpu_usage_ns: int | None = None
    pids_current: int | None = None


def is_pure_v2() -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == ROOT:
                return fields[fields.index("-") + 1] == "cgroup2"
    return False


def create(name: str):
    """A new, empty cgroup for the container ``name``, in the front end's layout."""
    from . import v1, v2
    return v2.CgroupV2.create(name) if is_pure_v2() else v1.CgroupV1.create(name)


def create_at(inner: str):
    """The OCI container's cgroup at ``inner`` (``resources.inner_path``),
    made where missing."""
    from . import v1, v2
    return v2.CgroupV2.create_at(inner) if is_pure_v2() else v1.CgroupV1.create_at(inner)


def reopen(paths: dict[str, str], in_share: bool = True):
    """The cgroup whose ``paths`` were recorded earlier; ``in_share`` for
    the front end's layout, False for one made by :func:`create_at`."""
    from . import v1, v2
    if "unified" in paths:
        return v2.CgroupV2(paths["unified"], in_share)
    return v1.CgroupV1(paths, in_share)


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return None if text == "max" else int(text)


def read_keyed(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` per line)."""
    try:
        with open(path) as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except FileNotFoundError:
        return {}


class ProcsWriter:
    """``cgroup.procs`` files opened now, to move a pid into them later,
    even from a process whose mount namespace no longer shows them."""

    def __init__(self, paths: list[str]):
        self._fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in paths]

    def move(self, pid: int) -> None:
        for fd in self._fds:
            os.write(fd, str(pid).encode())
        self.close()

    def close(self) -> None:
        """A process that must not hold them (a container's init) drops them."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


#: why a cgroup file a setting needs may be missing
_MISSING_WHY = {
    "memory.memsw.limit_in_bytes": "the kernel does not account swap (swapaccount=1), "
                                   "so memory plus swap cannot be limited",
    "blkio.weight": "no I/O scheduler with weights (CFQ or BFQ) serves this machine's disks",
    "blkio.leaf_weight": "only the CFQ I/O scheduler, gone from current kernels, had it",
    "blkio.weight_device": "no I/O scheduler with weights (CFQ or BFQ) serves this machine's "
                           "disks",
}


def write_settings(settings: list[tuple[str, str]], directory_of) -> None:
    """Write each ``(file, value)``, in order, in the directory
    ``directory_of(controller)`` gives (None: no such hierarchy); refuse
    in one line what the machine lacks or the kernel does not take."""
    for name, value in settings:
        controller = name.split(".")[0]
        directory = directory_of(controller)
        if directory is None:
            raise CgroupError(f"{name}: this machine has no cgroup {controller} hierarchy")
        target = f"{directory}/{name}"
        if not os.path.exists(target):
            why = _MISSING_WHY.get(name, f"the {controller} controller is not available there")
            raise CgroupError(f"{name}: not in {directory} on this machine: {why}")
        try:
            write(target, value)
        except OSError as exc:
            raise CgroupError(f"{name}: the kernel refused {value!r}: {exc.strerror}") from None


def procs_below(path: str) -> set[int]:
    """The processes in the cgroup ``path`` and the cgroups below it."""
    found = set()
    for directory, _, _ in os.walk(path):
        with contextlib.suppress(FileNotFoundError), open(f"{directory}/cgroup.procs") as f:
            found.update(int(line) for line in f if line.strip())
    return found


def kill_until_empty(group) -> None:
    """SIGKILL every process of ``group`` until none is left (new ones may
    fork meanwhile); a frozen group is thawed so that its processes die."""
    for _ in range(200):
        pids = group.pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if group.is_frozen():
            group.thaw()
        time.sleep(0.01)


def remove_tree(path: str) -> None:
    """rmdir the cgroup ``path`` and any made below it, deepest first."""
    for directory, _, _ in sorted(os.walk(path), key=lambda walked: -len(walked[0])):
        rmdir_patiently(directory)


def rmdir_patiently(path: str) -> None:
    """rmdir a cgroup whose last processes may still be on their way out."""
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    os.rmdir(path)


def own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy: {controller or "": path}."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths
