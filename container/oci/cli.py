"""``pycontainer-runtime``: runc's command line, for engines (podman
through conmon, containerd, CRI-O) and for pycontainer's own front end.

Global flags come before the verb, as runc's do: ``--root`` (the state
directory), ``--log`` and ``--log-format text|json`` (where errors are
also written: podman reads a JSON log's ``msg``), ``--debug``, and
``--systemd-cgroup``, refused: this runtime drives cgroupfs only.  Errors
are one line on stderr and exit 1, in runc's words where engines read
them (``container does not exist``, ``executable file not found``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import click

from unionfs.cli import OneLineGroup

from .. import cgroups
from .. import syscalls as sc
from ..terminal import Console
from . import config as oci_config
from . import lifecycle, spec_template
from . import process as oci_process
from .create import CreateError, connect_console, create
from .inside import CreateOptions
from .exec import exec_process, wait_for
from .hooks import HookError
from .reader import ConfigError, Reader
from .state import DEFAULT_ROOT, OCI_VERSION, StateError, Store

VERSION = "0.1.0"
#: --preserve-fds: no more descriptors than a process may have open
_PRESERVABLE = click.IntRange(0, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _preserved(ctx, param, count: int) -> int:
    """--preserve-fds N: descriptors 3 to 3+N-1 must be the caller's, open
    now, before the runtime opens its own: one of those (a lock, a pipe to
    its helper) in that range would be passed on to the container."""
    for fd in range(3, 3 + count):
        try:
            os.fstat(fd)
        except OSError:
            raise click.BadParameter(f"descriptor {fd} is not open") from None
    return count
_ERRORS = (ConfigError, StateError, CreateError, HookError, cgroups.CgroupError, OSError)


class _Group(OneLineGroup):
    """Usage errors are one line and exit 1, as all of runc's errors."""

    usage_exit_code = 1


class _Log:
    """Where errors go besides stderr: ``--log``, as text or JSON lines."""

    def __init__(self, path: str | None = None, format: str = "text"):
        self.path, self.format = path, format

    def error(self, message: str) -> None:
        print(f"pycontainer-runtime: {message}", file=sys.stderr)
        if self.path is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = (json.dumps({"level": "error", "msg": message, "time": stamp})
                if self.format == "json" else f'time="{stamp}" level=error msg={message!r}')
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.option("--root", default=DEFAULT_ROOT, show_default=True,
              help="Where the containers' state is kept.")
@click.option("--log", "log_path", metavar="FILE", help="Also write errors to FILE.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--debug", is_flag=True, help="Accepted for runc's sake; errors are all it logs.")
@click.option("--systemd-cgroup", is_flag=True, help="Refused: cgroupfs only.")
@click.option("-v", "--version", is_flag=True, help="Print the version.")
@click.pass_context
def cli(ctx, root: str, log_path: str | None, log_format: str, debug: bool,
        systemd_cgroup: bool, version: bool) -> None:
    """An OCI runtime with runc's command line."""
    ctx.obj = {"store": Store(root), "log": _Log(log_path, log_format)}
    if version:
        click.echo(f"pycontainer-runtime version {VERSION}\nspec: {OCI_VERSION}")
        ctx.exit(0)
    if systemd_cgroup:
        _fail(ctx, "--systemd-cgroup: not supported, this runtime drives cgroupfs only")
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _fail(ctx, message: str, code: int = 1):
    ctx.obj["log"].error(message)
    ctx.exit(code)


def _checked(function):
    """Report the runtime's errors in one line, and exit 1."""
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return function(ctx.obj["store"], *args, **kwargs)
        except _ERRORS as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                message = f"{exc.filename}: {message}"
            _fail(ctx, message)
    wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
    return wrapper


def _create_options(function):
    for decorator in reversed((
            click.option("-b", "--bundle", default=".", help="The bundle's directory."),
            click.option("--console-socket", metavar="PATH",
                         help="Send the terminal's master side to this unix socket."),
            click.option("--pid-file", metavar="FILE", help="Write the process's PID here."),
            click.option("--no-pivot", is_flag=True,
                         help="Move the root over / and chroot, for roots pivot_root "
                              "refuses (weaker, as runc's)."),
            click.option("--no-new-keyring", is_flag=True,
                         help="Keep the caller's session keyring."),
            click.option("--preserve-fds", type=_PRESERVABLE, default=0, callback=_preserved,
                         help="Pass descriptors 3 to 3+N-1 on."))):
        function = decorator(function)
    return function


@cli.command("create")
@click.argument("container_id", metavar="ID")
@_create_options
@_checked
def create_command(store: Store, container_id: str, bundle: str, console_socket: str | None,
                   pid_file: str | None, no_pivot: bool, no_new_keyring: bool,
                   preserve_fds: int) -> None:
    """Create a container, its process waiting for start."""
    _create(store, container_id, bundle, console_socket, pid_file, no_pivot, no_new_keyring,
            preserve_fds)


def _create(store, container_id, bundle, console_socket, pid_file, no_pivot, no_new_keyring,
            preserve_fds, console=None):
    if console_socket is not None:
        console = connect_console(console_socket)
    create(store, container_id, bundle, pid_file, console,
           CreateOptions(preserve_fds, new_keyring=not no_new_keyring, no_pivot=no_pivot))


@cli.command()
@click.argument("container_id", metavar="ID")
@_checked
def start(store: Store, container_id: str) -> None:
    """Start a created container's process."""
    lifecycle.start(store, container_id)


@cli.command()
@click.argument("container_id", metavar="ID")
@_create_options
@click.option("-d", "--detach", is_flag=True, help="Return once the process runs.")
@click.option("--keep", is_flag=True, help="Do not delete the container when it ends.")
@_checked
def run(store: Store, container_id: str, bundle: str, console_socket: str | None,
        pid_file: str | None, no_pivot: bool, no_new_keyring: bool, preserve_fds: int,
        detach: bool, keep: bool) -> None:
    """Create and start a container; without -d, wait for it, and exit with
    its code."""
    config = oci_config.load(bundle)
    relay = None
    if config.process and config.process.terminal and console_socket is None and not detach:
        relay = Console()
    if not detach:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    _create(store, container_id, bundle, console_socket, pid_file, no_pivot, no_new_keyring,
            preserve_fds, console=relay.theirs if relay else None)
    try:
        lifecycle.start(store, container_id)
        if detach:
            return
        code = wait_for(store.load(container_id).pid, relay)
    finally:
        if not detach and not keep:
            lifecycle.delete(store, container_id, force=True)
    sys.exit(code)


@cli.command()
@click.argument("container_id", metavar="ID")
@_checked
def state(store: Store, container_id: str) -> None:
    """Print the container's state (JSON)."""
    click.echo(json.dumps(lifecycle.state(store, container_id), indent=2))


@cli.command()
@click.option("-a", "--all", "all_processes", is_flag=True,
              help="Signal every process of the container.")
@click.argument("container_id", metavar="ID")
@click.argument("signal_name", metavar="[SIGNAL]", default="SIGTERM")
@_checked
def kill(store: Store, container_id: str, signal_name: str, all_processes: bool) -> None:
    """Send a signal (a name or a number; SIGTERM by default)."""
    lifecycle.kill(store, container_id, parse_signal(signal_name), all_processes)


def parse_signal(text: str) -> int:
    number = sc.signal_number(text)
    if number is None:
        raise StateError(f"unknown signal {text!r}")
    return number


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("container_id", metavar="ID")
@_checked
def delete(store: Store, container_id: str, force: bool) -> None:
    """Delete a stopped container."""
    lifecycle.delete(store, container_id, force)


@cli.command()
@click.argument("container_id", metavar="ID")
@_checked
def pause(store: Store, container_id: str) -> None:
    """Freeze every process of the container."""
    lifecycle.pause(store, container_id)


@cli.command()
@click.argument("container_id", metavar="ID")
@_checked
def resume(store: Store, container_id: str) -> None:
    """Thaw a paused container."""
    lifecycle.resume(store, container_id)


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("container_id", metavar="ID")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-p", "--process", "process_file", metavar="FILE",
              help="The process, as config.json's process object.")
@click.option("-d", "--detach", is_flag=True, help="Return once the process runs.")
@click.option("-t", "--tty", is_flag=True, help="Give the process a terminal.")
@click.option("--console-socket", metavar="PATH")
@click.option("--pid-file", metavar="FILE")
@click.option("-e", "--env", multiple=True, metavar="NAME=VALUE")
@click.option("--cwd", help="Working directory in the container.")
@click.option("-u", "--user", metavar="UID[:GID]")
@click.option("--preserve-fds", type=_PRESERVABLE, default=0, callback=_preserved)
@_checked
def exec_command(store: Store, container_id: str, command: tuple[str, ...],
                 process_file: str | None, detach: bool, tty: bool, console_socket: str | None,
                 pid_file: str | None, env: tuple[str, ...], cwd: str | None,
                 user: str | None, preserve_fds: int) -> None:
    """Run a process in a container."""
    process = _exec_process(store, container_id, command, process_file, tty, env, cwd, user)
    console = connect_console(console_socket) if console_socket else None
    sys.exit(exec_process(store, container_id, process, detach, pid_file, console,
                          preserve_fds))


def _exec_process(store, container_id, command, process_file, tty, env, cwd, user):
    """From --process, or the container's own process with what the
    command line changes (as runc builds it)."""
    if process_file is not None:
        try:
            with open(process_file) as f:
                data = json.load(f)
        except ValueError as exc:
            raise ConfigError(f"{process_file}: {exc}") from None
        return oci_process.parse(Reader(data, "process"))
    if not command:
        raise ConfigError("exec: give a command, or --process")
    config = lifecycle.stored_config(store, container_id)
    if config is None or config.process is None:
        raise StateError("container does not exist")
    base = config.process
    changes = {"args": tuple(command), "terminal": tty, "env": base.env + tuple(env),
               "cwd": cwd or base.cwd}
    if user is not None:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ConfigError(f"--user {user}: must be UID[:GID] in numbers")
        changes["user"] = oci_process.User(int(uid), int(gid or 0))
    return dataclasses.replace(base, **changes)


@cli.command("list")
@click.option("-f", "--format", "output", type=click.Choice(["table", "json"]),
              default="table")
@click.option("-q", "--quiet", is_flag=True, help="IDs only.")
@_checked
def list_command(store: Store, output: str, quiet: bool) -> None:
    """List the containers."""
    states = lifecycle.listing(store)
    if quiet:
        for item in states:
            click.echo(item["id"])
    elif output == "json":
        click.echo(json.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"],
                  s["owner"] or "root") for s in states]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths))
                       .rstrip())


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-f", "--format", "output", type=click.Choice(["table", "json"]),
              default="table")
@click.argument("container_id", metavar="ID")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
@_checked
def ps(store: Store, container_id: str, output: str, ps_args: tuple[str, ...]) -> None:
    """The container's processes: their PIDs (json), or ps(1)'s lines for them."""
    pids = lifecycle.processes(store, container_id)
    if output == "json":
        click.echo(json.dumps(pids))
        return
    lines = subprocess.run(["ps", *(ps_args or ("-ef",))], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    column = lines[0].split().index("PID")
    click.echo(lines[0])
    for line in lines[1:]:
        if int(line.split()[column]) in pids:
            click.echo(line)


@cli.command()
def features() -> None:
    """What this runtime supports (JSON, as runc's ``features``)."""
    click.echo(json.dumps(spec_template.features(), indent=2))


@cli.command()
@click.option("-b", "--bundle", default=".", help="Where to write config.json.")
@click.option("--rootless", is_flag=True, help="Refused: no user namespaces.")
@_checked
def spec(store: Store, bundle: str, rootless: bool) -> None:
    """Write a template config.json, as runc's ``spec`` does."""
    if rootless:
        raise ConfigError("--rootless: not supported (no user namespaces)")
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise ConfigError(f"{path} exists: remove it first")
    with open(path, "w") as f:
        json.dump(spec_template.default_config(), f, indent=2)


def main() -> None:
    cli(prog_name="pycontainer-runtime")
