"""pycontainer's answer to bad command lines and to state that changes
under it: one line, docker's exit codes, nothing left behind, no traceback."""

import os

import pytest

from container import runtime


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
