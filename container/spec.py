"""What a container is, as plain validated data, and the parsers that turn
``docker run``-style option values into it.

Every parser raises :class:`SpecError` with a one-line message that names
the option and the bad value; nothing here touches the system.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from .cgroups.devices import DEFAULT_ALLOWED
from .cgroups.resources import Cpu, Memory, Resources
from .ports import Published

#: the CPU period that --cpus is a share of, as docker sets it
CPU_PERIOD_US = 100_000
MIN_MEMORY = 6 * 1024 * 1024  # docker's floor: below it a container cannot start
#: A cgroup keeps a limit as a signed 64-bit count: 8 EiB and up it cannot take.
MAX_SIZE = 1 << 63
#: runc's bound on user and group IDs (2^31 - 1); 2^32 - 1 is "no ID" to the kernel.
MAX_ID = (1 << 31) - 1
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class SpecError(ValueError):
    """A container option that cannot be honoured; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """cgroup limits; None means "not limited"."""

    memory: int | None = None          # bytes
    memory_swap: int | None = None     # bytes of memory + swap; -1 for unlimited
    cpus: float | None = None          # cores, e.g. 1.5
    cpu_shares: int | None = None      # relative weight, docker's 2..262144
    cpuset_cpus: str | None = None     # e.g. "0-1,3"
    pids: int | None = None

    def as_resources(self) -> Resources:
        """The same limits as the cgroup drivers take them (and as an OCI
        config says them), with docker's device rules."""
        return Resources(
            devices=DEFAULT_ALLOWED,
            memory=Memory(limit=self.memory, swap=self.memory_swap),
            cpu=Cpu(shares=self.cpu_shares, cpus=self.cpuset_cpus,
                    quota=None if self.cpus is None else round(self.cpus * CPU_PERIOD_US),
                    period=None if self.cpus is None else CPU_PERIOD_US),
            pids=self.pids)


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: tuple[str, ...]
    name: str
    hostname: str
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: User = User()
    mounts: tuple[BindMount, ...] = ()
    read_only: bool = False
    limits: Limits = field(default_factory=Limits)
    tty: bool = False
    interactive: bool = False
    seccomp: bool = True
    network: str = "bridge"            # none (loopback only), host, or a network's name
    ip: str | None = None              # the address wanted on the network
    dns: tuple[str, ...] = ()          # name servers; the host's when empty
    publish: tuple[Published, ...] = ()
    storage_size: int | None = None    # bytes its writable branch may hold (a pyunion quota)


def spec_from_dict(data: dict) -> ContainerSpec:
    """A spec saved with ``dataclasses.asdict``, back as a spec."""
    return ContainerSpec(**{
        **data,
        "command": tuple(data["command"]),
        "env": tuple(tuple(pair) for pair in data["env"]),
        "user": User(**data["user"]),
        "mounts": tuple(BindMount(**m) for m in data["mounts"]),
        "limits": Limits(**data["limits"]),
        "dns": tuple(data["dns"]),
        "publish": tuple(Published(**p) for p in data["publish"]),
    })


def parse_size(text: str, option: str, base: int = 1024) -> int:
    """``256m``, ``1g``, ``1.5G``, ``512kb``, ``1024`` (bytes), as docker reads them:
    k is 1024 bytes, or 1000 with ``base=1000`` (docker's log sizes)."""
    match = _SIZE.match(text)
    if not match:
        raise SpecError(f"{option}: invalid size {text!r} (use a number with b, k, m or g)")
    number, unit = match.groups()
    size = float(number) * base ** _POWERS[unit.lower()]
    if size >= MAX_SIZE:
        raise SpecError(f"{option}: {text!r} is too big (the most is just under 8 EiB)")
    return int(size)


def parse_memory(text: str) -> int:
    size = parse_size(text, "--memory")
    if size < MIN_MEMORY:
        raise SpecError(f"--memory: {text!r} is below the minimum of 6m")
    return size


def parse_memory_swap(text: str, memory: int | None) -> int:
    if text.strip() == "-1":
        return -1
    size = parse_size(text, "--memory-swap")
    if memory is None:
        raise SpecError("--memory-swap needs --memory")
    if size < memory:
        raise SpecError(f"--memory-swap: {text!r} is less than --memory")
    return size


def _number(text: str, option: str, kind=int):
    try:
        return kind(text)
    except ValueError:
        raise SpecError(f"{option}: invalid number {text!r}") from None


def parse_cpus(text: str) -> float:
    cpus = _number(text, "--cpus", float)
    available = os.cpu_count() or 1
    if not 0.01 <= cpus <= available:
        raise SpecError(f"--cpus: {text!r} is outside 0.01..{available} (cores on this machine)")
    return cpus


def parse_cpu_shares(text: str) -> int:
    shares = _number(text, "--cpu-shares")
    if not 2 <= shares <= 262144:
        raise SpecError(f"--cpu-shares: {shares} is outside 2..262144")
    return shares


def parse_cpuset(text: str) -> str:
    available = os.cpu_count() or 1
    cpus = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise SpecError(f"--cpuset-cpus: invalid list {text!r} (use e.g. 0-1,3)")
        low, high = int(first), int(last) if sep else int(first)
        if low > high or high >= available:
            raise SpecError(f"--cpuset-cpus: {part!r} is not among cpus 0-{available - 1}")
        cpus.update(range(low, high + 1))
    return text


def parse_pids_limit(text: str) -> int | None:
    limit = _number(text, "--pids-limit")
    return None if limit <= 0 else limit


def parse_user(text: str) -> User:
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise SpecError(f"--user: {text!r} must be UID or UID:GID (numbers)")
    user = User(int(uid), int(gid) if gid else int(uid))
    if max(user.uid, user.gid) > MAX_ID:
        raise SpecError(f"--user: {text!r} is out of range (IDs go from 0 to {MAX_ID})")
    return user


def parse_volume(text: str) -> BindMount:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise SpecError(f"--volume: {text!r} must be HOST:CONTAINER[:ro|rw]")
    source, target = parts[:2]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise SpecError(f"--volume: unknown mode {mode!r} in {text!r} (use ro or rw)")
    if not os.path.isabs(source) or not os.path.exists(source):
        raise SpecError(f"--volume: host path {source!r} must be an existing absolute path")
    if not os.path.isabs(target) or ".." in target.split("/"):
        raise SpecError(f"--volume: container path {target!r} must be absolute, without '..'")
    target = "/" + os.path.normpath(target).lstrip("/")
    if is_reserved_destination(target):
        raise SpecError(f"--volume: cannot mount onto {target}: / and what is under "
                        f"{', '.join(RESERVED_DESTINATIONS)} belong to the runtime")
    return BindMount(os.path.realpath(source), target, mode == "ro")


#: where a volume may not go (as docker and runc refuse): the runtime's own mounts
RESERVED_DESTINATIONS = ("/proc", "/sys", "/dev")


def is_reserved_destination(path: str) -> bool:
    """Whether the container path ``path`` (normalised) is ``/`` or in a
    file system the runtime mounts."""
    return path == "/" or any(path == reserved or path.startswith(reserved + "/")
                              for reserved in RESERVED_DESTINATIONS)


def parse_env(text: str) -> tuple[str, str]:
    """``KEY=VALUE``; a bare ``KEY`` takes the caller's value, as docker does."""
    key, sep, value = text.partition("=")
    if not _ENV_NAME.match(key):
        raise SpecError(f"--env: invalid variable name in {text!r}")
    if not sep:
        if key not in os.environ:
            raise SpecError(f"--env: {key} is not set here, give {key}=VALUE")
        value = os.environ[key]
    return key, value


def read_env_file(path: str) -> list[tuple[str, str]]:
    """Lines of ``KEY=VALUE``; blank lines and ``#`` comments are skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SpecError(f"--env-file: {path}: {exc.strerror}") from None
    return [parse_env(line.strip()) for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


def parse_storage_opts(options) -> int | None:
    """The bytes a container may store (``--storage-opt size=SIZE``, as
    docker's), or None: only ``size`` is understood."""
    size = None
    for option in options:
        key, sep, value = option.partition("=")
        if key != "size" or not sep:
            raise SpecError(f"--storage-opt: {option!r} is not supported (only size=SIZE)")
        size = parse_size(value, "--storage-opt size")
        if size == 0:
            raise SpecError(f"--storage-opt size: {value!r} must be more than 0")
    return size


def parse_security_opts(options) -> bool:
    """Whether seccomp stays on: only ``seccomp=unconfined`` is understood."""
    seccomp = True
    for option in options:
        if option != "seccomp=unconfined":
            raise SpecError(f"--security-opt: {option!r} is not supported "
                            "(only seccomp=unconfined)")
        seccomp = False
    return seccomp


#: network modes that are not networks of containers
SPECIAL_NETWORKS = ("none", "host")


def check_network(network: str, ip: str | None, publish: tuple[Published, ...]) -> str:
    """``none``, ``host`` or a network's name (the runtime finds it);
    ``--ip`` and ``-p`` need a network of containers."""
    if not _NAME.match(network):
        raise SpecError(f"--network: bad network name {network!r}")
    if network in SPECIAL_NETWORKS and (ip or publish):
        raise SpecError(f"{'--ip' if ip else '-p'} needs a network, not --network {network}")
    return network


def parse_dns(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SpecError(f"--dns: {text!r} is not an IP address") from None


def check_name(name: str) -> str:
    if not _NAME.match(name) or len(name) > 64:
        raise SpecError(f"--name: invalid name {name!r} (letters, digits, _ . -; up to 64)")
    return name


def check_hostname(hostname: str) -> str:
    if not _HOSTNAME.match(hostname):
        raise SpecError(f"--hostname: invalid host name {hostname!r}")
    return hostname


def check_workdir(path: str) -> str:
    if not os.path.isabs(path):
        raise SpecError(f"--workdir: {path!r} must be an absolute path")
    return os.path.normpath(path)


def default_env(hostname: str, tty: bool) -> list[tuple[str, str]]:
    """What docker puts in every container's environment."""
    env = [("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
           ("HOSTNAME", hostname), ("HOME", "/root")]
    if tty:
        env.append(("TERM", "xterm"))
    return env
