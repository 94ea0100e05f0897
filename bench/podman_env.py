"""A throwaway podman (for tests/test_podman.py and the bench's podman
rows): its own graphroot, runroot, tmpdir and configuration
under one directory, no registry, no network, and nothing of the host's
containers (``/var/lib/containers``, ``/run/containers``) touched.

What it does not hide: podman's commands that copy images (``import``,
``build``, ``commit``) write c/image's blob-info cache to
``/var/lib/containers/cache`` whatever the configuration says (root's
default in c/image's ``blobinfocache``, with no setting for it).  Those run
in a mount namespace of their own where ``/var/lib`` is a kernel overlay
whose upper directory is ours, so the cache lands there.
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path

from container import images
from unionfs import daemon

PODMAN = shutil.which("podman")
_CGROUP_PARENT = "libpod_parent"  # podman's, with the cgroupfs manager
HOST_DIRS = ("/var/lib/containers", "/run/containers", "/run/libpod")


def busybox_tar(workdir: Path) -> Path:
    """The project's busybox root (container/images.py), as the tar
    ``podman import`` takes."""
    root = images.build_busybox(store=str(workdir / "store"))
    tar = workdir / "busybox.tar"
    with tarfile.open(tar, "w") as out:
        out.add(root, arcname=".")
    shutil.rmtree(workdir / "store")
    return tar


class Podman:
    """podman under a directory of its own, removed by ``tear_down``;
    ``mount_program`` None is the kernel's overlay driver."""

    def __init__(self, mount_program: str | None = None, mountopt: str = ""):
        # A short root of its own: when the root's path passes 46 bytes,
        # the clean-up conmon runs when a container ends (`podman container
        # cleanup`) exits 125, and every `podman run --rm` waits 20 s for it
        # (found by trial, podman 4.3.1 and conmon 2.1.6).
        self.root = root = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
        self._cgroups_before = set(libpod_cgroups())
        self.graphroot = root / "graph"
        self._merged: set[str] = set()  # every layer's mount point seen, for pyunion_records
        for name in ("run", "tmp", "net", "varlib-upper", "varlib-work"):
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "registries.conf").write_text("")
        # podman asks runc for nofile and nproc at their maxima unless told;
        # only CAP_SYS_RESOURCE may raise a hard limit, and conmon runs with
        # a lower nproc than this shell: stay well inside both.
        nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        (root / "containers.conf").write_text(
            "[containers]\n"
            'log_driver = "k8s-file"\n'
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\n'
            'lock_type = "file"\n'      # in tmpdir, not /dev/shm/libpod_lock
            'runtime = "runc"\n'
            "[network]\n"
            f'network_config_dir = "{root}/net"\n')
        self.use(mount_program, mountopt)
        self.env = {**os.environ,
                    "CONTAINERS_CONF": str(root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf")}

    def use(self, mount_program: str | None, mountopt: str = "") -> None:
        """Switch the overlay driver's mount program: one line of storage.conf."""
        lines = ["[storage]", 'driver = "overlay"', f'graphroot = "{self.graphroot}"',
                 f'runroot = "{self.root}/run"', "[storage.options.overlay]"]
        if mount_program:
            lines.append(f'mount_program = "{mount_program}"')
        if mountopt:
            lines.append(f'mountopt = "{mountopt}"')
        (self.root / "storage.conf").write_text("\n".join(lines) + "\n")

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, text: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run([PODMAN, "--tmpdir", str(self.root / "tmp"), *args],
                              env=self.env, capture_output=True, text=text,
                              timeout=timeout, **kwargs)
        self._merged.update(map(str, self.graphroot.glob("overlay/*/merged")))
        return _checked(done, check, text)

    def copying(self, *args: str, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """A podman command that copies an image (see the module docstring)."""
        overlay = (f"mount -t overlay overlay -o lowerdir=/var/lib,"
                   f"upperdir={self.root}/varlib-upper,workdir={self.root}/varlib-work "
                   '/var/lib && exec "$@"')
        return _checked(subprocess.run(["unshare", "--mount", "--propagation", "private",
                                        "sh", "-c", overlay, "sh",
                                        PODMAN, "--tmpdir", str(self.root / "tmp"), *args],
                                       env=self.env, capture_output=True, text=True,
                                       timeout=timeout), check)

    def mounts(self) -> list[str]:
        """Mount points under this podman's directories."""
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f
                    if line.split()[4].startswith(f"{self.root}/")]

    def processes(self) -> list[int]:
        """Processes working for this podman: conmons, the mount programs'
        daemons, podman's own clean-ups (all name a path under ``root``)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if f"{self.root}/".encode() in cmdline and int(pid) != os.getpid():
                found.append(int(pid))
        return found

    def settle(self, seconds: float = 10) -> None:
        """Wait for what still works for this podman to end: after a stop,
        the clean-up conmon starts (``podman container cleanup``) runs on
        for a while, with the configuration it read when it started."""
        deadline = time.monotonic() + seconds
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)

    def pyunion_records(self) -> list[str]:
        """pyunion's PID records and control sockets for mounts under ``root``."""
        if not os.path.isdir(daemon.PID_DIR):
            return []
        merged = {daemon.control_path(path) for path in self._merged}
        return [name for name in os.listdir(daemon.PID_DIR)
                if str(self.root) in urllib.parse.unquote(name)
                or os.path.join(daemon.PID_DIR, name) in merged]

    def leftovers(self) -> tuple[list, list, list]:
        return self.mounts(), self.processes(), self.pyunion_records()

    def tear_down(self) -> None:
        """Stop and remove every container, take off whatever is still
        mounted, let podman's clean-ups end, and remove the directories."""
        self("rm", "-af", "-t", "0", check=False)
        self._unmount_all()
        self.settle()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # A clean-up that ended while we unmounted may have mounted the
        # graph root's overlay directory again (every podman command does).
        self._unmount_all()
        for path in libpod_cgroups():  # podman leaves its parent cgroup, made for us
            if path not in self._cgroups_before:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        shutil.rmtree(self.root)

    def _unmount_all(self) -> None:
        for mnt in reversed(self.mounts()):
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True, check=False)
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)


def libpod_cgroups() -> list[str]:
    """The cgroups under podman's parent (cgroupfs manager), in every
    hierarchy, deepest first."""
    parents = glob.glob(f"/sys/fs/cgroup/{_CGROUP_PARENT}") + glob.glob(
        f"/sys/fs/cgroup/*/{_CGROUP_PARENT}")
    found = [dirpath for parent in parents for dirpath, _, _ in os.walk(parent)]
    return sorted(found, key=len, reverse=True)


class PodmanError(RuntimeError):
    """A podman command failed; the message holds its own words."""


def _checked(done: subprocess.CompletedProcess, check: bool,
             text: bool = True) -> subprocess.CompletedProcess:
    """``done``; if ``check``, fails with podman's own words when it did."""
    if check and done.returncode != 0:
        command = " ".join(map(str, done.args[done.args.index(PODMAN) + 3:]))
        said = done.stderr if text else done.stderr.decode(errors="replace")
        raise PodmanError(f"podman {command} exited {done.returncode}: {said.strip()[-1500:]}")
    return done
