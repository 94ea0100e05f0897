"""``pyunion``: mount and unmount unions.

    pyunion mount -o br=/upper=rw:/base=ro MNT     # aufs spelling
    pyunion mount -o lowerdir=/base,upperdir=/upper,workdir=/work MNT
    pyunion umount MNT
    pyunion flatten MNT [PATH]                     # complete partial copies
    pyunion branch add|del|mod|ls MNT ...          # change the branches of a live mount
    mount -t fuse.pyunion /upper=rw:/base=ro MNT   # via mount.fuse3 / fstab
    mount -o remount,add:1:/new=ro,del:/old MNT    # the same, aufs's spelling

mount.fuse3 runs the program as ``pyunion SOURCE MNT -o OPTIONS``; that form
is taken as ``pyunion mount --source SOURCE MNT -o OPTIONS``, and with
``remount`` among the options it asks the running daemon for the change.
containers/storage runs its overlay driver's ``mount_program`` (fuse-overlayfs,
or pyunion) as ``PROGRAM -o OPTIONS MERGED``: that is ``pyunion mount``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import click

from . import control, daemon, forms, mounts, options, restack
from .branches import BranchError
from .whiteout import FLATTEN_XATTR

#: long enough for a daemon mounted with -o flatten to finish its copying
_UMOUNT_WAIT_SECONDS = 120.0


class OneLineGroup(click.Group):
    """A command line click cannot parse is answered in one line, ``Error:
    ...``, not a usage text: podman quotes its mount program's stderr whole
    in its own error.  The exit code is :attr:`usage_exit_code`."""

    usage_exit_code = 2

    def make_context(self, *args, **kwargs):
        with self._one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with self._one_line():
            return super().invoke(ctx)

    @contextlib.contextmanager
    def _one_line(self):
        try:
            yield
        except click.exceptions.NoArgsIsHelpError:
            raise  # no arguments at all: the help text, as asked
        except click.UsageError as exc:
            failure = click.ClickException(exc.format_message())
            failure.exit_code = self.usage_exit_code
            raise failure from None


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
      volatile                     no flush reaches the disk: fast, but a crash of the
                                   machine may lose the writable branch's last changes
      uidmapping=,gidmapping=      ID:HOST-ID:COUNT triples: show the branches' owners as
                                   the host's IDs of a user namespace (fuse-overlayfs's)
      squash_to_uid=,squash_to_gid=,squash_to_root
                                   show every file as owned by one user or group
      whiteout=aufs|overlay        what the writable branch gets: .wh. files (default), or
                                   0/0 devices and trusted.overlay.opaque (needs workdir=)
    """
    if any("remount" in arg.split(",") for arg in option_args):
        # mount -o remount,add:1:/new=ro MNT, through mount.fuse3
        _ask_daemon(mountpoint, lambda: {"changes": [c.to_json() for c in
                                                     restack.parse_remount(list(option_args))]})
        return
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
    done = _fusermount(mnt)
    if done.returncode != 0 and pid is None and _disconnected(mnt):
        # Its daemon died and files are still open on it: detach it, since
        # nothing it holds can be written any more.
        done = _fusermount(mnt, "-z")
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


@cli.group()
def branch() -> None:
    """Change the branches of a mounted union (as root or its owner).

    \b
    Taking a branch out, or making the rw branch ro, is refused while
    something uses it (an open file or memory map of it, a partial copy
    reading from it, an open directory or a process's working directory
    that lies in it; for ro, a file open for writing).  --force goes on:
    partial copies are completed first, open files keep the file they
    opened (writes to a branch no longer writable fail with EROFS), and a
    working directory that was only in the branch becomes a removed one.
    """


@branch.command("add")
@click.argument("mountpoint")
@click.argument("directory", metavar="DIR[=ro|rw]")
@click.option("--index", type=click.IntRange(min=0), metavar="N",
              help="Where it goes: 0 is the top (default: just below the writable branch).")
def branch_add(mountpoint: str, directory: str, index: int | None) -> None:
    """Add DIR to the union on MOUNTPOINT (read-only unless =rw)."""
    _change_branch(mountpoint, "add", directory, index=index)


@branch.command("del")
@click.argument("mountpoint")
@click.argument("directory", metavar="DIR")
@click.option("--force", is_flag=True, help="Take it out even while in use (see above).")
def branch_del(mountpoint: str, directory: str, force: bool) -> None:
    """Take DIR out of the union on MOUNTPOINT."""
    _change_branch(mountpoint, "del", directory, force=force)


@branch.command("mod")
@click.argument("mountpoint")
@click.argument("directory", metavar="DIR=ro|rw")
@click.option("--force", is_flag=True, help="Make it ro even while written (see above).")
def branch_mod(mountpoint: str, directory: str, force: bool) -> None:
    """Make the branch DIR read-only or writable again."""
    _change_branch(mountpoint, "mod", directory, force=force)


@branch.command("ls")
@click.argument("mountpoint")
@click.option("--json", "as_json", is_flag=True, help="As a JSON list.")
def branch_ls(mountpoint: str, as_json: bool) -> None:
    """List the branches of MOUNTPOINT, top first: index, mode, path."""
    stack = _ask_daemon(mountpoint, lambda: {})
    if as_json:
        click.echo(json.dumps([{"index": i, **b} for i, b in enumerate(stack)]))
    else:
        for i, b in enumerate(stack):
            click.echo(f"{i}\t{b['mode']}\t{b['path']}")


def _change_branch(mountpoint: str, action: str, directory: str, index: int | None = None,
                   force: bool = False) -> None:
    _ask_daemon(mountpoint, lambda: {
        "changes": [restack.branch_argument(directory, action, index).to_json()],
        "force": force})


def _ask_daemon(mountpoint: str, make_request) -> list[dict]:
    """Send the request ``make_request`` builds to the daemon of
    ``mountpoint``; the branches it has then.  Every failure is one line."""
    mnt = os.path.realpath(mountpoint)
    if not _is_pyunion_mount(mnt):
        raise click.ClickException(f"{mnt} is not a pyunion mount")
    try:
        return control.request(daemon.control_path(mnt), make_request())["branches"]
    except BranchError as exc:
        raise click.ClickException(str(exc)) from None
    except control.ControlError as exc:
        raise click.ClickException(f"{mnt}: {exc}") from None


def _is_pyunion_mount(mnt: str) -> bool:
    found = mounts.find(mnt)
    return found is not None and found.fstype == f"fuse.{options.FSTYPE}"


def _fusermount(mnt: str, *flags: str) -> subprocess.CompletedProcess:
    """``fusermount3 -u``; its messages name the mount point, whose bytes
    need not be UTF-8."""
    return subprocess.run(["fusermount3", "-u", *flags, mnt], capture_output=True, text=True,
                          errors="surrogateescape")


def _disconnected(mnt: str) -> bool:
    """True for a FUSE mount whose daemon is gone: statfs, which the
    kernel never answers from its cache, fails with ENOTCONN."""
    try:
        os.statvfs(mnt)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


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


def undo_mount(args: list[str], pids: list[int]) -> None:
    """Take down what the mount form ``args`` brought up for a caller that
    never heard of it (the fork server calls this; ``pids`` are the daemons
    its run left behind): each daemon is waited for until it serves its
    mount or is gone, then its mount is unmounted, so that no half-started
    mount stays behind."""
    command = forms.as_command(args)
    with mount.make_context("mount", command[command.index("mount") + 1:]) as ctx:
        mnt = os.path.realpath(ctx.params["mountpoint"])
    for pid in pids:
        deadline = time.monotonic() + _UMOUNT_WAIT_SECONDS
        while daemon.pid_of(mnt) != pid and not _wait_gone(pid, 0.01):
            if time.monotonic() > deadline:  # a mount that never comes up
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, _UMOUNT_WAIT_SECONDS)
                if _is_pyunion_mount(mnt) and _disconnected(mnt):
                    _fusermount(mnt, "-z")
                break
        if daemon.pid_of(mnt) == pid:
            _fusermount(mnt)
        _wait_gone(pid, _UMOUNT_WAIT_SECONDS)


def warm() -> None:
    """What a process's first mount pays once, for the fork server to pay
    before it forks: click's first parse of ``mount`` (its first ``-o``
    imports difflib, for suggestions on a misspelt long option)."""
    mount.make_context("mount", ["-o", "br=/=ro", "/"]).close()


def main() -> None:
    # Messages name paths as their bytes, UTF-8 or not.
    sys.stderr.reconfigure(errors="surrogateescape")
    cli.main(args=forms.as_command(sys.argv[1:]), prog_name="pyunion")
