"""``pycontainer``: run processes in containers whose root is a pyunion
mount, with docker's verbs and options where they make sense here.

Exit codes as docker's: the container's own, 125 when pycontainer itself
fails (a bad option, a missing image, a name in use), 126/127 when the
command cannot be run or is not found.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time

import click

from unionfs.cli import OneLineGroup

from . import cgroups, images, logs as container_logs, networking, networks, ports, runtime
from . import seccomp_profile, security
from . import spec as specs
from . import syscalls as sc
from .cgroups import CgroupError
from .oci import seccomp as oci_seccomp
from .oci.reader import Reader


class _Failure(click.ClickException):
    exit_code = 125


def _fail_cleanly(function):
    """Turn the runtime's one-line errors into ``Error: ...`` and exit 125."""
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (specs.SpecError, images.ImageError, runtime.ContainerError, CgroupError,
                networks.NetworkError, ports.PortError) as exc:
            raise _Failure(str(exc)) from None
    wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
    return wrapper


class _Group(OneLineGroup):
    """A command line click cannot parse is answered as docker does: one
    line and 125, not a usage text and 2."""

    usage_exit_code = _Failure.exit_code


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run processes in containers whose root is a pyunion mount."""


@cli.command()
@click.argument("name", type=click.Choice(["busybox"]))
@_fail_cleanly
def image(name: str) -> None:
    """Build a base image into the image store (from Debian's busybox-static)."""
    click.echo(images.build_busybox())


@cli.command(context_settings={"allow_interspersed_args": False})
@click.argument("image_name", metavar="IMAGE")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--name")
@click.option("-h", "--hostname")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VAL")
@click.option("--env-file", multiple=True, metavar="FILE")
@click.option("-w", "--workdir", default="/")
@click.option("-u", "--user", metavar="UID[:GID]")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CONTAINER[:ro]")
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; output to its log.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("--read-only", is_flag=True, help="Mount the root file system read-only.")
@click.option("-m", "--memory")
@click.option("--memory-swap")
@click.option("--cpus")
@click.option("--cpu-shares")
@click.option("--cpuset-cpus")
@click.option("--pids-limit")
@click.option("--network", "--net", default="bridge", metavar="NETWORK",
              help="bridge (the default), a network made with 'network create', "
                   "none (loopback only) or host (the host's network).")
@click.option("--ip", help="The container's address on its network.")
@click.option("--dns", multiple=True, metavar="ADDRESS", help="A name server (repeatable).")
@click.option("-p", "--publish", multiple=True, metavar="HOSTPORT:PORT[/tcp|udp]",
              help="Publish a container's port on the host's 127.0.0.1.")
@click.option("--security-opt", "security_opts", multiple=True,
              help="seccomp=unconfined turns the seccomp filter off.")
@click.option("--storage-opt", "storage_opts", multiple=True, metavar="size=SIZE",
              help="What the container may store in its writable layer, e.g. size=1g.")
@click.option("--log-opt", "log_opts", multiple=True, metavar="KEY=VALUE",
              help="With -d: max-size=SIZE (k, m, g) rotates the log, max-file=N keeps N files.")
@_fail_cleanly
def run(image_name, command, name, hostname, env, env_file, workdir, user, volumes, remove,
        detach, interactive, tty, read_only, memory, memory_swap, cpus, cpu_shares, cpuset_cpus,
        pids_limit, network, ip, dns, publish, security_opts, storage_opts,
        log_opts) -> None:
    """Run COMMAND in a new container made from IMAGE."""
    if not command:
        command = ("/bin/sh",)
    if log_opts and not detach:
        raise specs.SpecError("--log-opt needs -d: only a detached container has a log")
    log_policy = container_logs.parse_options(log_opts)
    name = specs.check_name(name) if name else secrets.token_hex(6)
    hostname = specs.check_hostname(hostname) if hostname else name[:63]
    memory_bytes = specs.parse_memory(memory) if memory else None
    limits = specs.Limits(
        memory=memory_bytes,
        memory_swap=specs.parse_memory_swap(memory_swap, memory_bytes) if memory_swap else None,
        cpus=specs.parse_cpus(cpus) if cpus else None,
        cpu_shares=specs.parse_cpu_shares(cpu_shares) if cpu_shares else None,
        cpuset_cpus=specs.parse_cpuset(cpuset_cpus) if cpuset_cpus else None,
        pids=specs.parse_pids_limit(pids_limit) if pids_limit else None,
    )
    published = tuple(ports.parse_publish(p) for p in publish)
    environment = [pair for path in env_file for pair in specs.read_env_file(path)]
    environment += [specs.parse_env(item) for item in env]
    spec = specs.ContainerSpec(
        image=image_name, command=tuple(command), name=name, hostname=hostname,
        env=tuple(environment), workdir=specs.check_workdir(workdir),
        user=specs.parse_user(user) if user else specs.User(),
        mounts=tuple(specs.parse_volume(v) for v in volumes), read_only=read_only,
        limits=limits, interactive=interactive, tty=tty,
        seccomp=specs.parse_security_opts(security_opts),
        network=specs.check_network(network, ip, published),
        ip=ip, dns=tuple(specs.parse_dns(d) for d in dns), publish=published,
        storage_size=specs.parse_storage_opts(storage_opts),
    )
    sys.exit(runtime.run(spec, detach=detach, remove=remove, log_policy=log_policy))


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VAL")
@click.option("-u", "--user", metavar="UID[:GID]")
@click.option("-w", "--workdir")
@_fail_cleanly
def exec_(name, command, interactive, tty, env, user, workdir) -> None:
    """Run COMMAND in a running container (all its namespaces and cgroups)."""
    base = runtime.State.load(name).spec
    spec = dataclasses.replace(
        base, command=tuple(command), interactive=interactive, tty=tty,
        env=base.env + tuple(specs.parse_env(item) for item in env),
        user=specs.parse_user(user) if user else base.user,
        workdir=specs.check_workdir(workdir) if workdir else base.workdir)
    sys.exit(runtime.exec_in(name, spec))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--no-stream", is_flag=True, help="Print once, then exit.")
@_fail_cleanly
def stats(names: tuple[str, ...], no_stream: bool) -> None:
    """Live resource use of running containers (all of them by default);
    one that stops meanwhile leaves the table."""
    states = [_running(n) for n in names] or [
        s for s in runtime.all_states() if s.shown_status == "running"]
    previous: dict[str, tuple[float, int | None]] = {}
    while True:
        lines = [f"{'NAME':<20} {'CPU %':>7} {'MEM USAGE / LIMIT':>24} {'MEM %':>7} "
                 f"{'MAX USAGE':>10} {'OOM':>4} {'PIDS':>5}"]
        lines += [line for line in (_stats_line(s, previous) for s in states) if line]
        if not no_stream:
            click.echo("\x1b[2J\x1b[H", nl=False)
        click.echo("\n".join(lines))
        if no_stream:
            return
        time.sleep(1)


def _stats_line(state: runtime.State, previous: dict) -> str | None:
    """``state``'s line of the table, or None once it is not running; a
    figure whose cgroup file went while it was read shows as ``--``."""
    if state.shown_status != "running":
        return None
    try:
        usage = cgroups.reopen(state.cgroup_paths).stats()
    except OSError:  # the cgroup was removed while it was read
        return None
    now = time.monotonic()
    then, cpu_then = previous.get(state.name, (None, None))
    previous[state.name] = (now, usage.cpu_usage_ns)
    cpu = "--"
    if then is None:
        cpu = "0.00%"
    elif None not in (cpu_then, usage.cpu_usage_ns):
        cpu = f"{(usage.cpu_usage_ns - cpu_then) / 1e9 / (now - then) * 100:.2f}%"
    used, limit = usage.memory_usage, usage.memory_limit
    percent = f"{used / limit * 100:.2f}%" if limit and used is not None else "--"
    return (f"{state.name:<20} {cpu:>7} {_size(used) + ' / ' + _size(limit):>24} "
            f"{percent:>7} {_size(usage.memory_max_usage):>10} "
            f"{usage.oom_kills or 0:>4} {usage.pids_current or 0:>5}")


def _size(count: int | None) -> str:
    if count is None:
        return "--"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.4g}{unit}" if unit != "B" else f"{count}B"
        count /= 1024
    return ""


@cli.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show exited containers too.")
@_fail_cleanly
def ps(show_all: bool) -> None:
    """List containers; those that lost their supervisor or root are
    cleaned up first (and removed, if run with --rm)."""
    runtime.settle_all()
    click.echo(f"{'NAME':<20} {'STATUS':<12} {'PID':>7}  {'IMAGE':<12} COMMAND")
    for state in runtime.all_states():
        status = state.shown_status
        if status != "running" and not show_all:
            continue
        shown = {"exited": f"exited ({state.exit_code})",
                 "dead": f"dead ({state.reason or state.fault()})"}.get(status, status)
        pid = state.init_pid if status == "running" else ""
        click.echo(f"{state.name:<20} {shown:<12} {pid or '':>7}  {state.image:<12} "
                   f"{' '.join(state.command)}")


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@_fail_cleanly
def rm(names: tuple[str, ...], force: bool) -> None:
    """Remove containers (their state, writable branch and leftovers).  As
    docker's, it goes on past a name it cannot remove, says why, and exits
    1 at the end."""
    failed = False
    for name in names:
        try:
            runtime.remove(name, force=force)
        except runtime.ContainerError as exc:
            click.echo(f"Error: {exc}", err=True)
            failed = True
        else:
            click.echo(name)
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("name")
@click.option("-s", "--signal", "signame", default="KILL", help="Signal name or number.")
@_fail_cleanly
def kill(name: str, signame: str) -> None:
    """Send a signal to a container's main process."""
    _running(name)
    runtime.signal_container(name, _parse_signal(signame))


@cli.command()
@click.argument("name")
@click.option("-t", "--time", "timeout", default=10, help="Seconds before SIGKILL.")
@_fail_cleanly
def stop(name: str, timeout: int) -> None:
    """Stop a container: SIGTERM, then SIGKILL after a timeout; returns
    once it has stopped and been cleaned up."""
    runtime.stop(_running(name), timeout)
    click.echo(name)


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True)
@_fail_cleanly
def logs(name: str, follow: bool) -> None:
    """Show the output of a detached container (what its log keeps, oldest
    first); with -f, go on until it ends."""
    state = runtime.State.load(name)
    if not state.log:
        raise runtime.ContainerError(f"{name} was not run with -d: its output went to its terminal")
    for chunk in container_logs.read(state.log, (lambda: _still_running(name)) if follow else None):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()


@cli.command()
@click.argument("name")
@_fail_cleanly
def inspect(name: str) -> None:
    """A container's state as JSON."""
    state = runtime.State.load(name)
    click.echo(json.dumps({**dataclasses.asdict(state), "status": state.shown_status},
                          indent=2))


@cli.group(cls=_Group)
def network() -> None:
    """Make, list and remove container networks."""


@network.command("create")
@click.argument("name")
@click.option("--subnet", required=True, metavar="CIDR", help="A private IPv4 range.")
@_fail_cleanly
def network_create(name: str, subnet: str) -> None:
    """Make a network; its bridge is made when a container first joins."""
    print(networking.create(name, subnet).name)


@network.command("ls")
@_fail_cleanly
def network_ls() -> None:
    """List the networks."""
    print(f"{'NAME':<20} {'SUBNET':<18} {'BRIDGE':<13} CONTAINERS")
    for found in networks.all_networks():
        print(f"{found.name:<20} {found.subnet:<18} {found.bridge:<13} "
              f"{len(networks.holders(found))}")


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@_fail_cleanly
def network_rm(names: tuple[str, ...]) -> None:
    """Remove networks no container uses, with their bridges."""
    for name in names:
        networking.remove(name)
        print(name)


def _running(name: str) -> runtime.State:
    state = runtime.State.load(name)
    if state.shown_status != "running":
        raise runtime.ContainerError(f"{name} is not running")
    return state


def _still_running(name: str) -> bool:
    """Whether ``name`` runs; a container removed meanwhile does not."""
    try:
        return runtime.State.load(name).shown_status == "running"
    except runtime.ContainerError:
        return False


def _parse_signal(text: str) -> int:
    number = sc.signal_number(text)
    if number is None:
        raise runtime.ContainerError(f"unknown signal {text!r}")
    return number


def warm() -> None:
    """What each command would pay at its first run, paid once by the
    fork server before it forks: click's first parse of ``run``, the
    cgroup drivers (imported when first used) and docker's seccomp
    profile compiled (``oci/seccomp.py`` keeps its program)."""
    run.make_context("run", ["busybox"]).close()
    from .cgroups import v1, v2  # noqa: F401 - imported here to be shared
    oci_seccomp.parse(Reader(seccomp_profile.oci(security.DEFAULT_CAPABILITIES),
                             "linux.seccomp")).compile()


def undo(args: list[str], pids: list[int]) -> None:
    """Clean up after a served command whose caller went away (the fork
    server killed its supervisor): the container it ran ends with its
    supervisor, and is cleaned up here, as the next ``ps`` would, with
    every other container whose supervisor died.  ``pids``, what the
    command left running, are collected on the way."""
    runtime.settle_all()


def main() -> None:
    """The entry point: a failure nobody foresaw is still one line and
    docker's 125, never a traceback."""
    try:
        cli.main(prog_name="pycontainer")
    except Exception as exc:  # noqa: BLE001 - the last stop before a traceback
        said = " ".join(str(exc).split())
        print(f"Error: pycontainer failed unexpectedly: {type(exc).__name__}: {said}",
              file=sys.stderr)
        sys.exit(125)
