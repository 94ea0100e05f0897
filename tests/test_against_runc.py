"""The same probes in a pycontainer container and in a runc container with
docker's defaults (tests/runc_as_docker.py), compared row by row:
pycontainer is no weaker on any.

One shell script runs in each, started with a descriptor the caller
leaked, the same limits (``--memory 64m --pids-limit 32``), the compiled
probe (tests/probe.c) at ``/probe`` and a volume from the host at ``/vol``.
Each probe prints one value; each has a test of "no weaker": no
capability runc's container lacks, a call or an open refused wherever runc
refuses it, a path hidden or read-only wherever runc's is, no more
processes, memory or descriptors.  Run with ``-s`` to see the whole table.
"""

from __future__ import annotations

import errno
import functools
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest
import seccomp

import runc_as_docker
from conftest import PYCONTAINER, leftovers

MEMORY, PIDS = 64 << 20, 32
HOST_DISK = (os.major(os.stat("/").st_dev), os.minor(os.stat("/").st_dev))
LEAKED_FD = 100  # above pytest's own (its capture uses low ones)
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x20000, 0x40000000
I386_GETPID, I386_UNSHARE = 20, 310
PTRACE_SEIZE = 0x4206
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "uts", "user")



@dataclass(frozen=True)
class Probe:
    row: str
    key: str
    shell: str  # prints the value on its standard output
    no_weaker: Callable[[str, str], bool]  # (pycontainer's value, runc's), as shown
    show: Callable[[str], str] = str.strip  # what the shell printed, as the table shows it


def capabilities_within(ours: str, theirs: str) -> bool:
    return int(ours, 16) & ~int(theirs, 16) == 0


def at_least(ours: str, theirs: str) -> bool:
    return int(ours) >= int(theirs)


def at_most(ours: str, theirs: str) -> bool:
    return int(ours) <= int(theirs)


def within(ours: str, theirs: str) -> bool:
    return set(ours.split()) <= set(theirs.split())


def refused_where_refused(refused: Callable[[str], bool]) -> Callable[[str, str], bool]:
    return lambda ours, theirs: not refused(theirs) or refused(ours)


def own_where_own(ours: str, theirs: str) -> bool:
    return theirs == "the host's" or ours == "its own"


def whose_namespace(kind: str, printed: str) -> str:
    """Whether the namespace ``printed`` (``KIND:[INODE]``) is the host's
    (this process's)."""
    return "the host's" if printed.strip() == os.readlink(f"/proc/self/ns/{kind}") \
        else "its own"


def hidden_where_hidden(ours: str, theirs: str) -> bool:
    return theirs == "visible" or ours in ("masked", "absent")


def read_only_where_read_only(ours: str, theirs: str) -> bool:
    return theirs == "writable" or ours in ("read-only", "absent")


def errno_name(printed: str) -> str:
    """The probe's errno by name; ``ok`` for success."""
    number = int(printed)
    return "ok" if number == 0 else errno.errorcode.get(number, printed)


def node_outcome(printed: str) -> str:
    made, opened = map(errno_name, printed.split())
    return f"mknod {made}" if made != "ok" else f"made, open {opened}"


call_refused = refused_where_refused(lambda value: value in ("EPERM", "EACCES", "ENOSYS"))
said_refused = refused_where_refused(lambda value: value == "refused")
node_refused = refused_where_refused(
    lambda value: value.startswith("mknod") or value.endswith(("EPERM", "EACCES")))


def nr(name: str) -> int:
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


def call(key: str, *args, row: str = "seccomp") -> Probe:
    return Probe(row, key, "/probe/probe " + " ".join(map(str, args)), call_refused, errno_name)


def raw(name: str, *args, shown: str = "") -> Probe:
    """A native call by name, with arguments that make it fail harmlessly
    (EFAULT, EBADF, EINVAL) wherever it is let through."""
    return call(f"{name}({shown or ', '.join(map(str, args))})", "syscall", nr(name), *args)


def status(row: str, field: str, pid="self", no_weaker=capabilities_within) -> Probe:
    return Probe(row, field if pid == "self" else f"{field} of PID 1",
                 f"grep '^{field}:' /proc/{pid}/status | cut -f2", no_weaker)


def device(place: str, name: str, kind: str, major: int, minor: int) -> Probe:
    path = f"{place}/{name}"
    return Probe("devices", f"mknod and open {path} ({kind} {major}:{minor})",
                 f"/probe/probe mknod {path} {kind} {major} {minor}; /probe/probe open {path}",
                 node_refused, node_outcome)


PROBES = [
    *(status("capabilities", field) for field in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                  "CapAmb")),
    status("capabilities", "NoNewPrivs", no_weaker=at_least),
    *(Probe("namespaces", kind, f"readlink /proc/self/ns/{kind}", own_where_own,
            show=functools.partial(whose_namespace, kind)) for kind in NAMESPACES),
    status("seccomp", "Seccomp", no_weaker=at_least),
    call("clone(CLONE_NEWUSER)", "clone", CLONE_NEWUSER),
    call("clone(CLONE_NEWNET)", "clone", CLONE_NEWNET),
    call("clone3(CLONE_NEWUSER)", "clone3", CLONE_NEWUSER),
    raw("unshare", CLONE_NEWUSER, shown="CLONE_NEWUSER"),
    raw("unshare", CLONE_NEWNS, shown="CLONE_NEWNS"), raw("setns", -1, 0),
    raw("mount", 0, 0, 0, 0, 0), raw("umount2", 0, 0), raw("pivot_root", 0, 0),
    raw("open_tree", -1, 0, 0), raw("fsopen", 0, 0), raw("move_mount", -1, 0, -1, 0, 0),
    call("io_uring_setup", "io_uring_setup"), raw("io_uring_enter", -1, 0, 0, 0, 0, 0),
    raw("io_uring_register", -1, 0, 0, 0),
    call("personality(READ_IMPLIES_EXEC)", "personality", 0x400000),
    call("personality(ADDR_NO_RANDOMIZE)", "personality", 0x40000),
    call("personality(PER_LINUX)", "personality", 0),
    call("socket(AF_VSOCK)", "socket", 40), call("socket(AF_UNIX)", "socket", 1),
    raw("keyctl", 0, -3, 0, shown="KEYCTL_GET_KEYRING_ID, session"),
    raw("add_key", 0, 0, 0, 0, 0), raw("request_key", 0, 0, 0, 0),
    raw("bpf", 0, 0, 0), raw("perf_event_open", 0, 0, -1, -1, 0), raw("userfaultfd", 0),
    raw("ptrace", 0, shown="PTRACE_TRACEME"), raw("kcmp", 1, 1, 0, 0, 0),
    raw("pidfd_getfd", -1, 0, 0), raw("kexec_load", 0, 0, 0, 0),
    raw("kexec_file_load", -1, -1, 0, 0, 0),
    raw("init_module", 0, 0, 0), raw("finit_module", -1, 0, 0), raw("delete_module", 0, 0),
    raw("iopl", 3), raw("ioperm", 0, 1, 1), raw("reboot", 0, 0, 0, 0),
    raw("syslog", 3, 0, 0, shown="SYSLOG_ACTION_READ_ALL, 0, 0"),
    raw("acct", 0), raw("settimeofday", 0, 0), raw("clock_settime", 0, 0), raw("swapon", 0, 0),
    raw("quotactl", 0, 0, 0, 0), raw("fanotify_init", 0, 0), raw("open_by_handle_at", -1, 0, 0),
    raw("sethostname", 0, 0), raw("get_mempolicy", 0, 0, 0, 0, 0), raw("chroot", 0),
    call("i386 getpid", "i386", I386_GETPID),
    call("i386 unshare(CLONE_NEWUSER)", "i386", I386_UNSHARE, CLONE_NEWUSER),
    *(Probe("masked paths", path, f"masked {path}", hidden_where_hidden)
      for path in runc_as_docker.MASKED_PATHS),
    *(Probe("read-only paths", path, f"read_only {path}", read_only_where_read_only)
      for path in [*runc_as_docker.READONLY_PATHS, "/sys", "/sys/fs/cgroup"]),
    Probe("devices", "nodes in /dev", "find /dev -type c -o -type b | sort", within),
    *(device("/vol", *node) for node in (
        ("null", "c", 1, 3), ("kmsg", "c", 1, 11), ("mem", "c", 1, 1), ("disk", "b", *HOST_DISK),
        ("loop", "b", 7, 0), ("tun", "c", 10, 200), ("fuse", "c", 10, 229),
        ("kvm", "c", 10, 232))),
    *(device(place, *node) for place in ("/tmp", "/dev")
      for node in (("kmsg", "c", 1, 11), ("disk", "b", *HOST_DISK))),
    Probe("descriptors", "open in the command (3: ls reading them)", "ls /proc/self/fd", within),
    Probe("descriptors", f"the caller's descriptor {LEAKED_FD}",
          f"cat /proc/self/fd/{LEAKED_FD}/secret || echo refused", said_refused),
    Probe("limits", f"processes made under a limit of {PIDS}", f"/probe/probe forks {2 * PIDS}",
          at_most),
    Probe("limits", f"touch 200 MiB under a limit of {MEMORY >> 20} MiB",
          "/probe/probe alloc 200 >/dev/null && echo allocated || echo killed",
          refused_where_refused(lambda value: value == "killed")),
    Probe("limits", "open files (ulimit -n)", "ulimit -n", at_most),
    *(status("PID 1", field, pid=1) for field in ("CapPrm", "CapEff", "CapBnd")),
    status("PID 1", "NoNewPrivs", pid=1, no_weaker=at_least),
    status("PID 1", "Seccomp", pid=1, no_weaker=at_least),
    call("ptrace(PTRACE_SEIZE, 1)", "syscall", nr("ptrace"), PTRACE_SEIZE, 1, row="PID 1"),
    Probe("PID 1", "its executable and descriptors",
          "readlink /proc/1/exe >/dev/null && ls /proc/1/fd >/dev/null && echo readable"
          " || echo refused", said_refused),
]
ROWS = list(dict.fromkeys(probe.row for probe in PROBES))

#: Shell functions the probes use: what a container sees at a masked path
#: (a dir: an empty read-only tmpfs; a file: /dev/null bound on it), and
#: whether the mount holding a path is read-only.
FUNCTIONS = r"""
masked() {
    if [ ! -e "$1" ]; then echo absent
    elif [ -d "$1" ]; then
        [ -z "$(ls -A "$1")" ] && [ "$(stat -f -c %T "$1")" = tmpfs ] && echo masked || echo visible
    elif [ "$(stat -c %t:%T "$1")" = 1:3 ]; then echo masked
    else echo visible; fi
}
read_only() {
    [ -e "$1" ] || { echo absent; return; }
    awk -v p="$1" '
        { m = $5 == "/" ? "/" : $5 "/" }
        ($5 == p || index(p, m) == 1) && length($5) >= best {
            best = length($5); split($6, o, ","); ro = o[1]
        }
        END { print ro == "ro" ? "read-only" : "writable" }' /proc/self/mountinfo
}
"""


def script() -> str:
    lines = [FUNCTIONS]
    for probe in PROBES:
        lines.append(f"v=$( {{ {probe.shell} ; }} 2>/dev/null | tr '\\n' ' ')")
        lines.append(f"printf '%s\\t%s\\t%s\\n' {shlex.quote(probe.row)} "
                     f"{shlex.quote(probe.key)} \"$v\"")
    return "\n".join(lines)


def parse(output: str) -> dict[tuple[str, str], str]:
    """{(row, key): value as shown} from the script's output."""
    shows = {(probe.row, probe.key): probe.show for probe in PROBES}
    values = {}
    for line in output.splitlines():
        row, key, printed = line.split("\t")
        values[row, key] = shows[row, key](printed)
    return values


HOWS = ("run", "exec")


@pytest.fixture(scope="module")
def side_by_side(image_root, stand_in_host, probe_dir, tmp_path_factory):
    """Each runtime's value of each probe, with the script as the
    container's command and as a command exec'd into a running one:
    {how: {runtime: {(row, key): value}}}."""
    secret = tmp_path_factory.mktemp("secret")
    (secret / "secret").write_text("host only\n")
    with pytest.raises(OSError):
        os.fstat(LEAKED_FD)  # free, so ours to take
    fd = os.open(secret, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.dup2(fd, LEAKED_FD, inheritable=True)
        values = {how: {"runc": _runc(tmp_path_factory, image_root, probe_dir, how),
                        "pycontainer": _pycontainer(tmp_path_factory, probe_dir, how)}
                  for how in HOWS}
    finally:
        os.close(LEAKED_FD)
        os.close(fd)
    for how in HOWS:
        print(f"\n{how}:\n{table(values[how])}")
    return values


def _runc(tmp_path_factory, image_root, probe_dir, how: str) -> dict:
    work, volume = tmp_path_factory.mktemp("runc"), tmp_path_factory.mktemp("runc-vol")
    try:
        done = runc_as_docker.run(
            work, str(image_root), ["sh", "-c", script()], memory=MEMORY, pids=PIDS,
            binds={"/probe": (str(probe_dir), True), "/vol": (str(volume), False)},
            pass_fds=(LEAKED_FD,), via_exec=how == "exec")
    finally:
        shutil.rmtree(volume)  # it holds device nodes (the host's disk among them)
    assert done.returncode == 0, done.stderr
    return parse(done.stdout)


def _pycontainer(tmp_path_factory, probe_dir, how: str) -> dict:
    volume = tmp_path_factory.mktemp("pycontainer-vol")
    name = f"t{uuid.uuid4().hex[:10]}"
    run = [*PYCONTAINER, "run", "--name", name, "--network", "none",
           "--memory", f"{MEMORY >> 20}m", "--pids-limit", str(PIDS),
           "-v", f"{probe_dir}:/probe:ro", "-v", f"{volume}:/vol"]
    command = [*run, "--rm", "busybox", "sh", "-c", script()]
    try:
        if how == "exec":
            subprocess.run([*run, "-d", "busybox", "sleep", "600"], check=True,
                           capture_output=True, timeout=60)
            command = [*PYCONTAINER, "exec", name, "sh", "-c", script()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              pass_fds=(LEAKED_FD,))
    finally:
        subprocess.run([*PYCONTAINER, "rm", "-f", name], capture_output=True)
        shutil.rmtree(volume)
    assert leftovers([name]) == ([], [], [], [])
    assert done.returncode == 0, done.stderr
    return parse(done.stdout)


def table(values, rows=ROWS) -> str:
    lines = ["| row | probe | runc (docker's defaults) | pycontainer |",
             "| --- | --- | --- | --- |"]
    for probe in PROBES:
        if probe.row in rows:
            theirs, ours = (values[side].get((probe.row, probe.key), "(none)")
                            for side in ("runc", "pycontainer"))
            lines.append(f"| {probe.row} | {probe.key} | {theirs} | {ours} |")
    return "\n".join(lines)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("how", HOWS)
def test_pycontainer_is_no_weaker_than_runc(side_by_side, how, row):
    values = side_by_side[how]
    weaker = {(row, probe.key) for probe in PROBES if probe.row == row
              and not probe.no_weaker(values["pycontainer"][row, probe.key],
                                      values["runc"][row, probe.key])}
    assert not weaker, f"weaker than runc on {sorted(weaker)}:\n" + table(values, [row])
