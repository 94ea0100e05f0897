"""Unmount and mount again, cleanly or after the daemon was killed.

A union mounted again over the same branches must be the same union: the
same tree, the same inode numbers (lower files, copied-up ones, partial
copies, new files, directories, renamed directories that carry a redirect)
and the same hard links (one number, the right link count), whether the
branches are given as ``br=`` or as ``lowerdir=/upperdir=/workdir=``.

A daemon killed with SIGKILL leaves a dead mount ("Transport endpoint is
not connected") and, in the branch and in /run/pyunion, its lock, its PID
record, its work files and intent records.  ``pyunion umount`` (or
``fusermount3 -u``) must clear the mount, even while a process still holds
files open on it, and the next ``pyunion mount`` must serve every change
that was acknowledged before the kill (written and fsynced, or closed), with
the same numbers.  What each single step of a change leaves behind is
test_crashes.py's business; here it is the cycle around it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DIR, build, mounted, process_gone, pyunion, wait_for
from unionfs import daemon

BIG = bytes(range(256)) * 4096  # 1 MiB, so a one-byte write makes a partial copy
RECORD = 64  # bytes the writer appends at each step


class Stack:
    """Two read-only branches with merged directories and lower hard
    links, under a writable one; mounted with either spelling."""

    def __init__(self, root: Path, spelling: str, *options: str):
        self.lowers = [
            build(root / "low1", {"f": "lower f", "big": BIG, "meta": "chmod me", "h1": "linked",
                                  "tree/a/x": "x", "tree/b": "b", "merged/one": "1"}),
            build(root / "low2", {"f": "shadowed", "merged/two": "2", "deep/file": "deep",
                                  "tree/a/y": "y", "gone": DIR}),
        ]
        os.link(self.lowers[0] / "h1", self.lowers[0] / "h2")
        self.up = build(root / "up", {})
        self.work = root / "work"
        self.work.mkdir()
        self.spelling, self.options = spelling, options
        self.mnt = root / "mnt"
        self.mnt.mkdir()

    def mount(self, unions) -> Path:
        if self.spelling == "br":
            return unions.mount([self.up, *self.lowers], *self.options, rw=True, mnt=self.mnt)
        return unions.mount_overlay_style(self.lowers, self.up, self.work, *self.options,
                                          mnt=self.mnt)

    def leftovers(self) -> list[str]:
        """Work files and intent records the daemon left in the branch."""
        meta = self.up / ".wh..wh.pyunion"
        work = meta / "work" if self.spelling == "br" else self.work / "work"
        return [str(p) for d in (work, meta / "intents") if d.exists() for p in d.iterdir()]


@pytest.fixture(params=["br", "overlay"])
def spelling(request):
    return request.param


def view(mnt: Path) -> dict[str, tuple]:
    """What identifies each entry: kind, st_ino, st_nlink, mode, size, data
    (checking on the way that each listing gives the number lstat gives)."""
    st = os.lstat(mnt)
    seen = {".": (stat.S_IFMT(st.st_mode), st.st_ino, st.st_nlink, st.st_mode, st.st_size, None)}
    pending = [""]
    while pending:
        rel = pending.pop()
        for entry in os.scandir(mnt / rel):
            path = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            assert entry.inode() == st.st_ino, f"{path}: d_ino {entry.inode()}, st_ino {st.st_ino}"
            data = (hashlib.sha256(Path(entry.path).read_bytes()).hexdigest()
                    if stat.S_ISREG(st.st_mode)
                    else os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None)
            seen[path] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_nlink, st.st_mode,
                          st.st_size, data)
            if stat.S_ISDIR(st.st_mode):
                pending.append(path)
    return seen


def change(mnt: Path) -> None:
    """One of each change that gives a name its number or its links: all
    closed (and so acknowledged) when this returns."""
    (mnt / "new").write_text("new file")
    (mnt / "newdir/inner").mkdir(parents=True)
    with open(mnt / "f", "a") as f:  # copy-up of a file that shadows another
        f.write(" and more")
    with open(mnt / "big", "r+b") as f:  # a partial copy
        f.seek(300_000)
        f.write(b"!")
    os.chmod(mnt / "meta", 0o600)  # a copy of the metadata only
    with open(mnt / "h1", "a") as f:  # a lower hard link, copied up into the index
        f.write(" and changed")
    os.link(mnt / "new", mnt / "new_link")
    os.link(mnt / "deep/file", mnt / "deep_link")  # a link made to a lower file
    os.link(mnt / "big", mnt / "big_link")  # a link to a partial copy
    os.rename(mnt / "h2", mnt / "h2_moved")  # an indexed name, renamed
    os.rename(mnt / "tree", mnt / "moved_once")  # a merged directory, by redirect
    os.rename(mnt / "moved_once", mnt / "moved")  # and again
    with open(mnt / "moved/a/y", "r+b") as f:  # copied up under its new name
        f.write(b"Y")
    os.unlink(mnt / "merged/two")
    (mnt / "merged/sub").mkdir()
    os.rmdir(mnt / "gone")
    (mnt / "gone").mkdir()  # opaque


def check_identity(before: dict, after: dict) -> None:
    """Numbers kept by the changes, and hard links that share them."""
    for old, new in [("f", "f"), ("big", "big"), ("meta", "meta"), ("h1", "h1"), ("h2", "h2_moved"),
                     ("tree", "moved"), ("tree/a/x", "moved/a/x"), ("tree/a/y", "moved/a/y"),
                     ("deep/file", "deep/file")]:
        assert after[new][1] == before[old][1], f"{old} -> {new}: number changed"
    for a, b, links in [("h1", "h2_moved", 2), ("new", "new_link", 2), ("big", "big_link", 2),
                        ("deep/file", "deep_link", 2)]:
        assert after[a][1] == after[b][1] and after[a][2] == after[b][2] == links, (a, b)
    assert after["moved/a/y"][0] == stat.S_IFREG and "tree" not in after


@pytest.mark.parametrize("copyup", ["partial", "full"])
def test_a_remount_shows_the_same_tree_numbers_and_links(tmp_path, unions, spelling, copyup):
    stack = Stack(tmp_path, spelling, f"copyup={copyup}")
    mnt = stack.mount(unions)
    before = view(mnt)
    change(mnt)
    changed = view(mnt)
    check_identity(before, changed)
    pyunion("umount", str(mnt))
    assert view(stack.mount(unions)) == changed
    pyunion("umount", str(mnt))
    assert view(stack.mount(unions)) == changed  # and again, now from the branch alone


def kill_daemon(mnt: Path) -> None:
    pid = daemon.pid_of(str(mnt.resolve()))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: process_gone(pid))


def clear_dead_mount(mnt: Path, tool: str) -> None:
    done = (pyunion("umount", str(mnt), check=False) if tool == "pyunion" else
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True,
                           timeout=60))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not mounted(mnt)


def remounted(stack: Stack, unions) -> Path:
    """Mount again where the killed daemon was; nothing may be left over."""
    mnt = stack.mount(unions)
    assert daemon.pid_of(str(mnt)) is not None
    assert stack.leftovers() == []
    return mnt


@pytest.mark.parametrize("tool", ["pyunion", "fusermount3"])
def test_a_killed_idle_daemon_is_cleared_and_mounts_again(tmp_path, unions, spelling, tool):
    stack = Stack(tmp_path, spelling)
    mnt = stack.mount(unions)
    before = view(mnt)
    change(mnt)
    changed = view(mnt)
    kill_daemon(mnt)
    clear_dead_mount(mnt, tool)
    assert view(remounted(stack, unions)) == changed
    check_identity(before, changed)


WRITER = r"""
import os, sys
mnt = sys.argv[1]
def ack(*what):
    print(*what, flush=True)
log = os.open(f"{mnt}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
big = os.open(f"{mnt}/big", os.O_WRONLY)
try:
    for i in range(10**9):
        os.write(log, f"{i:063d}\n".encode())
        os.fsync(log)
        ack("log", i)
        os.pwrite(big, f"<{i}>".encode(), i * 4099)
        os.fsync(big)
        ack("big", i)
        with open(f"{mnt}/new/{i}", "w") as f:
            f.write(f"closed {i}")
        ack("closed", i)
        os.link(f"{mnt}/h1", f"{mnt}/links/{i}")  # the union's link count moves
        ack("linked", i)
except OSError as exc:
    ack("error", exc.errno)
sys.stdin.read()  # the files stay open on the dead mount until told
"""


@pytest.mark.parametrize("tool", ["pyunion", "fusermount3"])
def test_a_daemon_killed_under_a_writer_keeps_what_was_acknowledged(tmp_path, unions,
                                                                     spelling, tool):
    stack = Stack(tmp_path, spelling)
    mnt = stack.mount(unions)
    os.link(mnt / "h1", mnt / "h3")
    (mnt / "new").mkdir()
    (mnt / "links").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        acked: dict[str, int] = {}
        for line in writer.stdout:  # busy for a while, then killed mid-stream
            what, i = line.split()
            acked[what] = int(i)
            if acked.get("closed", -1) >= 20:
                break
        numbers = {p: os.lstat(mnt / p).st_ino for p in ("log", "big", "h1", "h3", "new")}
        kill_daemon(mnt)
        for line in writer.stdout:
            what, i = line.split()
            if what == "error":
                break
            acked[what] = int(i)
        if tool == "fusermount3":  # refused (EBUSY) while files are open, as for any mount
            writer.stdin.close()
            writer.wait(timeout=60)
        clear_dead_mount(mnt, tool)
    finally:
        if writer.poll() is None:
            writer.stdin.close()
            writer.wait(timeout=60)
    mnt = remounted(stack, unions)
    assert {p: os.lstat(mnt / p).st_ino for p in numbers} == numbers
    links = [mnt / name for name in ("h1", "h2", "h3")] + list((mnt / "links").iterdir())
    assert len(links) >= 3 + acked["linked"] + 1
    assert {(os.lstat(p).st_ino, os.lstat(p).st_nlink) for p in links} == {
        (numbers["h1"], len(links))}
    log = (mnt / "log").read_bytes()
    assert log[:RECORD * (acked["log"] + 1)] == b"".join(
        f"{i:063d}\n".encode() for i in range(acked["log"] + 1))
    with open(mnt / "big", "rb") as f:
        for i in range(acked["big"] + 1):
            mark = f"<{i}>".encode()
            assert os.pread(f.fileno(), len(mark), i * 4099) == mark, i
    for i in range(acked["closed"] + 1):
        assert (mnt / "new" / str(i)).read_text() == f"closed {i}"


def test_a_dead_mount_is_named_as_such_and_cleared_once(tmp_path, unions):
    """Mounting over a dead mount is refused in one line that says what to
    do; a second umount gets pyunion's one-line refusal."""
    stack = Stack(tmp_path, "br")
    mnt = stack.mount(unions)
    kill_daemon(mnt)
    done = pyunion("mount", "-o", f"br={stack.up}=rw:{stack.lowers[0]}=ro", str(mnt),
                   check=False)
    assert done.returncode == 1 and done.stderr == (
        f"Error: mount point {mnt}: Transport endpoint is not connected "
        "(a FUSE mount whose daemon died: unmount it first)\n")
    clear_dead_mount(mnt, "pyunion")
    done = pyunion("umount", str(mnt), check=False)
    assert done.returncode == 1 and done.stderr == f"Error: {mnt} is not a pyunion mount\n"
    remounted(stack, unions)
