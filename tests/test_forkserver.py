"""The launcher and the fork server (launcher.py, forkserver.py, world.py):
mount forms through a warm server give what in-process gives, in the
caller's world, and nothing is left behind by a caller that goes away.

Each test runs its own copy of the package, so its server is its own
(servers are named after the code they run) and is stopped after it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import build, force_unmount, mounted, process_gone, wait_for
from unionfs import cli, daemon, forkserver, forms, libc, wire

PACKAGE = Path(forkserver.__file__).parent
IN_PROCESS = "import sys; from unionfs.cli import main; sys.argv[0] = 'pyunion'; main()"


class Code:
    """A copy of the package with its launcher, and what runs it."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(PACKAGE, root / "unionfs", ignore=shutil.ignore_patterns("__pycache__"))
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        (root / "bin").mkdir()  # as .venv/bin: not beside the package (sys.path[0])
        self.launcher = str(root / "bin" / "pyunion")
        subprocess.run([sys.executable, "-m", "unionfs.launcher", self.launcher, "pyunion"],
                       env=self.env, check=True)
        self.socket = wire.socket_path(os.path.realpath(root / "unionfs"), sys.executable)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.launcher, *args], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def in_process(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", IN_PROCESS, *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def server(self) -> int | None:
        return forkserver.serving(self.socket)

    def stop(self) -> None:
        pid = self.server()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: process_gone(pid))


@pytest.fixture
def code(tmp_path):
    made = Code(tmp_path / "code")
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def tree(tmp_path):
    """Branches and mount points; whatever stays mounted is taken down."""
    build(tmp_path / "low", {"etc/os": "low\n", "bin/sh": "sh\n"})
    for name in ("up", "up2", "mnt", "mnt2", "mnt3"):
        (tmp_path / name).mkdir()
    yield tmp_path
    for name in ("mnt", "mnt2", "mnt3"):
        if mounted(tmp_path / name):
            subprocess.run(["fusermount3", "-u", str(tmp_path / name)], check=False)
        force_unmount(tmp_path / name)


def br(tree: Path, up: str = "up") -> str:
    return f"br={tree / up}=rw:{tree / 'low'}=ro"


def served_by(code: Code, mnt: Path) -> bool:
    """True if the daemon of ``mnt`` was forked from the server (its
    initial environment is the server's: PATH and PYTHONPATH only), not
    from a launcher that ran it itself."""
    pid = daemon.pid_of(str(mnt))
    with open(f"/proc/{pid}/environ", "rb") as f:
        names = {item.partition(b"=")[0] for item in f.read().split(b"\0") if item}
    return names == {b"PATH", b"PYTHONPATH"}


def unmount(code: Code, mnt: Path) -> None:
    done = code.run("umount", str(mnt))
    assert done.returncode == 0, done.stderr


def test_the_command_names_agree_with_the_cli():
    assert set(forms.COMMANDS) == set(cli.cli.commands)


def test_every_mount_form_is_served_by_one_server(code, tree):
    forms_ = [("mount", "-o", br(tree), str(tree / "mnt")),
              ("-o", br(tree, "up2"), str(tree / "mnt2")),
              (f"{tree / 'up3'}=rw:{tree / 'low'}=ro", str(tree / "mnt3"), "-o", "allow_other")]
    (tree / "up3").mkdir()
    servers = set()
    for form, mnt in zip(forms_, ("mnt", "mnt2", "mnt3")):
        done = code.run(*form)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        assert mounted(tree / mnt, "fuse.pyunion")
        assert served_by(code, tree / mnt)
        assert (tree / mnt / "etc" / "os").read_text() == "low\n"
        servers.add(code.server())
    assert len(servers) == 1 and None not in servers
    for mnt in ("mnt", "mnt2", "mnt3"):
        unmount(code, tree / mnt)


@pytest.mark.parametrize("args", [
    ("mount", "-o", "br=nonsense", "{mnt}"),
    ("mount", "-o", "br={tree}/missing=rw", "{mnt}"),
    ("-o", "lowerdir={tree}/low,quota=lots", "{mnt}"),
    ("mount", "-o", "br={tree}/up=rw", "{tree}/missing-mountpoint"),
    ("mount", "--no-such-flag", "{mnt}"),
])
def test_errors_are_the_same_one_line_as_in_process(code, tree, args):
    args = [a.format(tree=tree, mnt=tree / "mnt") for a in args]
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # warm the server
    served, here = code.run(*args), code.in_process(*args)
    assert served.returncode != 0 and len(served.stderr.splitlines()) == 1, served.stderr
    assert (served.returncode, served.stdout, served.stderr) == \
        (here.returncode, here.stdout, here.stderr)
    assert not mounted(tree / "mnt")
    unmount(code, tree / "mnt2")


def test_a_busy_writable_branch_is_the_same_error_as_in_process(code, tree):
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    served = code.run("mount", "-o", br(tree), str(tree / "mnt2"))
    here = code.in_process("mount", "-o", br(tree), str(tree / "mnt2"))
    assert served.returncode == 1 and "in use by another mount" in served.stderr
    assert (served.returncode, served.stderr) == (here.returncode, here.stderr)
    unmount(code, tree / "mnt")


def test_a_server_whose_code_changed_is_replaced(code, tree):
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    first = code.server()
    unmount(code, tree / "mnt")
    os.utime(code.root / "unionfs" / "options.py")  # as an edit or a checkout does
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    assert served_by(code, tree / "mnt")
    second = code.server()
    assert second not in (None, first)
    assert wait_for(lambda: process_gone(first))
    unmount(code, tree / "mnt")


def test_a_caller_in_another_mount_namespace_gets_its_mount_there(code, tree):
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # the server, out here
    mnt = tree / "mnt"
    inside = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'"$0" mount -o {br(tree)} {mnt} && grep -c " {mnt} " /proc/self/mountinfo'
         f' && read go && "$0" umount {mnt}', code.launcher],
        env=code.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert inside.stdout.readline() == "1\n"  # mounted in there
        assert not mounted(mnt)  # not out here
        pid = daemon.pid_of(str(mnt))
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(f"/proc/{inside.pid}/ns/mnt").st_ino
        assert served_by(code, mnt)
        inside.stdin.write("go\n")
        inside.stdin.close()
        assert inside.wait(timeout=60) == 0
        assert wait_for(lambda: process_gone(pid))
    finally:
        inside.kill()
        inside.wait()
    unmount(code, tree / "mnt2")


@pytest.fixture
def cgroups():
    """A cgroup of this test's in a v1 hierarchy and in the v2 one."""
    name = f"pyunion-test-{uuid.uuid4().hex[:8]}"
    paths = [Path("/sys/fs/cgroup/pids") / name, Path("/sys/fs/cgroup/unified") / name]
    paths = [p for p in paths if p.parent.exists()]
    for path in paths:
        path.mkdir()
    try:
        yield paths
    finally:
        for path in paths:
            path.rmdir()


def test_the_daemon_joins_the_callers_cgroups(code, tree, cgroups):
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # the server, out here
    joins = "; ".join(f"echo $$ > {path}/cgroup.procs" for path in cgroups)
    done = subprocess.run(["sh", "-c", f'{joins}; exec "$0" "$@"', code.launcher,
                           "mount", "-o", br(tree), str(tree / "mnt")],
                          env=code.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid = daemon.pid_of(str(tree / "mnt"))
    assert served_by(code, tree / "mnt")
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for path in cgroups:
        hierarchy = "pids" if path.parent.name == "pids" else ""
        assert any(line.split(":", 1)[1] == f"{hierarchy}:/{path.name}" for line in lines), lines
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")


def test_a_caller_with_fewer_capabilities_runs_it_itself(code, tree):
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # the server
    done = subprocess.run(["capsh", "--drop=cap_sys_ptrace", "--", "-c", '"$0" "$@"',
                           code.launcher, "mount", "-o", br(tree), str(tree / "mnt")],
                          env=code.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert mounted(tree / "mnt", "fuse.pyunion")
    assert not served_by(code, tree / "mnt")
    with open(f"/proc/{daemon.pid_of(str(tree / 'mnt'))}/status") as f:
        bounding = next(line for line in f if line.startswith("CapBnd"))
    assert not int(bounding.split()[1], 16) >> 19 & 1  # CAP_SYS_PTRACE
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")


def test_a_caller_with_more_capabilities_than_the_server_runs_it_itself(code, tree):
    """A server started by a weaker caller would start weaker daemons."""
    started = subprocess.run(["capsh", "--drop=cap_sys_ptrace", "--", "-c", '"$0" "$@"',
                              code.launcher, "mount", "-o", br(tree, "up2"), str(tree / "mnt2")],
                             env=code.env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert served_by(code, tree / "mnt2")  # the weak server serves its equals
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    assert not served_by(code, tree / "mnt")
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")


def test_the_daemon_has_the_callers_limits_nice_value_and_directory(code, tree):
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # the server
    done = subprocess.run(["prlimit", "--nofile=512:4096", "--", "nice", "-n", "5",
                           code.launcher, "mount", "-o", "br=up=rw:low=ro", "mnt"],
                          env=code.env, cwd=tree, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert served_by(code, tree / "mnt")
    pid = daemon.pid_of(str(tree / "mnt"))
    with open(f"/proc/{pid}/limits") as f:
        files = next(line for line in f if line.startswith("Max open files")).split()[3:5]
    assert files == ["4096", "4096"]  # the caller's hard limit, raised to by the daemon
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5
    with open(f"/proc/{pid}/comm") as f:
        assert f.read() == "pyunion\n"  # as ps -C and pgrep know it
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_caller_killed_mid_mount_leaves_no_mount_and_no_daemon(code, tree, signum):
    """The mount point lies in a union whose daemon is stopped, so the
    served mount waits in the kernel until the test lets it go; the caller
    is killed meanwhile (once the server has accepted: it holds the
    worker's pidfd).  SIGKILL ends the caller alone; SIGTERM it forwards
    to the worker, and then ends by it as the worker did."""
    assert code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2")).returncode == 0
    (tree / "mnt2" / "inner").mkdir()
    inner = tree / "mnt2" / "inner"
    outer = daemon.pid_of(str(tree / "mnt2"))
    server = code.server()
    os.kill(outer, signal.SIGSTOP)
    try:
        caller = subprocess.Popen([code.launcher, "mount", "-o", br(tree), str(inner)],
                                  env=code.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        assert wait_for(lambda: _holds_a_pidfd(caller.pid))
        os.kill(caller.pid, signum)
        assert caller.wait(timeout=60) == -signum
    finally:
        os.kill(outer, signal.SIGCONT)
    assert wait_for(lambda: _children(server) == [], 30)  # the guardian is done
    assert not mounted(inner)
    assert daemon.pid_of(str(inner)) is None
    assert not os.path.exists(daemon.pidfile_path(str(inner)))
    unmount(code, tree / "mnt2")


def test_the_server_ends_on_sigterm_and_leaves_nothing(code, tree):
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    server = code.server()
    unmount(code, tree / "mnt")
    os.kill(server, signal.SIGTERM)
    assert wait_for(lambda: process_gone(server))
    assert not os.path.exists(code.socket)
    assert code.server() is None


def test_other_commands_and_foreground_mounts_run_in_process(code, tree):
    assert code.run("--help").returncode == 0
    assert code.run("umount", str(tree / "mnt")).returncode == 1
    foreground = subprocess.Popen([code.launcher, "mount", "-f", "-o", br(tree),
                                   str(tree / "mnt")], env=code.env)
    try:
        assert wait_for(lambda: daemon.pid_of(str(tree / "mnt")) is not None, 30)
        assert daemon.pid_of(str(tree / "mnt")) == foreground.pid  # the caller serves it
        unmount(code, tree / "mnt")
        assert foreground.wait(timeout=60) == 0
    finally:
        foreground.kill()
        foreground.wait()
    assert code.server() is None  # nothing started one


@pytest.mark.parametrize("args, served", [
    (["mount", "-o", "br=/a", "/m"], True),
    (["--debug", "mount", "-o", "br=/a", "/m"], True),
    (["-o", "br=/a", "/m"], True),
    (["umount", "mount"], False),
    (["--help", "mount"], False),
    (["mount", "-oremount,br=/a", "/m"], False),
    (["mount", "-o", "remount", "/m"], False),
    (["mount", "-fo", "br=/a", "/m"], False),
])
def test_which_command_lines_are_served(args, served):
    assert forms.served(args) == served


def test_the_launcher_runs_code_from_before_it_in_process(code, tree):
    """A checkout on PYTHONPATH from before the launcher (a worktree not yet
    rebased, say) runs as pip's script would run it."""
    old = tree / "old"
    shutil.copytree(code.root / "unionfs", old / "unionfs")
    (old / "unionfs" / "launcher.py").unlink()
    done = subprocess.run([code.launcher, "mount", "-o", br(tree), str(tree / "mnt")],
                          env={**code.env, "PYTHONPATH": str(old)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not served_by(code, tree / "mnt")
    assert code.server() is None
    unmount(code, tree / "mnt")


def _daemon_held(code: Code, tree: Path):
    """Mount ``mnt2`` and stop its daemon: a mount below it then waits in
    the kernel until :func:`_let_go`."""
    assert code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2")).returncode == 0
    (tree / "mnt2" / "inner").mkdir()
    outer = daemon.pid_of(str(tree / "mnt2"))
    os.kill(outer, signal.SIGSTOP)
    return tree / "mnt2" / "inner", outer


def _worker_of(launcher: int) -> int:
    """The process the launcher's pidfd names: the worker."""
    for fd in os.listdir(f"/proc/{launcher}/fd"):
        if os.readlink(f"/proc/{launcher}/fd/{fd}") == "anon_inode:[pidfd]":
            with open(f"/proc/{launcher}/fdinfo/{fd}") as f:
                return int(next(line for line in f if line.startswith("Pid:")).split()[1])
    raise LookupError("no pidfd")


def test_a_worker_killed_ends_the_launcher_by_sigkill_without_a_traceback(code, tree):
    inner, outer = _daemon_held(code, tree)
    try:
        caller = subprocess.Popen([code.launcher, "mount", "-o", br(tree), str(inner)],
                                  env=code.env, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: _holds_a_pidfd(caller.pid))
        os.kill(_worker_of(caller.pid), signal.SIGKILL)
        _, stderr = caller.communicate(timeout=60)
        assert caller.returncode == -signal.SIGKILL
        assert "Traceback" not in stderr
    finally:
        os.kill(outer, signal.SIGCONT)
    assert wait_for(lambda: daemon.pid_of(str(inner)) is None and not mounted(inner), 30)
    unmount(code, tree / "mnt2")


def test_a_caller_that_ignores_sighup_is_not_ended_by_it(code, tree):
    """As under nohup: the launcher must not turn an ignored SIGHUP into
    one forwarded to a worker that no longer ignores it."""
    inner, outer = _daemon_held(code, tree)
    try:
        caller = subprocess.Popen(["sh", "-c", 'trap "" HUP; exec "$0" "$@"', code.launcher,
                                   "mount", "-o", br(tree), str(inner)], env=code.env)
        assert wait_for(lambda: _holds_a_pidfd(caller.pid))
        os.kill(caller.pid, signal.SIGHUP)  # as a hangup: the worker is not in its group
    finally:
        os.kill(outer, signal.SIGCONT)
    assert caller.wait(timeout=60) == 0
    assert mounted(inner, "fuse.pyunion")
    unmount(code, inner)
    unmount(code, tree / "mnt2")


def test_a_stopped_server_does_not_hang_its_callers(code, tree):
    assert code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2")).returncode == 0
    server = code.server()
    os.kill(server, signal.SIGSTOP)
    try:
        done = code.run("mount", "-o", br(tree), str(tree / "mnt"))
        assert done.returncode == 0, done.stderr
        assert not served_by(code, tree / "mnt")
        waiting = subprocess.Popen([code.launcher, "mount", "-o", br(tree, "up3"),
                                    str(tree / "mnt3")], env=code.env)
        assert wait_for(lambda: _connected(waiting.pid))
        waiting.terminate()  # before the server answered: it ends by the signal
        assert waiting.wait(timeout=60) == -signal.SIGTERM
    finally:
        os.kill(server, signal.SIGCONT)
    assert not mounted(tree / "mnt3")
    unmount(code, tree / "mnt")
    (tree / "up4").mkdir()
    assert code.run("mount", "-o", br(tree, "up4"), str(tree / "mnt3")).returncode == 0
    assert served_by(code, tree / "mnt3")  # the server serves on
    unmount(code, tree / "mnt3")
    unmount(code, tree / "mnt2")


def _connected(pid: int) -> bool:
    """True once the launcher ``pid`` asks the server: it holds its root
    and working directory to send."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/"
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return False


def _holds_a_pidfd(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]"
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()


def test_a_caller_whose_pid_is_reused_is_refused(code, tree):
    """A caller connects, hands its socket on and exits; its PID goes to
    an equal process (here a ``sleep``): the server must not take the
    new process's /proc for the caller's."""
    assert code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2")).returncode == 0
    ours, theirs = socket.socketpair()
    caller = os.fork()
    if caller == 0:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(code.socket)
            socket.send_fds(theirs, [b"s"], [sock.fileno()])
        finally:
            os._exit(0)
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    os.waitpid(caller, 0)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(caller - 1))
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        if stand_in.pid != caller:
            pytest.skip("another process took the PID first")
        with socket.socket(fileno=fds[0]) as sock:
            sock.settimeout(30)  # a server that took the stand-in for the caller waits for more
            assert sock.recv(1) == wire.REFUSED
            assert b"gone" in sock.recv(4096)
    finally:
        stand_in.kill()
        stand_in.wait()
        ours.close()
        theirs.close()
    unmount(code, tree / "mnt2")


def test_a_server_is_not_started_under_a_seccomp_filter(code, tree):
    """Two filters cannot be compared: a server under one could serve
    callers under another."""
    allow_all = ("import os, sys, seccomp; seccomp.SyscallFilter(seccomp.ALLOW).load(); "
                 "os.execv(sys.argv[1], sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", allow_all, code.launcher, "mount", "-o",
                           br(tree), str(tree / "mnt")], env=code.env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert code.server() is None
    assert not served_by(code, tree / "mnt")
    unmount(code, tree / "mnt")


def test_the_daemon_has_the_callers_scheduling_not_the_first_callers(code, tree):
    """The server started by a caller on one CPU, idle I/O class and batch
    policy serves a plain caller's daemon on all CPUs, with the defaults;
    and the next caller's with its own."""
    if os.cpu_count() < 2:
        pytest.skip("one CPU: affinity cannot differ")
    squeezed = ["taskset", "-c", "0", "ionice", "-c", "3", "chrt", "-b", "0"]
    first = subprocess.run([*squeezed, code.launcher, "mount", "-o", br(tree, "up2"),
                            str(tree / "mnt2")], env=code.env, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    plain, second = daemon.pid_of(str(tree / "mnt")), daemon.pid_of(str(tree / "mnt2"))
    assert served_by(code, tree / "mnt") and served_by(code, tree / "mnt2")
    assert os.sched_getaffinity(plain) == os.sched_getaffinity(0)
    assert os.sched_getscheduler(plain) == os.sched_getscheduler(0)
    assert libc.ioprio_get(plain) == libc.ioprio_get(0)
    assert os.sched_getaffinity(second) == {0}
    assert os.sched_getscheduler(second) == os.SCHED_BATCH
    assert libc.ioprio_get(second) >> 13 == 3  # the idle class
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")


def test_the_launcher_sends_nothing_to_an_unequal_server(code, tree):
    """Whatever listens at the server's path with fewer capabilities gets
    no request, no stdio and no directories: the command runs in-process."""
    os.makedirs(wire.SERVER_DIR, exist_ok=True)
    impostor = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
                "s.listen(); print('ready', flush=True); c, _ = s.accept(); "
                "data, fds, _, _ = socket.recv_fds(c, 65536, 8); print(len(data), len(fds))")
    fake = subprocess.Popen(["capsh", "--drop=cap_sys_ptrace", "--", "-c", '"$0" "$@"',
                             sys.executable, "-c", impostor, code.socket],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline() == "ready\n"
        done = code.run("mount", "-o", br(tree), str(tree / "mnt"))
        assert done.returncode == 0, done.stderr
        assert fake.communicate(timeout=60)[0] == "0 0\n"
        assert not served_by(code, tree / "mnt")
    finally:
        fake.kill()
        fake.wait()
        os.unlink(code.socket)
    unmount(code, tree / "mnt")


def test_a_pythonpath_beyond_the_package_root_runs_in_process(code, tree):
    (tree / "extra").mkdir()
    done = subprocess.run([code.launcher, "mount", "-o", br(tree), str(tree / "mnt")],
                          env={**code.env, "PYTHONPATH": f"{code.root}:{tree / 'extra'}"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert code.server() is None
    assert not served_by(code, tree / "mnt")
    unmount(code, tree / "mnt")


def test_code_changed_while_loading_or_outside_the_package_is_seen(tmp_path):
    """A module changed after the process started (a checkout while it
    imports) counts as changed; so does a later change to any module loaded."""
    (tmp_path / "early.py").write_text("")
    (tmp_path / "late.py").write_text("")
    os.utime(tmp_path / "late.py", (0, 0))
    script = ("import os, sys; from unionfs import codewatch; "
              "code = codewatch.Code(); sys.path.append(sys.argv[1]); "
              "os.utime(sys.argv[1] + '/early.py'); "
              "import early, late; code.loaded([]); print(code.changed()); "
              "code._changed_while_loading = False; print(code.changed()); "
              "os.utime(sys.argv[1] + '/late.py'); print(code.changed())")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert done.stdout.split() == ["True", "False", "True"], done.stderr


def test_the_run_directory_is_made_reachable_whatever_the_umask(tmp_path, monkeypatch):
    """Users who own a mount reach its control socket in /run/pyunion."""
    monkeypatch.setattr(wire, "SERVER_DIR", str(tmp_path / "run" / "server"))
    old = os.umask(0o077)
    try:
        listener = forkserver._listen(str(tmp_path / "run" / "server" / "s.sock"))
        forkserver._withdraw(listener)
        listener.close()
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "run" / "server").stat().st_mode & 0o777 == 0o700


def test_the_served_daemon_reads_as_in_process(code, tree):
    assert code.run("mount", "-o", br(tree), str(tree / "mnt")).returncode == 0
    assert served_by(code, tree / "mnt")
    with open(f"/proc/{daemon.pid_of(str(tree / 'mnt'))}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[-6:] == [os.fsencode(a) for a in (
            code.launcher, "mount", "-o", br(tree), str(tree / "mnt"), "")]
    unmount(code, tree / "mnt")


def test_a_refusal_is_told_under_debug(code, tree):
    code.run("mount", "-o", br(tree, "up2"), str(tree / "mnt2"))  # the server
    caller = subprocess.Popen(["capsh", "--drop=cap_sys_ptrace", "--", "-c", '"$0" "$@"',
                               code.launcher, "--debug", "mount", "-o", br(tree),
                               str(tree / "mnt")], env=code.env, stderr=subprocess.PIPE,
                              text=True)
    with caller.stderr:  # the --debug daemon keeps it open: only its first line is read
        assert caller.wait(timeout=60) == 0
        assert caller.stderr.readline() == (
            "pyunion: the fork server refused: not served by an unequal server: "
            "cannot see the peer's user namespace (Permission denied)\n")
    unmount(code, tree / "mnt")
    unmount(code, tree / "mnt2")
