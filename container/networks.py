"""Container networks: what they are, where they are kept, and who holds
which address.

A network is a subnet and a Linux bridge; the bridge has the subnet's first
address and is every container's gateway.  ``bridge`` is the default
network: it always exists (its subnet is ``$PYCONTAINER_BRIDGE_SUBNET``,
else :data:`DEFAULT_SUBNET`), and its bridge ``pyc0`` is made on first use.
Other networks are made with ``pycontainer network create``.

Definitions are JSON files in ``/var/lib/pycontainer/networks``.  Leases
(which container has which address) are files in
``/run/pycontainer/networks/NAME``, one per address, named by it and
holding the container's name; one lock file per network keeps concurrent
``run``s from taking the same address.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass

from .spec import SPECIAL_NETWORKS

NETWORK_DIR = "/var/lib/pycontainer/networks"
LEASE_DIR = "/run/pycontainer/networks"
DEFAULT = "bridge"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_BRIDGE = "pyc0"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class NetworkError(ValueError):
    """A network request that cannot be met; the message is one line."""


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    bridge: str

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.net.network_address + 1


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise NetworkError(f"bad subnet {text!r}: {exc}") from None
    if net.prefixlen > 29:
        raise NetworkError(f"subnet {text} is too small: give a /29 or larger")
    if not net.is_private:
        raise NetworkError(f"subnet {text} is not a private range")
    return net


def get(name: str) -> Network:
    if name == DEFAULT:
        subnet = os.environ.get("PYCONTAINER_BRIDGE_SUBNET", DEFAULT_SUBNET)
        return Network(DEFAULT, str(parse_subnet(subnet)), DEFAULT_BRIDGE)
    try:
        with open(_definition(name)) as f:
            return Network(**json.load(f))
    except FileNotFoundError:
        raise NetworkError(f"no such network: {name}") from None


def all_networks() -> list[Network]:
    names = sorted(n.removesuffix(".json") for n in _listdir(NETWORK_DIR))
    return [get(DEFAULT)] + [get(name) for name in names]


def create(name: str, subnet: str) -> Network:
    if not _NAME.fullmatch(name) or name in (DEFAULT, *SPECIAL_NETWORKS):
        raise NetworkError(f"bad network name {name!r}")
    net = parse_subnet(subnet)
    os.makedirs(NETWORK_DIR, exist_ok=True)
    with locked("networks"):
        for other in all_networks():
            if other.name == name:
                raise NetworkError(f"network {name} exists")
            if other.net.overlaps(net):
                raise NetworkError(f"subnet {net} overlaps network {other.name} ({other.subnet})")
        bridge = "pyc-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        network = Network(name, str(net), bridge)
        with open(_definition(name), "x") as f:
            json.dump(asdict(network), f)
    return network


def remove(network: Network) -> None:
    """Forget a network that no container uses.  The caller holds
    :func:`locked` (and removes the bridge before letting go)."""
    if network.name == DEFAULT:
        raise NetworkError(f"{network.name} is built in and cannot be removed")
    users = holders(network)
    if users:
        raise NetworkError(f"network {network.name} is in use by {', '.join(sorted(users))}")
    os.unlink(_definition(network.name))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(os.path.join(LEASE_DIR, network.name))


def holders(network: Network) -> list[str]:
    """The containers that hold an address on the network."""
    directory = os.path.join(LEASE_DIR, network.name)
    found = []
    for address in _listdir(directory):
        with contextlib.suppress(FileNotFoundError), open(os.path.join(directory, address)) as f:
            found.append(f.read())
    return found


def lease(network: Network, owner: str, wanted: str | None = None) -> str:
    """Give ``owner`` an address: ``wanted`` if it is free, else the first
    free one after the gateway.  The caller holds :func:`locked`."""
    directory = os.path.join(LEASE_DIR, network.name)
    os.makedirs(directory, exist_ok=True)
    taken = set(_listdir(directory))
    if wanted is not None:
        address = _check_wanted(network, wanted)
        if str(address) in taken:
            raise NetworkError(f"address {address} is in use on network {network.name}")
    else:
        free = (a for a in network.net.hosts() if a != network.gateway and str(a) not in taken)
        address = next(free, None)
        if address is None:
            raise NetworkError(f"no address left on network {network.name}")
    with open(os.path.join(directory, str(address)), "x") as f:
        f.write(owner)
    return str(address)


def release(network: Network, address: str, owner: str) -> None:
    """Give back ``owner``'s lease (not one another container took since).
    The caller holds :func:`locked`."""
    path = os.path.join(LEASE_DIR, network.name, address)
    with contextlib.suppress(FileNotFoundError):
        with open(path) as f:
            if f.read() != owner:
                return
        os.unlink(path)


def _check_wanted(network: Network, wanted: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(wanted)
    except ValueError:
        raise NetworkError(f"--ip: bad address {wanted!r}") from None
    if address not in network.net or address in (network.net.network_address,
                                                 network.net.broadcast_address):
        raise NetworkError(f"--ip: {address} is not a host address of {network.subnet}")
    if address == network.gateway:
        raise NetworkError(f"--ip: {address} is the gateway of network {network.name}")
    return address


@contextlib.contextmanager
def locked(what: str):
    """Hold the lock of a network (or of the list of networks)."""
    os.makedirs(LEASE_DIR, exist_ok=True)
    fd = os.open(os.path.join(LEASE_DIR, f".{what}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _definition(name: str) -> str:
    return os.path.join(NETWORK_DIR, f"{name}.json")


def _listdir(path: str) -> list[str]:
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except FileNotFoundError:
        return []
