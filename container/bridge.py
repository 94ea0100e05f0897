"""A network's bridge and each container's veth pair, made by netlink
(pyroute2), in the network namespace the runtime runs in (the host's).

The bridge holds the subnet's gateway address.  Forwarding is switched off
on it, so the host routes nothing that arrives from one network to another
(containers of one network talk over the bridge itself, which needs no
routing): networks stay apart without a firewall rule.  The host reaches
every container directly, as the gateway of its subnet.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .networks import Network

CONTAINER_IFNAME = "eth0"


def ensure_bridge(network: Network) -> None:
    """Make the network's bridge unless it is there (concurrent callers may
    race: whoever comes second finds it made)."""
    with IPRoute() as ip:
        with _unless(errno.EEXIST):
            ip.link("add", ifname=network.bridge, kind="bridge")
        index = _index(ip, network.bridge)
        with _unless(errno.EEXIST):
            ip.addr("add", index=index, address=str(network.gateway),
                    prefixlen=network.net.prefixlen)
        ip.link("set", index=index, state="up")
    with open(f"/proc/sys/net/ipv4/conf/{network.bridge}/forwarding", "w") as f:
        f.write("0")


def host_routes() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes to networks (not its default route)."""
    with IPRoute() as ip:
        return [ipaddress.IPv4Network(f"{route.get_attr('RTA_DST')}/{route['dst_len']}")
                for route in ip.get_routes(family=socket.AF_INET, table=254)
                if route["dst_len"] and route.get_attr("RTA_DST")]


def remove_bridge(network: Network) -> None:
    _delete_link(network.bridge)


def connect(network: Network, namespace: str, address: str) -> str:
    """Give the network namespace at ``namespace`` an ``eth0`` on the network,
    with ``address`` and a default route via the gateway, and ``lo`` up;
    returns the host end's name."""
    tag = secrets.token_hex(4)
    host, peer = f"vpc{tag}", f"vpt{tag}"
    with IPRoute() as ip:
        ip.link("add", ifname=host, kind="veth", peer=peer)
        try:
            ip.link("set", index=_index(ip, host), master=_index(ip, network.bridge), state="up")
            with open(namespace, "rb") as target:
                ip.link("set", index=_index(ip, peer), net_ns_fd=target.fileno())
        except BaseException:
            _delete_link(host)
            raise
    with IPRoute(netns=namespace) as ip:
        index = _index(ip, peer)
        ip.link("set", index=index, ifname=CONTAINER_IFNAME)
        ip.addr("add", index=index, address=address, prefixlen=network.net.prefixlen)
        ip.link("set", index=index, state="up")
        ip.link("set", index=_index(ip, "lo"), state="up")
        ip.route("add", dst="0.0.0.0/0", gateway=str(network.gateway))
    return host


def disconnect(host_ifname: str) -> None:
    """Remove a container's veth pair (gone already if its namespace is)."""
    _delete_link(host_ifname)


def _delete_link(ifname: str) -> None:
    with IPRoute() as ip, _unless(errno.ENODEV):
        for index in ip.link_lookup(ifname=ifname):
            ip.link("del", index=index)


def _index(ip: IPRoute, ifname: str) -> int:
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise OSError(errno.ENODEV, f"no interface {ifname}")
    return found[0]


@contextlib.contextmanager
def _unless(code: int):
    """Let a netlink error with this errno pass (EEXIST: made already)."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code != code:
            raise
