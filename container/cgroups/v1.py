"""The cgroup v1 driver: one directory tree per controller hierarchy.

Controllers used: memory, cpu, cpuacct, cpuset, pids, freezer, blkio and
hugetlb (each where the machine mounts it; cpu and cpuacct may share a
hierarchy or not), and devices, which must be there: a container's
devices are always confined.
"""

from __future__ import annotations

import contextlib
import os
import time

from . import (CONTAINER, PARENT, UNION_CPU_SHARES, CgroupError, Stats, home_of,
               kill_until_empty, make_dirs, own_paths, procs_below, ProcsWriter, read_int,
               read_keyed, remove_dirs, remove_tree, share_of, union_of, write, write_settings)
from .resources import Resources

#: every hierarchy a container joins where the machine mounts it: runc's
#: list, so the container's /sys/fs/cgroup shows what runc's shows
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "devices", "freezer", "blkio",
               "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc", "name=systemd")
NO_DEVICES = "this machine has no cgroup devices hierarchy to confine devices with"
#: swap the kernel does not account is not limited: "unlimited" holds anyway
UNLIMITED_SWAP = ("memory.memsw.limit_in_bytes", "-1")


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


def limit_files(resources: Resources) -> list[tuple[str, str]]:
    """The v1 files and values that express ``resources`` (devices
    aside), in the order they must be written."""
    memory, cpu, block_io = resources.memory, resources.cpu, resources.block_io
    if resources.unified:
        raise CgroupError("unified: cgroup v2 files, and this machine's controllers are "
                          "cgroup v1 (runc refuses them there too)")
    if cpu.idle is not None:
        raise CgroupError("cpu.idle: honoured on cgroup v2 only, as runc does")
    files = [(name, str(value)) for name, value in (
        ("memory.limit_in_bytes", memory.limit),  # before the swap limit it bounds
        ("memory.memsw.limit_in_bytes", memory.swap),
        ("memory.soft_limit_in_bytes", memory.reservation),
        ("memory.swappiness", memory.swappiness),
        ("memory.oom_control", 1 if memory.disable_oom_killer else None),
        ("cpu.shares", cpu.shares),
        ("cpu.cfs_period_us", cpu.period),  # before the quota it bounds
        ("cpu.cfs_quota_us", cpu.quota),
        ("cpu.rt_period_us", cpu.realtime_period),
        ("cpu.rt_runtime_us", cpu.realtime_runtime),
        ("cpuset.cpus", cpu.cpus),
        ("cpuset.mems", cpu.mems),
        ("pids.max", None if resources.pids is None else
         "max" if resources.pids == -1 else resources.pids),
        ("blkio.weight", block_io.weight),
        ("blkio.leaf_weight", block_io.leaf_weight),
    ) if value is not None]
    for device in block_io.weight_device:
        for name, weight in (("blkio.weight_device", device.weight),
                             ("blkio.leaf_weight_device", device.leaf_weight)):
            if weight is not None:
                files.append((name, f"{device.major}:{device.minor} {weight}"))
    for name, devices in (("read_bps_device", block_io.read_bps),
                          ("write_bps_device", block_io.write_bps),
                          ("read_iops_device", block_io.read_iops),
                          ("write_iops_device", block_io.write_iops)):
        files += [(f"blkio.throttle.{name}", f"{d.major}:{d.minor} {d.rate}") for d in devices]
    files += [(f"hugetlb.{h.page_size}.limit_in_bytes", str(h.limit))
              for h in resources.hugepages]
    return files


class CgroupV1:
    def __init__(self, paths: dict[str, str], in_share: bool = True):
        """``in_share``: the front end's layout, where CPU limits go on the
        container's share (see the package's docstring)."""
        self.paths = paths
        self.in_share = in_share

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

    @classmethod
    def create_at(cls, inner: str) -> CgroupV1:
        """The cgroup at ``inner`` in each hierarchy, as runc's cgroupfs
        driver places it; a machine without a devices hierarchy is refused."""
        mounts, own = _mount_points(), own_paths()
        if "devices" not in mounts:
            raise CgroupError(NO_DEVICES)
        paths = {}
        for controller in CONTROLLERS:
            if controller not in mounts:
                continue
            base = mounts[controller] if os.path.isabs(inner) else \
                os.path.join(mounts[controller], own[controller].lstrip("/"))
            paths[controller] = os.path.join(base, inner.lstrip("/"))
            _make_path(base, paths[controller], controller == "cpuset")
        return cls(paths, in_share=False)

    def _limit_home(self, controller: str) -> str | None:
        """Where ``controller``'s limits go."""
        path = self.paths.get(controller)
        if path and self.in_share and controller in ("cpu", "cpuacct"):
            return share_of(path)
        return path

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

    def apply(self, resources: Resources) -> None:
        """Set ``resources``: its limits, then its device rules after
        denying every device."""
        files = limit_files(resources)
        if not os.path.exists(f"{self.paths.get('memory')}/{UNLIMITED_SWAP[0]}"):
            files = [setting for setting in files if setting != UNLIMITED_SWAP]
        write_settings(files, self._limit_home)
        devices = self.paths.get("devices")
        if devices is None:
            raise CgroupError(NO_DEVICES)
        write(f"{devices}/devices.deny", "a")
        for rule in resources.devices:
            write(f"{devices}/devices.{'allow' if rule.allow else 'deny'}", rule)

    def freeze(self) -> None:
        """Freeze every process, waiting until the kernel says FROZEN: a
        cgroup that keeps forking can stay FREEZING, so runc retries, now
        and then thawing for a moment; failing that, it is thawed again."""
        state = self._freezer_state()
        for attempt in range(1000):
            if attempt % 50 == 49:
                write(state, "THAWED")
                time.sleep(0.01)
            write(state, "FROZEN")
            with open(state) as f:
                if f.read().strip() == "FROZEN":
                    return
        write(state, "THAWED")
        raise CgroupError("the container's processes could not be frozen: they keep forking")

    def thaw(self) -> None:
        write(self._freezer_state(), "THAWED")

    def is_frozen(self) -> bool:
        path = self.paths.get("freezer")
        with contextlib.suppress(FileNotFoundError), open(f"{path}/freezer.state") as f:
            return f.read().strip() != "THAWED"
        return False

    def _freezer_state(self) -> str:
        if "freezer" not in self.paths:
            raise CgroupError("this machine has no cgroup freezer hierarchy")
        return f"{self.paths['freezer']}/freezer.state"

    def stats(self) -> Stats:
        memory, pids = (self.paths.get(c, "") for c in ("memory", "pids"))
        limit = read_int(f"{memory}/memory.limit_in_bytes")
        return Stats(
            memory_usage=read_int(f"{memory}/memory.usage_in_bytes"),
            memory_max_usage=read_int(f"{memory}/memory.max_usage_in_bytes"),
            memory_limit=None if limit is None or limit >= 1 << 62 else limit,
            memory_failcnt=read_int(f"{memory}/memory.failcnt"),
            oom_kills=read_keyed(f"{memory}/memory.oom_control").get("oom_kill"),
            cpu_usage_ns=read_int(f"{self._limit_home('cpuacct') or ''}/cpuacct.usage"),
            pids_current=read_int(f"{pids}/pids.current"),
        )

    def pids(self) -> list[int]:
        found = set()
        for path in self.paths.values():
            found |= procs_below(path)
        return sorted(found)

    def kill_all(self) -> None:
        kill_until_empty(self)

    def remove(self) -> None:
        self.kill_all()
        for path in self.paths.values():
            (remove_dirs if self.in_share else remove_tree)(path)


def _make_path(base: str, path: str, cpuset: bool) -> None:
    """mkdir each missing cgroup from ``base`` down to ``path``; a new
    cpuset takes its parent's cpus and mems."""
    directory = base
    for part in os.path.relpath(path, base).split("/"):
        directory = os.path.join(directory, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)
        if cpuset:
            _inherit_cpuset(directory)


def _inherit_cpuset(directory: str) -> None:
    """A new v1 cpuset starts empty; it takes its parent's cpus and mems."""
    parent = os.path.dirname(directory)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(f"{directory}/{name}") as f:
            if f.read().strip():
                continue
        with open(f"{parent}/{name}") as f:
            write(f"{directory}/{name}", f.read().strip())
