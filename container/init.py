"""A container's init: PID 1 when a bundle asks for one
(``io.pycontainer.init``, as ``pycontainer run`` does; see
``oci/inside.py``).  It reaps every orphan reparented to it, forwards the
signals a container is sent (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
SIGUSR2, SIGWINCH) to the command, and exits with the command's status
(128+N when it died of signal N), which ends the namespace and every
process left in it.

It keeps only CAP_KILL, under ``no_new_privs`` and the container's seccomp
filter, and never execs, so it stays as its host-side parent made it: not
dumpable, out of reach of ptrace and of ``/proc/1/fd`` from inside.  The
exit codes are docker's: 125 for the runtime, 126 for a command that
cannot be executed, 127 for one that is not found.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
from typing import NoReturn

from . import syscalls as sc

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
RUNTIME_ERROR, CANNOT_EXECUTE, NOT_FOUND = 125, 126, 127
INIT_CAPABILITIES = frozenset({5})  # CAP_KILL
TITLE = "pycontainer-init"


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def end_with(lifeline: int) -> None:
    """End the container (this PID 1, and so its whole pid namespace) when
    the other end of the pipe ``lifeline`` closes: its caller died.  The
    kernel says so with SIGIO (no thread: it would count against
    ``--pids-limit``)."""
    def check(*_) -> None:
        try:
            if not os.read(lifeline, 1):
                os._exit(RUNTIME_ERROR)
        except BlockingIOError:
            pass
    os.set_blocking(lifeline, False)
    signal.signal(signal.SIGIO, check)
    fcntl.fcntl(lifeline, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(lifeline, fcntl.F_SETFL, fcntl.fcntl(lifeline, fcntl.F_GETFL) | os.O_ASYNC)
    check()  # closed before it was watched


def serve(command: int) -> NoReturn:
    """Be init to ``command``: forward it the signals the container is
    sent, reap every orphan, and exit with its status."""
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _: sc.signal_quietly(command, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        pid, status = os.wait()
        if pid == command:
            os._exit(exit_code(status))


def keep_only_init_capabilities() -> None:
    """Give up every capability, once the command has its own, but
    CAP_KILL: forwarding a signal to a command of another uid needs it;
    reaping needs none."""
    for cap in set(range(sc.last_capability() + 1)) - INIT_CAPABILITIES:
        sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.capset(set(INIT_CAPABILITIES))


def set_process_title(title: str) -> None:
    """What ``ps`` shows for PID 1: its name, not the host's path to the
    pycontainer program it was forked from.  The command line lives in this
    process's own memory (between ``arg_start`` and ``arg_end``); it is
    overwritten in place, padded with NULs, through /proc/self/mem."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    raw = title.encode()[: end - start - 1]
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        memory.seek(start)
        memory.write(raw + b"\0" * (end - start - len(raw)))
    name = ctypes.create_string_buffer(title.encode()[:15])
    sc.prctl(sc.PR_SET_NAME, ctypes.addressof(name))
