"""``-o udba=none|reval|notify``: a read-only branch changed behind the
union's back, on real mounts.  Each mode shows a change as documented
(never, within ``udba.SHORT``, at once), and in every mode a read never
returns another file's data."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import PYUNION, mounted, wait_for
from unionfs import daemon, udba, watch
from unionfs.branches import Branch, Mode as BranchMode
from unionfs.fs import UnionOperations
from unionfs.layer import Layer
from unionfs.watch import Watcher

MODES = ["none", "reval", "notify"]
#: how long a change may take to show in reval mode, with room for a slow run
REVAL_BOUND = udba.SHORT + 2.0


@pytest.fixture
def lower(tmp_path):
    base = tmp_path / "lower"
    (base / "d").mkdir(parents=True)
    (base / "d" / "a").write_text("a")
    (base / "f").write_text("old")
    return base


def _mount(unions, lower: Path, mode: str) -> Path:
    return unions.mount([lower], f"udba={mode}", changed_below=True)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _make_with_number(path: Path, ino: int, make) -> None:
    """``make`` a file at ``path`` with the inode number ``ino`` (just
    freed): most file systems give it to one of the next files made
    (ext4: the lowest free number of the directory's group, so others
    freed meanwhile come first)."""
    for attempt in range(1000):
        made = path.with_name(f"made{attempt}")
        make(made)
        if os.lstat(made).st_ino == ino:
            os.rename(made, path)
            return
    pytest.skip("this file system did not reuse the inode number")


def _settled(mnt: Path, lower: Path, mode: str) -> None:
    """With notify, until the daemon has acted on the events of the changes
    made so far (in order: one more change shows once those are done).
    Before, a change made of steps (remove, then make anew) may show a
    step between: what the test reads next is the state it made."""
    if mode == "notify":
        marker = f"settled{time.monotonic_ns()}"
        (lower / marker).touch()
        assert wait_for(lambda: os.path.lexists(mnt / marker), REVAL_BOUND)


def _held_by(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd) == str(path):
                return True
    return False


def _shows(mode: str, predicate) -> bool:
    """Whether ``predicate`` comes true as ``mode`` promises: never for
    none (checked past reval's window), within the bound otherwise."""
    if mode == "none":
        time.sleep(udba.SHORT + 0.5)  # past where reval would have seen it
        return predicate()
    return wait_for(predicate, REVAL_BOUND)


@pytest.mark.parametrize("mode", MODES)
def test_a_name_added_below(unions, lower, mode):
    mnt = _mount(unions, lower, mode)
    assert os.listdir(mnt / "d") == ["a"] and not _exists(mnt / "d" / "b")
    (lower / "d" / "b").write_text("b")
    assert _shows(mode, lambda: _exists(mnt / "d" / "b")) is (mode != "none")
    if mode != "none":
        assert sorted(os.listdir(mnt / "d")) == ["a", "b"]
        assert (mnt / "d" / "b").read_text() == "b"


@pytest.mark.parametrize("mode", MODES)
def test_a_name_removed_below(unions, lower, mode):
    mnt = _mount(unions, lower, mode)
    assert (mnt / "d" / "a").read_text() == "a"
    (lower / "d" / "a").unlink()
    assert _shows(mode, lambda: not _exists(mnt / "d" / "a")) is (mode != "none")
    with pytest.raises(FileNotFoundError):  # what is gone is never read
        (mnt / "d" / "a").read_text()


@pytest.mark.parametrize("mode", MODES)
def test_a_file_changed_in_place_below(unions, lower, mode):
    """The same file, longer: its size shows as the mode says; a new open
    reads all of the new data in every mode (the kernel's old size and
    pages are dropped at open)."""
    mnt = _mount(unions, lower, mode)
    assert (mnt / "f").read_text() == "old"
    ino = os.stat(lower / "f").st_ino
    with open(lower / "f", "r+") as f:  # in place: same inode
        f.write("new and longer")
    assert os.stat(lower / "f").st_ino == ino
    assert (mnt / "f").read_text() == "new and longer"
    if mode != "none":
        with open(lower / "f", "a") as f:
            f.write("!")
        assert wait_for(lambda: os.stat(mnt / "f").st_size == 15, REVAL_BOUND)


@pytest.mark.parametrize("mode", MODES)
def test_a_file_replaced_below_reusing_its_inode_number(unions, lower, mode):
    """ext4 and most file systems hand a freed inode number to the next
    file made: the kernel would take the new file for the old one, with the
    old size and pages.  A read gets the new file's data, whole."""
    mnt = _mount(unions, lower, mode)
    assert (mnt / "f").read_text() == "old"
    ino = os.stat(lower / "f").st_ino
    # The release reaches the daemon after close(2): until then it holds
    # the file, and its number is not free.
    assert wait_for(lambda: not _held_by(daemon.pid_of(str(mnt)), lower / "f"))
    (lower / "f").unlink()
    _make_with_number(lower / "f", ino, lambda path: path.write_text("another file"))
    _settled(mnt, lower, mode)
    assert (mnt / "f").read_text() == "another file"


@pytest.mark.parametrize("mode", MODES)
def test_an_open_of_a_file_replaced_below_looks_the_name_up_again(unions, lower, mode):
    """Another file under the name: the daemon fails the open with ESTALE,
    the kernel retries it with a fresh lookup (LOOKUP_REVAL) and opens the
    new file: the caller never sees ESTALE, and fstat shows the new file."""
    mnt = _mount(unions, lower, mode)
    old = os.stat(mnt / "f")
    keep = lower / "kept"  # holds the old inode: its number is not reused
    os.link(lower / "f", keep)
    (lower / "f").unlink()
    (lower / "f").write_text("another file")
    _settled(mnt, lower, mode)
    with open(mnt / "f", "rb") as f:
        assert os.fstat(f.fileno()).st_ino != old.st_ino
        assert f.read() == b"another file"


@pytest.mark.parametrize("reusing", [False, True], ids=["new number", "same number"])
@pytest.mark.parametrize("mode", MODES)
def test_a_file_that_became_a_directory_below(unions, lower, mode, reusing):
    """A directory given the file's number is another file too: the kernel
    cannot change an inode's type, so it must look the name up again."""
    mnt = _mount(unions, lower, mode)
    assert (mnt / "f").read_text() == "old"
    ino = os.stat(lower / "f").st_ino
    assert wait_for(lambda: not _held_by(daemon.pid_of(str(mnt)), lower / "f"))
    if not reusing:
        os.link(lower / "f", lower / "kept")  # its number stays taken
    (lower / "f").unlink()
    if reusing:
        _make_with_number(lower / "f", ino, Path.mkdir)
    else:
        (lower / "f").mkdir()
    (lower / "f" / "inside").write_text("x")
    _settled(mnt, lower, mode)
    with pytest.raises(IsADirectoryError):  # never read as the old file
        (mnt / "f").read_bytes()
    assert _shows(mode, lambda: (mnt / "f").is_dir()) or mode == "none"
    assert os.listdir(mnt / "f") == ["inside"]


@pytest.mark.parametrize("mode", ["reval", "notify"])
def test_a_directory_that_became_a_file_below(unions, lower, mode):
    mnt = _mount(unions, lower, mode)
    assert os.listdir(mnt / "d") == ["a"]
    (lower / "d" / "a").unlink()
    (lower / "d").rmdir()
    (lower / "d").write_text("now a file")
    assert wait_for(lambda: (mnt / "d").is_file(), REVAL_BOUND)
    assert (mnt / "d").read_text() == "now a file"


def test_notify_shows_a_change_at_once(unions, lower):
    """Far inside reval's window: the event, not a timeout, shows it."""
    mnt = _mount(unions, lower, "notify")
    assert not _exists(mnt / "d" / "b")
    (lower / "d" / "b").write_text("b")
    assert wait_for(lambda: _exists(mnt / "d" / "b"), udba.SHORT / 2)
    with open(lower / "f", "a") as f:
        f.write("er")
    assert wait_for(lambda: os.stat(mnt / "f").st_size == 5, udba.SHORT / 2)


def test_notify_keeps_what_did_not_change(unions, lower):
    """A name changed below under a name the writable branch hides, or
    beside a mount point, leaves the kernel's entry (and so the mount on
    it) alone: only names whose resolution changed are invalidated."""
    upper = lower.parent / "upper"
    (upper / "d").mkdir(parents=True)
    mnt = unions.mount([upper, lower], "udba=notify", rw=True, changed_below=True)
    (mnt / "d" / "a").write_text("above")
    target = mnt / "d"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    try:
        (lower / "d" / "a").write_text("changed below")
        os.rename(lower / "d", lower / "moved")  # d is still the upper one, merged
        (lower / "d").mkdir()
        os.utime(lower / "d")
        (lower / "x").write_text("new")  # its event comes after the others
        assert wait_for(lambda: _exists(mnt / "x"), udba.SHORT / 2)
        assert mounted(target, "tmpfs")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert (mnt / "d" / "a").read_text() == "above"


def test_a_partial_copy_whose_lower_file_was_replaced_fails_clearly(tmp_path):
    """The lower half of a partial copy-up is checked by inode number when
    the file is opened: another file there is EIO and a log line, never
    its data mixed with the copied chunks."""
    lower, upper, mnt = tmp_path / "lower", tmp_path / "upper", tmp_path / "mnt"
    for directory in (lower, upper, mnt):
        directory.mkdir()
    (lower / "big").write_bytes(b"a" * (1 << 20))
    daemon = subprocess.Popen([PYUNION, "mount", "-f", "-o",
                               f"br={upper}=rw:{lower}=ro,copyup=partial", str(mnt)],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: mounted(mnt, "fuse.pyunion"))
        with open(mnt / "big", "r+b") as f:
            f.write(b"b")  # one chunk up; the rest still below
        os.rename(lower / "big", lower / "old")  # keeps its number taken
        (lower / "big").write_bytes(b"c" * (1 << 20))
        with pytest.raises(OSError) as raised:
            (mnt / "big").read_bytes()
        assert raised.value.errno == errno.EIO
    finally:
        subprocess.run([PYUNION, "umount", str(mnt)], check=False)
        _, stderr = daemon.communicate(timeout=30)
    assert "the lower data of big is gone" in stderr


class _Full(Watcher):
    """A watcher past the watch limit after ``room`` watches."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room

    def _add_watch(self, path: str) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return super()._add_watch(path)


def test_past_the_watch_limit_directories_are_checked_at_use(lower, caplog):
    """The limit is the machine's (a sysctl): the failure is injected.  A
    directory that cannot be watched gets reval's checks and the kernel's
    short timeouts; the limit is logged once."""
    (lower / "e").mkdir()
    watcher = _Full(room=1)
    policy = udba.Policy(udba.Mode.NOTIFY, watcher)
    layer = Layer(Branch(str(lower), BranchMode.RO), 0)
    try:
        policy.adopt(layer)
        with caplog.at_level(logging.WARNING, "unionfs.watch"):
            assert not layer.may_hold("d", "b")  # watched: the one room
            assert not layer.may_hold("e", "b") and not layer.may_hold(".", "g")
        assert [r.message.count("max_user_watches") for r in caplog.records] == [1]
        assert len(watcher) == 1
        assert policy.timeout("d") == udba.LONG
        assert policy.timeout("e") == policy.timeout(".") == udba.SHORT
        for directory in (lower / "e", lower):
            (directory / "b").write_text("b")
        (lower / "g").write_text("g")
        assert layer.may_hold("e", "b") and layer.may_hold(".", "g")
        assert not layer.may_hold("d", "b")  # watched: its kept names stand
    finally:
        policy.retire(layer)
        watcher.close()
        layer.close()


def test_without_an_inotify_instance_notify_checks_as_reval(lower, monkeypatch, caplog):
    """The user's inotify instances are all taken (a machine-wide limit:
    the failure is injected): the mount still comes up, as reval."""
    def no_instance(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(watch, "INotify", no_instance)
    layer = Layer(Branch(str(lower), BranchMode.RO), 0)
    try:
        with caplog.at_level(logging.WARNING, "unionfs.watch"):
            UnionOperations([layer], udba=udba.Mode.NOTIFY)
        assert layer.check_dirs and layer.watch is None
        assert "checking as udba=reval does" in caplog.text
    finally:
        layer.close()


def test_layers_added_at_run_time_are_watched_as_looked_into_and_removed_ones_let_go(lower):
    """``layers_changed`` (after a restack): nothing is watched up front; a
    branch's directories are watched as the daemon looks into them, and a
    removed branch takes its watches with it, but not another branch's
    watch of the same directory (inotify gives both one descriptor)."""
    first = Layer(Branch(str(lower), BranchMode.RO), 0)
    added = Layer(Branch(str(lower / "d"), BranchMode.RO), 1)  # first's "d"
    ops = UnionOperations([first], udba=udba.Mode.NOTIFY)
    watcher = ops._notifier.watcher
    try:
        ops.layers_changed([added], [])
        assert len(watcher) == 0
        assert added.may_hold(".", "a") and added.may_hold("missing", "a") is False
        assert first.may_hold("d", "a") and first.may_hold(".", "d")
        assert len(watcher) == 2  # "d" (both branches) and first's top
        ops.layers_changed([], [added])
        assert len(watcher) == 2 and watcher.layers() == [first]
        ops.layers_changed([], [first])
        assert len(watcher) == 0
    finally:
        watcher.close()
        first.close()
        added.close()


def test_notify_drops_the_kept_listing_of_a_merged_directory_whose_lower_part_came_or_went(
        unions, lower):
    """A merged directory keeps its number while a lower part of it comes
    and goes, so no name of its parent changes: its kept listing must still
    be dropped."""
    upper = lower.parent / "upper"
    (upper / "d" / "sub").mkdir(parents=True)
    (upper / "d" / "sub" / "a").write_text("a")
    (lower / "d").mkdir(exist_ok=True)
    stage = lower.parent / "stage"
    (stage / "sub").mkdir(parents=True)
    (stage / "sub" / "b").write_text("b")
    mnt = unions.mount([upper, lower], "udba=notify", rw=True, changed_below=True)
    assert sorted(os.listdir(mnt / "d" / "sub")) == ["a"]
    os.rename(stage / "sub", lower / "d" / "sub")
    assert wait_for(lambda: sorted(os.listdir(mnt / "d" / "sub")) == ["a", "b"], udba.SHORT / 2)
    os.rename(lower / "d" / "sub", stage / "sub")
    assert wait_for(lambda: sorted(os.listdir(mnt / "d" / "sub")) == ["a"], udba.SHORT / 2)
