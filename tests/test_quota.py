"""``-o quota=SIZE``: the daemon counts the blocks of the writable branch and
refuses with ENOSPC what would take it past the quota, through real mounts.

The count is checked against a walk of the branch made here (``st_blocks``
of everything in it, hard-linked files once), as ``statfs`` of the mount
shows it: the quota is the size, what is left of it is free.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path

import pytest

from helpers import build, pyunion, wait_for
from test_concurrent import Picker, Slots, _apply, _generate, _run_concurrent, stack  # noqa: F401

KiB, MiB = 1 << 10, 1 << 20
META = ".wh..wh.pyunion"


def walked(*roots: Path) -> int:
    """Bytes the trees hold: ``st_blocks`` of every entry, linked files once."""
    seen, total = set(), 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            total += os.lstat(dirpath).st_blocks
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    filenames.append(name)
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_blocks
    return total * 512


def used(mnt: Path) -> int:
    """What the mount says is used of its size."""
    vfs = os.statvfs(mnt)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


def fill(path: Path) -> int:
    """Append to ``path`` until ENOSPC, 64 KiB at a time, then a block at a
    time; the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    written = 0
    try:
        for step in (64 * KiB, 4 * KiB):
            while True:
                try:
                    written += os.write(fd, random.randbytes(step))
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        return written
    finally:
        os.close(fd)


@pytest.fixture
def branches(tmp_path):
    """(upper, lower): the lower one holds a 3 MiB file and a small one."""
    up = build(tmp_path / "up", {})
    low = build(tmp_path / "low", {"small": "small", "dir/inner": "inner"})
    (low / "big").write_bytes(random.randbytes(3 * MiB))
    return up, low


def test_writes_stop_at_the_quota_and_deleting_makes_room(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=1m", rw=True)
    written = fill(mnt / "a")
    assert MiB - 64 * KiB < written < MiB
    assert os.stat(mnt / "a").st_size == written  # nothing half written
    assert used(mnt) == walked(up) <= MiB
    assert os.statvfs(mnt).f_bavail == 0
    with pytest.raises(OSError) as full:
        os.mkdir(mnt / "d")
    assert full.value.errno == errno.ENOSPC
    os.unlink(mnt / "a")
    assert used(mnt) == walked(up) < 64 * KiB
    assert fill(mnt / "b") == written  # the room is back


def test_a_copy_up_that_does_not_fit_is_refused_and_leaves_nothing(branches, unions):
    up, low = branches
    os.rename(low / "big", low / "dir/big")
    mnt = unions.mount([up, low], "quota=1m", "copyup=full", rw=True)
    before = used(mnt)
    with pytest.raises(OSError) as refused:
        open(mnt / "dir/big", "ab")
    assert refused.value.errno == errno.ENOSPC
    assert sorted(os.listdir(up)) == [META]  # not even its directory was copied up
    assert os.listdir(up / META / "work") == []
    assert used(mnt) == before == walked(up)
    assert (mnt / "dir/big").read_bytes() == (low / "dir/big").read_bytes()
    with open(mnt / "small", "a") as f:  # a copy-up that fits
        f.write("er")
    assert (up / "small").read_text() == "smaller"
    assert used(mnt) == walked(up)


def test_writes_into_a_partial_copy_bring_up_only_what_fits(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=512k", rw=True)
    lower = (low / "big").read_bytes()
    offsets = range(0, 3 * MiB, 128 * KiB)  # each write brings up one 64 KiB chunk
    done = 0
    fd = os.open(mnt / "big", os.O_WRONLY)
    try:
        for offset in offsets:
            try:
                os.pwrite(fd, bytes([lower[offset] ^ 0xFF]), offset)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            done += 1
    finally:
        os.close(fd)
    assert 0 < done < len(offsets)
    assert used(mnt) == walked(up) <= 512 * KiB
    data = (mnt / "big").read_bytes()
    changed = [o for o in offsets if data[o] != lower[o]]
    assert changed == list(offsets[:done])  # a refused write changed nothing
    assert data[1:128 * KiB] == lower[1:128 * KiB]


def test_statfs_shows_the_quota_as_the_size(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=10m", rw=True)
    (mnt / "f").write_bytes(random.randbytes(300 * KiB))
    vfs = os.statvfs(mnt)
    assert vfs.f_blocks * vfs.f_frsize == 10 * MiB
    assert vfs.f_bfree == vfs.f_bavail
    assert (vfs.f_blocks - vfs.f_bavail) * vfs.f_frsize == walked(up) >= 300 * KiB
    df = subprocess.run(["df", "-B1", "--output=size,used,avail", str(mnt)], capture_output=True,
                        text=True, check=True).stdout.split("\n")[1].split()
    assert [int(n) for n in df] == [10 * MiB, walked(up), 10 * MiB - walked(up)]


def test_the_count_survives_a_remount(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=2m", rw=True)
    (mnt / "f").write_bytes(random.randbytes(700 * KiB))
    with open(mnt / "big", "r+b") as f:
        f.write(b"x")
    os.mkdir(mnt / "d")
    counted = used(mnt)
    unions.unmount(mnt)
    again = unions.mount([up, low], "quota=2m", rw=True)
    assert used(again) == counted == walked(up) >= 700 * KiB
    assert fill(again / "g") <= 2 * MiB - counted  # the old files still count


def test_a_file_is_freed_with_its_last_name_and_descriptor(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=4m", rw=True)
    empty = used(mnt)
    (mnt / "a").write_bytes(random.randbytes(MiB))
    os.link(mnt / "a", mnt / "b")
    full = used(mnt)
    assert full - empty >= MiB
    os.unlink(mnt / "a")
    assert used(mnt) == full  # b still has the data
    fd = os.open(mnt / "b", os.O_RDWR)
    try:
        os.unlink(mnt / "b")
        assert used(mnt) == full  # open: not freed yet
        os.pwrite(fd, random.randbytes(MiB), MiB)
        assert used(mnt) >= full + MiB  # and it still grows
    finally:
        os.close(fd)
    assert wait_for(lambda: used(mnt) == walked(up))  # freed once the kernel lets go
    assert used(mnt) < empty + 64 * KiB


def test_directories_count_as_they_grow(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=4m", rw=True)
    os.mkdir(mnt / "d")
    names = [f"{i:03}" + "n" * 200 for i in range(200)]
    for name in names:
        (mnt / "d" / name).touch()
    assert os.lstat(up / "d").st_blocks > 8  # more than one block of names
    assert used(mnt) == walked(up)
    for name in names:
        os.unlink(mnt / "d" / name)
    assert used(mnt) == walked(up)


def test_hard_links_of_a_lower_file_count_in_the_index_until_their_last_name_goes(
        tmp_path, unions):
    """Removing one name of a lower file with two copies it into the index
    (the other name keeps its data there): a removal, so never refused,
    even past the quota."""
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {})
    (low / "h1").write_bytes(random.randbytes(MiB))
    os.link(low / "h1", low / "h2")
    mnt = unions.mount([up, low], "quota=512k", rw=True)
    before = used(mnt)
    os.unlink(mnt / "h1")
    assert walked(up) >= before + MiB
    assert used(mnt) == 512 * KiB  # all of it (statfs shows no more)
    assert (mnt / "h2").read_bytes() == (low / "h2").read_bytes()
    os.unlink(mnt / "h2")
    assert used(mnt) == walked(up) < before + 64 * KiB  # (the index's own directories stay)


def test_reads_lookups_and_removals_work_at_a_full_quota(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=256k", rw=True)
    fill(mnt / "filler")
    assert (mnt / "big").read_bytes() == (low / "big").read_bytes()
    assert sorted(os.listdir(mnt)) == ["big", "dir", "filler", "small"]
    for make in (lambda: (mnt / "new").touch(), lambda: os.symlink("x", mnt / "l"),
                 lambda: os.chmod(mnt / "small", 0o600),
                 lambda: os.setxattr(mnt / "filler", "user.x", b"v" * 4000)):
        with pytest.raises(OSError) as refused:
            make()
        assert refused.value.errno == errno.ENOSPC
    os.unlink(mnt / "big")  # a whiteout
    os.unlink(mnt / "dir/inner")  # the directory is copied up for its whiteout
    os.rmdir(mnt / "dir")
    os.unlink(mnt / "filler")
    assert sorted(os.listdir(mnt)) == ["small"]
    assert wait_for(lambda: used(mnt) == walked(up))
    (mnt / "new").touch()


def test_a_workdir_of_its_own_counts_too(branches, unions, tmp_path):
    up, low = branches
    work = tmp_path / "work"
    work.mkdir()
    mnt = unions.mount_overlay_style([low], up, work, "quota=1m")
    with open(mnt / "big", "r+b") as f:  # a partial copy: its chunk map is in workdir/chunks
        f.write(b"x")
    assert os.listdir(work / "chunks")
    assert used(mnt) == walked(up, work / "work", work / "chunks")
    os.unlink(mnt / "big")
    assert os.listdir(work / "chunks") == []
    assert used(mnt) == walked(up, work / "work", work / "chunks")


def test_a_flatten_that_does_not_fit_fails_and_changes_nothing(branches, unions):
    up, low = branches
    mnt = unions.mount([up, low], "quota=2m", rw=True)
    with open(mnt / "big", "r+b") as f:
        f.write(b"x")
    before = used(mnt)
    done = pyunion("flatten", str(mnt), check=False)
    assert done.returncode == 1 and "No space left on device" in done.stderr
    assert used(mnt) == walked(up) <= 2 * MiB
    assert (mnt / "big").read_bytes()[1:] == (low / "big").read_bytes()[1:]
    os.unlink(mnt / "big")
    assert used(mnt) < before


def test_a_quota_needs_a_size_and_a_writable_branch(branches, tmp_path):
    up, low = branches
    (tmp_path / "mnt").mkdir()
    for options, message in ((f"br={up}=rw:{low}=ro,quota=lots", "quota= must be a size"),
                             (f"br={up}=rw:{low}=ro,quota=0", "quota= must be a size"),
                             (f"br={up}=rw:{low}=ro,quota=9000000t", "too big"),
                             (f"br={low}=ro,quota=1m", "needs a writable branch")):
        done = pyunion("mount", "-o", options, str(tmp_path / "mnt"), check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr
        assert os.listdir(up) == []


# -- no drift: the count after many changes is what a walk finds ----------------------


@pytest.mark.parametrize("copyup", ["partial", "full"])
def test_the_count_matches_a_walk_after_random_changes(copyup, tmp_path, unions, stack):
    """test_concurrent's operations (every kind of change, descriptors kept
    across renames and unlinks) on one mount, then the count against a walk,
    live and after a remount."""
    mnt = unions.mount(stack, f"copyup={copyup}", "quota=1g", rw=True)
    rng = random.Random(7)
    pick = Picker(rng)
    slots = Slots()
    for i in range(400):
        if i % 10 == 0:
            pick.refresh(str(mnt))
        _apply(str(mnt), _generate(rng, pick), slots)
    slots.close_all()
    assert wait_for(lambda: used(mnt) == walked(stack[0])), (used(mnt), walked(stack[0]))
    unions.unmount(mnt)
    again = unions.mount(stack, f"copyup={copyup}", "quota=1g", rw=True)
    assert used(again) == walked(stack[0])


def test_the_count_matches_a_walk_after_concurrent_changes(tmp_path, unions, stack):
    mnt = unions.mount(stack, "quota=1g", rw=True)
    problems, _ = _run_concurrent(3, 300, mnt, tmp_path / "logs")
    assert not problems, problems[:10]
    # Files written at once by several workers are fragmented: ext4 may give
    # one an extent block at writeback, which the count sees only at the
    # next mount (README, Quota).  Anything else is drift.
    assert wait_for(lambda: 0 <= walked(stack[0]) - used(mnt) <= 4 * 4096), \
        (used(mnt), walked(stack[0]))
