"""``pyunion``: mount and unmount unions.

    pyunion mount -o br=/upper=rw:/base=ro MNT     # aufs spelling
    pyunion mount -o lowerdir=/base,upperdir=/upper,workdir=/work MNT
    pyunion umount MNT
    pyunion flatten MNT [PATH]                     # complete partial copies
    mount -t fuse.pyunion /upper=rw:/base=ro MNT   # via mount.fuse3 / fstab

mount.fuse3 runs the program as ``pyunion SOURCE MNT -o OPTIONS``; that form
is taken as ``pyunion mount --source SOURCE MNT -o OPTIONS``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import click

from . import daemon, mounts, options
from .branches import BranchError
from .whiteout import FLATTEN_XATTR

#: long enough for a daemon mounted with -o flatten to finish its copying
_UMOUNT_WAIT_SECONDS = 120.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log every step to stderr.")
def cli(debug: bool) -> None:
    """An aufs-style union file system in userspace."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="pyunion[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.argument("mountpoint")
@click.option("-o", "option_args", multiple=True, metavar="OPTIONS",
              help="Comma-separated mount options, e.g. br=/up=rw:/base=ro,allow_other.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("--source", help="Branch list or name shown in the mount table (mount.fuse3 form).")
def mount(mountpoint: str, option_args: tuple[str, ...], foreground: bool, source: str | None) -> None:
    """Mount a union of branches on MOUNTPOINT.

    \b
    Options of the union itself (the other -o options go to FUSE):
      br=B1=rw:B2=ro:...           the branches, leftmost on top
      lowerdir=,upperdir=,workdir= the same, overlayfs style
      copyup=partial|full          copy data up chunk by chunk as written, or all at once
      flatten                      complete partial copies at unmount
      pagecache=keep|drop|direct   what the kernel keeps of lower files read
      udba=none|reval|notify       read-only branches changed under the mount: trusted
                                   as read (default), checked at use, or watched (inotify)
      quota=SIZE                   what the writable branch may hold (bytes, or k, m, g, t):
                                   writes past it fail with ENOSPC; df shows it as the size
    """
    debugging = logging.getLogger().isEnabledFor(logging.DEBUG)
    try:
        config = options.parse(list(option_args), mountpoint, source)
        if foreground:
            daemon.serve(config)
        else:
            daemon.spawn(config, keep_stderr=debugging)
    except (BranchError, daemon.MountError, daemon.FlattenError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("mountpoint")
def umount(mountpoint: str) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to exit."""
    mnt = os.path.realpath(mountpoint)
    if not _is_pyunion_mount(mnt):
        raise click.ClickException(f"{mnt} is not a pyunion mount")
    pid = daemon.pid_of(mnt)
    # Its messages name the mount point, whose bytes need not be UTF-8.
    done = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True,
                          errors="surrogateescape")
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1:] or ["fusermount3 failed"]
        raise click.ClickException(message[0])
    if pid is None:
        return
    if not _wait_gone(pid, _UMOUNT_WAIT_SECONDS):
        raise click.ClickException(f"unmounted, but daemon {pid} is still running")
    failure = daemon.failure_of(mnt, pid)
    if failure:
        raise click.ClickException(f"unmounted, but the daemon failed: {failure}")


@cli.command()
@click.argument("mountpoint")
@click.argument("path", required=False)
def flatten(mountpoint: str, path: str | None) -> None:
    """Complete the partial copies at or below PATH (a path inside
    MOUNTPOINT; all of them by default), so the writable branch holds every
    byte of its files and other tools can read it as a plain tree."""
    mnt = os.path.realpath(mountpoint)
    if not _is_pyunion_mount(mnt):
        raise click.ClickException(f"{mnt} is not a pyunion mount")
    target = os.path.realpath(os.path.join(mnt, path)) if path else mnt
    if os.path.commonpath([mnt, target]) != mnt:
        raise click.ClickException(f"{path} is not inside {mnt}")
    try:
        os.setxattr(target, FLATTEN_XATTR, b"", follow_symlinks=False)
    except OSError as exc:
        raise click.ClickException(f"cannot flatten {target}: {exc.strerror}") from None


def _is_pyunion_mount(mnt: str) -> bool:
    found = mounts.find(mnt)
    return found is not None and found.fstype == f"fuse.{options.FSTYPE}"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    # Messages name paths as their bytes, UTF-8 or not.
    sys.stderr.reconfigure(errors="surrogateescape")
    args = sys.argv[1:]
    if args and not args[0].startswith("-") and args[0] not in cli.commands:
        args = ["mount", "--source", *args]
    cli.main(args=args, prog_name="pyunion")
