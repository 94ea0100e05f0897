"""pycontainer end to end: real namespaces, cgroups and pyunion roots."""

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYCONTAINER, stand_in_host_links
from container import cgroups, runtime
from helpers import (INTERRUPTIBLE, interrupted_once, process_gone,
                     talk_through_a_terminal, wait_for)


def said_ready(pyc, name: str) -> bool:
    """Wait until a detached container's command has printed "ready" (its
    traps are set then)."""
    return wait_for(lambda: "ready" in pyc("logs", name).stdout, seconds=30)

def test_hello_with_its_own_pid_uts_and_mount_namespaces(pyc):
    done = pyc("run", "--rm", "--hostname", "box", "busybox", "sh", "-c",
               "echo hello from $(hostname); ps -o pid,args; echo MOUNTS; cat /proc/mounts")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello from box"
    processes = [l.split(None, 1) for l in lines[2:lines.index("MOUNTS")]]
    assert processes[0] == ["1", "pycontainer-init"]  # no host path shows
    assert processes[1][0] == "2" and processes[1][1].startswith("sh -c echo hello")
    assert max(int(pid) for pid, _ in processes) < 10  # only the container's own
    mounts = done.stdout.split("MOUNTS\n", 1)[1].splitlines()
    assert mounts[0].split()[1:3] == ["/", "fuse.pyunion"]
    assert not any(m.split()[1].startswith(("/work", "/tmp", "/run")) for m in mounts)


def test_only_loopback_and_own_ipc(pyc):
    done = pyc("run", "--rm", "--network", "none", "busybox", "sh", "-c",
               "ls /sys/class/net; ip link show lo")
    assert done.stdout.split("\n")[0] == "lo"
    assert "UP" in done.stdout
    queue = subprocess.run(["ipcmk", "-Q"], capture_output=True, text=True, check=True)
    queue_id = queue.stdout.split()[-1]
    try:
        assert queue_id in open("/proc/sysvipc/msg").read().split()
        inside = pyc("run", "--rm", "busybox", "cat", "/proc/sysvipc/msg")
        assert inside.returncode == 0 and queue_id not in inside.stdout.split()
    finally:
        subprocess.run(["ipcrm", "-q", queue_id], check=True)


def test_host_network_shares_the_hosts_interfaces(pyc):
    done = pyc("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net")
    assert sorted(done.stdout.split()) == stand_in_host_links()
    bad = pyc("run", "--rm", "--network", "bridge0", "busybox", "true")
    assert bad.returncode == 125 and "no such network: bridge0" in bad.stderr


def test_writes_land_in_the_container_only(pyc):
    first, second = pyc.name(), pyc.name()
    assert pyc("run", "--name", first, "busybox", "sh", "-c",
               "echo mine > /etc/motd; rm /bin/vi").returncode == 0
    done = pyc("run", "--name", second, "busybox", "sh", "-c",
               "cat /etc/motd; ls /bin/vi")
    assert "mine" not in done.stdout and "/bin/vi" in done.stdout
    upper = Path(f"/var/lib/pycontainer/containers/{first}/upper")
    assert (upper / "etc/motd").read_text() == "mine\n"
    assert (upper / "bin/.wh.vi").exists()


@pytest.mark.parametrize("command, code", [
    ("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137),
])
def test_exit_codes(pyc, command, code):
    assert pyc("run", "--rm", "busybox", "sh", "-c", command).returncode == code


def test_runtime_error_codes(pyc):
    missing = pyc("run", "--rm", "busybox", "no-such-command")
    assert missing.returncode == 127 and "not found" in missing.stderr
    not_executable = pyc("run", "--rm", "busybox", "/etc/passwd")
    assert not_executable.returncode == 126
    assert pyc("run", "--rm", "nosuchimage", "true").returncode == 125


@pytest.mark.parametrize("args, message", [
    (["--memory", "lots"], "--memory: invalid size"),
    (["--memory", "1k"], "below the minimum"),
    (["--cpus", "0"], "--cpus"),
    (["--pids-limit", "x"], "--pids-limit"),
    (["-v", "/nonexistent:/x"], "--volume"),
    (["-v", "relative"], "--volume"),
    (["-u", "root"], "--user"),
    (["--name", "bad/name"], "--name"),
    (["-e", "1=2"], "--env"),
    (["-w", "rel"], "--workdir"),
])
def test_bad_input_is_one_line_and_leaves_nothing(pyc, args, message):
    done = pyc("run", "--rm", *args, "busybox", "true")
    assert done.returncode == 125
    assert done.stderr.startswith("Error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1


def test_detached_run_returns_once_the_container_runs(pyc):
    name = pyc.name()
    started = pyc("run", "-d", "--name", name, "busybox", "sleep", "60")
    assert started.returncode == 0 and started.stdout == f"{name}\n"
    assert pyc("exec", name, "true").returncode == 0  # no wait needed
    refused = pyc("run", "-d", "--rm", "--ip", "10.213.0.1", "busybox", "true")
    assert refused.returncode == 125 and refused.stdout == ""
    assert refused.stderr.strip().endswith("is the gateway of network bridge")
    missing = pyc("run", "-d", "--rm", "busybox", "nothing-here")
    assert missing.returncode == 127 and "'nothing-here': not found" in missing.stderr


def test_ctrl_c_at_a_foreground_run_reaches_the_command_once(pyc):
    """The terminal signals the whole process group: supervisor and its
    helpers; only the command may act on it (through init)."""
    proc = subprocess.Popen([*PYCONTAINER, "run", "--rm", "--name", pyc.name(), "busybox",
                             *INTERRUPTIBLE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert interrupted_once(proc) == (3, "got INT\n", "")


def test_name_in_use(pyc):
    name = pyc.name()
    assert pyc("run", "--name", name, "busybox", "true").returncode == 0
    again = pyc("run", "--name", name, "busybox", "true")
    assert again.returncode == 125 and "in use" in again.stderr
    assert "exited (0)" in pyc("ps", "-a").stdout


def test_env_workdir_user_volume_read_only(pyc, world_readable_dir):
    tmp_path = world_readable_dir
    (tmp_path / "shared").write_text("from the host\n")
    env_file = tmp_path / "env"
    env_file.write_text("FROM_FILE=yes\n")
    done = pyc("run", "--rm", "-e", "GREETING=hi there", "--env-file", str(env_file),
               "-w", "/tmp/work", "-u", "1000:1000", "-v", f"{tmp_path}:/data:ro",
               "busybox", "sh", "-c",
               'echo "$GREETING $FROM_FILE $HOME"; pwd; id -u; id -g; cat /data/shared;'
               'echo x > /data/new || echo read-only')
    assert done.stdout.splitlines() == ["hi there yes /root", "/tmp/work", "1000", "1000",
                                        "from the host", "read-only"], done.stderr
    ro = pyc("run", "--rm", "--read-only", "busybox", "sh", "-c", "touch /x || echo refused")
    assert "refused" in ro.stdout


def test_zombies_are_reaped(pyc):
    done = pyc("run", "--rm", "busybox", "sh", "-c",
               "(sh -c 'sleep 0.2 & exit 0'); sleep 1; ps -o stat,args | grep -c '^Z' || true")
    assert done.stdout.strip() == "0"


def test_signals_are_forwarded_and_stop_works(pyc):
    name = pyc.name()
    started = pyc("run", "-d", "--name", name, "busybox", "sh", "-c",
                  "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done")
    assert started.returncode == 0 and started.stdout.strip() == name
    assert said_ready(pyc, name)
    assert name in pyc("ps").stdout
    assert pyc("stop", name).returncode == 0
    assert "got TERM" in pyc("logs", name).stdout
    line = next(l for l in pyc("ps", "-a").stdout.splitlines() if l.startswith(name))
    assert "exited (7)" in line


def test_memory_limit_oom_kills(pyc):
    done = pyc("run", "--rm", "--memory", "32m", "--memory-swap", "32m", "busybox", "sh", "-c",
               "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived")
    assert done.returncode == 137
    assert "out of memory" in done.stderr
    assert "survived" not in done.stdout


def test_storage_opt_size_bounds_what_a_container_stores(pyc):
    done = pyc("run", "--rm", "--network", "none", "--storage-opt", "size=8m", "busybox", "sh",
               "-c", "df -k / | tail -1; dd if=/dev/zero of=/big bs=1M count=20; echo dd $?; "
               "rm /big; dd if=/dev/zero of=/again bs=1M count=6 && echo written again")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "8192"  # df: the size, in KiB
    assert "/big': No space left on device" in done.stderr
    assert "dd 1" in done.stdout and "written again" in done.stdout


def test_pids_limit_stops_a_fork_loop(pyc):
    done = pyc("run", "--rm", "--pids-limit", "20", "busybox", "sh", "-c",
               "n=0; while [ $n -lt 50 ]; do sleep 5 & n=$((n+1)); echo $n; done")
    assert "can't fork" in done.stderr
    assert int(done.stdout.split()[-1]) == 18  # + sh and init make 20


def test_cpus_hold_a_busy_loop_near_the_quota(pyc):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--cpus", "0.5", "busybox", "sh", "-c",
               "while :; do :; done").returncode == 0
    time.sleep(0.5)
    group = cgroups.reopen(runtime.State.load(name).cgroup_paths)
    start, used_before = time.monotonic(), group.stats().cpu_usage_ns
    time.sleep(3)
    share = (group.stats().cpu_usage_ns - used_before) / 1e9 / (time.monotonic() - start)
    assert 0.3 < share < 0.65, f"a busy loop used {share:.2f} of a core"


def test_kill_inspect_and_follow_logs(pyc):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "busybox", "sh", "-c",
               "trap 'echo got USR1; got=1' USR1; echo ready; "
               "while [ -z \"$got\" ]; do sleep 0.1; done; echo done").returncode == 0
    assert said_ready(pyc, name)
    info = json.loads(pyc("inspect", name).stdout)
    assert info["status"] == "running" and info["init_pid"] > 1
    assert pyc("kill", "-s", "USR1", name).returncode == 0
    followed = pyc("logs", "-f", name)  # returns when the container ends
    assert "got USR1" in followed.stdout and followed.stdout.rstrip().endswith("done")
    assert json.loads(pyc("inspect", name).stdout)["exit_code"] == 0
    assert pyc("kill", name).returncode == 125  # not running any more
    assert pyc("inspect", "no-such").returncode == 125


def test_killing_run_takes_everything_with_it(pyc):
    name = pyc.name()
    proc = subprocess.Popen([*PYCONTAINER, "run", "--name", name, "busybox", "sleep", "60"])
    assert wait_for(lambda: '"status": "running"' in pyc("inspect", name).stdout, seconds=30)
    init_pid = runtime.State.load(name).init_pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: process_gone(init_pid))  # with no command to clean up
    assert "dead (supervisor killed)" in pyc("ps", "-a").stdout
    assert pyc("rm", name).returncode == 0


def test_interactive_shell_with_job_control(pyc):
    said = talk_through_a_terminal(
        [*PYCONTAINER, "run", "--rm", "--name", pyc.name(), "-it", "busybox", "sh"],
        [b"sleep 30 &\n", b"jobs\n", b"echo answer=$((6*7))\n", b"tty\n", b"exit 5\n"])
    assert "answer=42" in said
    assert "Running" in said and "sleep 30" in said
    assert "/dev/pts/0" in said


def test_exec_joins_the_running_container(pyc):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--hostname", "inside", "-e", "MARK=1",
               "busybox", "sh", "-c", "echo hi > /tmp/mark; sleep 60").returncode == 0
    time.sleep(1)
    done = pyc("exec", name, "sh", "-c", "hostname; cat /tmp/mark; echo $MARK; ps -o pid,args")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["inside", "hi", "1"]
    assert any(line.split()[1:3] == ["sleep", "60"] for line in lines[4:])
    assert pyc("exec", name, "sh", "-c", "exit 4").returncode == 4
    assert pyc("exec", name, "nothing-here").returncode == 127
    said = talk_through_a_terminal([*PYCONTAINER, "exec", "-it", name, "sh"],
                                   [b"echo via=$((1+1))\n", b"exit\n"])
    assert "via=2" in said
    stats = pyc("stats", "--no-stream", name)
    assert stats.returncode == 0 and name in stats.stdout
    assert pyc("exec", "no-such-container", "true").returncode == 125


def test_stop_kills_what_ignores_sigterm_and_stats_streams(pyc):
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "busybox", "sh", "-c",
               "trap '' TERM; echo ready; while true; do sleep 0.1; done").returncode == 0
    assert said_ready(pyc, name)
    streaming = subprocess.Popen([*PYCONTAINER, "stats", name], stdout=subprocess.PIPE, text=True)
    shown = ""
    deadline = time.monotonic() + 30
    while shown.count(name) < 2 and time.monotonic() < deadline:  # refreshed at least once
        if select.select([streaming.stdout], [], [], 1)[0]:
            more = os.read(streaming.stdout.fileno(), 65536).decode()
            if not more:
                break  # stats ended
            shown += more
    streaming.terminate()
    streaming.communicate(timeout=10)
    assert shown.count(name) >= 2
    started = time.monotonic()
    assert pyc("stop", "-t", "1", name).returncode == 0
    assert time.monotonic() - started < 5
    line = next(l for l in pyc("ps", "-a").stdout.splitlines() if l.startswith(name))
    assert "exited (137)" in line


def test_rm_goes_on_past_a_name_it_cannot_remove(pyc):
    """As docker's: each name it removes is printed, each it cannot is an
    ``Error:`` line, and the exit status is 1 if any failed."""
    first, second = pyc.name(), pyc.name()
    for name in (first, second):
        assert pyc("run", "--name", name, "--network", "none", "busybox", "true").returncode == 0
    done = pyc("rm", first, "nosuch-container", second)
    assert done.returncode == 1
    assert done.stdout.split() == [first, second]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ")
    assert "nosuch-container" in done.stderr
    assert first not in pyc("ps", "-a").stdout and second not in pyc("ps", "-a").stdout
