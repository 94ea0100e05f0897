"""The container's root file system, set up from inside its new mount
namespace (as its PID 1, before anything runs), in runc's order:

make every mount private, let set-uid files work on the new root, mount
the kernel file systems and ``/dev`` into it, bind the user's volumes and
the per-container ``/etc`` files (each mount point resolved as the
container will see it, never out of it), ``pivot_root`` into it (never a
bare chroot), detach the old root, mask and write-protect what a container
must not see or change, and make ``/`` read-only if asked.

What a container makes must not serve anyone outside it: the union is
mounted ``nosuid,nodev`` on the host and regains ``suid`` only in the
container's own mount namespace (the kernel ignores set-uid bits reached
from another one, e.g. through ``/proc/PID/root``), and no mount a
container can make device nodes on honours them (``/dev`` is ``nodev``,
its standard devices bound from the host's), so a node made in the
container opens for no one, in it or on the host.
"""

from __future__ import annotations

import contextlib
import glob
import os

from . import syscalls as sc
from .spec import ContainerSpec, is_reserved_destination

_PATH_ONLY = os.O_PATH | os.O_CLOEXEC
_IN_ROOT = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
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
    sc.mount("none", "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("none", root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV)
    _mount_kernel_filesystems(root)
    _make_dev(os.path.join(root, "dev"))
    for name in ETC_FILES:
        _bind_in(root, os.path.join(etc_dir, name), f"/etc/{name}")
    for volume in spec.mounts:
        _bind_in(root, volume.source, volume.target, volume.read_only)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    _protect()
    if spec.read_only:
        sc.mount("none", "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV | sc.MS_RDONLY)


def _mount_kernel_filesystems(root: str) -> None:
    nosuid_nodev_noexec = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    with _target(root, "/proc") as target:
        sc.mount("proc", target, "proc", nosuid_nodev_noexec)
    with _target(root, "/sys") as target:
        sc.mount("sysfs", target, "sysfs", nosuid_nodev_noexec | sc.MS_RDONLY)
    with _target(root, "/dev") as target:
        sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=755,size=65536k")


def _make_dev(dev: str) -> None:
    for name in _DEVICES:
        with _target(dev, f"/{name}", is_dir=False) as target:
            _bind(f"/dev/{name}", target)
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
    for path in (found for pattern in MASKED_PATHS for found in glob.glob(pattern)):
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
        _remount_read_only(target)


def _remount_read_only(target: str) -> None:
    sc.mount("none", target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_REC)


def _bind_in(root: str, source: str, path: str, read_only: bool = False) -> None:
    """Bind ``source`` onto the container path ``path`` (resolved in
    ``root``); refused if its symlinks lead into what the runtime mounts."""
    with _target(root, path, is_dir=os.path.isdir(source)) as target:
        inside = os.path.normpath("/" + os.path.relpath(os.readlink(target), root))
        if is_reserved_destination(inside):
            raise OSError(f"mount target {path} leads to {inside}, which the runtime mounts")
        _bind(source, target)
    if read_only:  # through the top of the new mount: the descriptor is under it
        with _target(root, path) as target:
            _remount_read_only(target)


@contextlib.contextmanager
def _target(root: str, path: str, is_dir: bool = True):
    """A name for the mount point ``path``: ``/proc/self/fd/N`` of an O_PATH
    descriptor to it, resolved as the container will see it (an absolute
    symlink stays in ``root``, and no rename can lead it out, as runc does
    it); made if missing."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_in_root(root_fd, path, is_dir)
    finally:
        os.close(root_fd)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _open_in_root(root_fd: int, path: str, is_dir: bool) -> int:
    """``path`` opened O_PATH as if ``root_fd`` were ``/``; what is
    missing of it is made (a file last when not ``is_dir``)."""
    try:
        return sc.openat2(root_fd, path, _PATH_ONLY, _IN_ROOT)
    except FileNotFoundError:
        if path.strip("/") == "":
            raise
    parent = _open_in_root(root_fd, os.path.dirname(path.rstrip("/")), is_dir=True)
    name = os.path.basename(path.rstrip("/"))
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                             dir_fd=parent))
    finally:
        os.close(parent)
    return sc.openat2(root_fd, path, _PATH_ONLY, _IN_ROOT)
