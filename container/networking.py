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

from . import bridge, networks


@dataclass
class Attachment:
    network: str
    address: str
    host_ifname: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Attachment | None:
        return cls(**data) if data else None


def join(network_name: str, owner: str, wanted_ip: str | None) -> Attachment:
    network = networks.get(network_name)
    with networks.locked(network.name):
        address = networks.lease(network, owner, wanted_ip)
        try:
            bridge.ensure_bridge(network)
        except BaseException:
            networks.release(network, address)
            raise
    return Attachment(network.name, str(address))


def wire(attachment: Attachment, pid: int) -> None:
    network = networks.get(attachment.network)
    attachment.host_ifname = bridge.connect(network, pid, attachment.address)


def leave(attachment: Attachment) -> None:
    if attachment.host_ifname:
        bridge.disconnect(attachment.host_ifname)
    with contextlib.suppress(networks.NetworkError):  # removed meanwhile: nothing held
        network = networks.get(attachment.network)
        with networks.locked(network.name):
            networks.release(network, attachment.address)
            if network.name == networks.DEFAULT and not networks.holders(network):
                bridge.remove_bridge(network)
