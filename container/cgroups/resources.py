"""What a container's cgroup is asked to enforce, as plain data both
drivers apply: read from an OCI config's ``linux.resources`` and
``linux.cgroupsPath`` (runtime-spec ``config-linux.md``), or made from
``pycontainer run``'s options (``spec.Limits.as_resources``).

None is "not set".  As runc reads them, a 0 is the Go zero value engines
write for "not set" too, and -1 for a limit is "unlimited".  What the
config gets wrong is refused here (``ConfigError``); what this machine's
cgroups cannot do is refused by the driver that finds it out
(``CgroupError``).  Refused outright:

* ``memory.kernel`` and ``memory.kernelTCP``: runc 1.1 ignores them with a
  warning, but kernels since 5.16 no longer enforce kernel memory limits,
  so a config asking for one would get nothing; engines write them only
  when a user asks (docker's deprecated ``--kernel-memory``).
* ``network`` (net_cls/net_prio) and ``rdma``: controllers this runtime
  does not drive.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..oci.reader import ConfigError, Reader
from .devices import RUNC_ALLOWED, Rule

_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^\d+[KMG]B$")
_DEVICE_TYPES = ("a", "c", "b")


@dataclass(frozen=True)
class Memory:
    limit: int | None = None          # bytes; -1 unlimited
    reservation: int | None = None    # bytes: a soft limit
    swap: int | None = None           # bytes of memory + swap; -1 unlimited
    swappiness: int | None = None     # 0..100
    disable_oom_killer: bool = False


@dataclass(frozen=True)
class Cpu:
    shares: int | None = None
    quota: int | None = None          # microseconds a period; -1 unlimited
    period: int | None = None         # microseconds
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None           # e.g. "0-1,3"
    mems: str | None = None
    idle: int | None = None


@dataclass(frozen=True)
class WeightDevice:
    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@dataclass(frozen=True)
class ThrottleDevice:
    major: int
    minor: int
    rate: int                         # bytes or operations a second


@dataclass(frozen=True)
class BlockIO:
    weight: int | None = None         # 10..1000
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    read_bps: tuple[ThrottleDevice, ...] = ()
    write_bps: tuple[ThrottleDevice, ...] = ()
    read_iops: tuple[ThrottleDevice, ...] = ()
    write_iops: tuple[ThrottleDevice, ...] = ()


@dataclass(frozen=True)
class HugepageLimit:
    page_size: str                    # e.g. "2MB"
    limit: int                        # bytes


@dataclass(frozen=True)
class Resources:
    #: applied in order after denying every device
    devices: tuple[Rule, ...] = RUNC_ALLOWED
    memory: Memory = field(default_factory=Memory)
    cpu: Cpu = field(default_factory=Cpu)
    pids: int | None = None           # -1 unlimited
    block_io: BlockIO = field(default_factory=BlockIO)
    hugepages: tuple[HugepageLimit, ...] = ()
    #: cgroup v2 files and the values to write to them
    unified: tuple[tuple[str, str], ...] = ()


def parse(section: Reader | None) -> Resources:
    """``linux.resources`` (None when the config has none)."""
    if section is None:
        return Resources()
    rules = section.take_objects("devices", _device)
    memory = section.take_object("memory")
    cpu = section.take_object("cpu")
    pids = section.take_object("pids")
    block_io = section.take_object("blockIO")
    resources = Resources(
        devices=rules + RUNC_ALLOWED,
        memory=_memory(memory) if memory else Memory(),
        cpu=_cpu(cpu) if cpu else Cpu(),
        pids=_pids(pids) if pids else None,
        block_io=_block_io(block_io) if block_io else BlockIO(),
        hugepages=section.take_objects("hugepageLimits", _hugepage_limit),
        unified=_unified(section))
    section.refuse("network", "net_cls and net_prio are not supported")
    section.refuse("rdma", "the rdma controller is not supported")
    section.done()
    return resources


def parse_path(linux: Reader) -> str:
    """``linux.cgroupsPath`` as given ('' when absent): runc's cgroupfs
    forms only, as this runtime does not drive systemd."""
    path = linux.take("cgroupsPath", str, "")
    if path.count(":") == 2:
        raise linux.error("cgroupsPath", f"{path!r} is systemd's slice:prefix:name form, and "
                                         f"this runtime does not drive systemd: give a path")
    return path


def inner_path(cgroups_path: str, container_id: str) -> str:
    """Where the container's cgroup goes, as runc's ``CleanPath`` makes it:
    an absolute path stays one (under each hierarchy's root); a relative
    one, by default the container's ID, is kept from climbing with ``..``
    (it goes under the runtime's own cgroup)."""
    path = cgroups_path or container_id
    inner = os.path.normpath("/" + path).lstrip("/")
    if not inner:
        raise ConfigError(f"linux.cgroupsPath: {path!r} names a cgroup the container "
                          f"does not own (a hierarchy's root or the runtime's own)")
    return "/" + inner if path.startswith("/") else inner


def _device(item: Reader) -> Rule:
    allow = item.take("allow", bool)
    kind = item.take("type", str, "a")
    if kind not in _DEVICE_TYPES:
        raise item.error("type", f"{kind!r} is not a, c or b")
    major, minor = (None if n == -1 else n  # -1 is runc's wildcard
                    for n in (item.take("major", int, None), item.take("minor", int, None)))
    access = item.take("access", str, "")
    if not access or set(access) - set("rwm") or len(set(access)) != len(access):
        raise item.error("access", f"{access!r} is not made of r, w and m")
    if kind == "a" and (major is not None or minor is not None or set(access) != set("rwm")):
        raise item.error("type", "a stands for every device with every access: "
                                 "give major, minor or a narrower access with type c or b")
    for key, number in (("major", major), ("minor", minor)):
        if number is not None and not 0 <= number < 1 << 32:
            raise item.error(key, f"{number} is not a device number")
    item.done()
    return Rule(kind, major, minor, access, allow)


def _memory(section: Reader) -> Memory:
    section.refuse("kernel", "kernel memory limits are no longer enforced by the kernel")
    section.refuse("kernelTCP", "kernel memory limits are no longer enforced by the kernel")
    limit = _limit(section, "limit")
    swap = _limit(section, "swap")
    swappiness = _unsigned(section, "swappiness", zero_is_unset=False)
    if swappiness is not None and swappiness > 100:
        raise section.error("swappiness", f"{swappiness} is not within 0..100")
    if swap not in (None, -1):
        if limit in (None, -1):
            raise section.error("swap", "is memory plus swap: it needs a memory limit")
        if swap < limit:
            raise section.error("swap", f"is memory plus swap: {swap} is below the "
                                        f"memory limit {limit}")
    memory = Memory(limit=limit, reservation=_limit(section, "reservation"), swap=swap,
                    swappiness=swappiness,
                    disable_oom_killer=section.take("disableOOMKiller", bool, False))
    section.done()
    return memory


def _cpu(section: Reader) -> Cpu:
    cpu = Cpu(shares=_unsigned(section, "shares"), quota=_limit(section, "quota"),
              period=_unsigned(section, "period"),
              realtime_runtime=_limit(section, "realtimeRuntime"),
              realtime_period=_unsigned(section, "realtimePeriod"),
              cpus=_cpu_list(section, "cpus"), mems=_cpu_list(section, "mems"),
              idle=section.take("idle", int, None))
    if cpu.idle not in (None, 0, 1):
        raise section.error("idle", f"{cpu.idle} is not 0 or 1")
    section.done()
    return cpu


def _pids(section: Reader) -> int | None:
    limit = _limit(section, "limit")
    section.done()
    return limit


def _block_io(section: Reader) -> BlockIO:
    block_io = BlockIO(
        weight=_weight(section, "weight"), leaf_weight=_weight(section, "leafWeight"),
        weight_device=section.take_objects("weightDevice", _weight_device),
        read_bps=section.take_objects("throttleReadBpsDevice", _throttle_device),
        write_bps=section.take_objects("throttleWriteBpsDevice", _throttle_device),
        read_iops=section.take_objects("throttleReadIOPSDevice", _throttle_device),
        write_iops=section.take_objects("throttleWriteIOPSDevice", _throttle_device))
    section.done()
    return block_io


def _weight_device(item: Reader) -> WeightDevice:
    device = WeightDevice(item.take("major", int), item.take("minor", int),
                          _weight(item, "weight"), _weight(item, "leafWeight"))
    item.done()
    return device


def _throttle_device(item: Reader) -> ThrottleDevice:
    device = ThrottleDevice(item.take("major", int), item.take("minor", int),
                            _unsigned(item, "rate", zero_is_unset=False))
    if device.rate is None:
        raise item.error("rate", "required")
    item.done()
    return device


def _hugepage_limit(item: Reader) -> HugepageLimit:
    page_size = item.take("pageSize", str)
    if not _PAGE_SIZE.match(page_size):
        raise item.error("pageSize", f"{page_size!r} is not a page size such as 2MB")
    limit = HugepageLimit(page_size, _unsigned(item, "limit", zero_is_unset=False))
    if limit.limit is None:
        raise item.error("limit", "required")
    item.done()
    return limit


def _unified(section: Reader) -> tuple[tuple[str, str], ...]:
    files = section.take("unified", dict, {})
    for name, value in files.items():
        if "/" in name or name.count(".") < 1 or name.startswith("."):
            raise section.error(f"unified.{name}", "must be a file name such as memory.high")
        if not isinstance(value, str):
            raise section.error(f"unified.{name}", "must be a string")
    return tuple(files.items())


def _limit(section: Reader, key: str) -> int | None:
    """A signed limit: -1 unlimited, 0 not set; at most an int64, as the
    spec's type (a larger one the kernel would take as 0, a limit of none)."""
    value = section.take(key, int, None)
    if value is not None and value < -1:
        raise section.error(key, f"{value} is below -1 (unlimited)")
    if value is not None and value >= 1 << 63:
        raise section.error(key, f"{value} is above 2^63-1")
    return value or None


def _unsigned(section: Reader, key: str, zero_is_unset: bool = True) -> int | None:
    value = section.take(key, int, None)
    if value is not None and value < 0:
        raise section.error(key, f"{value} is negative")
    if value is not None and value >= 1 << 64:
        raise section.error(key, f"{value} is above 2^64-1")
    return None if zero_is_unset and value == 0 else value


def _weight(section: Reader, key: str) -> int | None:
    weight = _unsigned(section, key)
    if weight is not None and not 10 <= weight <= 1000:
        raise section.error(key, f"{weight} is not within 10..1000")
    return weight


def _cpu_list(section: Reader, key: str) -> str | None:
    value = section.take(key, str, "")
    if value and not _CPU_LIST.match(value):
        raise section.error(key, f"{value!r} is not a list such as 0-1,3")
    return value or None
