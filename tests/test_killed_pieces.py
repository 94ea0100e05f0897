"""Killed pieces of a container: a SIGKILLed supervisor or union daemon
leaves an honest state and, once the next command has seen it, nothing on
the host (the ``pyc`` fixture checks mounts, cgroups, leases and veths)."""

import json
import os
import signal
import subprocess

from container import runtime
from helpers import process_gone, wait_for
from unionfs import daemon


def started(pyc, *args) -> dict:
    """Run a detached container that sleeps; its state once it runs."""
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, *args, "busybox", "sleep", "600").returncode == 0
    return json.loads(pyc("inspect", name).stdout)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: process_gone(pid))


def pid_record(info: dict) -> str:
    """Where the container's union daemon records its PID."""
    return daemon.pidfile_path(os.path.join(runtime.DATA_DIR, info["name"], "rootfs"))


def daemon_pid(info: dict) -> int:
    with open(pid_record(info)) as f:
        return int(f.read())


def no_pid_record(info: dict) -> bool:
    return not os.path.exists(pid_record(info))


def test_a_removed_container_does_not_outlive_its_killed_supervisor(pyc):
    info = started(pyc, "--rm")
    kill(info["supervisor_pid"])
    assert info["name"] not in pyc("ps", "-a").stdout
    assert not os.path.exists(os.path.join(runtime.STATE_DIR, info["name"]))
    assert not os.path.exists(os.path.join(runtime.DATA_DIR, info["name"]))
    assert no_pid_record(info)


def test_a_killed_supervisor_leaves_a_dead_container_until_rm(pyc):
    info = started(pyc)
    kill(info["supervisor_pid"])
    assert f"dead (supervisor killed)" in pyc("ps", "-a").stdout
    assert json.loads(pyc("inspect", info["name"]).stdout)["status"] == "dead"
    assert pyc("rm", info["name"]).returncode == 0
    assert no_pid_record(info)


def test_run_cleans_up_after_a_killed_supervisor(pyc):
    info = started(pyc, "--rm")
    kill(info["supervisor_pid"])
    assert pyc("run", "--rm", "busybox", "true").returncode == 0
    assert not os.path.exists(os.path.join(runtime.STATE_DIR, info["name"]))


def test_a_pid_taken_by_another_process_is_not_the_supervisor(pyc):
    info = started(pyc)
    path = os.path.join(runtime.STATE_DIR, info["name"], "state.json")
    with open(path) as f:
        state = json.load(f)
    kill(info["supervisor_pid"])
    # Alive, named like a supervisor, but not the one that started the container.
    impostor = subprocess.Popen(["sh", "-c", "sleep 600 # pycontainer"])
    try:
        state["supervisor_pid"] = impostor.pid
        with open(path, "w") as f:
            json.dump(state, f)
        assert "dead (supervisor killed)" in pyc("ps", "-a").stdout
        assert pyc("rm", info["name"]).returncode == 0
    finally:
        impostor.kill()
        impostor.wait()


def test_a_killed_union_daemon_stops_the_container(pyc):
    info = started(pyc)
    kill(daemon_pid(info))
    assert wait_for(lambda: "dead (root file system daemon died)" in pyc("ps", "-a").stdout,
                    seconds=30)
    assert process_gone(info["init_pid"]) and process_gone(info["supervisor_pid"])
    assert no_pid_record(info)
    assert pyc("rm", info["name"]).returncode == 0


def test_rm_stops_a_container_whose_union_daemon_was_killed(pyc):
    info = started(pyc, "--rm")
    kill(daemon_pid(info))
    pyc("rm", "-f", info["name"])
    assert not os.path.exists(os.path.join(runtime.STATE_DIR, info["name"]))
    assert process_gone(info["init_pid"])
