"""The container's process (``process`` in config.json, or exec's
``--process`` file): what it runs, as whom, with which capabilities and
limits, and the last steps before its exec, in runc's order.

A process with no ``capabilities`` keeps all of root's, as under runc: the
config's author asked for a privileged one.  The command is looked up
before the container is reported created, so a missing or non-executable
one fails ``create`` with Go's words (``executable file not found in
$PATH``, ``no such file or directory``, ``permission denied``), the texts
engines map to the exit codes 127 and 126.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
from dataclasses import dataclass

from .. import syscalls as sc
from .reader import ConfigError, Reader

#: the kernel's capability names, in its order (linux/capability.h)
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
_CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
_MAX_RLIMIT = (1 << 64) - 1  # RLIM_INFINITY as a JSON number


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    bounding: frozenset[int] = frozenset()
    effective: frozenset[int] = frozenset()
    permitted: frozenset[int] = frozenset()
    inheritable: frozenset[int] = frozenset()
    ambient: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Rlimit:
    resource: int
    soft: int
    hard: int


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: User
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # rows, columns
    capabilities: Capabilities | None = None     # None: root's, untouched
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None

    @property
    def path(self) -> str:
        """The PATH the command is looked up in: its own environment's."""
        for item in reversed(self.env):
            if item.startswith("PATH="):
                return item[5:]
        return ""


def parse(section: Reader) -> Process:
    args = tuple(section.take_list("args", str))
    if not args:
        raise section.error("args", "must name the command to run")
    cwd = section.take("cwd", str)
    if not cwd.startswith("/"):
        raise section.error("cwd", "must be an absolute path")
    env = tuple(section.take_list("env", str))
    for index, item in enumerate(env):
        if "=" not in item:
            raise section.error(f"env[{index}]", "must be NAME=VALUE")
    size = section.take_object("consoleSize")
    process = Process(
        args=args, env=env, cwd=cwd, user=_user(section.take_object("user")),
        terminal=section.take("terminal", bool, False),
        console_size=_console_size(size) if size else None,
        capabilities=_capabilities(section.take_object("capabilities")),
        rlimits=section.take_objects("rlimits", _rlimit),
        no_new_privileges=section.take("noNewPrivileges", bool, False),
        oom_score_adj=_oom_score_adj(section))
    if len({limit.resource for limit in process.rlimits}) < len(process.rlimits):
        raise section.error("rlimits", "a limit is given twice")
    for key in ("apparmorProfile", "selinuxLabel", "ioPriority", "scheduler",
                "execCPUAffinity", "commandLine"):
        section.refuse(key)
    section.done()
    return process


def _user(section: Reader | None) -> User:
    if section is None:
        raise ConfigError("process.user: required")
    umask = section.take("umask", int, None)
    if umask is not None and not 0 <= umask <= 0o777:
        raise section.error("umask", "must be between 0 and 0777")
    user = User(uid=_id(section, "uid"), gid=_id(section, "gid"), umask=umask,
                additional_gids=tuple(section.take_list("additionalGids", int)))
    section.refuse("username", "is for Windows")
    section.done()
    return user


def _id(section: Reader, key: str) -> int:
    value = section.take(key, int)
    if not 0 <= value < (1 << 32) - 1:
        raise section.error(key, "must be a uid or gid (0 to 4294967294)")
    return value


def _console_size(section: Reader) -> tuple[int, int]:
    size = section.take("height", int, 0), section.take("width", int, 0)
    section.done()
    return size


def _capabilities(section: Reader | None) -> Capabilities | None:
    if section is None:
        return None
    sets = {}
    for name in _CAPABILITY_SETS:
        numbers = set()
        for index, cap in enumerate(section.take_list(name, str)):
            if cap not in CAPABILITIES:
                raise section.error(f"{name}[{index}]", f"unknown capability {cap!r}")
            numbers.add(CAPABILITIES.index(cap))
        sets[name] = frozenset(numbers)
    section.done()
    return Capabilities(**sets)


def _rlimit(section: Reader) -> Rlimit:
    name = section.take("type", str)
    number = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
    if not isinstance(number, int):
        raise section.error("type", f"unknown limit {name!r}")
    soft, hard = (_limit(section, key) for key in ("soft", "hard"))
    unlimited = resource.RLIM_INFINITY  # -1 in Python: compared apart
    if hard != unlimited and (soft == unlimited or soft > hard):
        raise section.error("soft", "must not be above hard")
    section.done()
    return Rlimit(number, soft, hard)


def _limit(section: Reader, key: str) -> int:
    value = section.take(key, int)
    if not 0 <= value <= _MAX_RLIMIT:
        raise section.error(key, "must be between 0 and 2^64-1 (no limit)")
    return resource.RLIM_INFINITY if value == _MAX_RLIMIT else value


def _oom_score_adj(section: Reader) -> int | None:
    value = section.take("oomScoreAdj", int, None)
    if value is not None and not -1000 <= value <= 1000:
        raise section.error("oomScoreAdj", "must be between -1000 and 1000")
    return value


def look_up(process: Process) -> str:
    """The file the command runs (call in the container's root), or
    OSError with the text runc gives, as engines expect it."""
    name = process.args[0]
    if "/" in name:
        _check_executable(name, name)
        return name
    for directory in process.path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            _check_executable(name, candidate)
        except OSError:
            continue
        return candidate
    raise OSError(f'exec: "{name}": executable file not found in $PATH')


def _check_executable(name: str, path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise OSError(f'exec: "{name}": stat {path}: {exc.strerror.lower()}') from None
    if stat.S_ISDIR(mode) or not mode & 0o111:
        raise OSError(f'exec: "{name}": permission denied')


@contextlib.contextmanager
def effective_user(user: User):
    """Act with ``user``'s effective IDs and groups, then be root again
    (the real and saved IDs stay root's)."""
    os.setgroups(list(user.additional_gids))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def set_limits(process: Process) -> None:
    """Resource limits and the OOM score: while still root."""
    for limit in process.rlimits:
        resource.setrlimit(limit.resource, (limit.soft, limit.hard))
    if process.oom_score_adj is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(process.oom_score_adj))


def become_user(process: Process) -> None:
    """Bounding set, user, groups and umask, then the capability sets the
    process asked for, in runc's order: capabilities kept across setuid."""
    caps = process.capabilities
    if caps is not None:
        for cap in range(sc.last_capability() + 1):
            if cap not in caps.bounding:
                sc.prctl(sc.PR_CAPBSET_DROP, cap)
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    user = process.user
    os.setgroups(list(user.additional_gids))
    os.setgid(user.gid)
    os.setuid(user.uid)
    if user.umask is not None:
        os.umask(user.umask)
    if caps is not None:
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
        known = set(range(sc.last_capability() + 1))
        sc.set_capabilities(caps.effective & known, caps.permitted & known,
                            caps.inheritable & known)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        # The kernel keeps an ambient capability only if it is permitted and
        # inheritable; runc leaves the others out, as here.
        for cap in caps.ambient & caps.permitted & caps.inheritable & known:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)
    if process.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def execute(process: Process, path: str, keep_fds: int = 0) -> None:
    """exec the command: signals as a new process has them (none ignored:
    Python ignores SIGPIPE and SIGXFSZ, and the runtime's caller may have
    ignored others), no descriptor past stdio and the ``keep_fds`` passed
    on (--preserve-fds), and the environment runc gives."""
    for signum in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for fd in _open_fds():
        if fd >= 3 + keep_fds:
            with contextlib.suppress(OSError):  # the listing's own, closed since
                os.set_inheritable(fd, False)
    os.execve(path, list(process.args), _environment(process))


def _environment(process: Process) -> dict[str, str]:
    """``process.env``, and HOME if it has none: the user's in the
    container's /etc/passwd, else ``/``, as runc sets it (call in the
    container's root).  The file is the image's: read without waiting on
    a FIFO, and no more than a passwd file holds."""
    env = dict(item.split("=", 1) for item in process.env)
    if not env.get("HOME"):
        env["HOME"] = _home(process.user.uid)
    return env


def _home(uid: int) -> str:
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 20).decode(errors="replace")
    except OSError:
        return "/"
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid) and fields[5]:
            return fields[5]
    return "/"


def _open_fds() -> list[int]:
    return [int(name) for name in os.listdir("/proc/self/fd")]
