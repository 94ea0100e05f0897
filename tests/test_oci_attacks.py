"""``pycontainer-runtime`` attacked as an engine, a hostile container and
an unprivileged host user would, beside runc on the same bundle where it
applies: verbs racing and crashing half-way, a paused container that has
not started, what outlives a container's init, files written as root in a
user's directory, cgroups in use, and what the container's process
inherits from whoever ran the runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import wait_for
from test_oci_runtime import RUNTIME, Runtime, bundle, runtime  # noqa: F401

RUNC = shutil.which("runc")
NOBODY = 1000  # an unprivileged host user


def _cgroups_named(name: str) -> list[Path]:
    """Every cgroup called ``name`` (os.walk, unlike a glob, bears with
    cgroups that others remove meanwhile)."""
    return [Path(parent, name) for parent, children, _ in os.walk("/sys/fs/cgroup")
            if name in children]


def test_pid_file_is_not_written_through_a_link_a_user_planted(runtime, bundle, tmp_path):
    """--pid-file in a user's directory: the file runc writes beside it
    first must be new, not a link to a file of root's."""
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    users = tmp_path / "users"
    users.mkdir()
    os.chown(users, NOBODY, NOBODY)
    os.symlink(victim, users / ".c.pid")
    os.lchown(users / ".c.pid", NOBODY, NOBODY)
    container_id = runtime.new_id()
    done = runtime("run", "--detach", "--bundle", str(bundle(["sleep", "100"])),
                   "--pid-file", str(users / "c.pid"), container_id)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "File exists" in done.stderr
    assert victim.read_text() == "root's\n"
    assert not (runtime.root / container_id).exists()


def test_an_existing_state_root_keeps_its_mode(bundle, tmp_path):
    """--root naming a directory others use (as /tmp): its mode is not the
    runtime's to change; each container's own directory is root's alone."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    runtime = Runtime(shared)
    try:
        container_id = runtime.new_id()
        assert runtime("run", "--bundle", str(bundle(["true"])), "--keep",
                       container_id).returncode == 0
        assert (shared / container_id).stat().st_mode & 0o777 == 0o700
        assert shared.stat().st_mode & 0o777 == 0o755
    finally:
        runtime.clean_up()


def test_a_paused_container_that_has_not_started_is_paused(runtime, bundle):
    """As runc: its status says paused; start refuses it (and does not wait
    forever on a process that cannot run); resume makes it created again."""
    created = runtime.create(bundle(["sh", "-c", "exit 6"]))
    assert runtime("pause", created.id).returncode == 0
    assert runtime.state(created.id)["status"] == "paused"
    done = runtime("start", created.id)
    assert done.returncode == 1 and "paused" in done.stderr, done.stderr
    done = runtime("resume", created.id)
    assert done.returncode == 0, done.stderr
    assert runtime.state(created.id)["status"] == "created"
    assert runtime("start", created.id).returncode == 0
    assert created.exit_code() == 6


def test_kill_with_sigkill_thaws_a_paused_container(runtime, bundle):
    """Without --all too, as runc: a frozen process dies only once thawed."""
    created = runtime.create(bundle(["sleep", "100"]))
    runtime("start", created.id)
    assert runtime("pause", created.id).returncode == 0
    assert runtime("kill", created.id, "KILL").returncode == 0
    assert created.exit_code() == 137
    assert runtime.state(created.id)["status"] == "stopped"


def test_delete_force_removes_a_paused_container_and_one_whose_cgroup_went(runtime,
                                                                          bundle):
    paused = runtime.create(bundle(["sleep", "100"]))
    runtime("start", paused.id)
    assert runtime("pause", paused.id).returncode == 0
    assert runtime("delete", "--force", paused.id).returncode == 0
    assert paused.exit_code() == 137
    created = runtime.create(bundle(["sleep", "100"]))
    runtime("kill", created.id, "KILL")
    assert created.exit_code() == 137
    for group in _cgroups_named(created.id):
        group.rmdir()  # empty: its process is gone
    done = runtime("delete", "--force", created.id)
    assert done.returncode == 0, done.stderr
    assert not (runtime.root / created.id).exists()


def test_kill_all_and_ps_reach_what_outlives_the_init(runtime, bundle):
    """A container without a pid namespace of its own: its init's child
    lives on in its cgroup once the init is gone; runc's ``ps`` lists it
    and ``kill --all`` signals it."""
    path = bundle(["sh", "-c", "sleep 100 & exit 0"])
    config = json.loads((path / "config.json").read_text())
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                     if ns["type"] != "pid"]
    (path / "config.json").write_text(json.dumps(config))
    created = runtime.create(path)
    runtime("start", created.id)
    assert created.exit_code() == 0
    assert runtime.state(created.id)["status"] == "stopped"
    left = json.loads(runtime("ps", "--format", "json", created.id).stdout)
    assert len(left) == 1
    done = runtime("kill", "--all", created.id, "KILL")
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: json.loads(runtime("ps", "--format", "json",
                                               created.id).stdout) == [])
    assert runtime("delete", created.id).returncode == 0


def test_a_create_killed_half_way_leaves_what_delete_force_removes(runtime, bundle):
    """A createRuntime hook kills the runtime that runs it: its state
    directory and cgroup are then those of a stopped container, which
    ``delete --force`` removes whole; the id is free again."""
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "kill -9 $PPID"]}]}
    path = bundle(["true"], hooks=hooks)
    container_id = runtime.new_id()
    done = runtime("create", "--bundle", str(path), container_id)
    assert done.returncode == -9
    assert (runtime.root / container_id).exists() and _cgroups_named(container_id)
    done = runtime("delete", "--force", container_id)
    assert done.returncode == 0, done.stderr
    assert not (runtime.root / container_id).exists()
    assert _cgroups_named(container_id) == []
    assert runtime("run", "--bundle", str(bundle(["true"], hooks={})),
                   container_id).returncode == 0


def test_a_hook_calling_the_runtime_on_its_container_is_not_kept_waiting(runtime, bundle):
    """While create holds the container's lock, a verb on it (here a
    createRuntime hook's) hears that it does not exist yet, as under runc,
    instead of waiting for a create that waits for it."""
    container_id = f"t{uuid.uuid4().hex[:12]}"
    hooks = {"createRuntime": [{
        "path": RUNTIME, "args": [RUNTIME, "--root", str(runtime.root), "kill", container_id],
        "env": [f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}"]}]}
    created = runtime.create(bundle(["true"], hooks=hooks))
    runtime.ids.append(container_id)
    done = subprocess.run([RUNTIME, "--root", str(runtime.root), "create", "--bundle",
                           str(bundle.path), container_id], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "createRuntime hook" in done.stderr and "container does not exist" in done.stderr
    assert not (runtime.root / container_id).exists()
    created.monitor.wait(30)


def test_a_cgroup_in_use_is_refused_and_its_processes_left_alone(runtime, bundle):
    """Two configs naming one cgroupsPath: the second create is refused, as
    runc refuses it, and its undoing kills nothing of the first's."""
    shared = f"/attack-{uuid.uuid4().hex[:8]}"
    first = runtime.create(bundle(["sleep", "100"], linux__cgroupsPath=shared))
    runtime("start", first.id)
    second = runtime.create(bundle(["true"], linux__cgroupsPath=shared))
    error = second.failure()
    assert "container's cgroup is not empty: 1 process(es) found" in error, error
    assert error.count("\n") == 1
    assert runtime.state(first.id)["status"] == "running"
    assert runtime("delete", "--force", first.id).returncode == 0
    assert first.exit_code() == 137
    assert _cgroups_named(shared.lstrip("/")) == []


@pytest.mark.parametrize("resources, words", [
    ({"memory": {"limit": 1 << 70}}, "linux.resources.memory.limit: 1180591620717411303424 "
                                     "is above 2^63-1"),
    ({"cpu": {"shares": 1 << 64}}, "linux.resources.cpu.shares: 18446744073709551616 "
                                   "is above 2^64-1"),
])
def test_numbers_too_large_for_the_kernel_are_refused(runtime, bundle, resources, words):
    """The kernel takes a memory limit of 2^70 as 0 (the container is
    OOM-killed at once); runc's JSON types refuse it, so does the config."""
    created = runtime.create(bundle(["true"], linux__resources=resources))
    error = created.failure()
    assert words in error and error.count("\n") == 1, error


def test_preserve_fds_past_what_is_open_is_refused_in_one_line(runtime, bundle):
    """A huge count ran out of memory; descriptors not open let the
    runtime's own (its lock on the container) pass on to the container,
    whose init then held it while start waited for it."""
    path = str(bundle(["true"]))
    done = runtime("create", "--preserve-fds", "99999999999", "--bundle", path,
                   runtime.new_id())
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    for verb in ("run", "create"):
        container_id = runtime.new_id()
        done = runtime(verb, "--preserve-fds", "2", "--bundle", path, container_id)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert "descriptor 3 is not open" in done.stderr
        assert not (runtime.root / container_id).exists()


PROBE = 'echo "HOME=$HOME"; grep -E "^Sig(Ign|Blk)" /proc/self/status; ls /proc/self/fd'


@pytest.mark.skipif(RUNC is None, reason="runc is not installed")
def test_home_signals_and_descriptors_as_runc_gives_them(tmp_path, bundle):
    """Run by a caller that ignores SIGINT, SIGQUIT and SIGHUP (a shell's
    background job) and holds a descriptor open: the container's process
    gets what runc's gets, HOME included."""
    path = bundle(["sh", "-c", PROBE])
    outputs = []
    for name, program in (("runc", RUNC), ("ours", RUNTIME)):
        done = subprocess.run(
            ["sh", "-c", "trap '' INT QUIT HUP; exec 7</dev/null; exec \"$@\"", "sh", program,
             "--root", str(tmp_path / name), "run", "--bundle", str(path),
             f"t{uuid.uuid4().hex[:10]}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[1] == outputs[0]
    assert "HOME=/root\n" in outputs[1] and "SigIgn:\t0000000000000000" in outputs[1]


def test_exec_gets_home_from_passwd_and_no_descriptor(runtime, bundle, tmp_path):
    created = runtime.create(bundle(["sleep", "100"]))
    runtime("start", created.id)
    done = subprocess.run(["sh", "-c", "trap '' INT; exec 7</dev/null; exec \"$@\"", "sh",
                           RUNTIME, "--root", str(runtime.root), "exec", created.id,
                           "sh", "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "HOME=/root"
    assert "SigIgn:\t0000000000000000" in done.stdout
    assert done.stdout.split()[-4:] == ["0", "1", "2", "3"]  # 3: ls's own
    done = runtime("exec", "--user", "4242", created.id, "sh", "-c", "echo $HOME")
    assert done.stdout == "/\n", done.stderr
    runtime("kill", created.id, "KILL")
    assert created.exit_code() == 137
