"""FUSE passthrough (``unionfs/passthrough.py``) and kept directory
listings, seen from the outside: which reads and writes still reach the
daemon (its ``--debug`` log names every request), what ``mmap`` does in
every page-cache mode, and the rules that keep the union's semantics."""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers import PYUNION, build, pyunion, wait_for
from unionfs import daemon, passthrough

needs_passthrough = pytest.mark.skipif(passthrough.unavailable() is not None,
                                       reason=f"no passthrough here: {passthrough.unavailable()}")
#: what the tests of passthrough itself mount with, whatever a run's
#: default (PYUNION_PASSTHROUGH=off runs the rest without it)
PASSTHROUGH_ON = "passthrough=on"


class Logged:
    """A union mounted with ``--debug``: the daemon logs each request."""

    def __init__(self, unions, tmp_path: Path, branches: str, *options: str):
        self.log = tmp_path / f"daemon{len(list(tmp_path.glob('daemon*.log')))}.log"
        self.mnt = unions.new_mountpoint()
        unions.track(self.mnt, [])
        with open(self.log, "w") as err:
            subprocess.run([PYUNION, "--debug", "mount", "-o", ",".join([f"br={branches}", *options]),
                            str(self.mnt)], stderr=err, check=True, timeout=60)

    def requests(self, kind: str) -> int:
        """How many ``kind`` requests (read, write, readdir...) the daemon got."""
        return len(re.findall(rf"fs: {kind}\(", self.log.read_text()))


def _read_and_write(path: Path) -> None:
    with open(path, "r+b", buffering=0) as f:
        f.write(b"new data")
        f.truncate()
        f.seek(0)
        assert f.read() == b"new data"


@needs_passthrough
def test_a_file_of_the_writable_branch_is_read_and_written_by_the_kernel(tmp_path, unions):
    up, low = build(tmp_path / "up", {"f": "old data"}), build(tmp_path / "low", {})
    union = Logged(unions, tmp_path, f"{up}=rw:{low}=ro", PASSTHROUGH_ON)
    _read_and_write(union.mnt / "f")
    assert (up / "f").read_bytes() == b"new data"
    assert union.requests("read") == union.requests("write") == 0


def test_with_passthrough_off_the_daemon_reads_and_writes(tmp_path, unions):
    up, low = build(tmp_path / "up", {"f": "old data"}), build(tmp_path / "low", {})
    union = Logged(unions, tmp_path, f"{up}=rw:{low}=ro", "passthrough=off")
    _read_and_write(union.mnt / "f")
    assert union.requests("write") == 1 and union.requests("read") >= 1


@needs_passthrough
def test_a_lower_file_of_a_writable_union_goes_through_the_daemon(tmp_path, unions):
    """It may be copied up while open, and its readers must see the copy."""
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"f": "lower"})
    union = Logged(unions, tmp_path, f"{up}=rw:{low}=ro", PASSTHROUGH_ON)
    assert (union.mnt / "f").read_bytes() == b"lower"
    assert union.requests("read") >= 1


@needs_passthrough
def test_a_union_without_a_writable_branch_passes_its_files_through(tmp_path, unions):
    low = build(tmp_path / "low", {"f": "lower"})
    union = Logged(unions, tmp_path, f"{low}=ro", PASSTHROUGH_ON)
    assert (union.mnt / "f").read_bytes() == b"lower"
    assert union.requests("read") == 0


@needs_passthrough
def test_a_copy_is_passed_through_once_the_cached_handles_of_it_are_closed(tmp_path, unions):
    """The kernel refuses a passed-through open beside cached ones: opens
    made while a handle of the lower file is open go through the daemon,
    and see one file all along.  (A partial copy is not passed through: its
    bytes live in two files.)"""
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"f": "lower data"})
    union = Logged(unions, tmp_path, f"{up}=rw:{low}=ro", PASSTHROUGH_ON, "copyup=full")
    f = union.mnt / "f"
    with open(f, "rb", buffering=0) as reader:
        assert reader.read() == b"lower data"
        with open(f, "r+b", buffering=0) as writer:
            writer.write(b"UPPER")
        reader.seek(0)
        assert reader.read() == b"UPPER data"
    # The kernel sends a release after close returns.
    assert wait_for(lambda: union.requests("release") == 2)
    reads, writes = union.requests("read"), union.requests("write")
    assert writes == 1
    _read_and_write(f)
    assert (union.requests("read"), union.requests("write")) == (reads, writes)
    assert (up / "f").read_bytes() == b"new data"
    assert (low / "f").read_bytes() == b"lower data"


@needs_passthrough
def test_a_branch_written_by_the_kernel_cannot_be_forced_read_only(tmp_path, unions):
    up, low = build(tmp_path / "up", {"f": "x"}), build(tmp_path / "low", {})
    mnt = unions.mount([up, low], PASSTHROUGH_ON, rw=True)
    with open(mnt / "f", "r+b", buffering=0) as writer:
        done = pyunion("branch", "mod", "--force", str(mnt), f"{up}=ro", check=False)
        assert done.returncode != 0
        assert "passthrough" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        writer.write(b"y")
    assert pyunion("branch", "mod", str(mnt), f"{up}=ro").returncode == 0
    assert (up / "f").read_bytes() == b"y"


def test_passthrough_on_fails_the_mount_in_one_line_where_it_cannot_be_had(tmp_path):
    """In a user namespace the kernel refuses passthrough (CAP_SYS_ADMIN in
    the first user namespace): ``on`` says so and mounts nothing."""
    low, mnt = build(tmp_path / "low", {}), build(tmp_path / "mnt", {})
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", PYUNION, "mount",
                           "-o", f"br={low}=ro,passthrough=on", str(mnt)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot mount on {mnt}: passthrough=on, but the daemon runs in a user "
        f"namespace (the kernel wants CAP_SYS_ADMIN in the first)"]


@pytest.mark.parametrize("pagecache", ["keep", "drop", "direct"])
@pytest.mark.parametrize("passing", ["auto", "off"])
@pytest.mark.parametrize("where", ["lower", "upper", "read-only union"])
def test_maps_shared_and_private_read_and_write(tmp_path, unions, pagecache, passing, where):
    """Every kind of map works on every kind of file in every mode: a
    shared write reaches the file (and only the writable branch), a
    private one stays in the map."""
    size = 3 * mmap.PAGESIZE
    data = bytes(range(256)) * (size // 256)
    up = build(tmp_path / "up", {"f": data} if where == "upper" else {})
    low = build(tmp_path / "low", {} if where == "upper" else {"f": data})
    options = (f"pagecache={pagecache}", f"passthrough={passing}")
    if where == "read-only union":
        mnt = unions.mount([low], *options)
    else:
        mnt = unions.mount([up, low], *options, rw=True)
    with open(mnt / "f", "rb") as f:
        with mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ) as shared:
            assert shared[:] == data
        with mmap.mmap(f.fileno(), size, mmap.MAP_PRIVATE,
                       mmap.PROT_READ | mmap.PROT_WRITE) as private:
            private[:5] = b"PRIVA"
            assert private[:5] == b"PRIVA"
    assert (mnt / "f").read_bytes() == data
    if where == "read-only union":
        return
    with open(mnt / "f", "r+b") as f:
        with mmap.mmap(f.fileno(), size, mmap.MAP_SHARED) as shared:
            shared[mmap.PAGESIZE:mmap.PAGESIZE + 6] = b"SHARED"
            shared.flush()
    expected = data[:mmap.PAGESIZE] + b"SHARED" + data[mmap.PAGESIZE + 6:]
    assert (mnt / "f").read_bytes() == expected
    assert (up / "f").read_bytes() == expected
    if where == "lower":
        assert (low / "f").read_bytes() == data


def test_a_listing_is_kept_until_the_directory_changes(tmp_path, unions):
    up = build(tmp_path / "up", {"d/a": "a"})
    low = build(tmp_path / "low", {"d/b": "b"})
    union = Logged(unions, tmp_path, f"{up}=rw:{low}=ro")
    d = union.mnt / "d"
    assert sorted(os.listdir(d)) == ["a", "b"]
    listed = union.requests("readdir")
    assert sorted(os.listdir(d)) == ["a", "b"]
    assert union.requests("readdir") == listed
    (d / "c").write_text("c")
    os.unlink(d / "b")
    assert sorted(os.listdir(d)) == ["a", "c"]
    assert union.requests("readdir") > listed


def test_a_live_branch_change_drops_the_kept_listings(tmp_path, unions):
    up = build(tmp_path / "up", {"d/a": "a"})
    low = build(tmp_path / "low", {"d/b": "b"})
    new = build(tmp_path / "new", {"d/n": "n", "m": "m"})
    mnt = unions.mount([up, low], rw=True)
    assert sorted(os.listdir(mnt / "d")) == ["a", "b"]
    assert sorted(os.listdir(mnt)) == ["d"]
    pyunion("branch", "add", str(mnt), str(new))
    assert sorted(os.listdir(mnt / "d")) == ["a", "b", "n"]
    assert sorted(os.listdir(mnt)) == ["d", "m"]
    pyunion("branch", "del", str(mnt), str(new))
    assert sorted(os.listdir(mnt / "d")) == ["a", "b"]
    assert sorted(os.listdir(mnt)) == ["d"]


@needs_passthrough
def test_a_file_passed_through_stays_readable_when_its_branch_is_made_read_only(tmp_path, unions):
    """The kernel takes only passed-through handles beside one: a new open
    after ``mod ro`` shares the backing file instead of failing with EIO."""
    up, low = build(tmp_path / "up", {"f": "upper"}), build(tmp_path / "low", {})
    mnt = unions.mount([up, low], PASSTHROUGH_ON, rw=True)
    with open(mnt / "f", "rb") as reader:
        pyunion("branch", "mod", str(mnt), f"{up}=ro")
        assert (mnt / "f").read_bytes() == b"upper"
        assert reader.read() == b"upper"


@needs_passthrough
def test_an_open_after_the_writable_branch_went_reads_the_lower_file(tmp_path, unions):
    """``del --force`` of the writable branch while its copy of a file is
    read: the name now leads to the lower file on the same inode, whose
    backing file is the copy; a new open reads the lower file through the
    daemon, the old handle keeps the copy."""
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"f": "lower"})
    mnt = unions.mount([up, low], PASSTHROUGH_ON, "copyup=full", rw=True)
    (mnt / "f").write_text("upper")
    with open(mnt / "f", "rb") as reader:
        pyunion("branch", "del", "--force", str(mnt), str(up))
        assert (mnt / "f").read_bytes() == b"lower"
        assert reader.read() == b"upper"


@needs_passthrough
def test_the_writable_branch_cannot_be_forced_out_under_a_file_the_kernel_writes(tmp_path, unions):
    up, low = build(tmp_path / "up", {"f": "x"}), build(tmp_path / "low", {})
    mnt = unions.mount([up, low], PASSTHROUGH_ON, rw=True)
    with open(mnt / "f", "r+b", buffering=0):
        done = pyunion("branch", "del", "--force", str(mnt), str(up), check=False)
        assert done.returncode != 0 and "passthrough" in done.stderr
    assert pyunion("branch", "ls", str(mnt)).stdout.count("rw") == 1


@needs_passthrough
def test_a_shared_map_of_a_direct_lower_file_does_not_block_the_copy(tmp_path, unions):
    """A shared map of a direct-I/O handle makes the kernel's inode cached:
    the copy made meanwhile is not passed through beside it."""
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"f": b"L" * 8192})
    mnt = unions.mount([up, low], PASSTHROUGH_ON, "copyup=full", "pagecache=direct", rw=True)
    with open(mnt / "f", "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED,
                                               mmap.PROT_READ) as mapped:
        assert mapped[:4] == b"LLLL"
        with open(mnt / "f", "ab") as appender:
            appender.write(b"A")
        assert (mnt / "f").read_bytes() == b"L" * 8192 + b"A"
    assert (up / "f").read_bytes() == b"L" * 8192 + b"A"


def test_passthrough_on_fails_in_one_line_when_the_kernel_does_not_offer_it(tmp_path):
    """The kernel's answer comes at INIT, after the mount: the mount is
    undone and the reason is the command's one line."""
    low, mnt = build(tmp_path / "low", {}), build(tmp_path / "mnt", {})
    script = ("import sys, pyfuse3; pyfuse3.passthrough_enabled = lambda: False\n"
              "from unionfs import cli; sys.argv[0] = 'pyunion'; cli.main()")
    done = subprocess.run([sys.executable, "-c", script, "mount", "-o",
                           f"br={low}=ro,passthrough=on", str(mnt)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.strip().splitlines()) == (1, [
        f"Error: cannot mount on {mnt}: passthrough=on, but the kernel does not offer "
        f"FUSE passthrough"])
    assert not os.path.ismount(mnt)
    assert not [name for name in os.listdir(daemon.PID_DIR) if str(tmp_path) in unquote(name)]
