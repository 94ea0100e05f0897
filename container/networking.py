"""A container's place on a network, from its lease to its removal.

``join`` leases the address and makes sure the bridge is there; ``wire``
gives the container's namespace its ``eth0`` once it exists; ``leave``
undoes both, whatever state a container was left in.  The default
network's bridge goes when its last container leaves, so nothing of it
stays on the host; a made network's bridge stays until ``network rm``.
Lease and bridge change under the network's lock, so a container that
joins while the last one leaves never loses its bridge.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from . import bridge, networks


@dataclass
class Attachment:
    network: str
    address: str
    host_ifname: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Attachment | None:
        return cls(**data) if data else None


def create(name: str, subnet: str) -> networks.Network:
    """A new network, on a subnet that neither another network nor the
    host's own routes use."""
    net = networks.parse_subnet(subnet)
    with _netlink_errors(name):
        routes = bridge.host_routes()
    for route in routes:
        if route.overlaps(net):
            raise networks.NetworkError(f"subnet {net} overlaps the host's route to {route}")
    return networks.create(name, subnet)


def remove(name: str) -> None:
    """Remove a network no container uses, with its bridge."""
    network = networks.get(name)
    with networks.locked(name), _netlink_errors(name):
        networks.remove(network)
        bridge.remove_bridge(network)


def join(network_name: str, owner: str, wanted_ip: str | None) -> Attachment:
    with networks.locked(network_name), _netlink_errors(network_name):
        network = networks.get(network_name)  # under the lock: not being removed
        address = networks.lease(network, owner, wanted_ip)
        try:
            bridge.ensure_bridge(network)
        except BaseException:
            networks.release(network, address, owner)
            _remove_bridge_if_unused(network)
            raise
    return Attachment(network.name, address)


def wire(attachment: Attachment, namespace: str) -> None:
    """Give the network namespace at ``namespace`` its link to the network."""
    with _netlink_errors(attachment.network):
        network = networks.get(attachment.network)
        attachment.host_ifname = bridge.connect(network, namespace, attachment.address)


def leave(attachment: Attachment, owner: str) -> None:
    """Undo ``join`` and ``wire`` once the container's processes are gone."""
    with _netlink_errors(attachment.network):
        if attachment.host_ifname:
            bridge.disconnect(attachment.host_ifname)
        with contextlib.suppress(networks.NetworkError):  # removed meanwhile: nothing held
            network = networks.get(attachment.network)
            with networks.locked(network.name):
                networks.release(network, attachment.address, owner)
                _remove_bridge_if_unused(network)


def _remove_bridge_if_unused(network: networks.Network) -> None:
    """The default network's bridge lives only while containers use it."""
    if network.name == networks.DEFAULT and not networks.holders(network):
        bridge.remove_bridge(network)


@contextlib.contextmanager
def _netlink_errors(name: str):
    """A failure of the kernel's networking as a one-line error."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise networks.NetworkError(f"network {name}: {exc}") from None
