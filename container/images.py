"""The image store: each image a read-only directory tree, the lower branch
of every container made from it.

``busybox`` is built here from Debian's ``busybox-static`` (the set-up
installs it), so a fresh machine can run containers with no registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

STORE = "/var/lib/pycontainer/images"
BUSYBOX = "/bin/busybox"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ImageError(RuntimeError):
    """A missing or bad image; the message is one line."""


def path_of(name: str, store: str = STORE) -> str:
    if not _NAME.match(name):
        raise ImageError(f"invalid image name {name!r}")
    path = os.path.join(store, name, "rootfs")
    if not os.path.isdir(path):
        raise ImageError(f"no image {name!r} (build one with: pycontainer image busybox)")
    return path


def build_busybox(store: str = STORE, busybox: str = BUSYBOX) -> str:
    """Build the ``busybox`` image unless it is there; returns its root.

    An existing image is never rebuilt in place: containers may be using it.
    """
    final = os.path.join(store, "busybox")
    if os.path.isdir(os.path.join(final, "rootfs")):
        return os.path.join(final, "rootfs")
    if not os.access(busybox, os.X_OK):
        raise ImageError(f"{busybox} is missing: install busybox-static")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    os.makedirs(store, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".busybox.", dir=store)
    try:
        root = os.path.join(staging, "rootfs")
        for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp",
                          "proc", "sys", "dev", "home", "var/tmp", "run"):
            os.makedirs(os.path.join(root, directory), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        os.chmod(os.path.join(root, "root"), 0o700)
        shutil.copy2(busybox, os.path.join(root, "bin/busybox"))
        for applet in applets:
            link = os.path.join(root, applet)
            if not os.path.lexists(link):
                os.symlink("/bin/busybox", link)
        _write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        _write(root, "etc/group", "root:x:0:\nnogroup:x:65534:\n")
        for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
            _write(root, name, "")  # bind-mount targets for each container's own
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(final, "rootfs")


def _write(root: str, name: str, text: str) -> None:
    with open(os.path.join(root, name), "w") as f:
        f.write(text)
