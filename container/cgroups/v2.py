"""The cgroup v2 driver: one directory in the unified hierarchy.

Controllers are enabled in ``pycontainer/``'s parent as far as the kernel
lets a cgroup that holds processes do so; a limit whose controller is not
available there is refused with a clear error rather than ignored.
Devices are confined by an eBPF program attached to the cgroup
(``devices_bpf.py``), as v2 has no devices controller.
"""

from __future__ import annotations

import contextlib
import os
import time

from . import (CONTAINER, PARENT, ROOT, UNION_CPU_SHARES, CgroupError, Stats, home_of,
               make_dirs, own_paths, ProcsWriter, read_int, read_keyed, remove_dirs, share_of,
               union_of, write)
from . import devices_bpf
from .devices import DEFAULT_ALLOWED

CPU_PERIOD_US = 100_000


#: the limits set on the container's share (with its union daemon), not on it
SHARED = ("cpu.max", "cpu.weight")


def limit_files(limits) -> dict[str, str]:
    """The v2 files and values that express ``limits``."""
    files = {}
    if limits.memory is not None:
        files["memory.max"] = str(limits.memory)
    if limits.memory_swap is not None:
        swap = "max" if limits.memory_swap < 0 else str(limits.memory_swap - limits.memory)
        files["memory.swap.max"] = swap
    if limits.cpus is not None:
        files["cpu.max"] = f"{round(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"
    if limits.cpu_shares is not None:
        files["cpu.weight"] = str(_weight(limits.cpu_shares))
    if limits.cpuset_cpus is not None:
        files["cpuset.cpus"] = limits.cpuset_cpus
    if limits.pids is not None:
        files["pids.max"] = str(limits.pids)
    return files


class CgroupV2:
    def __init__(self, path: str):
        self.path = path
        self.paths = {"unified": path}

    @classmethod
    def create(cls, name: str, root: str = ROOT) -> CgroupV2:
        path = os.path.join(root, own_paths()[""].lstrip("/"), PARENT, name, CONTAINER)
        make_dirs(path)
        _enable_controllers(share_of(path))
        return cls(path)

    def add(self, pid: int) -> None:
        write(f"{self.path}/cgroup.procs", pid)

    def add_union_daemon(self, pid: int, memory: int | None) -> None:
        """Put the container's union daemon in its cgroup, with ``memory``
        as its limit."""
        union = union_of(self.path)
        if memory is not None:  # apply() has made sure the controller is there
            write(f"{union}/memory.max", memory)
        if os.path.exists(f"{union}/cpu.weight"):
            write(f"{union}/cpu.weight", _weight(UNION_CPU_SHARES))
        write(f"{union}/cgroup.procs", pid)

    def releaser(self):
        """What moves a pid back to the cgroup pycontainer runs in."""
        return ProcsWriter([os.path.join(home_of(self.path), "cgroup.procs")])

    def apply(self, limits) -> None:
        """Set ``limits`` and docker's device rules."""
        for name, value in limit_files(limits).items():
            target = f"{share_of(self.path) if name in SHARED else self.path}/{name}"
            if not os.path.exists(target):
                controller = name.split(".")[0]
                raise CgroupError(f"the {controller} controller is not available to "
                                  f"{os.path.dirname(target)} on this machine")
            write(target, value)
        devices_bpf.attach(self.path, DEFAULT_ALLOWED)

    def stats(self) -> Stats:
        memory_max = read_int(f"{self.path}/memory.max")
        events = read_keyed(f"{self.path}/memory.events")
        cpu = read_keyed(f"{share_of(self.path)}/cpu.stat")  # with its union daemon's
        return Stats(
            memory_usage=read_int(f"{self.path}/memory.current"),
            memory_max_usage=read_int(f"{self.path}/memory.peak"),
            memory_limit=memory_max,
            memory_failcnt=events.get("max"),
            oom_kills=events.get("oom_kill"),
            cpu_usage_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
            pids_current=read_int(f"{self.path}/pids.current"),
        )

    def pids(self) -> list[int]:
        with contextlib.suppress(FileNotFoundError), open(f"{self.path}/cgroup.procs") as f:
            return sorted(int(line) for line in f if line.strip())
        return []

    def kill_all(self) -> None:
        if os.path.exists(f"{self.path}/cgroup.kill"):
            write(f"{self.path}/cgroup.kill", 1)
        for _ in range(200):
            if not self.pids():
                return
            time.sleep(0.01)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.kill_all()
        remove_dirs(self.path)


def _weight(shares: int) -> int:
    """runc's conversion of v1 shares (2..262144) to v2 weight (1..10000)."""
    return 1 + ((shares - 2) * 9999) // 262142


def _enable_controllers(share: str) -> None:
    """Make the controllers the kernel offers here available below ``share``."""
    parent = os.path.dirname(share)
    for directory in (os.path.dirname(parent), parent, share):
        with open(f"{directory}/cgroup.controllers") as f:
            available = f.read().split()
        for controller in available:
            with contextlib.suppress(OSError):  # EBUSY where processes live
                write(f"{directory}/cgroup.subtree_control", f"+{controller}")
