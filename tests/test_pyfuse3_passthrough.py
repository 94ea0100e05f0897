"""The set-up's patched pyfuse3: FUSE passthrough, cached directory listings
and plain READDIR, on real mounts of the small file system in
passthrough_fs.py, whose events file shows which requests the kernel sent."""

from __future__ import annotations

import gzip
import json
import mmap
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import force_unmount, mounted, process_gone, wait_for
from passthrough_fs import MANY_NAMES

FS = Path(__file__).with_name("passthrough_fs.py")
NOBODY = 65534


def _kernel_config() -> str:
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return f.read()
        except FileNotFoundError:
            continue
    return "CONFIG_FUSE_PASSTHROUGH=y"  # no config to read: the tests will tell


pytestmark = pytest.mark.skipif("CONFIG_FUSE_PASSTHROUGH=y" not in _kernel_config(),
                                reason="the kernel is built without CONFIG_FUSE_PASSTHROUGH")


class Served:
    """One mount of passthrough_fs.py and the events its daemon wrote.

    With ``user``, the daemon runs as that user in a mount namespace of its
    own, where /dev/fuse is a node anyone may open, as udev makes it on a
    standard machine (test machines may keep it root's only).  Its mount is
    then made by the system's setuid fusermount3, and seen and unmounted
    through ``inside``."""

    def __init__(self, root: Path, user: int | None = None, no_opendir: bool = False):
        self.mnt, self.backing, self.events_file = root / "mnt", root / "backing", root / "events"
        self.mnt.mkdir()
        self.backing.write_bytes(b"lower bytes\n".ljust(4096, b"."))
        self.events_file.touch()
        command = [sys.executable, str(FS), str(self.mnt), str(self.backing), str(self.events_file),
                   *(["--no-opendir"] if no_opendir else [])]
        self.namespaced = user is not None
        if self.namespaced:
            for path in (self.mnt, self.backing, self.events_file):
                os.chown(path, user, user)
            node = root / "fuse"
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 229))
            os.chmod(node, 0o666)
            command = ["unshare", "-m", "--propagation", "private",
                       "sh", "-c", 'mount --bind "$0" /dev/fuse && exec "$@"', str(node),
                       *as_user(user), *command]
        self.process = subprocess.Popen(command, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        if not wait_for(lambda: self.of("init")):
            self.stop()
            pytest.fail("the file system did not start")

    def inside(self, *command: str) -> list[str]:
        """``command`` in the daemon's mount namespace."""
        return ["nsenter", "-t", str(self.process.pid), "-m", *command] if self.namespaced else list(command)

    def mounted(self) -> bool:
        if not self.namespaced:
            return mounted(self.mnt)
        try:
            with open(f"/proc/{self.process.pid}/mounts") as f:
                return any(line.split()[1] == str(self.mnt) for line in f)
        except FileNotFoundError:
            return False

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def of(self, kind: str, **fields) -> list[dict]:
        return [e for e in self.events()
                if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]

    def command(self, text: str) -> None:
        (self.mnt / "ctl").write_text(text)

    def stop(self) -> None:
        if self.mounted():
            subprocess.run(self.inside("umount", str(self.mnt)), capture_output=True, check=False)
        try:
            self.process.wait(timeout=10)
        finally:
            if not process_gone(self.process.pid):
                self.process.kill()
                self.process.wait()
            force_unmount(self.mnt)


def as_user(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@pytest.fixture
def served(tmp_path):
    made = Served(tmp_path)
    try:
        assert made.of("init") == [{"event": "init", "passthrough": True}]
        yield made
    finally:
        made.stop()


def test_reads_and_writes_go_to_the_backing_file_not_the_daemon(served):
    """The open asks for passthrough with keep_cache left at its default
    (True), which the kernel would refuse: pyfuse3 does not send it."""
    with open(served.mnt / "file", "r+b") as f:
        assert f.read(12) == b"lower bytes\n"
        f.seek(100)
        f.write(b"written through the mount")
    assert served.backing.read_bytes()[100:125] == b"written through the mount"
    assert (served.mnt / "file").read_bytes() == served.backing.read_bytes()
    [opened, _] = served.of("open")
    assert opened["backing_id"] > 0
    assert served.of("read") == served.of("write") == []


def test_shared_maps_read_and_write_the_backing_files_pages(served):
    with open(served.mnt / "file", "r+b") as f, mmap.mmap(f.fileno(), 4096) as shared:
        assert shared[:12] == b"lower bytes\n"
        shared[200:206] = b"mapped"
        shared.flush()
        assert served.backing.read_bytes()[200:206] == b"mapped"
        with open(served.backing, "r+b") as below:
            below.seek(300)
            below.write(b"from below")
        assert shared[300:310] == b"from below"  # one page cache, the backing file's
    assert served.of("read") == served.of("write") == []


def test_shared_maps_of_direct_io_files_go_through_the_daemon(served):
    """enable_direct_io_allow_mmap: without it a shared map of a direct_io
    file fails (ENODEV)."""
    with open(served.mnt / "direct", "r+b") as f, mmap.mmap(f.fileno(), 4096) as shared:
        assert shared[:12] == b"lower bytes\n"
        shared[200:206] = b"mapped"
        shared.flush()
    assert served.backing.read_bytes()[200:206] == b"mapped"
    assert served.of("read") and served.of("write")


def test_two_opens_share_one_backing_id_closed_after_the_last_release(served):
    with open(served.mnt / "file", "rb"), open(served.mnt / "file", "r+b"):
        first, second = served.of("open")
        assert first["backing_id"] == second["backing_id"] > 0
    assert wait_for(lambda: served.of("backing_close"))
    order = [e["event"] for e in served.events() if e["event"] in ("open", "release", "backing_close")]
    assert order == ["open", "open", "release", "release", "backing_close"]
    assert served.of("backing_close") == [{"event": "backing_close", "backing_id": first["backing_id"]}]
    # The file opens again with a new registration.
    assert (served.mnt / "file").read_bytes()[:12] == b"lower bytes\n"
    assert served.of("open")[-1]["backing_id"] > 0


def test_backing_open_of_what_is_not_a_regular_file_is_an_oserror(served):
    served.command("probe")
    assert {e["kind"]: e.get("errno") for e in served.of("probe")} == {
        "directory": "EISDIR", "pipe": "EINVAL", "unknown id": "ENOENT"}


def test_a_cached_listing_is_kept_until_invalidate_inode(served):
    def listings() -> int:
        return len(served.of("readdir", inode=1))

    assert sorted(os.listdir(served.mnt)) == ["ctl", "direct", "file", "many"]
    read_once = listings()
    assert read_once > 0
    assert sorted(os.listdir(served.mnt)) == ["ctl", "direct", "file", "many"]
    assert listings() == read_once
    assert len(served.of("opendir", inode=1)) == 2  # opendir is asked each time; readdir is not
    served.command("invalidate")
    assert sorted(os.listdir(served.mnt)) == ["ctl", "direct", "file", "many"]
    assert listings() > read_once


def test_readdirplus_auto_sends_plain_readdir_requests_marked_not_plus(served):
    """The kernel asks READDIRPLUS at the start of a listing and plain
    READDIR after it when no entry was looked up; an old-style opendir (a
    plain handle) serves both."""
    assert sorted(os.listdir(served.mnt / "many")) == sorted(MANY_NAMES)
    replies = served.of("readdir-replied", inode=4)
    assert replies[0]["plus"] is True
    assert any(not r["plus"] and r["entries"] > 0 for r in replies)
    assert sum(r["entries"] for r in replies) == len(MANY_NAMES)


def test_after_opendir_answers_enosys_the_kernel_opens_directories_itself(tmp_path):
    """Asked once, then never again: the kernel keeps the listings and
    releases nothing, and readdir and fsyncdir get the directory's inode
    as their handle (the kernel's own is 0)."""
    served = Served(tmp_path, no_opendir=True)
    try:
        listings = []
        for _ in range(2):
            assert sorted(os.listdir(served.mnt)) == ["ctl", "direct", "file", "many"]
            assert sorted(os.listdir(served.mnt / "many")) == sorted(MANY_NAMES)
            listings.append(len(served.of("readdir")))
        assert listings[0] == listings[1] > 0  # the second listings were kept
        fd = os.open(served.mnt / "many", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        assert len(served.of("opendir")) == 1
        assert {e["inode"] for e in served.of("readdir")} == {1, 4}
        assert served.of("fsyncdir") == [{"event": "fsyncdir", "fh": 4}]
        assert not served.of("releasedir")
    finally:
        served.stop()


def test_a_rootless_daemon_mounts_and_falls_back_when_backing_open_is_refused(world_readable_dir):
    """Without CAP_SYS_ADMIN the kernel grants passthrough at INIT but
    refuses backing files (EPERM); the mount is made by the system's
    fusermount3 (libfuse is built without its own), and reads go through
    the daemon."""
    served = Served(world_readable_dir, user=NOBODY)
    try:
        assert served.mounted()
        read = subprocess.run(served.inside(*as_user(NOBODY), "head", "-c", "12", str(served.mnt / "file")),
                              capture_output=True, check=True)
        assert read.stdout == b"lower bytes\n"
        assert served.of("init") == [{"event": "init", "passthrough": True}]
        assert served.of("backing_open-failed") == [{"event": "backing_open-failed", "errno": "EPERM"}]
        assert served.of("open")[0]["backing_id"] == 0
        assert served.of("read")
    finally:
        served.stop()
