"""The cgroup v2 driver: one directory in the unified hierarchy.

Controllers are enabled in the cgroup's ancestors as far as the kernel
lets a cgroup that holds processes do so; a limit whose controller is not
available there is refused with a clear error rather than ignored.
Devices are confined by an eBPF program attached to the cgroup
(``devices_bpf.py``), as v2 has no devices controller.  The OCI settings,
written for v1, are converted as runc converts them.
"""

from __future__ import annotations

import contextlib
import os
import time

from . import (CONTAINER, PARENT, ROOT, UNION_CPU_SHARES, CgroupError, Stats, home_of,
               kill_until_empty, make_dirs, own_paths, procs_below, ProcsWriter, read_int,
               read_keyed, remove_dirs, remove_tree, share_of, union_of, write, write_settings)
from . import devices_bpf
from .resources import Resources


def limit_files(resources: Resources) -> list[tuple[str, str]]:
    """The v2 files and values that express ``resources`` (devices
    aside), in the order they must be written; the unified ones last, so
    that they override."""
    memory, cpu, block_io = resources.memory, resources.cpu, resources.block_io
    for setting, value, why in (
            ("memory.swappiness", memory.swappiness, "cgroup v2 has no swappiness"),
            ("memory.disableOOMKiller", memory.disable_oom_killer or None,
             "cgroup v2 cannot keep the OOM killer off a cgroup"),
            ("cpu.realtimeRuntime", cpu.realtime_runtime, "cgroup v2 has no realtime budget"),
            ("cpu.realtimePeriod", cpu.realtime_period, "cgroup v2 has no realtime budget"),
            ("blockIO.leafWeight", block_io.leaf_weight, "cgroup v2 has no leaf weights"),
            ("blockIO.weightDevice[].leafWeight",
             any(d.leaf_weight is not None for d in block_io.weight_device) or None,
             "cgroup v2 has no leaf weights")):
        if value is not None:
            raise CgroupError(f"{setting}: {why}")
    files = [(name, str(value)) for name, value in (
        ("memory.max", _max(memory.limit)),
        ("memory.swap.max", _swap(memory.limit, memory.swap)),
        ("memory.low", memory.reservation),
        ("cpu.weight", None if cpu.shares is None else _weight(cpu.shares)),
        ("cpu.max", _cpu_max(cpu.quota, cpu.period)),
        ("cpu.idle", cpu.idle),
        ("cpuset.cpus", cpu.cpus),
        ("cpuset.mems", cpu.mems),
        ("pids.max", _max(resources.pids)),
        ("io.weight", None if block_io.weight is None else _io_weight(block_io.weight)),
    ) if value is not None]
    files += [("io.weight", f"{d.major}:{d.minor} {_io_weight(d.weight)}")
              for d in block_io.weight_device if d.weight is not None]
    for key, devices in (("rbps", block_io.read_bps), ("wbps", block_io.write_bps),
                         ("riops", block_io.read_iops), ("wiops", block_io.write_iops)):
        files += [("io.max", f"{d.major}:{d.minor} {key}={d.rate}") for d in devices]
    files += [(f"hugetlb.{h.page_size}.max", str(h.limit)) for h in resources.hugepages]
    return files + list(resources.unified)


class CgroupV2:
    def __init__(self, path: str, in_share: bool = True):
        """``in_share``: the front end's layout, where CPU limits go on the
        container's share (see the package's docstring)."""
        self.path = path
        self.paths = {"unified": path}
        self.in_share = in_share

    @classmethod
    def create(cls, name: str, root: str = ROOT) -> CgroupV2:
        path = os.path.join(root, own_paths()[""].lstrip("/"), PARENT, name, CONTAINER)
        make_dirs(path)
        _enable_controllers(share_of(path), os.path.dirname(os.path.dirname(share_of(path))))
        return cls(path)

    @classmethod
    def create_at(cls, inner: str, root: str = ROOT) -> CgroupV2:
        """The cgroup at ``inner``, as runc's fs2 driver places it: a
        relative path goes beside the runtime's own cgroup (a cgroup with
        processes in it cannot give its controllers to a child)."""
        base = root if os.path.isabs(inner) else \
            os.path.join(root, os.path.dirname(own_paths()[""]).lstrip("/"))
        path = os.path.join(base, inner.lstrip("/"))
        os.makedirs(path, exist_ok=True)
        _enable_controllers(os.path.dirname(path), root)
        return cls(path, in_share=False)

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

    def _limit_home(self, controller: str) -> str:
        return share_of(self.path) if self.in_share and controller == "cpu" else self.path

    def apply(self, resources: Resources) -> None:
        """Set ``resources``: its limits, then its device rules (in place
        of any set before)."""
        write_settings(limit_files(resources), self._limit_home)
        devices_bpf.attach(self.path, resources.devices)

    def freeze(self) -> None:
        """Freeze every process, waiting (10 s at most, as runc) until
        ``cgroup.events`` says the cgroup is frozen; failing that, thaw it."""
        write(self._freeze_file(), 1)
        for _ in range(1000):
            if self.is_frozen():
                return
            time.sleep(0.01)
        self.thaw()
        raise CgroupError("the container's processes could not be frozen in 10 s")

    def thaw(self) -> None:
        write(self._freeze_file(), 0)

    def is_frozen(self) -> bool:
        return read_keyed(f"{self.path}/cgroup.events").get("frozen") == 1

    def _freeze_file(self) -> str:
        if not os.path.exists(f"{self.path}/cgroup.freeze"):
            raise CgroupError("this kernel's cgroup v2 has no freezer (cgroup.freeze)")
        return f"{self.path}/cgroup.freeze"

    def stats(self) -> Stats:
        memory_max = read_int(f"{self.path}/memory.max")
        events = read_keyed(f"{self.path}/memory.events")
        cpu = read_keyed(f"{self._limit_home('cpu')}/cpu.stat")  # with its union daemon's
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
        return sorted(procs_below(self.path))

    def kill_all(self) -> None:
        if os.path.exists(f"{self.path}/cgroup.kill"):  # kills frozen processes too
            write(f"{self.path}/cgroup.kill", 1)
        kill_until_empty(self)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.kill_all()
        (remove_dirs if self.in_share else remove_tree)(self.path)


def _max(limit: int | None) -> str | int | None:
    return "max" if limit == -1 else limit


def _swap(memory: int | None, swap: int | None) -> str | int | None:
    """runc's conversion: v2 limits swap alone, v1 (and OCI) memory plus swap."""
    if swap is None or swap == -1:
        return _max(swap)
    return swap - memory


def _cpu_max(quota: int | None, period: int | None) -> str | None:
    """``cpu.max``: the quota, and the period when one is given (the
    kernel keeps its own otherwise)."""
    if quota is None and period is None:
        return None
    return " ".join(str(v) for v in ("max" if quota in (None, -1) else quota, period) if v)


def _weight(shares: int) -> int:
    """runc's conversion of v1 shares (2..262144) to v2 weight (1..10000)."""
    return 1 + ((shares - 2) * 9999) // 262142


def _io_weight(weight: int) -> int:
    """runc's conversion of a blkio weight (10..1000) to an io one (1..10000)."""
    return 1 + (weight - 10) * 9999 // 990


def _enable_controllers(directory: str, top: str) -> None:
    """Make the controllers the kernel offers available below ``directory``,
    enabling them in each cgroup from ``top`` down to it."""
    chain = [directory]
    while chain[-1] != top and len(chain[-1]) > len(top):
        chain.append(os.path.dirname(chain[-1]))
    for cgroup in reversed(chain):
        with open(f"{cgroup}/cgroup.controllers") as f:
            available = f.read().split()
        for controller in available:
            with contextlib.suppress(OSError):  # EBUSY where processes live
                write(f"{cgroup}/cgroup.subtree_control", f"+{controller}")
