"""The front end's root file system: what ``docker run`` gives a
container, as a :class:`~container.oci.mounts.Plan` that the OCI core's
executor (``oci.mounts.setup``) carries out from inside the container's new
mount namespace, so both faces set up a root one way.

docker's mounts (proc, a ``/dev`` tmpfs with devpts, shm and mqueue, a
read-only sysfs), the per-container ``/etc`` files, the user's volumes
(none of them may lead, through the image's symlinks, into what the
runtime mounts), and docker's masked and read-only paths.

What a container makes must not serve anyone outside it: the union is
mounted ``nosuid,nodev`` on the host and regains ``suid`` only in the
container's own mount namespace, and no mount a container can make device
nodes on honours them (``/dev`` is ``nodev``, so its standard devices are
the host's, bound), so a node made in the container opens for no one, in
it or on the host.
"""

from __future__ import annotations

import glob
import os

from . import syscalls as sc
from .oci import mounts as oci_mounts
from .oci.mounts import Mount, Plan
from .spec import RESERVED_DESTINATIONS, ContainerSpec

#: docker's list (moby's default spec); the globs match per-CPU entries
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
                "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
                "/sys/devices/system/cpu/cpu*/thermal_throttle")
READ_ONLY_PATHS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
ETC_FILES = ("hostname", "hosts", "resolv.conf")


def prepare(root: str, spec: ContainerSpec, etc_dir: str) -> None:
    """Everything up to and including ``pivot_root``; the caller is then in
    the new root."""
    oci_mounts.setup(root, plan_from_spec(spec, etc_dir))


def plan_from_spec(spec: ContainerSpec, etc_dir: str) -> Plan:
    """docker's root file system for ``spec``.  The masked paths' globs are
    matched here, on the sysfs the container will mount (call it before
    ``pivot_root``, where ``/sys`` is still the host's)."""
    hardened = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    mounts = (
        Mount("/proc", "proc", "proc", hardened),
        Mount("/sys", "sysfs", "sysfs", hardened | sc.MS_RDONLY),
        Mount("/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, data="mode=755,size=65536k"),
        Mount("/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
              data="newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount("/dev/shm", "tmpfs", "shm", hardened, data="mode=1777,size=65536k"),
        Mount("/dev/mqueue", "mqueue", "mqueue", hardened),
        *(Mount(f"/etc/{name}", "bind", os.path.join(etc_dir, name), sc.MS_BIND | sc.MS_REC)
          for name in ETC_FILES),
        *(Mount(volume.target, "bind", volume.source,
                sc.MS_BIND | sc.MS_REC | (sc.MS_RDONLY if volume.read_only else 0))
          for volume in spec.mounts))
    masked = tuple(found for pattern in MASKED_PATHS
                   for found in (sorted(glob.glob(pattern)) if "*" in pattern else (pattern,)))
    return Plan(mounts, masked=masked, read_only_paths=READ_ONLY_PATHS,
                read_only_root=spec.read_only, propagation=sc.MS_PRIVATE | sc.MS_REC,
                guarded=RESERVED_DESTINATIONS)
