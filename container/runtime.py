"""A container's lifecycle, and its state on disk.

``run`` is the supervisor, as docker is over containerd and runc: it makes
the container's cgroups, mounts its union (the daemon is its child,
outside the container's namespaces, in a cgroup beside the container's
that shares its CPU limit and has a memory limit of its own: see
``cgroups``), leases the container's address and relays its published
ports (``networking.py``, ``ports.py``), makes and wires its network
namespace, writes its bundle (``bundle.py``), and has the OCI core
(``oci/``) create and start it; then it forwards signals to it, waits as
its subreaper (conmon's part), and cleans up whatever way it ended.  The
processes:

    supervisor (pycontainer run)  -- the union daemon (pyunion)
      └─ PID 1 in the container: the core's init (init.py, asked for by
         the bundle), left to the supervisor by the core's helper
           └─ the command

The daemon unmounts when the supervisor dies, and the container's init
ends the container then (its lifeline closes: ``init.end_with``).  A
container whose supervisor is gone (its PID and start time are checked, so a reused
PID does not count) is ``dead``: the next ``ps``, ``run`` or ``rm`` cleans
up what it left, under the container's lock, and removes it if it was run
with ``--rm``.  A container whose union daemon died is stopped (by its
supervisor, or the next command to see it) and ``dead`` too.

State lives in ``/run/pycontainer/NAME/state.json``; the container's
writable branch and mount point in ``/var/lib/pycontainer/containers/NAME``.
Both trees are root's alone (0700, as docker's), so no host user reaches a
file or device node a container made through them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from unionfs import daemon as union_daemon
from unionfs import mounts
from unionfs import options as union_options

from . import bundle, cgroups, images, init, logs, networking, networks, ports
from . import syscalls as sc
from .networking import Attachment
from .oci import lifecycle as oci_lifecycle
from .oci import process as oci_process
from .oci.create import CreateError
from .oci.create import create as oci_create
from .oci.exec import exec_process
from .oci.inside import CreateOptions
from .oci.reader import ConfigError, Reader
from .oci.state import StateError, Store
from .spec import SPECIAL_NETWORKS, ContainerSpec, spec_from_dict
from .terminal import Console

STATE_DIR = "/run/pycontainer"
DATA_DIR = "/var/lib/pycontainer/containers"
ROOT_DIED = "root file system daemon died"
#: one file a container holds open costs its union daemon about 3 KiB (its
#: handle, descriptor, the node it pins and the branch's inode): counted
#: as 16 KiB against the daemon's memory limit, open files take at most a
#: fifth of it (``max_open``), and the container gets EMFILE before the
#: daemon gets near its limit
OPEN_FILE_COST = 16 << 10


class ContainerError(RuntimeError):
    """Something the runtime cannot do; the message is one line."""


@dataclass
class State:
    name: str
    image: str
    command: list[str]
    status: str = "created"            # created, running, exited, dead
    created: float = field(default_factory=time.time)
    supervisor_pid: int | None = None
    supervisor_start: int | None = None  # its start time, in clock ticks after boot
    daemon_pid: int | None = None      # the union daemon's, with its start time
    daemon_start: int | None = None
    reason: str | None = None          # why a dead container died
    auto_remove: bool = False          # run with --rm
    init_pid: int | None = None        # the container's PID 1, as the host sees it
    exit_code: int | None = None
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    spec: ContainerSpec | None = None    # what it was run with, for exec
    network: Attachment | None = None    # its place on a network, if on one

    @property
    def state_dir(self) -> str:
        return os.path.join(STATE_DIR, self.name)

    @property
    def data_dir(self) -> str:
        return os.path.join(DATA_DIR, self.name)

    @property
    def rootfs(self) -> str:
        return os.path.join(self.data_dir, "rootfs")

    def save(self) -> None:
        temporary = os.path.join(self.state_dir, "state.json.tmp")
        with open(temporary, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.rename(temporary, os.path.join(self.state_dir, "state.json"))

    @classmethod
    def load(cls, name: str) -> State:
        try:
            with open(os.path.join(STATE_DIR, name, "state.json")) as f:
                data = json.load(f)
            return cls(**{**data, "spec": spec_from_dict(data["spec"]) if data["spec"] else None,
                          "network": Attachment.from_dict(data["network"])})
        except FileNotFoundError:
            raise ContainerError(f"no such container: {name}") from None
        except (ValueError, KeyError, TypeError) as exc:  # cut short by a crash of the host
            raise ContainerError(f"{name}: its state file is unreadable ({exc})") from None

    def supervise_here(self) -> None:
        """Record this process as the container's supervisor."""
        self.supervisor_pid = os.getpid()
        self.supervisor_start = start_time(self.supervisor_pid)

    def supervisor_alive(self) -> bool:
        return _alive(self.supervisor_pid, self.supervisor_start)

    def daemon_alive(self) -> bool:
        """Whether the union daemon lives (or has not been started yet)."""
        return self.daemon_pid is None or _alive(self.daemon_pid, self.daemon_start)

    def supervisor_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the supervisor to end (it
        has cleaned up by then); whether it did."""
        deadline = time.monotonic() + timeout
        while self.supervisor_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def shown_status(self) -> str:
        """``running`` only while the supervisor and the union daemon live;
        a container that lost either is dead, whatever the file says."""
        return "dead" if self.fault() else self.status

    def fault(self) -> str | None:
        """Why a container not yet ended cannot be running, if it cannot."""
        if self.status in ("exited", "dead"):
            return None
        if not self.supervisor_alive():
            return "supervisor killed"
        if not self.daemon_alive():
            return ROOT_DIED
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot); None if it is gone
    or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except (FileNotFoundError, ProcessLookupError):  # ended before or during the read
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _alive(pid: int | None, started: int | None) -> bool:
    """Whether ``pid`` is the process that started at ``started``, not one
    that took its number since."""
    return pid is not None and start_time(pid) == started


def all_states() -> list[State]:
    """Every container whose state can be read; one removed while it is
    listed is left out."""
    with contextlib.suppress(FileNotFoundError):
        return [state for state in map(_load_if_there, sorted(os.listdir(STATE_DIR)))
                if state is not None]
    return []


def _load_if_there(name: str) -> State | None:
    try:
        return State.load(name)
    except ContainerError:
        return None


def run(spec: ContainerSpec, detach: bool = False, remove: bool = False,
        log_policy: logs.Policy = logs.Policy()) -> int:
    """Run a container to its end; returns its exit code (docker's codes).
    Detached, its output goes to its log, kept as ``log_policy`` says."""
    image_root = images.path_of(spec.image)
    if spec.network not in SPECIAL_NETWORKS:
        networks.get(spec.network)  # a missing one is refused before anything is made
    settle_all()  # frees the names of dead --rm containers
    state = _claim(spec, remove)
    background = None
    if detach:
        state.log = os.path.join(state.state_dir, "log")
        background = _Background(state.log, log_policy)
        if background.in_caller:
            return background.wait_for_start(state.name)
        state.supervise_here()
        state.save()
    try:
        return _supervise(spec, state, image_root, background)
    finally:
        if background:
            background.output_ended()  # before cleanup, which may remove the log
        cleanup(state, remove)
        if background:
            background.ended()


def _claim(spec: ContainerSpec, remove: bool) -> State:
    """Make the container's state directory, or refuse a name in use."""
    _private_dir(STATE_DIR)
    state = State(spec.name, spec.image, list(spec.command), spec=spec,
                  auto_remove=remove)
    state.supervise_here()
    try:
        os.mkdir(state.state_dir, 0o700)
    except FileExistsError:
        raise ContainerError(f"the name {spec.name!r} is in use: remove it with "
                             f"pycontainer rm {spec.name}") from None
    state.save()
    if os.path.exists(state.data_dir):  # left by a container of this name that crashed
        _unmount(state.rootfs)
        shutil.rmtree(state.data_dir)
    return state


def _supervise(spec: ContainerSpec, state: State, image_root: str,
               background: _Background | None) -> int:
    upper = os.path.join(state.data_dir, "upper")
    _private_dir(DATA_DIR)
    os.mkdir(state.data_dir, 0o700)
    os.mkdir(upper)
    os.mkdir(state.rootfs)
    group = cgroups.create(state.name)
    state.cgroup_paths = group.paths
    state.save()
    try:
        group.apply(spec.limits.as_resources())
    except (cgroups.CgroupError, OSError) as exc:
        raise ContainerError(f"cannot apply limits: {exc}") from None
    # Containers of one image share its files' page cache: each container's
    # own copy of a file goes when the file is closed (pagecache=drop).
    # allow_other: its processes run as any uid.  The container's own mount
    # of its root takes suid back (oci/mounts.py); the host's has none.
    # --storage-opt size= is the union's quota on the writable branch.
    daemon_memory = cgroups.union_memory(spec.limits.memory)
    bounds = (f",max_open={daemon_memory // OPEN_FILE_COST}" if daemon_memory else "") \
        + (f",quota={spec.storage_size}" if spec.storage_size else "")
    config = union_options.parse(
        [f"br={upper}=rw:{image_root}=ro,allow_other,nosuid,nodev,pagecache=drop{bounds}"],
        state.rootfs, f"pycontainer-{state.name}")
    state.daemon_pid = union_daemon.spawn(config, die_with_parent=True)
    state.daemon_start = start_time(state.daemon_pid)
    state.save()
    _protect_from_oom_killer(state.daemon_pid)
    attachment = _join_network(spec, state)
    proxy = ports.PortProxy(spec.publish, attachment.address) if spec.publish else None
    try:
        return _run_container(spec, state, group, attachment, background)
    finally:
        if proxy is not None:
            proxy.close()


def _protect_from_oom_killer(pid: int) -> None:
    """Keep the machine's OOM killer off a container's union daemon (its
    cgroup's is: the daemon holds only what its bounds let it, max_open).
    That needs CAP_SYS_RESOURCE, which a runtime in a container may lack:
    there the daemon stays as likely a victim as any other process."""
    with contextlib.suppress(PermissionError), open(f"/proc/{pid}/oom_score_adj", "w") as f:
        f.write("-1000")


def _private_dir(path: str) -> None:
    """``path`` made if missing, and root's alone whatever it was before."""
    os.makedirs(path, 0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _join_network(spec: ContainerSpec, state: State) -> Attachment | None:
    if spec.network in SPECIAL_NETWORKS:
        return None
    try:
        attachment = networking.join(spec.network, state.name, spec.ip)
    except networks.NetworkError as exc:
        raise ContainerError(str(exc)) from None
    state.network = attachment
    state.save()
    return attachment


def _run_container(spec: ContainerSpec, state: State, group, attachment: Attachment | None,
                   background: _Background | None) -> int:
    """Write the container's bundle, create and start it through the OCI
    core (this process is the subreaper its PID 1 is left to, as conmon
    is), forward signals to it, and wait for it."""
    etc_dir = _write_etc_files(state, spec, attachment)
    console = Console() if spec.tty else None
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    store = oci_store()
    with _NetworkNamespace(attachment) as namespace:
        if attachment is not None:
            networking.wire(attachment, namespace.path)
            state.save()  # its link's name, now it has one
        bundle.write(state.state_dir, spec, state.rootfs, etc_dir, _cgroups_path(group),
                     namespace.path)
        # Moving a process into a cgroup waits out an RCU grace period
        # (~10-20 ms) unless another move went just before: the daemon's
        # goes right before the core's move of the container's first process.
        group.add_union_daemon(state.daemon_pid, cgroups.union_memory(spec.limits.memory))
        # The container ends with this process: the pipe's write end is
        # never closed but by this process's end (see init.end_with).
        lifeline, _ = os.pipe()
        output = background.output() if background else None
        try:
            with _input_of(spec) as stdin:
                options = CreateOptions(stdio=(stdin, output or 1, output or 2),
                                        lifeline=lifeline)
                record = oci_create(store, state.name, state.state_dir,
                                    console=console.theirs if console else None,
                                    options=options)
        except (CreateError, ConfigError, StateError) as exc:
            return _failed(spec, exc)
        finally:
            os.close(lifeline)
    state.init_pid, state.status = record.pid, "running"
    state.save()
    try:
        oci_lifecycle.start(store, state.name)
    except StateError as exc:  # it ended before it started (e.g. killed, or out of memory)
        return _failed(spec, exc)
    if background:
        background.started()
    for signum in init.FORWARDED:
        if not (console and signum == signal.SIGWINCH):
            signal.signal(signum, lambda signum, _: sc.signal_quietly(record.pid, signum))
    signal.signal(signal.SIGCHLD, lambda *_: _stop_if_root_died(state, group))
    try:
        code = _wait(record.pid, console)
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the daemon ends at cleanup
    if group.stats().oom_kills:
        print(f"pycontainer: {state.name} was killed: out of memory", file=sys.stderr)
    state.exit_code = code
    return code


def oci_store() -> Store:
    """The OCI core's state of the front end's containers (a name cannot
    start with a dot, so no container is called so)."""
    return Store(os.path.join(STATE_DIR, ".runtime"))


def _cgroups_path(group) -> str:
    """The container's cgroup as its bundle names it: relative (under this
    process's own cgroup, per v1 hierarchy), or on v2 from the root."""
    if "unified" in group.paths:
        return "/" + os.path.relpath(group.paths["unified"], cgroups.ROOT)
    return os.path.relpath(next(iter(group.paths.values())),
                           cgroups.home_of(next(iter(group.paths.values()))))


@contextlib.contextmanager
def _input_of(spec: ContainerSpec):
    """What a container's process reads: ours with -i or -t, else nothing
    (docker's way)."""
    if spec.interactive or spec.tty:
        yield 0
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        yield devnull
    finally:
        os.close(devnull)


def _failed(spec: ContainerSpec, exc: Exception) -> int:
    """Report a container that could not be created with docker's words
    and codes: 127 for a command not found, 126 for one that cannot be
    executed, 125 for the rest."""
    text = str(exc)
    if 'exec: "' in text and ("executable file not found" in text
                              or "no such file or directory" in text):
        code, message = init.NOT_FOUND, f"cannot run {spec.command[0]!r}: not found"
    elif 'exec: "' in text and "permission denied" in text:
        code, message = init.CANNOT_EXECUTE, f"cannot run {spec.command[0]!r}: Permission denied"
    else:
        code, message = init.RUNTIME_ERROR, text
    print(f"pycontainer: {message}", file=sys.stderr)
    return code


class _NetworkNamespace:
    """A network namespace of its own for a container on a network, made
    before it and held by a child of ours until the container has joined
    it (``path``); None for ``--network none`` (the core makes one) and
    ``host``."""

    def __init__(self, attachment: Attachment | None):
        self.path, self._holder, self._hold = None, None, None
        if attachment is None:
            return
        made_r, made_w = os.pipe()
        hold_r, self._hold = os.pipe()
        self._holder = os.fork()
        if self._holder == 0:  # a copy of the supervisor: it must never unwind
            try:
                os.close(made_r)
                os.close(self._hold)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
                sc.unshare(sc.CLONE_NEWNET)
                os.write(made_w, b"1")
                os.read(hold_r, 1)
            finally:
                os._exit(0)
        os.close(made_w)
        os.close(hold_r)
        made = os.read(made_r, 1)
        os.close(made_r)
        if made != b"1":
            self.__exit__()
            raise ContainerError("cannot make the container's network namespace")
        self.path = f"/proc/{self._holder}/ns/net"

    def __enter__(self) -> _NetworkNamespace:
        return self

    def __exit__(self, *_) -> None:
        if self._holder is not None:
            os.close(self._hold)
            os.waitpid(self._holder, 0)


def _stop_if_root_died(state: State, group) -> None:
    """Kill the container if its union daemon (our child) died: nothing
    can use a root that nobody serves."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(state.daemon_pid, os.WNOHANG)[0] == state.daemon_pid:
            state.reason = ROOT_DIED
            group.kill_all()


def _wait(pid: int, console: Console | None) -> int:
    """Wait for the container's PID 1 (relaying its terminal meanwhile);
    its exit code."""
    if console is not None:
        console.relay()
    _, status = os.waitpid(pid, 0)
    return init.exit_code(status)


def exec_in(name: str, spec: ContainerSpec) -> int:
    """Run ``spec.command`` in the running container ``name``: in all its
    namespaces and cgroups, confined as its command is."""
    state = State.load(name)
    if state.shown_status != "running":
        raise ContainerError(f"{name} is not running")
    process = oci_process.parse(Reader(bundle.process_for(spec), "process"))
    try:
        with _input_of(spec) as stdin:
            return exec_process(oci_store(), name, process, detach=False, stdio=(stdin, 1, 2))
    except (CreateError, StateError) as exc:
        if isinstance(exc, StateError):
            raise ContainerError(f"{name} is not running") from None
        return _failed(spec, exc)


def stop(state: State, timeout: float) -> None:
    """SIGTERM to the container's init, SIGKILL after ``timeout`` seconds;
    return once its supervisor has cleaned up."""
    with contextlib.suppress(ContainerError):  # ended meanwhile
        signal_container(state.name, signal.SIGTERM)
    if state.supervisor_ended(timeout):
        return
    with contextlib.suppress(ContainerError):
        signal_container(state.name, signal.SIGKILL)
    if not state.supervisor_ended(timeout=30):
        raise ContainerError(f"{state.name} did not stop within 30 s of SIGKILL")


def signal_container(name: str, signum: int) -> None:
    """Send ``signum`` to the container's init through the core: under its
    lock, the init's start time checked, so never to a process that took
    its PID since."""
    try:
        oci_lifecycle.kill(oci_store(), name, signum)
    except StateError:
        raise ContainerError(f"{name} is not running") from None


def _write_etc_files(state: State, spec: ContainerSpec, attachment: Attachment | None) -> str:
    """The container's own /etc/hostname, hosts and resolv.conf."""
    etc_dir = os.path.join(state.state_dir, "etc")
    os.makedirs(etc_dir)
    own_address = attachment.address if attachment else "127.0.1.1"
    servers = "".join(f"nameserver {server}\n" for server in spec.dns)
    files = {
        "hostname": f"{spec.hostname}\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                 f"{own_address}\t{spec.hostname} {spec.name}\n",
        "resolv.conf": servers or _host_resolv_conf(keep_loopback=spec.network == "host"),
    }
    for name, text in files.items():
        with open(os.path.join(etc_dir, name), "w") as f:
            f.write(text)
    return etc_dir


def _host_resolv_conf(keep_loopback: bool) -> str:
    """The host's; less name servers on its loopback, which a container
    with a network of its own cannot reach (as docker does)."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines(keepends=True)
    except OSError:
        return ""
    return "".join(line for line in lines if keep_loopback
                   or not re.match(r"\s*nameserver\s+(127\.|::1)", line))


class _Background:
    """A supervisor forked into the background for ``run -d``.  The caller
    returns, as docker's does, only once the container's command has
    started, or with the supervisor's own output and exit code when it
    could not start.  The container's output goes to its log (logs.py),
    and so does the supervisor's own while the command runs."""

    def __init__(self, log: str, policy: logs.Policy):
        self._log, self._policy, self._relay = log, policy, None
        # What the supervisor says until the command runs: the caller's to print.
        self._said = os.memfd_create("pycontainer-run")
        start_r, self._start_w = os.pipe()
        self._pid = os.fork()
        self.in_caller = self._pid != 0
        if self.in_caller:
            os.close(self._start_w)
            self._start = os.fdopen(start_r, "rb")
            return
        os.close(start_r)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self._say_to(self._said)

    def output(self) -> int:
        """In the supervisor: start the log; the descriptor the container
        is to write its output to."""
        self._relay = logs.Relay(self._log, self._policy)
        return self._relay.fd

    def started(self) -> None:
        """In the supervisor: the container's command has been exec'd."""
        self._say_to(self._relay.fd)
        self._tell(b"1")

    def output_ended(self) -> None:
        """In the supervisor, once the container has ended: all it wrote
        is in its log."""
        self._say_to(self._said)
        if self._relay is not None:
            self._relay.close()

    @staticmethod
    def _say_to(fd: int) -> None:
        """Make ``fd`` the supervisor's stdout and stderr."""
        sys.stdout.flush()
        sys.stderr.flush()
        for target in (1, 2):
            os.dup2(fd, target)

    def ended(self) -> None:
        """In the supervisor: all is cleaned up (after a start or not)."""
        self._tell(b"0")

    def _tell(self, answer: bytes) -> None:
        if self._start_w is not None:
            os.write(self._start_w, answer)
            os.close(self._start_w)
            self._start_w = None

    def wait_for_start(self, name: str) -> int:
        """In the caller: print ``name`` once the command has started, or what
        the supervisor printed when it did not start; the exit code."""
        with self._start, os.fdopen(self._said, "rb") as said_file:
            if self._start.read(1) == b"1":
                print(name)
                return 0
            _, status = os.waitpid(self._pid, 0)
            said_file.seek(0)  # the supervisor's writes moved the offset both share
            said = said_file.read()
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            said += f"pycontainer: the supervisor was killed by signal {-code}\n".encode()
        sys.stderr.buffer.write(said)
        return code if code > 0 else init.RUNTIME_ERROR


def cleanup(state: State, remove: bool) -> None:
    """Undo everything a container made, whatever state it was left in.
    Its cgroups go last: its union daemon is in one until it has ended."""
    group = cgroups.reopen(state.cgroup_paths) if state.cgroup_paths else None
    oci_lifecycle.delete(oci_store(), state.name, force=True)
    if group is not None:
        group.kill_all()
    if state.network:  # its processes are gone: its address may go too
        networking.leave(state.network, state.name)
        state.network = None
    _unmount(state.rootfs)
    _reap_children()
    _forget_daemon(state)
    if group is not None:
        group.remove()
        state.cgroup_paths = {}
    if remove:
        shutil.rmtree(state.data_dir, ignore_errors=True)
        shutil.rmtree(state.state_dir, ignore_errors=True)
    else:
        state.status = "dead" if state.reason else "exited"
        with contextlib.suppress(FileNotFoundError):
            state.save()


def _forget_daemon(state: State) -> None:
    """Wait for the union daemon to end, and remove the PID record and
    control socket it leaves when it is killed."""
    deadline = time.monotonic() + 10
    while not _daemon_ended(state) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _daemon_ended(state):
        union_daemon.forget(state.rootfs)


def _daemon_ended(state: State) -> bool:
    return state.daemon_pid is None or not _alive(state.daemon_pid, state.daemon_start)


def settle_all() -> None:
    """Clean up after every container that lost its supervisor or root."""
    for state in all_states():
        if state.fault():
            settle(state.name)


def settle(name: str) -> None:
    """Under the container's lock: stop a container whose union daemon
    died (its supervisor cleans up then), or clean up after one whose
    supervisor died, and remove it if it was run with ``--rm``."""
    with _locked(name):
        state = _load_if_there(name)
        fault = state.fault() if state else None
        if fault == ROOT_DIED:
            if state.cgroup_paths:
                cgroups.reopen(state.cgroup_paths).kill_all()
            state.supervisor_ended(timeout=30)
        elif fault:
            state.reason = fault
            cleanup(state, remove=state.auto_remove)


@contextlib.contextmanager
def _locked(name: str):
    """Hold the lock of the container ``name`` (its state directory); a
    container removed meanwhile is held by nobody, and needs no lock."""
    try:
        fd = os.open(os.path.join(STATE_DIR, name), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove(name: str, force: bool = False) -> None:
    settle(name)
    with _locked(name):
        state = State.load(name)
        if state.shown_status in ("created", "running"):  # starting counts
            if not force:
                raise ContainerError(f"{name} is running: stop it first or use rm -f")
            sc.signal_quietly(state.supervisor_pid, signal.SIGKILL)
            state.supervisor_ended(timeout=5)
        cleanup(state, remove=True)


def _unmount(path: str) -> None:
    """Unmount a container's root, which its union daemon may be unmounting
    too (it ends with a killed supervisor)."""
    if _is_mounted(path):
        try:
            sc.umount(path)
        except OSError:
            with contextlib.suppress(OSError):
                sc.umount(path, sc.MNT_DETACH)
            if _is_mounted(path):
                raise ContainerError(f"cannot unmount {path}") from None


def _is_mounted(path: str) -> bool:
    return mounts.find(path) is not None


def _reap_children() -> None:
    """Collect the union daemon (our child) once it has unmounted: woken
    by its SIGCHLD, not by polling."""
    deadline = time.monotonic() + 10
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            remaining = deadline - time.monotonic()
            if pid == 0 and remaining <= 0:
                return
            if pid == 0:
                signal.sigtimedwait({signal.SIGCHLD}, remaining)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
