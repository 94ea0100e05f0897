"""The union daemon's life: open the branches, mount, serve, unmount.

``serve`` runs in the foreground; ``spawn`` forks it into the background and
returns only once the mount is ready (or with the daemon's one-line error).
SIGTERM, SIGINT and SIGHUP end the daemon with a clean unmount; an unmount
from outside (``umount``, ``fusermount3 -u``) ends it too.

The daemon holds its writable branch for its whole life (``upperlock``), and
serves with its soft limit of open files raised to the hard one.

Each daemon records its PID in ``/run/pyunion/`` under its mount point's
name, so ``pyunion umount`` can wait for it to be gone.  It holds a lock on
its record while it lives, so the next daemon that starts knows the records
of killed ones (whatever started them: pyunion, pycontainer) and removes
them.  Beside its record it takes requests to change its branches
(``control.py``, ``live.py``).  A daemon that fails after its mount was
ready (a flatten at unmount that runs out of space, say) logs one line and
leaves that line in a failure record beside, for ``pyunion umount`` to
report.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import logging.handlers
import os
import resource
import signal
import tempfile
import urllib.parse
from typing import Awaitable, Callable

import pyfuse3
import trio

from . import control, durable, libc, mounts, passthrough, restack, upperlock
from .branches import BranchError
from .fs import UnionOperations
from .handles import PageCache
from .layer import Layer
from .metered import MeteredLayer
from .oneline import one_line
from .options import MountConfig
from .quota import UNLIMITED, Quota
from .udba import Mode
from .upper import Upper
from .whiteout import Format

log = logging.getLogger(__name__)

PID_DIR = "/run/pyunion"
#: Readahead of the mount: the kernel's default 128 KiB makes a sequential
#: read cost one request per 128-256 KiB; with 1 MiB (libfuse's largest
#: request) there are four to eight times fewer round trips to Python.
READAHEAD_KB = 1024
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_SYSLOG = "/dev/log"


class MountError(RuntimeError):
    """The daemon could not mount; the message is one line."""


class FlattenError(RuntimeError):
    """``-o flatten`` could not complete the partial copies at unmount;
    the message is one line.  The branch keeps them, as it was."""


def serve(config: MountConfig, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount and answer requests until unmounted or signalled.

    Raises :class:`~unionfs.branches.BranchError` if the writable branch is
    in use, :class:`MountError` if the mount fails, :class:`FlattenError` if
    ``-o flatten`` fails at unmount.
    """
    # The kernel has applied the caller's umask already.
    os.umask(0)
    _raise_open_file_limit()
    if config.volatile:
        durable.make_volatile()
    with upperlock.held(config.stack):
        quota = Quota(config.quota) if config.quota is not None else UNLIMITED
        layers = [MeteredLayer(branch, i, quota) if i == 0 and config.quota is not None
                  else Layer(branch, i) for i, branch in enumerate(config.stack.branches)]
        upper = (Upper(layers[0], config.stack.workdir, quota, Format(config.whiteout))
                 if layers[0].writable else None)
        operations = None
        try:
            if upper is not None:
                upper.check_format()
                upper.check_volatile()
            operations = UnionOperations(layers, upper, partial_copies=config.partial_copies,
                                         pagecache=PageCache(config.pagecache),
                                         max_open=config.max_open, udba=Mode(config.udba),
                                         owners=config.owners,
                                         passthrough=_passthrough_asked(config))
            with _stderr_captured() as complaint:
                try:
                    pyfuse3.init(operations, config.mountpoint, set(config.fuse_options))
                except RuntimeError as exc:
                    reason = complaint() or str(exc)
                    raise MountError(f"cannot mount on {config.mountpoint}: {reason}") from None
            refused: list[str] = []
            with _records(config.mountpoint) as recorded:
                try:
                    if upper is not None:
                        upper.prepare(config.volatile)
                        operations.recover()
                        upper.count()
                    controls = functools.partial(_answer_control, operations, config)
                    trio.run(_main_loop,
                             functools.partial(_ready, config, operations, on_ready, refused),
                             operations, control_path(config.mountpoint) if recorded else None,
                             controls)
                finally:
                    pyfuse3.close(unmount=True)
                if config.flatten_at_umount and not refused:
                    _flatten(operations, config.mountpoint)
                if config.volatile and upper is not None:
                    upper.settle()
            if refused:  # never ready: its caller hears it, no failure is recorded
                raise MountError(refused[0])
        finally:
            if upper is not None:
                upper.close()
            for layer in layers:
                layer.close()
            if operations is not None:
                operations.close()


def spawn(config: MountConfig, keep_stderr: bool = False, die_with_parent: bool = False) -> int:
    """Run :func:`serve` in a detached child; return its PID once mounted.

    With ``die_with_parent`` the daemon unmounts and ends when the caller
    dies (a container runtime's supervisor, say).
    """
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(ready_r)
        ready = _ReadyPipe(ready_w)
        status = 1
        try:
            _detach(keep_stderr)
            if die_with_parent:
                libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
            serve(config, on_ready=lambda: ready.send("ok"))
            status = 0
        except BaseException as exc:  # noqa: BLE001 - the parent must hear of it
            ready.send(one_line(exc))
            log.error("%s", one_line(exc))
            log.debug("daemon failed", exc_info=True)
        finally:
            os._exit(status)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready_pipe:
        answer = os.fsdecode(ready_pipe.read()).strip()
    if answer != "ok":
        os.waitpid(pid, 0)
        raise MountError(answer or "the daemon exited before the mount was ready")
    return pid


def pid_of(mountpoint: str) -> int | None:
    """The PID of the daemon serving ``mountpoint``, if it is still running."""
    return _live_pid(pidfile_path(mountpoint))


def failure_of(mountpoint: str, pid: int) -> str | None:
    """Why the daemon ``pid`` of ``mountpoint`` failed at its end, if it
    did; the record is removed once read."""
    path = _failure_path(mountpoint)
    try:
        with open(path, errors="surrogateescape") as f:
            recorded_pid, _, message = f.read().partition("\n")
        if int(recorded_pid) != pid:
            return None
        os.unlink(path)
    except (OSError, ValueError):
        return None
    return message.strip()


def _live_pid(pidfile: str) -> int | None:
    """The PID in a record whose daemon still holds its lock (a daemon
    killed, whatever its command line, holds none)."""
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        try:
            return int(os.pread(fd, 32, 0))
        except ValueError:
            return None
    finally:
        os.close(fd)


async def _main_loop(ready: Callable[[], Awaitable[None]], operations: UnionOperations,
                     control_at: str | None,
                     controls: Callable[[dict], Awaitable[dict]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(operations.watch_below)
        if control_at is not None:
            await nursery.start(control.serve, control_at, controls)
        nursery.start_soon(ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _ready(config: MountConfig, operations: UnionOperations,
                 on_ready: Callable[[], None], refused: list[str]) -> None:
    """Once the kernel's INIT is answered (it sets the readahead then, and
    says whether it passes files through): the mount is ready, or, with
    ``passthrough=on`` and none, ends with the reason in ``refused``."""
    await operations.initialized.wait()
    _widen_readahead(config.mountpoint)
    if config.passthrough == "on" and not operations.backings.enabled:
        refused.append(f"cannot mount on {config.mountpoint}: passthrough=on, but the "
                       f"kernel does not offer FUSE passthrough")
        pyfuse3.terminate()
        return
    if operations.enable_passthrough and not operations.backings.enabled:
        log.warning("passthrough off: the kernel does not offer it")
    on_ready()


def _passthrough_asked(config: MountConfig) -> bool:
    """Whether to ask the kernel to pass files through; with
    ``passthrough=on``, :class:`MountError` where it cannot be had."""
    if config.passthrough == "off":
        return False
    reason = passthrough.unavailable()
    if reason is None:
        return True
    if config.passthrough == "on":
        raise MountError(f"cannot mount on {config.mountpoint}: passthrough=on, but {reason}")
    log.info("passthrough off: %s", reason)
    return False


async def _answer_control(operations: UnionOperations, config: MountConfig,
                          request: dict) -> dict:
    """A request on the control channel: list the branches, or change them."""
    try:
        changes = [restack.Change.from_json(c) for c in request.get("changes", [])]
        if changes:
            stack = await operations.change_branches(changes, config.mountpoint,
                                                     config.stack.workdir,
                                                     force=bool(request.get("force")))
            log.info("branches now %s", ":".join(f"{b.path}={b.mode.value}" for b in stack))
        else:
            stack = operations.branches()
    except BranchError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{exc.filename or 'branch change'}: {exc.strerror}"}
    return {"branches": [{"path": b.path, "mode": b.mode.value} for b in stack]}


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def _raise_open_file_limit() -> None:
    """Serve as many open files as the hard limit allows: the soft limit
    inherited is often 1,024, for every file open through the mount."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _flatten(operations: UnionOperations, mountpoint: str) -> None:
    try:
        trio.run(operations.flatten_all)
    except OSError as exc:
        raise FlattenError(f"flatten of {mountpoint} at unmount failed: {exc.strerror} "
                           "(its partial copies stay; mount it again to retry)") from None


def _widen_readahead(mountpoint: str) -> None:
    """Set the mount's readahead (root only; others keep the default)."""
    with contextlib.suppress(OSError):
        found = mounts.find(mountpoint)
        if found is not None:
            with open(f"/sys/class/bdi/{found.device}/read_ahead_kb", "w") as f:
                f.write(str(READAHEAD_KB))


class _ReadyPipe:
    """Tells the waiting parent, once, how the mount went."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def send(self, message: str) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, os.fsencode(message))
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def _stderr_captured():
    """Catch what libfuse prints to fd 2, for a one-line error message.

    Yields a function that returns the last line printed so far.
    """
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)

        def last_line() -> str:
            capture.seek(0)
            lines = capture.read().decode(errors="replace").strip().splitlines()
            return lines[-1].removeprefix("fuse: ") if lines else ""

        try:
            yield last_line
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _detach(keep_stderr: bool) -> None:
    """Leave the caller's session and terminal; without ``keep_stderr``
    the daemon's errors go to syslog (when there is one) instead."""
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    if not keep_stderr and os.path.exists(_SYSLOG):
        handler = logging.handlers.SysLogHandler(_SYSLOG)
        handler.setFormatter(logging.Formatter("pyunion[%(process)d]: %(message)s"))
        logging.getLogger().addHandler(handler)


def pidfile_path(mountpoint: str) -> str:
    """Where the daemon serving ``mountpoint`` records its PID."""
    return _record_path(mountpoint, ".pid")


def forget(mountpoint: str) -> None:
    """Remove what a daemon of ``mountpoint`` that was killed left: its PID
    record and its control socket."""
    for path in (pidfile_path(mountpoint), control_path(mountpoint)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def control_path(mountpoint: str) -> str:
    """Where the daemon serving ``mountpoint`` takes requests (``control``):
    named by a digest, since a socket's path must fit in 108 bytes."""
    digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:32]
    return os.path.join(PID_DIR, digest + ".sock")


def _failure_path(mountpoint: str) -> str:
    return _record_path(mountpoint, ".failed")


def _record_path(mountpoint: str, suffix: str) -> str:
    name = urllib.parse.quote(os.fsencode(mountpoint), safe="")
    return os.path.join(PID_DIR, name + suffix)


@contextlib.contextmanager
def _records(mountpoint: str):
    """The PID record while the daemon serves, and the failure record it
    leaves if it ends with an error (not root: neither)."""
    path = pidfile_path(mountpoint)
    try:
        # Modes are explicit: the daemon runs with umask 0 (see serve).
        os.makedirs(PID_DIR, mode=0o755, exist_ok=True)
        for name in os.listdir(PID_DIR):  # left by daemons that were killed
            if name.endswith(".pid") and _live_pid(os.path.join(PID_DIR, name)) is None:
                forget(os.fsdecode(urllib.parse.unquote_to_bytes(name.removesuffix(".pid"))))
        with contextlib.suppress(FileNotFoundError):  # of an earlier daemon here
            os.unlink(_failure_path(mountpoint))
        held = _locked_record(path, f"{os.getpid()}\n")
    except OSError:
        path = held = None
    try:
        yield path is not None
    except BaseException as exc:
        if path:
            with contextlib.suppress(OSError):
                _write_record(_failure_path(mountpoint), f"{os.getpid()}\n{one_line(exc)}\n")
        raise
    finally:
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(held)


def _locked_record(path: str, text: str) -> int:
    """Write ``text`` to ``path``, locked for as long as the descriptor
    returned stays open (the lock is taken before the record shows)."""
    staged = f"{path}.{os.getpid()}"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, text.encode())
        os.rename(staged, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_record(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", errors="surrogateescape") as f:
        f.write(text)
