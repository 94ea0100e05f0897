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


PROBE = 'echo "HOME=$HOME"; grep -E "^Sig(Ign|Blk)" /proc/self/status; ls /proc/self/fd'