"""``pycontainer-runtime`` driven as an engine drives runc: a bundle
written by its own ``spec`` (runc's template) on a copy of the busybox
image, ``create`` run under a small conmon (tests/oci_monitor.py: a
subreaper that collects the container's exit code), then the other verbs.
Every refusal is checked for its one line and for leaving nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import wait_for

RUNTIME = str(Path(sys.executable).parent / "pycontainer-runtime")
MONITOR = str(Path(__file__).with_name("oci_monitor.py"))


class Runtime:
    """The runtime under a throwaway state root; what a test creates is
    deleted after it, and must leave no state and no cgroup."""

    def __init__(self, root: Path):
        self.root = root
        self.ids: list[str] = []

    def __call__(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([RUNTIME, "--root", str(self.root), *args], capture_output=True,
                              text=True, timeout=60, **kwargs)

    def new_id(self) -> str:
        self.ids.append(f"t{uuid.uuid4().hex[:12]}")
        return self.ids[-1]

    def create(self, bundle: Path, *options: str, output: Path | None = None) -> Created:
        container_id = self.new_id()
        created = Created(self, container_id, bundle.parent / f"{container_id}.pid",
                          bundle.parent / f"{container_id}.exit")
        out = open(output or os.devnull, "wb")
        with out:
            created.monitor = subprocess.Popen(
                [sys.executable, MONITOR, str(created.exit_file), str(created.pid_file),
                 RUNTIME, "--root", str(self.root), "create", "--bundle", str(bundle),
                 "--pid-file", str(created.pid_file), *options, container_id],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        assert wait_for(lambda: created.pid_file.exists() or created.monitor.poll() is not None,
                        30)
        return created

    def state(self, container_id: str) -> dict:
        done = self("state", container_id)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def clean_up(self) -> None:
        for container_id in self.ids:
            self("delete", "--force", container_id)
        assert not list(self.root.glob("*")) if self.root.exists() else True
        # glob.glob, unlike Path.glob, goes on past a cgroup removed meanwhile
        left = [path for path in glob.glob("/sys/fs/cgroup/*/**/t*", recursive=True)
                if os.path.basename(path) in self.ids]
        assert left == []


class Created:
    def __init__(self, runtime: Runtime, container_id: str, pid_file: Path, exit_file: Path):
        self.runtime, self.id, self.pid_file, self.exit_file = (runtime, container_id,
                                                                pid_file, exit_file)
        self.monitor: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def failure(self) -> str:
        """The create's error, once it has failed."""
        self.monitor.wait(30)
        assert self.exit_file.read_text() == "failed 1"
        return self.monitor.stderr.read().decode()

    def exit_code(self) -> int:
        self.monitor.wait(30)
        self.monitor.stderr.close()
        return int(self.exit_file.read_text())


@pytest.fixture
def runtime(tmp_path):
    made = Runtime(tmp_path / "state")
    try:
        yield made
    finally:
        made.clean_up()


@pytest.fixture
def bundle(tmp_path, image_root):
    """A bundle from ``spec``, on a copy of the busybox image, no terminal;
    ``edit(config)`` changes its config.json."""
    path = tmp_path / "bundle"
    path.mkdir()
    shutil.copytree(image_root, path / "rootfs", symlinks=True)
    done = subprocess.run([RUNTIME, "spec"], cwd=path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    def edit(args=None, **changes):
        config = json.loads((path / "config.json").read_text())
        config["process"]["terminal"] = False
        if args is not None:
            config["process"]["args"] = list(args)
        for key, value in changes.items():
            section, _, name = key.rpartition("__")
            (config[section] if section else config)[name] = value
        (path / "config.json").write_text(json.dumps(config))
        return path

    edit.path = path
    return edit


def test_create_start_state_delete(runtime, bundle, tmp_path):
    out = tmp_path / "out"
    created = runtime.create(bundle(["sh", "-c", "echo hello; exit 3"]), output=out)
    state = runtime.state(created.id)
    assert state["status"] == "created" and state["pid"] == created.pid
    assert state["bundle"] == str(bundle.path) and state["ociVersion"].startswith("1.")
    assert state["rootfs"] == str(bundle.path / "rootfs")
    assert out.read_bytes() == b""  # nothing runs before start
    assert runtime("start", created.id).returncode == 0
    assert created.exit_code() == 3
    assert out.read_text() == "hello\n"  # the runtime's stdout was the container's
    assert runtime.state(created.id)["status"] == "stopped"
    done = runtime("delete", created.id)
    assert done.returncode == 0 and done.stdout == ""
    done = runtime("state", created.id)
    assert done.returncode == 1 and "container does not exist" in done.stderr


def test_missing_command_fails_create_in_runcs_words(runtime, bundle):
    for args, words in ((["nonexistent"], 'exec: "nonexistent": executable file not found '
                                          'in $PATH'),
                        (["/nonexistent"], "no such file or directory"),
                        (["/etc/passwd"], "permission denied")):
        created = runtime.create(bundle(args))
        error = created.failure()
        assert words in error and error.count("\n") == 1, error
        assert not (runtime.root / created.id).exists()


def test_kill_by_name_and_number(runtime, bundle):
    trapping = ["sh", "-c", 'trap "exit 42" USR1; trap "exit 43" TERM; '
                            'while :; do sleep 0.1; done']
    for sent, code in (("KILL", 137), ("9", 137), ("SIGUSR1", 42), ("usr1", 42), ("15", 43)):
        created = runtime.create(bundle(trapping))
        assert runtime("start", created.id).returncode == 0
        assert runtime.state(created.id)["status"] == "running"
        assert wait_for(lambda: len(json.loads(runtime("ps", "--format", "json",
                                                       created.id).stdout)) == 2)
        assert runtime("kill", created.id, sent).returncode == 0
        assert created.exit_code() == code
        assert runtime("delete", created.id).returncode == 0
    done = runtime("kill", created.id, "SIGBOGUS")
    assert done.returncode == 1 and "unknown signal 'SIGBOGUS'" in done.stderr


def test_a_created_container_ends_on_sigterm(runtime, bundle):
    """Before start, its process is PID 1 with no handler the kernel would
    let a signal through to: it ends on SIGTERM all the same, as runc's."""
    created = runtime.create(bundle(["sleep", "100"]))
    assert runtime("kill", created.id, "TERM").returncode == 0
    assert created.exit_code() == 143
    assert runtime("delete", created.id).returncode == 0


def test_kill_all_reaches_every_process(runtime, bundle):
    created = runtime.create(bundle(["sh", "-c", "sleep 100 & sleep 100 & wait"]))
    runtime("start", created.id)
    assert wait_for(lambda: len(json.loads(runtime("ps", "--format", "json",
                                                   created.id).stdout)) == 3)
    assert runtime("kill", "--all", created.id, "KILL").returncode == 0
    assert created.exit_code() == 137
    assert runtime("delete", created.id).returncode == 0


def test_pause_and_resume(runtime, bundle, tmp_path):
    created = runtime.create(bundle(["sh", "-c", "while :; do date +%s%N > /tmp/t; done"],
                                    root={"path": "rootfs", "readonly": False}))
    runtime("start", created.id)
    beat = bundle.path / "rootfs/tmp/t"
    assert wait_for(beat.exists)
    assert runtime("pause", created.id).returncode == 0
    assert runtime.state(created.id)["status"] == "paused"
    frozen = beat.read_text()
    time.sleep(0.2)
    assert beat.read_text() == frozen
    assert runtime("resume", created.id).returncode == 0
    assert runtime.state(created.id)["status"] == "running"
    assert wait_for(lambda: beat.read_text() != frozen)
    done = runtime("delete", created.id)
    assert done.returncode == 1 and "not stopped: running" in done.stderr
    assert runtime("delete", "--force", created.id).returncode == 0
    assert created.exit_code() == 137


def test_exec_detached_and_attached(runtime, bundle, tmp_path):
    created = runtime.create(bundle(["sleep", "100"]))
    runtime("start", created.id)
    done = runtime("exec", created.id, "sh", "-c", "echo $$ in $(hostname); exit 4")
    assert done.returncode == 4, done.stderr
    assert done.stdout.endswith(" in pycontainer\n")  # its own pid and uts namespaces
    pid_file, exit_file = tmp_path / "exec.pid", tmp_path / "exec.exit"
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh", "-c", "exit 5"], "cwd": "/tmp",
                                   "user": {"uid": 1000, "gid": 1000},
                                   "env": ["PATH=/bin"]}))
    monitor = subprocess.run([sys.executable, MONITOR, str(exit_file), str(pid_file),
                              RUNTIME, "--root", str(runtime.root), "exec", "--pid-file",
                              str(pid_file), "--process", str(process), "--detach",
                              created.id], capture_output=True, text=True, timeout=60)
    assert monitor.returncode == 0, monitor.stderr
    assert exit_file.read_text() == "5"
    done = runtime("exec", created.id, "nonexistent")
    assert done.returncode == 1 and "executable file not found in $PATH" in done.stderr
    runtime("kill", created.id, "KILL")
    assert created.exit_code() == 137


def test_exec_with_a_terminal_through_the_console_socket(runtime, bundle, tmp_path):
    created = runtime.create(bundle(["sleep", "100"]))
    runtime("start", created.id)
    path = tmp_path / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        exec_run = subprocess.Popen([RUNTIME, "--root", str(runtime.root), "exec", "--tty",
                                     "--console-socket", str(path), "--detach", created.id,
                                     "sh", "-c", "tty; exit 0"],
                                    stderr=subprocess.PIPE)
        connection, _ = listener.accept()
        with connection:
            _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
        assert exec_run.wait(30) == 0, exec_run.stderr.read()
        exec_run.stderr.close()
    master = fds[0]
    try:
        output = b""
        while b"\n" not in output:
            output += os.read(master, 1024)
    finally:
        os.close(master)
    assert output.startswith(b"/dev/pts/")
    runtime("kill", created.id, "KILL")
    assert created.exit_code() == 137


def test_hooks_get_the_state(runtime, bundle, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    hooks = {point: [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {marks}/{point}"]}]
             for point in ("prestart", "createRuntime", "poststart", "poststop")}
    created = runtime.create(bundle(["true"], hooks=hooks))
    assert sorted(p.name for p in marks.iterdir()) == ["createRuntime", "prestart"]
    assert json.loads((marks / "prestart").read_text())["pid"] == created.pid
    runtime("start", created.id)
    assert created.exit_code() == 0
    assert runtime("delete", created.id).returncode == 0
    assert sorted(p.name for p in marks.iterdir()) == ["createRuntime", "poststart",
                                                         "poststop", "prestart"]
    assert json.loads((marks / "poststop").read_text())["id"] == created.id


def test_container_hooks_run_in_the_container(runtime, bundle, tmp_path):
    """createContainer runs in the container's namespaces before
    pivot_root (the host's files still show), startContainer after start
    in the container's root, just before the command."""
    marks = tmp_path / "marks"
    marks.mkdir()
    hooks = {"createContainer": [{"path": "/bin/sh", "args": [
                 "sh", "-c", f"hostname > {marks}/createContainer; cat >> {marks}/createContainer"]}],
             "startContainer": [{"path": "/bin/sh", "args": [
                 "sh", "-c", "(cat; echo; readlink /proc/self/ns/pid) > /tmp/startContainer"]}]}
    created = runtime.create(bundle(["cat", "/tmp/startContainer"], hooks=hooks,
                                    root={"path": "rootfs", "readonly": False}))
    pid_namespace = os.readlink(f"/proc/{created.pid}/ns/pid")
    lines = (marks / "createContainer").read_text().splitlines()
    assert lines[0] == "pycontainer"  # the container's uts namespace
    assert json.loads(lines[1])["id"] == created.id
    assert not (bundle.path / "rootfs/tmp/startContainer").exists()
    runtime("start", created.id)
    assert created.exit_code() == 0
    started = (bundle.path / "rootfs/tmp/startContainer").read_text().splitlines()
    assert json.loads(started[0])["id"] == created.id and started[1] == pid_namespace


def test_a_failing_hook_fails_create_and_leaves_nothing(runtime, bundle):
    hooks = {"createRuntime": [{"path": "/bin/false"}]}
    created = runtime.create(bundle(["true"], hooks=hooks))
    assert "createRuntime hook /bin/false failed with code 1" in created.failure()
    assert not (runtime.root / created.id).exists()


def test_run_in_the_foreground_passes_the_exit_code(runtime, bundle):
    container_id = runtime.new_id()
    done = runtime("run", "--bundle", str(bundle(["sh", "-c", "echo ran; exit 7"])),
                   container_id)
    assert done.returncode == 7 and done.stdout == "ran\n"
    assert runtime("state", container_id).returncode == 1  # deleted once it ended


def test_no_pivot_moves_the_root_over_slash(runtime, bundle):
    container_id = runtime.new_id()
    done = runtime("run", "--no-pivot", "--bundle",
                   str(bundle(["sh", "-c", "ls /; grep -c ' / ' /proc/self/mountinfo"])),
                   container_id)
    assert done.returncode == 0, done.stderr
    assert "bin" in done.stdout.split() and "linuxrc" in done.stdout.split()


def test_an_init_as_pid_1_when_annotated(runtime, bundle):
    """``io.pycontainer.init``: PID 1 is a small init, confined to
    CAP_KILL, that passes signals on to the command and exits with its
    status (the command, PID 2, is what SIGTERM reaches)."""
    annotated = {"annotations": {"io.pycontainer.init": "true"}}
    container_id = runtime.new_id()
    done = runtime("run", "--bundle", str(bundle(
        ["sh", "-c", "cat /proc/1/comm; echo $$; grep -E '^(CapBnd|NoNewPrivs)' /proc/1/status"],
        **annotated)), container_id)
    assert done.returncode == 0, done.stderr
    # comm holds a name's first 15 bytes
    assert done.stdout.split() == ["pycontainer-ini", "2", "CapBnd:", "0000000000000020",
                                   "NoNewPrivs:", "1"]
    created = runtime.create(bundle(["sleep", "100"], **annotated))
    runtime("start", created.id)
    assert wait_for(lambda: len(json.loads(runtime("ps", "--format", "json",
                                                   created.id).stdout)) == 2)
    assert runtime("kill", created.id, "TERM").returncode == 0
    assert created.exit_code() == 143  # sleep, not PID 1, took the default action
    created = runtime.create(bundle(["true"], annotations={"io.pycontainer.init": "yes"}))
    assert "annotations.io.pycontainer.init: must be true or false" in created.failure()


def test_preserve_fds(runtime, bundle, tmp_path):
    passed = tmp_path / "passed"
    container_id = runtime.new_id()
    done = subprocess.run(["sh", "-c", 'exec 3>"$0"; exec "$@"', str(passed), RUNTIME,
                           "--root", str(runtime.root), "run", "--preserve-fds", "1",
                           "--bundle", str(bundle(["sh", "-c", "echo via 3 >&3"])),
                           container_id], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert passed.read_text() == "via 3\n"


@pytest.mark.parametrize("change, words", [
    ({"linux__uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]},
     "linux.uidMappings: not supported"),
    ({"linux__namespaces": [{"type": "user"}, {"type": "mount"}]},
     "linux.namespaces[0].type: user namespaces are not supported"),
    ({"linux__namespaces": [{"type": "pid"}]}, "a mount namespace is required"),
    ({"linux__sysctl": {"kernel.panic": "1"}}, "is not namespaced"),
    ({"process__apparmorProfile": "docker-default"}, "process.apparmorProfile: not supported"),
    ({"process__selinuxLabel": "x"}, "process.selinuxLabel: not supported"),
    ({"linux__intelRdt": {"closID": "x"}}, "linux.intelRdt: not supported"),
    ({"linux__personality": {"domain": "LINUX32"}}, "linux.personality: not supported"),
    ({"process__rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]},
     "unknown limit 'RLIMIT_BOGUS'"),
    ({"process__capabilities": {"bounding": ["CAP_BOGUS"]}}, "unknown capability"),
    ({"surprise": 1}, "surprise: not supported"),
    ({"ociVersion": "2.0.0"}, "not a 1.x runtime spec"),
])
def test_refusals_name_what_is_refused(runtime, bundle, change, words):
    created = runtime.create(bundle(["true"], **change))
    error = created.failure()
    assert words in error and error.count("\n") == 1, error
    assert not (runtime.root / created.id).exists()


def test_command_line_refusals(runtime, bundle, tmp_path):
    path = bundle(["true"])
    cases = [
        (["--systemd-cgroup", "list"], "--systemd-cgroup: not supported"),
        (["create", "--bundle", str(path), "bad/id"], "invalid container id"),
        (["state", "nosuch"], "container does not exist"),
        (["start", "nosuch"], "container does not exist"),
        (["kill", "nosuch", "KILL"], "container does not exist"),
        (["create", "--bundle", str(tmp_path), "x2"], "no config.json in the bundle"),
        (["spec", "--bundle", str(path)], "exists: remove it first"),
        (["create", "--bundle"], "requires an argument"),
    ]
    for args, words in cases:
        done = runtime(*args)
        assert done.returncode == 1 and words in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert runtime("delete", "--force", "nosuch").returncode == 0  # as runc: gone is fine
    tty_bundle = bundle(["true"])
    config = json.loads((tty_bundle / "config.json").read_text())
    config["process"]["terminal"] = True
    (tty_bundle / "config.json").write_text(json.dumps(config))
    done = runtime("create", "--bundle", str(tty_bundle), runtime.new_id())
    assert done.returncode == 1 and "without --console-socket" in done.stderr


def test_a_second_create_of_an_id_is_refused(runtime, bundle):
    created = runtime.create(bundle(["sleep", "100"]))
    done = runtime("create", "--bundle", str(bundle.path), created.id)
    assert done.returncode == 1 and "container with id exists" in done.stderr
    assert runtime.state(created.id)["status"] == "created"
    assert runtime("delete", created.id).returncode == 0  # a created one needs no force
    assert created.exit_code() == 137


def test_json_log_holds_the_error_as_podman_reads_it(runtime, tmp_path):
    log = tmp_path / "oci-log"
    done = subprocess.run([RUNTIME, "--root", str(runtime.root), "--log-format=json",
                           "--log", str(log), "state", "nosuch"], capture_output=True,
                          text=True)
    assert done.returncode == 1
    entry = json.loads(log.read_text())
    assert entry["level"] == "error" and entry["msg"] == "container does not exist"


def test_list_version_features(runtime, bundle):
    created = runtime.create(bundle(["sleep", "100"]))
    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert [(s["id"], s["status"]) for s in listed] == [(created.id, "created")]
    assert runtime("list", "-q").stdout.split() == [created.id]
    version = runtime("--version").stdout
    assert version.startswith("pycontainer-runtime version ") and "spec: 1." in version
    features = json.loads(runtime("features").stdout)
    assert "tmpcopyup" in features["mountOptions"] and "SCMP_ACT_ERRNO" in \
        features["linux"]["seccomp"]["actions"]
    assert features["linux"]["cgroup"]["systemd"] is False
    runtime("delete", "--force", created.id)
    assert created.exit_code() == 137
