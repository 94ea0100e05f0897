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
import os
import secrets
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import syscalls as sc
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
    returns the host end's name.  The container's end is made in its
    namespace, never moved there (a move waits for the kernel's RCU grace
    period), and configured through a netlink socket opened there."""
    host = f"vpc{secrets.token_hex(4)}"
    with open(namespace, "rb") as target:
        with IPRoute() as ip:
            ip.link("add", ifname=host, kind="veth",
                    peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": target.fileno()})
            try:
                ip.link("set", index=_index(ip, host), master=_index(ip, network.bridge),
                        state="up")
            except BaseException:
                _delete_link(host)
                raise
        with _iproute_in(target.fileno()) as ip:
            index = _index(ip, CONTAINER_IFNAME)
            ip.addr("add", index=index, address=address, prefixlen=network.net.prefixlen)
            ip.link("set", index=index, state="up")
            ip.link("set", index=_index(ip, "lo"), state="up")
            ip.route("add", dst="0.0.0.0/0", gateway=str(network.gateway))
    return host


def _iproute_in(namespace_fd: int) -> IPRoute:
    """An IPRoute on a netlink socket of the network namespace
    ``namespace_fd``: made by this thread there, which then comes back
    (pyroute2's own ``netns=`` forks a process for it)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(namespace_fd, sc.CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
    return IPRoute(fileno=sock.detach())


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
