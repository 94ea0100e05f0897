"""What reaches a container from the host that starts it, tried as a
hostile container would: the caller's descriptors, the helpers that enter
it, and its PID 1."""

import os
import shlex
import subprocess

import pytest

from conftest import PYCONTAINER, PYCONTAINER_HERE
from container import runtime
from helpers import wait_for

DOCKER_DEFAULT_CAPS = "00000000a80425fb"
ONLY_KILL = f"{1 << 5:016x}"  # CAP_KILL: init signals a command of any uid


@pytest.fixture
def host_dir_fd(world_readable_dir):
    """A descriptor without close-on-exec on a host directory holding a
    secret, as a careless caller (``exec 7</root``) would hold it."""
    (world_readable_dir / "secret").write_text("host only\n")
    fd = os.open(world_readable_dir, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    try:
        yield fd
    finally:
        os.close(fd)


#: What a process in the container sees of another's executable and descriptors.
LINKS_OF = "ls -l /proc/{pid}/exe /proc/{pid}/fd/ 2>&1"


def assert_refused(shown: str, pid) -> None:
    """``ls -l`` showed the links of ``pid`` but could not read where they lead."""
    assert f"/proc/{pid}/exe" in shown and "Permission denied" in shown, shown
    assert " -> " not in shown, shown


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def fds_of(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def test_the_callers_terminal_is_not_the_containers(pyc):
    """Run from a terminal without -t, the container's processes are in a
    session of their own, with no controlling terminal: none can push
    keystrokes into the caller's shell (TIOCSTI) or get its job-control
    signals.  script(1) gives pycontainer a terminal as its own."""
    command = shlex.join([*PYCONTAINER, "run", "--rm", "--network", "none", "busybox", "sh",
                          "-c", "cut -d' ' -f7 /proc/self/stat; cut -d' ' -f7 /proc/1/stat"])
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout
    assert done.stdout.split() == ["0", "0"]  # tty_nr: no controlling terminal


def test_a_callers_descriptor_does_not_reach_the_command(pyc, host_dir_fd):
    done = pyc("run", "--rm", "--network", "none", "busybox", "sh", "-c",
               f"ls /proc/self/fd; cat /proc/self/fd/{host_dir_fd}/secret",
               pass_fds=(host_dir_fd,))
    assert "host only" not in done.stdout
    assert set(done.stdout.split()) <= {"0", "1", "2", "3"}  # 3: ls reading the list


def test_a_callers_descriptor_reaches_neither_init_nor_an_exec(pyc, host_dir_fd):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "60",
               pass_fds=(host_dir_fd,)).returncode == 0
    init_pid = runtime.State.load(name).init_pid
    held = [os.readlink(f"/proc/{init_pid}/fd/{fd}") for fd in fds_of(init_pid) - {0, 1, 2}]
    assert len(held) <= 1 and all(target.startswith("pipe:") for target in held)  # its lifeline
    done = pyc("exec", name, "sh", "-c",
               f"ls /proc/self/fd; cat /proc/self/fd/{host_dir_fd}/secret",
               pass_fds=(host_dir_fd,))
    assert "host only" not in done.stdout
    assert set(done.stdout.split()) <= {"0", "1", "2", "3"}


def helpers_in(init_pid: int) -> list[dict[str, str]]:
    """The /proc status of each process in the container's pid namespace
    whose command line is pycontainer's: an exec'd command before its exec."""
    ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.stat(f"/proc/{entry}/ns/pid").st_ino != ns:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"pycontainer" not in f.read():
                    continue
            with open(f"/proc/{entry}/status") as f:
                found.append(status_fields(f.read()))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def started(pyc, name: str) -> int:
    """Start a container that sleeps; the host's PID of its init."""
    assert pyc("run", "-d", "--name", name, "--network", "none", "busybox", "sleep",
               "60").returncode == 0
    return runtime.State.load(name).init_pid


def test_an_exec_helper_cannot_be_inspected_from_the_container(pyc):
    """strace holds the exec'd command's process in its last steps (the
    command run in-process, where strace follows it), its
    bounding set already the container's (it becomes the user next): from
    inside, its executable and descriptors stay refused (it is not
    dumpable).  Its seccomp filter comes as its very last step, just
    before the exec, as runc loads one under no_new_privs."""
    name = pyc.name()
    init_pid = started(pyc, name)
    held = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=setgroups",
                             "-e", "inject=setgroups:delay_enter=8000000",
                             *PYCONTAINER_HERE, "exec", name, "true"])

    def held_helper():
        return next((f for f in helpers_in(init_pid) if f["CapBnd"] == DOCKER_DEFAULT_CAPS),
                    None)

    try:
        assert wait_for(lambda: held_helper() is not None, seconds=20)
        inner_pid = held_helper()["NSpid"].split()[-1]
        attack = pyc("exec", name, "sh", "-c",
                     LINKS_OF.format(pid=inner_pid))
        assert held.poll() is None, "the helper was not held long enough"
        assert held.wait(timeout=30) == 0
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    assert_refused(attack.stdout, inner_pid)


def test_exec_d_commands_are_confined(pyc):
    name = pyc.name()
    started(pyc, name)
    for _ in range(5):
        done = pyc("exec", name, "grep", "-E", "^(CapEff|NoNewPrivs|Seccomp):",
                   "/proc/self/status")
        assert status_fields(done.stdout) == {"CapEff": DOCKER_DEFAULT_CAPS,
                                              "NoNewPrivs": "1", "Seccomp": "2"}


def test_pid_1_keeps_only_what_forwarding_signals_needs(pyc):
    done = pyc("run", "--rm", "--network", "none", "busybox", "sh", "-c",
               "grep -E '^(Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/1/status;"
               + LINKS_OF.format(pid=1))
    assert done.returncode == 0, done.stderr
    status = status_fields(done.stdout)
    assert [status[f] for f in ("CapPrm", "CapEff", "CapBnd")] == [ONLY_KILL] * 3
    assert status["CapInh"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert_refused(done.stdout, 1)


def test_pid_1_still_forwards_signals_to_a_command_of_another_user(pyc):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--network", "none", "-u", "1000", "busybox",
               "sh", "-c", "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done").returncode == 0
    assert wait_for(lambda: "ready" in pyc("logs", name).stdout, seconds=30)
    assert pyc("stop", "-t", "20", name).returncode == 0
    line = next(l for l in pyc("ps", "-a").stdout.splitlines() if l.startswith(name))
    assert "exited (7)" in line
