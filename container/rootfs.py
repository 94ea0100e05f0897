"""The container's root file system, set up from inside its new mount
namespace (as its PID 1, before anything runs), in runc's order:

make every mount private, let set-uid files work on the new root, mount
the kernel file systems and ``/dev`` into it, bind the user's volumes and
the per-container ``/etc`` files, ``pivot_root`` into it (never a bare
chroot), detach the old root, mask and write-protect what a container must
not see or change, and make ``/`` read-only if asked.

What a container makes must not serve anyone outside it: the union is
mounted ``nosuid,nodev`` on the host and regains ``suid`` only in the
container's own mount namespace (the kernel ignores set-uid bits reached
from another one, e.g. through ``/proc/PID/root``), and no mount a
container can make device nodes on honours them (``/dev`` is ``nodev``,
its standard devices bound from the host's), so a node made in the
container opens for no one, in it or on the host.
"""

from __future__ import annotations

import os

from . import syscalls as sc
from .spec import ContainerSpec

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
MASKED_PATHS = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                "/proc/latency_stats", "/proc/acpi", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READ_ONLY_PATHS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
ETC_FILES = ("hostname", "hosts", "resolv.conf")


def prepare(root: str, spec: ContainerSpec, etc_dir: str) -> None:
    """Everything up to and including ``pivot_root``; the caller is then in
    the new root."""
    sc.mount("none", "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("none", root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV)
    _mount_kernel_filesystems(root)
    _make_dev(os.path.join(root, "dev"))
    for name in ETC_FILES:
        _bind(os.path.join(etc_dir, name), _target(root, f"/etc/{name}", is_dir=False))
    for volume in spec.mounts:
        target = _target(root, volume.target, is_dir=os.path.isdir(volume.source))
        _bind(volume.source, target, read_only=volume.read_only)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    _protect()
    if spec.read_only:
        sc.mount("none", "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV | sc.MS_RDONLY)


def _mount_kernel_filesystems(root: str) -> None:
    nosuid_nodev_noexec = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    sc.mount("proc", _target(root, "/proc"), "proc", nosuid_nodev_noexec)
    sc.mount("sysfs", _target(root, "/sys"), "sysfs", nosuid_nodev_noexec | sc.MS_RDONLY)
    sc.mount("tmpfs", _target(root, "/dev"), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
             "mode=755,size=65536k")


def _make_dev(dev: str) -> None:
    for name in _DEVICES:
        _bind(f"/dev/{name}", _target(dev, name, is_dir=False))
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    sc.mount("devpts", os.path.join(dev, "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    for name, options in (("shm", "mode=1777,size=65536k"), ("mqueue", None)):
        os.mkdir(os.path.join(dev, name), 0o1777 if name == "shm" else 0o755)
        fstype = "tmpfs" if name == "shm" else "mqueue"
        sc.mount(fstype, os.path.join(dev, name), fstype,
                 sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, options)
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, link))


def _protect() -> None:
    """Mask what leaks the host; make kernel knobs read-only (as runc)."""
    for path in MASKED_PATHS:
        if os.path.isdir(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
        elif os.path.exists(path):
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    for path in READ_ONLY_PATHS:
        if os.path.exists(path):
            _bind(path, path, read_only=True)


def _bind(source: str, target: str, read_only: bool = False) -> None:
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    if read_only:
        sc.mount(source, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_REC)


def _target(root: str, path: str, is_dir: bool = True) -> str:
    """``path`` inside ``root``, made if missing; never through a symlink
    that points out of the container."""
    target = os.path.join(root, path.lstrip("/"))
    real = os.path.realpath(target)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise OSError(f"mount target {path} leads outside the container")
    if not os.path.lexists(target):
        if is_dir:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
    return target
