"""Carry out a root file system :class:`~container.oci.mounts.Plan` from
inside the container's new mount namespace (as its PID 1, before anything
runs), in runc's order (prepareRoot, mountToRootfs, createDevices,
pivotRoot, readonlyPath, maskPaths, finalizeRootfs):

keep the host's mounts from seeing ours (``/`` made as the plan's
propagation says, the root's parent mount never shared), bind the root
onto itself, regaining set-uid (the union is mounted ``nosuid,nodev`` on
the host; the kernel ignores set-uid bits reached from another namespace)
but never device nodes; mount each mount with its mount point resolved in
the root (``inroot``: no symlink or rename leads one out); make ``/dev``'s
nodes unless ``/dev`` is a bind; ``pivot_root`` (never a bare chroot) and
detach the old root; write-protect and mask; remount read-only what asked.

Device nodes are made with mknod, as runc makes them, on a ``/dev`` that
honours nodes (podman's); on a ``nodev`` one (the front end's: a node a
container makes there opens for no one) the host's node is bound instead,
as runc does where it may not mknod.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping

from .. import inroot
from .. import syscalls as sc
from .devices import Device
from .mounts import Mount, Plan, proc_refusal

_DEFAULT_FLAGS = sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
_KEPT_ON_REMOUNT = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                    (os.ST_NOEXEC, sc.MS_NOEXEC))


def setup(root: str, plan: Plan, console: str | None = None,
          cgroup_dirs: Mapping[str, str] | None = None) -> None:
    """Everything up to a read-only root; the caller is then in it.
    ``console``: the pty slave to bind on ``/dev/console``; ``cgroup_dirs``:
    on a cgroup v1 host, each hierarchy's name as the host names its mount
    (``cpu,cpuacct``) -> the container's cgroup directory in it (a
    ``cgroup`` mount is then runc's v1 layout; without, a cgroup2 mount)."""
    root = os.path.realpath(root)
    private_or_slave = plan.propagation & (sc.MS_PRIVATE | sc.MS_SLAVE)
    sc.mount("none", "/", None, plan.propagation)
    _unshare_parent(root, sc.MS_SLAVE if plan.propagation & sc.MS_SLAVE else sc.MS_PRIVATE)
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    sc.mount("none", root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV)
    for mount in plan.mounts:
        _mount(root, plan, mount, cgroup_dirs)
    if not any(m.is_bind and m.destination == "/dev" for m in plan.mounts):
        _make_dev(root, plan.devices)
    if console is not None:
        with inroot.target(root, "/dev/console", is_dir=False) as target:
            sc.mount(console, target, None, sc.MS_BIND)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    if not private_or_slave:
        sc.mount("none", "/", None, plan.propagation)
    for path in plan.read_only_paths:
        _read_only(path)
    _mask(plan.masked)
    for mount in plan.mounts:
        if mount.flags & sc.MS_RDONLY and (mount.type == "tmpfs" or mount.destination == "/dev"):
            with inroot.target("/", mount.destination) as target:
                sc.mount("none", target, None,
                         mount.flags | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
    if plan.read_only_root:
        sc.mount("none", "/", None, _kept("/") | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _unshare_parent(path: str, flag: int) -> None:
    """Make the mount ``path`` is on private or slave: pivot_root refuses a
    shared parent, and a bind under a shared one would leak to the host."""
    while True:
        try:
            sc.mount("none", path, None, flag)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or path == "/":  # not a mount point: go up
                raise
        path = os.path.dirname(path)


def _mount(root: str, plan: Plan, mount: Mount, cgroup_dirs: Mapping[str, str] | None) -> None:
    is_dir = not mount.is_bind or os.path.isdir(mount.source)
    if mount.is_bind and not os.path.exists(mount.source):
        raise OSError(f"mount {mount.destination}: source {mount.source} does not exist")
    existed = _exists(root, mount.destination)
    with inroot.target(root, mount.destination, is_dir) as target:
        inside = inroot.inside(root, target)
        _check_target(plan, mount, inside, target)
        data = mount.data
        if mount.type == "tmpfs" and existed:  # a tmpfs keeps the mode of what it covers
            data = ",".join(filter(None, (f"mode={stat.S_IMODE(os.stat(target).st_mode):04o}",
                                          data)))
        if mount.type == "cgroup":
            _mount_cgroup(root, mount, inside, target, cgroup_dirs)
            return
        if mount.copy_up:
            _tmpfs_copy_up(root, mount, inside, target, data)
        else:
            flags = mount.flags
            if mount.type == "tmpfs" or mount.destination == "/dev":
                flags &= ~sc.MS_RDONLY  # made read-only once filled, at the end
            sc.mount(mount.source or mount.type, target,
                     None if mount.is_bind else mount.type, flags, data or None)
    _after_mount(root, mount, inside)


def _exists(root: str, path: str) -> bool:
    try:
        with inroot.parent(root, path) as (dir_fd, name):
            os.stat(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def _check_target(plan: Plan, mount: Mount, inside: str, target: str) -> None:
    if inside == "/":
        raise OSError(f"mount target {mount.destination} leads to the root itself")
    if mount.type in ("proc", "sysfs"):  # never through a link (runc's checkProcMount)
        if inside != mount.destination:
            raise OSError(f"{mount.type} goes on the directory {mount.destination} itself, "
                          f"not through a link to {inside}")
        if not os.path.isdir(target):
            raise OSError(f"{mount.type} goes on a directory; {inside} is not one")
    why = proc_refusal(inside, mount)
    if why:
        raise OSError(f"mount target {mount.destination} leads to {why}")
    if mount.is_bind and any(inside == p or inside.startswith(p + "/") for p in plan.guarded):
        raise OSError(f"mount target {mount.destination} leads to {inside}, "
                      "which the runtime mounts")


def _after_mount(root: str, mount: Mount, inside: str) -> None:
    """On the new mount (reached afresh: the old descriptor is under it):
    a bind's own flags, then the propagation asked."""
    with inroot.target(root, inside) as target:
        if mount.is_bind and (mount.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
                              or mount.cleared):
            sc.mount("none", target, None, mount.flags | sc.MS_BIND | sc.MS_REMOUNT)
        for flag in mount.propagation:
            sc.mount("none", target, None, flag)


def _tmpfs_copy_up(root: str, mount: Mount, inside: str, target: str, data: str) -> None:
    """tmpcopyup: the new tmpfs starts with the directory it covers (read
    through a descriptor opened before the mount hid it)."""
    covered = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount("tmpfs", target, "tmpfs", mount.flags & ~sc.MS_RDONLY, data or None)
        with inroot.target(root, inside) as fresh:
            top = os.open(fresh, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _copy_tree(covered, top)
        finally:
            os.close(top)
    finally:
        os.close(covered)


def _copy_tree(source: int, dest: int) -> None:
    """Copy the entries of the directory ``source`` into ``dest``, with
    their owners, modes and times."""
    for entry in os.scandir(source):
        name = entry.name
        info = os.stat(name, dir_fd=source, follow_symlinks=False)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFLNK:
            os.symlink(os.readlink(name, dir_fd=source), name, dir_fd=dest)
        elif kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dest)
            with _opened(name, source, os.O_DIRECTORY) as inner, \
                    _opened(name, dest, os.O_DIRECTORY) as outer:
                _copy_tree(inner, outer)
        elif kind == stat.S_IFREG:
            with _opened(name, source, os.O_RDONLY) as reading, \
                    _opened(name, dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) as writing:
                while os.sendfile(writing, reading, None, 1 << 20):
                    pass
        else:
            os.mknod(name, info.st_mode, info.st_rdev, dir_fd=dest)
        os.chown(name, info.st_uid, info.st_gid, dir_fd=dest, follow_symlinks=False)
        if kind != stat.S_IFLNK:
            os.chmod(name, stat.S_IMODE(info.st_mode), dir_fd=dest)
        os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dest,
                 follow_symlinks=False)


@contextlib.contextmanager
def _opened(name: str, dir_fd: int, flags: int, mode: int = 0o777) -> Iterator[int]:
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _mount_cgroup(root: str, mount: Mount, inside: str, target: str,
                  cgroup_dirs: Mapping[str, str] | None) -> None:
    if cgroup_dirs is None:
        sc.mount("cgroup", target, "cgroup2", mount.flags, mount.data or None)
        _after_mount(root, mount, inside)
        return
    # runc's v1 layout: a tmpfs, the container's own cgroup of each
    # hierarchy bound in it, links for controllers mounted together
    sc.mount("tmpfs", target, "tmpfs", _DEFAULT_FLAGS, "mode=755")
    _after_mount(root, Mount(inside, "tmpfs", propagation=mount.propagation), inside)
    for name, directory in cgroup_dirs.items():
        bind = Mount(f"{inside}/{name}", "bind", directory,
                     sc.MS_BIND | sc.MS_REC | mount.flags, propagation=mount.propagation)
        with inroot.target(root, bind.destination) as sub:
            sc.mount(directory, sub, None, bind.flags)
        _after_mount(root, bind, bind.destination)
    for name in (name for name in cgroup_dirs if "," in name):
        with inroot.parent(root, f"{inside}/{name}") as (dir_fd, _):
            for controller in name.split(","):
                with contextlib.suppress(FileExistsError):
                    os.symlink(name, controller, dir_fd=dir_fd)
    if mount.flags & sc.MS_RDONLY:
        with inroot.target(root, inside) as fresh:
            sc.mount("none", fresh, None,
                     _DEFAULT_FLAGS | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _make_dev(root: str, devices: tuple[Device, ...]) -> None:
    """The device nodes, ``/dev/ptmx`` (the container's own devpts's) and
    the standard links (runc's createDevices, setupPtmx,
    setupDevSymlinks)."""
    with inroot.target(root, "/dev") as dev:
        honours_nodes = not os.statvfs(dev).f_flag & os.ST_NODEV
    for device in devices:
        if device.path != "/dev/ptmx":
            _make_node(root, device, honours_nodes)
    links = (("ptmx", "pts/ptmx"),) + _DEV_LINKS
    if os.path.exists("/proc/kcore"):
        links += (("core", "/proc/kcore"),)
    with inroot.parent(root, "/dev/ptmx") as (dev_fd, _):
        with contextlib.suppress(FileNotFoundError):
            os.unlink("ptmx", dir_fd=dev_fd)
        for name, to in links:
            with contextlib.suppress(FileExistsError):
                os.symlink(to, name, dir_fd=dev_fd)


def _make_node(root: str, device: Device, honours_nodes: bool) -> None:
    with inroot.parent(root, device.path) as (dir_fd, name):
        if not honours_nodes:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                             dir_fd=dir_fd))
            with inroot.target(root, device.path, is_dir=False) as target:
                sc.mount(device.path, target, None, sc.MS_BIND)
            return
        try:
            os.mknod(name, device.kind | device.mode, os.makedev(device.major, device.minor),
                     dir_fd=dir_fd)
        except FileExistsError:
            return
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            made = os.fstat(node)
            if stat.S_IFMT(made.st_mode) != device.kind or (
                    device.kind != stat.S_IFIFO
                    and made.st_rdev != os.makedev(device.major, device.minor)):
                raise OSError(f"device {device.path}: another node took its place")
            os.chmod(f"/proc/self/fd/{node}", device.mode)  # whatever the umask took
            os.chown(f"/proc/self/fd/{node}", device.uid, device.gid)
        finally:
            os.close(node)


def _read_only(path: str) -> None:
    """runc's readonlyPath: a recursive bind of ``path`` on itself, its top
    remounted read-only (keeping nosuid, nodev, noexec); missing: skipped."""
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    except FileNotFoundError:
        return
    sc.mount(path, path, None, _kept(path) | sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def _kept(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEPT_ON_REMOUNT if flags & st)


def _mask(paths: tuple[str, ...]) -> None:
    """A directory gets an empty read-only tmpfs, anything else /dev/null
    (checked to be it); a missing path is skipped (runc's maskPaths)."""
    if not paths:
        return
    null = os.stat("/dev/null")
    if not stat.S_ISCHR(null.st_mode) or null.st_rdev != os.makedev(1, 3):
        raise OSError("the container's /dev/null is not the null device")
    for path in dict.fromkeys(paths):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            target = f"/proc/self/fd/{fd}"
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "nr_blocks=1,nr_inodes=1")
            else:
                sc.mount("/dev/null", target, None, sc.MS_BIND)
        finally:
            os.close(fd)
