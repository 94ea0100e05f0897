"""The real podman (with conmon) driving ``pycontainer-runtime`` as its
OCI runtime (``podman --runtime``), on the kernel's overlay storage and
with pyunion as the overlay driver's mount program at the same time: the
calls podman and conmon make (create with a pid file and a console
socket, start, kill, delete --force, pause/resume, exec --detach with a
process file) as they make them, in throwaway podman roots
(bench/podman_env.py).  Nothing may be left: containers, mounts,
processes, the runtime's state.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.podman_env import PODMAN, Podman, busybox_tar
from container.oci.state import DEFAULT_ROOT
from helpers import PYUNION, wait_for

pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman is not installed")

RUNTIME = str(Path(sys.executable).parent / "pycontainer-runtime")


@pytest.fixture(scope="module", params=["kernel overlay", "pyunion"])
def shared(request, tmp_path_factory):
    """A podman whose containers run under pycontainer-runtime, on one of
    the two storages, holding the busybox image."""
    podman = Podman(PYUNION if request.param == "pyunion" else None)
    if request.param == "pyunion":  # see tests/test_podman.py: c/storage maps owners twice
        (podman.root / "run" / "overlay").mkdir(parents=True)
        (podman.root / "run" / "overlay" / "idmapped-lower-dir-false").write_text("")
    try:
        work = tmp_path_factory.mktemp("busybox")
        podman.copying("import", str(busybox_tar(work)), "localhost/busybox")
        yield podman
    finally:
        podman.tear_down()


@pytest.fixture
def podman(shared):
    """After each test its containers go, and nothing of them may be left:
    mounts, processes, nor the runtime's state of any container whose
    bundle is this podman's (``--rm`` ones included)."""
    yield shared
    shared("rm", "-af", "-t", "0")
    shared.settle()
    assert shared.leftovers() == ([], [], [])
    assert _runtime_states(shared) == []


def _runtime_states(podman: Podman) -> list[str]:
    found = []
    for state in Path(DEFAULT_ROOT).glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):  # deleted meanwhile
            if json.loads(state.read_text())["bundle"].startswith(f"{podman.root}/"):
                found.append(state.parent.name)
    return found


def run(podman: Podman, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("--runtime", RUNTIME, "run", "--network", "none", *args, check=check)


def on(podman: Podman, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("--runtime", RUNTIME, *args, check=check)


def test_run_rm_passes_exit_codes_through(podman):
    assert run(podman, "--rm", "localhost/busybox", "sh", "-c", "echo hi; exit 3",
               check=False).returncode == 3
    done = run(podman, "--rm", "localhost/busybox", "echo", "hello")
    assert done.stdout == "hello\n"
    missing = run(podman, "--rm", "localhost/busybox", "/nonexistent", check=False)
    assert missing.returncode == 127, missing.stderr
    assert "no such file or directory" in missing.stderr
    refused = run(podman, "--rm", "localhost/busybox", "/etc/passwd", check=False)
    assert refused.returncode == 126, refused.stderr


def test_detached_exec_logs_stop_rm(podman):
    run(podman, "-d", "--name", "d1", "localhost/busybox", "sh", "-c",
        "echo started; exec sleep 600")
    assert wait_for(lambda: on(podman, "logs", "d1").stdout == "started\n")
    done = on(podman, "exec", "d1", "sh", "-c", "echo in $(hostname); exit 4", check=False)
    assert done.returncode == 4 and done.stdout.startswith("in ")
    assert on(podman, "exec", "-d", "d1", "sleep", "5").returncode == 0
    assert on(podman, "inspect", "-f", "{{.State.Status}}", "d1").stdout.strip() == "running"
    on(podman, "stop", "-t", "1", "d1")  # sleep as PID 1 ignores SIGTERM: SIGKILL after 1 s
    assert on(podman, "inspect", "-f", "{{.State.ExitCode}}", "d1").stdout.strip() == "137"
    on(podman, "rm", "d1")


def test_kill_with_a_signal(podman):
    run(podman, "-d", "--name", "k1", "localhost/busybox", "sh", "-c",
        'trap "exit 42" USR1; while :; do sleep 0.1; done')
    time.sleep(0.5)  # the trap is set
    on(podman, "kill", "-s", "USR1", "k1")
    assert on(podman, "wait", "k1").stdout.strip() == "42"


def test_pause_and_unpause(podman):
    run(podman, "-d", "--name", "p1", "localhost/busybox", "sleep", "600")
    on(podman, "pause", "p1")
    assert on(podman, "inspect", "-f", "{{.State.Status}}", "p1").stdout.strip() == "paused"
    on(podman, "unpause", "p1")
    assert on(podman, "inspect", "-f", "{{.State.Status}}", "p1").stdout.strip() == "running"
    on(podman, "rm", "-f", "-t", "0", "p1")


def test_memory_and_pids_limits(podman):
    done = run(podman, "--rm", "--memory", "64m", "--pids-limit", "50", "localhost/busybox",
               "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                           "/sys/fs/cgroup/pids/pids.max")
    assert done.stdout.split() == [str(64 << 20), "50"]


def test_a_terminal_through_the_console_socket(podman):
    """``run -it`` and ``exec -it`` from a terminal (script(1) gives podman
    one): the process's stdio is a pty made in the container."""
    command = " ".join(map(shlex.quote, [PODMAN, "--tmpdir", str(podman.root / "tmp"),
                                         "--runtime", RUNTIME, "run", "--rm", "-it",
                                         "--network", "none", "localhost/busybox", "sh", "-c",
                                         "tty; exit 5"]))
    done = subprocess.run(["script", "-qec", command, "/dev/null"], env=podman.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "/dev/pts/0" in done.stdout
    run(podman, "-d", "--name", "t1", "localhost/busybox", "sleep", "600")
    command = " ".join(map(shlex.quote, [PODMAN, "--tmpdir", str(podman.root / "tmp"),
                                         "--runtime", RUNTIME, "exec", "-it", "t1", "sh",
                                         "-c", "tty; exit 6"]))
    done = subprocess.run(["script", "-qec", command, "/dev/null"], env=podman.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 6, done.stdout + done.stderr
    assert "/dev/pts/" in done.stdout
    on(podman, "rm", "-f", "-t", "0", "t1")


#: What a container reports of itself, compared between runc and
#: pycontainer-runtime under the same podman command.
PROBE = r"""
grep -E '^(Cap|NoNewPrivs|Seccomp:|Groups)' /proc/self/status
echo "id $(id -u):$(id -g) $(id -G)"
echo "hostname $(hostname) oom $(cat /proc/self/oom_score_adj) umask $(umask)"
echo "nofile $(ulimit -n) nproc $(ulimit -u) pwd $(pwd)"
awk '{ sep = 0; for (i = 7; i <= NF; i++) if ($i == "-") sep = i;
       print "mount", $5, $6, $(sep + 1) }' /proc/self/mountinfo | sort
ls -A /dev | tr '\n' ' '; echo
ls -A /data 2>&1 | tr '\n' ' '; echo
cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax
for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max \
         cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares cpuset/cpuset.cpus; do
  echo "$f $(cat /sys/fs/cgroup/$f 2>&1)"; done
touch /rootfile 2>&1 && echo "root writable"
exit 3
"""
FLAG_SETS = {
    "defaults": [],
    "limits": ["--memory", "64m", "--memory-swap", "96m", "--pids-limit", "40", "--cpus", "0.5",
               "--cpu-shares", "512", "--cpuset-cpus", "0"],
    "user": ["--user", "1000:1000", "--group-add", "27", "--workdir", "/tmp",
             "--oom-score-adj", "100", "--security-opt", "no-new-privileges"],
    "capabilities": ["--cap-drop", "all", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_TIME"],
    "mounts": ["--read-only", "--tmpfs", "/data",
               "--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "kernel.msgmax=4096"],
    "devices": ["--device", "/dev/fuse", "--device", "/dev/null:/dev/mynull"],
    "privileged": ["--privileged"],
}


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_podman_flags_give_what_runc_gives(podman, flags, request):
    if "pyunion" in request.node.callspec.id:
        pytest.skip("compared once, on the kernel's storage")
    outputs = {}
    for runtime in ("runc", RUNTIME):
        done = podman("--runtime", runtime, "run", "--rm", "--network", "none",
                      "--hostname", "probe", *flags,
                      "localhost/busybox", "sh", "-c", PROBE, check=False)
        assert done.returncode == 3, done.stderr
        outputs[runtime] = [re.sub(r"^mount (\S+) \S+", r"mount \1", line)
                            for line in done.stdout.splitlines()]
    assert outputs[RUNTIME] == outputs["runc"]
