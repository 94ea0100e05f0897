"""The cgroup v1 driver: one directory tree per controller hierarchy.

Controllers used: memory, cpu, cpuacct, cpuset, pids (each where the
machine mounts it; cpu and cpuacct may share a hierarchy or not), and
devices, which must be there: a container's devices are always confined.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from . import (CONTAINER, PARENT, UNION_CPU_SHARES, CgroupError, Stats, home_of, make_dirs,
               own_paths, ProcsWriter, read_int, read_keyed, remove_dirs, share_of, union_of,
               write)
from .devices import DEFAULT_ALLOWED

CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "devices")
CFS_PERIOD_US = 100_000


def _mount_points() -> dict[str, str]:
    """controller -> where its v1 hierarchy is mounted."""
    points = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup":
                for option in fields[sep + 3].split(","):
                    points[option] = fields[4]
    return points


class CgroupV1:
    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    @classmethod
    def create(cls, name: str) -> CgroupV1:
        mounts, own = _mount_points(), own_paths()
        paths = {}
        for controller in CONTROLLERS:
            if controller not in mounts:
                continue
            path = os.path.join(mounts[controller], own[controller].lstrip("/"), PARENT, name,
                                CONTAINER)
            make_dirs(path)
            if controller == "cpuset":
                for directory in (os.path.dirname(share_of(path)), share_of(path), path,
                                  union_of(path)):
                    _inherit_cpuset(directory)
            paths[controller] = path
        return cls(paths)

    def add(self, pid: int) -> None:
        for path in self.paths.values():
            write(os.path.join(path, "cgroup.procs"), pid)

    def add_union_daemon(self, pid: int, memory: int | None) -> None:
        """Put the container's union daemon in its cgroup, with ``memory``
        as its limit."""
        for controller, path in self.paths.items():
            union = union_of(path)
            if controller == "memory" and memory is not None:
                write(f"{union}/memory.limit_in_bytes", memory)
            if controller == "cpu":
                write(f"{union}/cpu.shares", UNION_CPU_SHARES)
            write(f"{union}/cgroup.procs", pid)

    def releaser(self):
        """What moves a pid back to the cgroup pycontainer runs in."""
        return ProcsWriter([os.path.join(home_of(path), "cgroup.procs")
                            for path in self.paths.values()])

    def apply(self, limits) -> None:
        """Set ``limits`` and docker's device rules."""
        memory, cpu, cpuset, pids = (self.paths.get(c) for c in ("memory", "cpu", "cpuset", "pids"))
        if limits.memory is not None:
            _require(memory, "--memory")
            write(f"{memory}/memory.limit_in_bytes", limits.memory)
        if limits.memory_swap is not None:
            _require(memory, "--memory-swap")
            swap_file = f"{memory}/memory.memsw.limit_in_bytes"
            if not os.path.exists(swap_file):
                raise CgroupError("--memory-swap: this kernel does not account swap")
            write(swap_file, limits.memory_swap)
        if limits.cpus is not None:
            _require(cpu, "--cpus")
            write(f"{share_of(cpu)}/cpu.cfs_period_us", CFS_PERIOD_US)
            write(f"{share_of(cpu)}/cpu.cfs_quota_us", round(limits.cpus * CFS_PERIOD_US))
        if limits.cpu_shares is not None:
            _require(cpu, "--cpu-shares")
            write(f"{share_of(cpu)}/cpu.shares", limits.cpu_shares)
        if limits.cpuset_cpus is not None:
            _require(cpuset, "--cpuset-cpus")
            write(f"{cpuset}/cpuset.cpus", limits.cpuset_cpus)
        if limits.pids is not None:
            _require(pids, "--pids-limit")
            write(f"{pids}/pids.max", limits.pids)
        _restrict_devices(self.paths.get("devices"))

    def stats(self) -> Stats:
        memory, cpuacct, pids = (self.paths.get(c, "") for c in ("memory", "cpuacct", "pids"))
        limit = read_int(f"{memory}/memory.limit_in_bytes")
        return Stats(
            memory_usage=read_int(f"{memory}/memory.usage_in_bytes"),
            memory_max_usage=read_int(f"{memory}/memory.max_usage_in_bytes"),
            memory_limit=None if limit is None or limit >= 1 << 62 else limit,
            memory_failcnt=read_int(f"{memory}/memory.failcnt"),
            oom_kills=read_keyed(f"{memory}/memory.oom_control").get("oom_kill"),
            cpu_usage_ns=read_int(f"{share_of(cpuacct)}/cpuacct.usage"),
            pids_current=read_int(f"{pids}/pids.current"),
        )

    def pids(self) -> list[int]:
        found = set()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError), open(f"{path}/cgroup.procs") as f:
                found.update(int(line) for line in f if line.strip())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process, until none is left (new ones may fork meanwhile)."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for path in self.paths.values():
            remove_dirs(path)


def _require(path: str | None, option: str) -> None:
    if path is None:
        raise CgroupError(f"{option}: this machine has no cgroup controller for it")


def _restrict_devices(path: str | None) -> None:
    """Deny every device, then allow docker's defaults."""
    _require(path, "confining devices")
    write(f"{path}/devices.deny", "a")
    for rule in DEFAULT_ALLOWED:
        write(f"{path}/devices.allow", rule)


def _inherit_cpuset(directory: str) -> None:
    """A new v1 cpuset starts empty; it takes its parent's cpus and mems."""
    parent = os.path.dirname(directory)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(f"{directory}/{name}") as f:
            if f.read().strip():
                continue
        with open(f"{parent}/{name}") as f:
            write(f"{directory}/{name}", f.read().strip())
