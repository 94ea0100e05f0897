"""pycontainer's answer to bad command lines and to state that changes
under it: one line, docker's exit codes, nothing left behind, no traceback."""

import os
import subprocess
import sys
import tempfile
import time
import traceback

import shutil
import uuid
from pathlib import Path

import pytest

from conftest import PYCONTAINER
from container import cli, images, runtime


def refused(done, message: str) -> bool:
    """One ``Error:`` line naming ``message``, and docker's 125."""
    return (done.returncode == 125 and done.stderr.startswith("Error: ")
            and message in done.stderr and done.stderr.count("\n") == 1)


def nothing_left(name: str) -> bool:
    return not any(os.path.lexists(os.path.join(directory, name))
                   for directory in (runtime.STATE_DIR, runtime.DATA_DIR))


@pytest.mark.parametrize("args, message", [
    (["--network", "nosuch"], "no such network: nosuch"),
    (["-u", "99999999999"], "--user"),
    (["--memory", "100000000t"], "--memory"),
    (["--memory", "1g", "--memory-swap", "100000000t"], "--memory-swap"),
    (["--no-such-flag"], "--no-such-flag"),
    (["-v", "/tmp:/"], "cannot mount onto /:"),
    (["-v", "/tmp:/proc"], "cannot mount onto /proc:"),
    (["-v", "/tmp:/proc/sys/kernel"], "cannot mount onto /proc/sys/kernel:"),
    (["-v", "/tmp:/sys"], "cannot mount onto /sys:"),
    (["-v", "/tmp:/dev/shm"], "cannot mount onto /dev/shm:"),
    (["--storage-opt", "size=lots"], "--storage-opt size: invalid size 'lots'"),
    (["--storage-opt", "size=0"], "--storage-opt size: '0' must be more than 0"),
    (["--storage-opt", "quota=1g"], "--storage-opt: 'quota=1g' is not supported"),
])
def test_bad_run_options_leave_nothing(pyc, args, message):
    name = pyc.name()
    done = pyc("run", "--name", name, *args, "busybox", "true")
    assert refused(done, message), done.stderr
    assert nothing_left(name)
    assert name not in pyc("ps", "-a").stdout


@pytest.mark.parametrize("args, message", [
    (["ps", "--bogus"], "--bogus"),
    (["nosuchverb"], "nosuchverb"),
    (["network", "nosuchverb"], "nosuchverb"),
    (["rm"], "Missing argument"),
])
def test_a_command_line_click_cannot_parse_is_one_line_and_125(pyc, args, message):
    assert refused(pyc(*args), message)


@pytest.fixture
def linked_image(image_root):
    """A copy of the busybox image with absolute symlinks to directories:
    one inside it, one that would lead out on the host, one into /proc."""
    name = f"links{uuid.uuid4().hex[:8]}"
    root = Path(images.STORE) / name / "rootfs"
    shutil.copytree(image_root, root, symlinks=True)
    (root / "var/inside").mkdir()
    (root / "data").symlink_to("/var/inside")
    (root / "out").symlink_to("/../../../../../../../../tmp")
    (root / "kernel").symlink_to("/proc/sys")
    try:
        yield name
    finally:
        shutil.rmtree(root.parent)


def test_volumes_onto_absolute_symlinks_land_inside_the_container(pyc, linked_image, tmp_path):
    """/bin/sh -> /bin/busybox takes the volume on /bin/busybox; /data ->
    /var/inside on /var/inside; /out -> /../../tmp on the container's /tmp."""
    (tmp_path / "marker").write_text("from the host\n")
    host_tmp = set(os.listdir("/tmp"))
    done = pyc("run", "--rm", "--network", "none", "-v", f"{images.BUSYBOX}:/bin/sh:ro",
               "-v", f"{tmp_path}:/data", "-v", f"{tmp_path}:/out", linked_image,
               "sh", "-c", "cat /var/inside/marker; ls /tmp;"
               " grep -E ' /(bin/busybox|var/inside|tmp) ' /proc/self/mountinfo")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["from the host", "marker"]
    mounted = {line.split()[4]: line.split()[5].split(",")[0] for line in lines[2:]}
    assert mounted == {"/bin/busybox": "ro", "/var/inside": "rw", "/tmp": "rw"}
    assert set(os.listdir("/tmp")) == host_tmp  # nothing went to the host's /tmp


def test_a_volume_whose_symlink_leads_into_proc_is_refused(pyc, linked_image, tmp_path):
    done = pyc("run", "--rm", "--network", "none", "-v", f"{tmp_path}:/kernel",
               linked_image, "true")
    assert done.returncode == 125
    assert "/kernel leads to /proc/sys, which the runtime mounts" in done.stderr


#: what reads containers, and the exit codes each may give for one removed
#: meanwhile: a listing leaves it out, a command that names it says it is gone
ALLOWED = {"ps -a": {0}, "stats --no-stream": {0}, "stats --no-stream {}": {0, 125},
           "inspect {}": {0, 125}, "logs {}": {0, 125}}
READERS = [reader.split() for reader in ALLOWED]


def answered_sanely(reader: str, code: int, said: str) -> bool:
    """No traceback; an allowed exit code; a failure said in one line."""
    return ("Traceback" not in said and code in ALLOWED[reader]
            and (code == 0 or (said.startswith("Error: ") and said.count("\n") == 1)))


def test_an_unforeseen_failure_is_one_line_and_125(monkeypatch, capsys):
    def broken():
        raise KeyError("a state\nnobody foresaw")
    monkeypatch.setattr(runtime, "all_states", broken)
    monkeypatch.setattr(sys, "argv", ["pycontainer", "ps"])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 125
    said = capsys.readouterr().err
    assert said.startswith("Error: ") and said.count("\n") == 1 and "KeyError" in said


def call_forked(args: list[str], prepare=lambda: None) -> tuple[int, str]:
    """``pycontainer ARGS`` in a fork of this process (no interpreter to
    start, so many calls fit in a race), after ``prepare()`` there; its exit
    code and stderr.  Anything that escapes the CLI is printed as a
    traceback, with code 99."""
    with tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                sys.stdout, sys.stderr = open(os.devnull, "w"), err
                sys.argv = ["pycontainer", *args]
                prepare()
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:  # noqa: BLE001 - what the test looks for
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        err.seek(0)
        return code, err.read()


def started(pyc) -> str:
    name = pyc.name()
    done = pyc("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "60")
    assert done.returncode == 0, done.stderr
    return name


def removed_when_read(name: str, before: bool):
    """Make the first read of ``name``'s state in this process meet the
    worst moment of a real ``rm -f``: just before the read, or just after."""
    load, pending = runtime.State.load, [name]

    def racing_load(wanted):
        if wanted not in pending:
            return load(wanted)
        pending.clear()
        if before:
            runtime.remove(wanted, force=True)
        state = load(wanted)
        runtime.remove(wanted, force=True)
        return state
    runtime.State.load = racing_load


@pytest.mark.parametrize("before", [True, False], ids=["removed-before", "removed-after"])
@pytest.mark.parametrize("reader", [" ".join(r) for r in READERS])
def test_a_container_removed_while_read_is_left_out_or_gone(pyc, reader, before):
    name = started(pyc)
    args = [a.format(name) for a in reader.split()]
    code, said = call_forked(args, lambda: removed_when_read(name, before))
    assert answered_sanely(reader, code, said), (code, said)
    assert not os.path.exists(os.path.join(runtime.STATE_DIR, name))


def test_readers_racing_rm_never_show_a_traceback(pyc):
    """ps, stats, inspect and logs, called over and over while ``rm -f``
    takes their container away: each either shows it or says it is gone."""
    deadline, seen = time.monotonic() + 25, 0
    while time.monotonic() < deadline:
        name = started(pyc)
        remover = subprocess.Popen([*PYCONTAINER, "rm", "-f", name],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while remover.poll() is None or seen % 5:
            args = READERS[seen % len(READERS)]
            code, said = call_forked([a.format(name) for a in args])
            seen += 1
            assert answered_sanely(" ".join(args), code, said), (args, code, said)
        assert remover.wait() == 0
    assert seen > 100
