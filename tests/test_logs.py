"""A detached container's log (container/logs.py): rotated as docker's
json-file driver is with --log-opt max-size/max-file, read back whole and
in order by ``logs`` and ``logs -f``, and bounded on disk."""

import os
import select
import subprocess
import time

import pytest

from conftest import PYCONTAINER
from container import logs, runtime
from container.spec import SpecError
from helpers import wait_for


def ended(pyc, name: str) -> bool:
    """Wait for a detached container to end (its log is complete then)."""
    return wait_for(lambda: runtime.State.load(name).status == "exited", seconds=120)


def log_files(name: str) -> list[int]:
    """The sizes of a container's log files, oldest first."""
    directory = runtime.State.load(name).log
    return [os.path.getsize(os.path.join(directory, n))
            for n in sorted(os.listdir(directory), key=int)]


def lines(first: int, last: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {i}\n" for i in range(first, last + 1))


@pytest.mark.parametrize("options, max_size, max_files", [
    (["max-size=1k", "max-file=3"], 1000, 3),
    (["max-size=1k"], 1000, 1),  # one file, rotated in place
])
def test_a_rotated_log_keeps_the_newest_output_whole(pyc, options, max_size, max_files):
    name = pyc.name()
    opts = [arg for option in options for arg in ("--log-opt", option)]
    assert pyc("run", "-d", "--name", name, "--network", "none", *opts, "busybox", "sh", "-c",
               "i=1; while [ $i -le 2000 ]; do echo line $i; i=$((i+1)); done").returncode == 0
    assert ended(pyc, name)
    written = lines(1, 2000)
    sizes = log_files(name)
    # Each file holds exactly max-size bytes (k is 1000, as docker's) but the newest.
    assert len(sizes) == max_files
    assert sizes[:-1] == [max_size] * (max_files - 1) and 0 < sizes[-1] <= max_size
    shown = pyc("logs", name).stdout
    assert len(shown) == sum(sizes) and written.endswith(shown)  # the newest, with no gap


def test_a_flood_leaves_a_log_no_bigger_than_its_bound(pyc):
    """20.5 MB of output under max-size=1m: one file, holding what came
    after the last full million bytes (the relay kept up, and was drained)."""
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--network", "none", "--log-opt", "max-size=1m",
               "busybox", "sh", "-c", "yes 123456789 | head -c 20500000; echo END").returncode == 0
    assert ended(pyc, name)
    assert log_files(name) == [500_004]
    assert pyc("logs", name).stdout == "123456789\n" * 50_000 + "END\n"


def test_without_options_the_log_keeps_everything_to_the_end(pyc):
    """The relay is drained before the container is cleaned up: what the
    container wrote just before it ended is in its log."""
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c",
               "seq 1 200000; echo last >&2").returncode == 0
    assert ended(pyc, name)
    assert pyc("logs", name).stdout == "".join(f"{i}\n" for i in range(1, 200001)) + "last\n"
    assert len(log_files(name)) == 1


@pytest.mark.parametrize("max_file", ["3", "1"])
def test_follow_goes_on_across_rotations(pyc, max_file):
    """``logs -f`` shows every round the container writes, in order, while
    the log rotates under it many times.  Each round (about 400 bytes) is
    less than a file, so a follower one round behind misses nothing; the
    container writes the next round once the follower has shown the last."""
    name = pyc.name()
    rounds = 8
    script = ("trap 'go=1' USR1; r=1; while [ $r -le %d ]; do "
              "i=1; while [ $i -le 30 ]; do echo round $r line $i; i=$((i+1)); done; "
              "echo end $r; while [ -z \"$go\" ]; do sleep 0.05; done; go=; r=$((r+1)); done"
              % rounds)
    assert pyc("run", "-d", "--name", name, "--network", "none", "--log-opt", "max-size=500",
               "--log-opt", f"max-file={max_file}", "busybox", "sh", "-c",
               script).returncode == 0
    follower = subprocess.Popen([*PYCONTAINER, "logs", "-f", name], stdout=subprocess.PIPE)
    try:
        followed = b""
        for r in range(1, rounds + 1):
            followed += read_until(follower, followed, f"end {r}\n".encode())
            assert pyc("kill", "-s", "USR1", name).returncode == 0
        rest, _ = follower.communicate(timeout=60)  # it returns once the container has ended
    finally:
        follower.kill()
        follower.wait()
    followed += rest
    written = "".join(lines(1, 30, f"round {r} line") + f"end {r}\n" for r in range(1, rounds + 1))
    assert followed.decode() == written
    kept = pyc("logs", name).stdout
    assert written.endswith(kept) and len(kept) <= 500 * int(max_file) < len(written)


def read_until(proc: subprocess.Popen, before: bytes, marker: bytes) -> bytes:
    """What ``proc`` prints until ``marker`` ends it (a minute at most, so a
    broken follower fails the test instead of hanging it)."""
    got = b""
    deadline = time.monotonic() + 60
    while not (before + got).endswith(marker):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stdout], [], [], left)[0], \
            f"no {marker!r} from logs -f; it showed {(before + got)[-200:]!r}"
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"logs -f ended before {marker!r}"
        got += chunk
    return got


@pytest.mark.parametrize("options, detached, message", [
    (["max-size=1k"], False, "needs -d"),
    (["max-size"], True, "KEY=VALUE"),
    (["max-sise=1k"], True, "unknown option 'max-sise'"),
    (["max-size=10q"], True, "invalid size"),
    (["max-size=0"], True, "at least 1 byte"),
    (["max-size=-1"], True, "invalid size"),
    (["max-file=0"], True, "max-file: '0'"),
    (["max-size=1m", "max-file=0"], True, "max-file: '0'"),
    (["max-size=1m", "max-file=two"], True, "max-file: 'two'"),
])
def test_bad_log_options_are_one_line_and_leave_nothing(pyc, options, detached, message):
    name = pyc.name()
    opts = [arg for option in options for arg in ("--log-opt", option)]
    done = pyc("run", *(["-d"] if detached else []), "--name", name, *opts, "busybox", "true")
    assert done.returncode == 125 and done.stdout == ""
    assert done.stderr.startswith("Error: --log-opt") and message in done.stderr
    assert done.stderr.count("\n") == 1
    assert not os.path.exists(os.path.join(runtime.STATE_DIR, name))
    assert not os.path.exists(os.path.join(runtime.DATA_DIR, name))


def test_options_read_as_docker_reads_them():
    assert logs.parse_options([]) == logs.Policy(None, 1)
    assert logs.parse_options(["max-file=3"]) == logs.Policy(None, 1)  # no effect, as docker's
    assert logs.parse_options(["max-size=10m", "max-file=3"]) == logs.Policy(10_000_000, 3)
    assert logs.parse_options(["max-size=1.5k"]) == logs.Policy(1500, 1)
    assert logs.parse_options(["max-size=2g", "max-size=1kb"]) == logs.Policy(1000, 1)  # last wins
    with pytest.raises(SpecError):
        logs.parse_options(["max-size=1k", "max-file=\u00b3"])  # a digit, but not 0-9
