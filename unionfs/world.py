"""A process forked by the fork server takes on its caller's world.

A command the server runs must do what the caller would have done running
it itself: the same mounts seen (mount namespace, root, working
directory) and the same network, UTS, IPC and cgroup namespaces, the same
cgroups charged (the caller's memory and pids limits, and a container's
devices cgroup, which decides who may open /dev/fuse), the same umask,
resource limits, nice value, scheduling policy, CPU affinity, I/O
priority, OOM score adjustment, environment, stdio and signal state.
What cannot be taken on is refused instead, and the caller runs the
command itself: a process the server forks holds the server's
credentials, capabilities, user and PID namespaces, security label and
(lack of) seccomp filter, so only the server's equals are served
(``peer.py``: what equal means, and what it cannot see).

The caller is a :class:`peer.Peer`, pinned by its pidfd: its /proc files
are read through its pinned directory, what is read by PID counts once
the caller is seen alive after the read, and its namespaces are entered
through the pidfd.  Order matters: cgroups are joined through the
server's view of ``/sys/fs/cgroup``, before the caller's namespaces are
entered.
"""

from __future__ import annotations

import codecs
import encodings
import io
import os
import resource
import signal
import sys
from dataclasses import dataclass

from . import libc, wire
from .peer import Peer

#: namespaces taken on where the caller's differ (user and PID must be
#: the same: ``peer.py``); CLONE_NEW* bits for setns on a pidfd
_NAMESPACES = {"mnt": 0x00020000, "net": 0x40000000, "uts": 0x04000000,
               "ipc": 0x08000000, "cgroup": 0x02000000}
_LIMITS = sorted(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))
#: stream encodings a caller may ask for besides those the server has
#: loaded: looking an encoding up imports its module, which must not come
#: from the caller's root (``take_on`` chroots)
_ENCODINGS = ("utf_8", "ascii", "latin_1")


class Unserved(Exception):
    """The caller's world cannot be taken on; the message is one line."""


@dataclass(frozen=True)
class CgroupMount:
    """Where one cgroup hierarchy is mounted, and what it holds: its
    controllers (v1, ``name=`` included) or none (v2)."""

    path: str
    controllers: frozenset[str] | None


def cgroup_mounts() -> list[CgroupMount]:
    """The cgroup hierarchies as this process sees them (read once by the
    server: they do not move)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields[fields.index("-") + 1:]
            if fields[3] != "/" or after[0] not in ("cgroup", "cgroup2"):
                continue
            controllers = None if after[0] == "cgroup2" else frozenset(after[2].split(","))
            found.append(CgroupMount(fields[4], controllers))
    return found


def reset() -> None:
    """What the server's starter gave it and no caller should inherit:
    its scheduling policy, CPU affinity, I/O priority and signal mask
    (each request then takes on its caller's: :func:`take_on`,
    :func:`take_signals`).  Its cgroups and namespaces stay the starter's:
    each guardian joins its caller's."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    libc.ioprio_set(0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def join_cgroups(peer: Peer, hierarchies: list[CgroupMount]) -> None:
    """Move this process into the caller's cgroup in every hierarchy
    (v1 and v2, or both on a hybrid host) where it is elsewhere."""
    with open("/proc/self/cgroup") as f:
        own = set(f.read().splitlines())
    for line in peer.read("cgroup").decode().splitlines():
        if line in own:
            continue
        _, controllers, path = line.split(":", 2)
        wanted = frozenset(controllers.split(",")) if controllers else None
        where = next((h for h in hierarchies if (h.controllers is None) == (wanted is None)
                      and (wanted is None or wanted <= h.controllers)), None)
        if where is None:
            raise Unserved(f"no mount of the caller's cgroup {line}")
        with open(f"{where.path}{path.rstrip('/')}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))


def check_streams(streams: list[bytes]) -> None:
    """Look up the caller's stream encodings and error handlers now,
    before :func:`take_on` chroots, and only those the server has loaded
    or :data:`_ENCODINGS`."""
    for encoding, errors in (streams[0:2], streams[2:4], streams[4:6]):
        name = encodings.normalize_encoding(encoding.decode()).lower()
        name = encodings.aliases.aliases.get(name, name)
        if name not in _ENCODINGS and f"encodings.{name}" not in sys.modules:
            raise Unserved(f"the caller's stream encoding {encoding.decode()!r} is not loaded")
        try:
            codecs.lookup(encoding.decode())
            codecs.lookup_error(errors.decode())
        except LookupError as exc:
            raise Unserved(str(exc)) from None


def take_on(peer: Peer, fds: list[int], environment: list[bytes]) -> None:
    """The caller's resource limits, scheduling, namespaces, root, working
    directory, umask and environment (``fds``: as the request carries them)."""
    for limit in _LIMITS:
        wanted = resource.prlimit(peer.pid, limit)
        if resource.getrlimit(limit) != wanted:
            resource.setrlimit(limit, wanted)
    nice = os.getpriority(os.PRIO_PROCESS, peer.pid)
    policy, param = os.sched_getscheduler(peer.pid), os.sched_getparam(peer.pid)
    cpus, ioprio = os.sched_getaffinity(peer.pid), libc.ioprio_get(peer.pid)
    peer.check_alive()  # the values read by PID were the caller's
    if os.getpriority(os.PRIO_PROCESS, 0) != nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
        os.sched_setscheduler(0, policy, param)
    if os.sched_getaffinity(0) != cpus:
        os.sched_setaffinity(0, cpus)
    if libc.ioprio_get(0) != ioprio:
        libc.ioprio_set(0, ioprio)
    oom = peer.read("oom_score_adj")
    with open("/proc/self/oom_score_adj", "rb+") as f:
        if f.read() != oom:
            f.write(oom)
    kinds = 0
    for kind, bit in _NAMESPACES.items():
        if peer.namespace(kind) != os.stat(f"/proc/self/ns/{kind}").st_ino:
            kinds |= bit
    if kinds:
        libc.setns(peer.pidfd, kinds)
    os.fchdir(fds[wire.ROOT])
    os.chroot(".")
    os.fchdir(fds[wire.CWD])
    os.umask(int(peer.status["Umask"], 8))
    os.environb.clear()
    os.environb.update(item.partition(b"=")[::2] for item in environment)


def take_stdio(fds: list[int], streams: list[bytes]) -> None:
    """The caller's stdin, stdout and stderr, as file objects like those
    Python made for it (``streams``: encoding and errors of each, and
    whether stdout writes through).  New file objects, since the server's
    know their descriptors as what they were (/dev/null, seekable); like
    the interpreter's own they do not close their descriptor."""
    for fd in (wire.STDIN, wire.STDOUT, wire.STDERR):
        os.dup2(fds[fd], fd)
    said = [s.decode() for s in streams]
    sys.stdin = sys.__stdin__ = _text(0, "rb", said[0], said[1])
    sys.stdout = sys.__stdout__ = _text(1, "wb", said[2], said[3],
                                        line_buffering=os.isatty(1),
                                        write_through=said[6] == "1")
    sys.stderr = sys.__stderr__ = _text(2, "wb", said[4], said[5], line_buffering=True)


def _text(fd: int, mode: str, encoding: str, errors: str, **kwargs) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.open(fd, mode, closefd=False), encoding=encoding, errors=errors,
                            **kwargs)


def take_signals(peer: Peer, ignored: set[int]) -> None:
    """Signal dispositions and mask as a Python started by the caller's
    parent has them: what the caller ignored before it changed anything
    (``ignored``, as its request says) stays ignored (Python itself
    ignores SIGPIPE and SIGXFSZ), SIGINT raises KeyboardInterrupt, the
    rest is the default; the caller's blocked signals stay blocked."""
    blocked = int(peer.status["SigBlk"], 16)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
        elif signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
        else:
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK,
                           {s for s in signal.valid_signals() if blocked >> (s - 1) & 1})


def take_name(argv0: str, cmdline: list[bytes]) -> None:
    """The caller's command line (/proc/PID/cmdline: ps, pgrep -f) and
    name (``comm``: ps -C, pgrep) as the kernel gives a script it runs:
    the name of the script's file.  Its initial environment
    (/proc/PID/environ) stays the server's: only exec sets it."""
    libc.set_cmdline(cmdline)
    libc.prctl(libc.PR_SET_NAME, os.fsencode(os.path.basename(argv0))[:15])

