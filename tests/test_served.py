"""pycontainer's hot commands through the fork server (container/served.py,
unionfs/launcher.py): a served command answers as one run in-process
(exit code, output, a terminal, Ctrl-C), in the caller's network
namespace, and a caller killed takes its container with it, leaving
nothing.

The module runs its own copy of the code with its own launcher, so its
server is its own (servers are named after the code they run) and is
stopped after it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import container
import unionfs
from conftest import IN_TEST_HOST, PYCONTAINER_HERE, stand_in_host_links
from container import runtime
from container.served import served
from helpers import (INTERRUPTIBLE, interrupted_once, process_gone,
                     talk_through_a_terminal, wait_for)
from unionfs import forkserver, wire

CHATTY = ("sh", "-c", "echo out; echo err >&2; exit 7")


class Served:
    """A copy of unionfs and container with a pycontainer launcher, run
    in the stand-in host's network namespace."""

    def __init__(self, root: Path):
        for package in (unionfs, container):
            source = Path(package.__file__).parent
            shutil.copytree(source, root / source.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        launcher = root / "pycontainer"
        subprocess.run([sys.executable, "-m", "unionfs.launcher", launcher, "pycontainer"],
                       env=self.env, check=True)
        self.command = [*IN_TEST_HOST, str(launcher)]
        self.socket = wire.socket_path(os.path.realpath(root / "unionfs"), sys.executable)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.command, *args], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def in_process(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*PYCONTAINER_HERE, *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.command, *args], env=self.env, text=True, **kwargs)

    def stop(self) -> None:
        pid = forkserver.serving(self.socket)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: process_gone(pid))


@pytest.fixture(scope="module")
def code(tmp_path_factory, stand_in_host):
    made = Served(tmp_path_factory.mktemp("served"))
    try:
        yield made
    finally:
        made.stop()


def answer(done: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return done.returncode, done.stdout, done.stderr


def test_which_command_lines_are_served():
    assert all(served([command, "x"]) for command in ("run", "exec", "rm", "stop", "kill"))
    assert not any(served(args) for args in ([], ["ps"], ["logs", "x"], ["image", "busybox"],
                                             ["network", "ls"], ["--help"]))


@pytest.mark.parametrize("command", [CHATTY, ("no-such-command",)])
def test_a_served_run_answers_as_one_in_process(pyc, code, command):
    args = ("run", "--rm", "--network", "none", "busybox", *command)
    assert answer(code(*args)) == answer(code.in_process(*args))
    assert forkserver.serving(code.socket) is not None


def test_run_d_exec_and_rm_through_the_server(pyc, code):
    name = pyc.name()
    started = code("run", "-d", "--name", name, "busybox", "sleep", "60")
    assert answer(started) == (0, f"{name}\n", "")
    state = runtime.State.load(name)
    with open(f"/proc/{state.supervisor_pid}/environ", "rb") as f:  # a fork of the server's:
        names = {item.partition(b"=")[0] for item in f.read().split(b"\0") if item}
    assert names == {b"PATH", b"PYTHONPATH"}  # its initial environment is the server's
    assert state.network.host_ifname in stand_in_host_links()  # the caller's namespace
    assert answer(code("exec", name, "sh", "-c", "echo in; exit 3")) == (3, "in\n", "")
    assert answer(code("rm", "-f", name)) == (0, f"{name}\n", "")
    assert not os.path.exists(state.state_dir)


def test_ctrl_c_at_a_served_run_reaches_the_command_once(pyc, code):
    proc = code.popen("run", "--rm", "--name", pyc.name(), "busybox", *INTERRUPTIBLE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert interrupted_once(proc) == (3, "got INT\n", "")


def test_a_terminal_through_the_server(pyc, code):
    said = talk_through_a_terminal(
        [*code.command, "run", "--rm", "--name", pyc.name(), "-it", "busybox", "sh"],
        [b"echo answer=$((6*7))\n", b"tty\n", b"exit 5\n"], env=code.env)
    assert "answer=42" in said and "/dev/pts/0" in said


def test_a_caller_killed_takes_its_container_with_it(pyc, code):
    """Nothing is left, with no later command to clean up: the server
    kills the supervisor it ran for the caller, and cleans up after it."""
    name = pyc.name()
    proc = code.popen("run", "--rm", "--name", name, "busybox", "sh", "-c",
                      "echo ready; sleep 60", stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        init_pid = runtime.State.load(name).init_pid
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert wait_for(lambda: not os.path.exists(os.path.join(runtime.STATE_DIR, name)),
                    seconds=30)
    assert process_gone(init_pid)
