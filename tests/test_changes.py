"""The write path through a real mount: new names, whiteouts, rename, links,
attributes.  Every change must land in the writable branch only (the
fixture checks the read-only ones after each test)."""

import ctypes
import errno
import os
import stat
import subprocess

import pytest

from helpers import DIR, Symlink, build

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags):
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def stack(tmp_path, unions):
    """A writable union over one lower branch; returns (mnt, upper, lower)."""
    up = build(tmp_path / "up", {})
    low = build(tmp_path / "low", {
        "file": "lower file", "dir/inner": "inner", "dir/sub/deep": "deep",
        "empty": DIR, "link": Symlink("file"),
    })
    return unions.mount([up, low], rw=True), up, low


def errno_of(call, *args):
    with pytest.raises(OSError) as caught:
        call(*args)
    return caught.value.errno


def visible(up):
    """Names in the writable branch, but our own bookkeeping."""
    return sorted(n for n in os.listdir(up) if n != ".wh..wh.pyunion")


# -- new names ----------------------------------------------------------------

def test_new_entries_land_in_the_writable_branch(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"file": "x"})
    mnt = unions.mount([up, low], "dev", rw=True)  # FUSE mounts are nodev unless asked
    (mnt / "new").write_text("n")
    os.mkdir(mnt / "newdir")
    os.symlink("new", mnt / "newlink")
    os.mkfifo(mnt / "fifo")
    os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert (up / "new").read_text() == "n"
    assert (up / "newdir").is_dir()
    assert os.readlink(up / "newlink") == "new"
    assert stat.S_ISFIFO(os.lstat(up / "fifo").st_mode)
    assert os.lstat(mnt / "null").st_rdev == os.makedev(1, 3)
    with open(mnt / "null", "wb") as f:  # a device node works as one
        f.write(b"gone")


def test_parents_found_only_below_are_copied_up_with_their_metadata(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"dir/sub/deep": "d"})
    os.chmod(low / "dir/sub", 0o750)
    os.chown(low / "dir/sub", 123, 456)
    os.utime(low / "dir", ns=(10**18, 10**18))
    os.setxattr(low / "dir/sub", "user.tag", b"sub")
    mnt = unions.mount([up, low], rw=True)
    (mnt / "dir/sub/new").write_text("x")
    st = os.stat(up / "dir/sub")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 123, 456)
    assert os.stat(up / "dir").st_mtime_ns == 10**18  # untouched parent keeps its times
    assert os.getxattr(up / "dir/sub", "user.tag") == b"sub"
    assert sorted(os.listdir(mnt / "dir/sub")) == ["deep", "new"]
    assert os.stat(mnt / "dir/sub").st_ino == os.stat(low / "dir/sub").st_ino


def test_callers_owner_and_umask_are_honoured(world_readable_dir, unions):
    up = build(world_readable_dir / "up", {})
    low = build(world_readable_dir / "low", {"f": "x"})
    os.chmod(up, 0o777)  # the top branch's root is the union's root
    (world_readable_dir / "mnt").mkdir()
    mnt = unions.mount([up, low], "allow_other", rw=True, mnt=world_readable_dir / "mnt")
    run_as = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"]
    subprocess.run([*run_as, f"umask 027; echo x > {mnt}/mine; mkdir {mnt}/mydir"],
                   check=True)
    for name, mode in (("mine", 0o640), ("mydir", 0o750)):
        st = os.stat(mnt / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, mode)
        assert os.stat(up / name).st_uid == 1000


def test_setgid_directory_passes_its_group_on(stack):
    mnt, _, _ = stack
    os.mkdir(mnt / "shared")
    os.chown(mnt / "shared", 0, 777)
    os.chmod(mnt / "shared", 0o2775)
    (mnt / "shared/f").write_text("x")
    os.mkdir(mnt / "shared/d")
    assert os.stat(mnt / "shared/f").st_gid == 777
    assert os.stat(mnt / "shared/d").st_gid == 777
    assert os.stat(mnt / "shared/d").st_mode & stat.S_ISGID


def test_existing_names_are_refused(stack):
    mnt, _, _ = stack
    assert errno_of(os.mkdir, mnt / "file") == errno.EEXIST
    assert errno_of(os.mkdir, mnt / "dir") == errno.EEXIST
    assert errno_of(os.symlink, "x", mnt / "file") == errno.EEXIST
    fd_flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    assert errno_of(os.open, mnt / "file", fd_flags) == errno.EEXIST


def test_reserved_names_cannot_be_made_or_renamed_to(stack):
    mnt, _, _ = stack
    for make in (lambda p: open(p, "w"), os.mkdir, lambda p: os.symlink("x", p),
                 lambda p: os.link(mnt / "file", p), lambda p: os.rename(mnt / "file", p)):
        assert errno_of(make, mnt / ".wh.sneaky") == errno.EPERM
    assert errno_of(os.mkdir, mnt / ".wh..wh..opq") == errno.EPERM


# -- whiteouts ----------------------------------------------------------------

def test_unlink_of_a_lower_name_leaves_a_whiteout(stack):
    mnt, up, _ = stack
    os.unlink(mnt / "file")
    assert not (mnt / "file").exists()
    assert "file" not in os.listdir(mnt)
    assert (up / ".wh.file").is_file()
    (mnt / "file").write_text("again")
    assert not (up / ".wh.file").exists()
    assert (mnt / "file").read_text() == "again"


def test_unlink_of_an_upper_only_name_leaves_nothing(stack):
    mnt, up, _ = stack
    (mnt / "fresh").write_text("x")
    os.unlink(mnt / "fresh")
    assert visible(up) == []


def test_unlink_of_a_copied_up_name_leaves_a_whiteout_only(stack):
    mnt, up, _ = stack
    with open(mnt / "file", "a") as f:
        f.write("+")
    os.unlink(mnt / "file")
    assert visible(up) == [".wh.file"]
    assert not (mnt / "file").exists()


def test_rmdir_then_mkdir_makes_an_opaque_directory(stack):
    mnt, up, _ = stack
    os.unlink(mnt / "dir/inner")
    os.unlink(mnt / "dir/sub/deep")
    os.rmdir(mnt / "dir/sub")
    os.rmdir(mnt / "dir")
    assert not (mnt / "dir").exists()
    assert visible(up) == [".wh.dir"]
    os.mkdir(mnt / "dir")
    assert os.listdir(mnt / "dir") == []
    assert (up / "dir/.wh..wh..opq").exists()
    assert not (up / ".wh.dir").exists()


def test_rmdir_of_a_directory_with_visible_entries_fails(stack):
    mnt, _, _ = stack
    assert errno_of(os.rmdir, mnt / "dir") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, mnt / "dir/sub") == errno.ENOTEMPTY
    os.rmdir(mnt / "empty")
    assert not (mnt / "empty").exists()


def test_unlink_and_rmdir_of_missing_names(stack):
    mnt, _, _ = stack
    assert errno_of(os.unlink, mnt / "nothing") == errno.ENOENT
    assert errno_of(os.rmdir, mnt / "nothing") == errno.ENOENT
    assert errno_of(os.rmdir, mnt / "file") == errno.ENOTDIR
    assert errno_of(os.unlink, mnt / "dir") in (errno.EISDIR, errno.EPERM)


# -- rename -------------------------------------------------------------------

def test_rename_files_within_and_across_directories(stack):
    mnt, up, _ = stack
    os.rename(mnt / "file", mnt / "moved")
    assert (mnt / "moved").read_text() == "lower file"
    assert not (mnt / "file").exists()
    os.rename(mnt / "moved", mnt / "dir/sub/moved")
    assert (mnt / "dir/sub/moved").read_text() == "lower file"
    os.rename(mnt / "dir/inner", mnt / "dir/sub/deep")  # over an existing lower file
    assert (mnt / "dir/sub/deep").read_text() == "inner"
    assert sorted(os.listdir(mnt / "dir")) == ["sub"]
    assert sorted(os.listdir(mnt / "dir/sub")) == ["deep", "moved"]


def test_rename_keeps_the_inode_number(stack):
    mnt, _, _ = stack
    before = os.stat(mnt / "file").st_ino
    os.rename(mnt / "file", mnt / "dir/f2")
    assert os.stat(mnt / "dir/f2").st_ino == before


def test_mv_of_a_lower_directory_moves_the_whole_tree_without_copying(tmp_path, unions):
    tree = {f"pkg/{d}/{f}": f"{d}{f}" for d in range(10) for f in range(100)}
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", tree)
    mnt = unions.mount([up, low], rw=True)
    subprocess.run(["mv", str(mnt / "pkg"), str(mnt / "renamed")], check=True)
    assert not (mnt / "pkg").exists()
    assert sorted(os.listdir(mnt / "renamed")) == [str(d) for d in range(10)]
    for d in range(10):
        for f in range(100):
            assert (mnt / f"renamed/{d}/{f}").read_text() == f"{d}{f}"
    copied = sum(len(files) for _, _, files in os.walk(up))
    assert copied <= 2  # the whiteout of the old name (and nothing of the tree)
    # Changes inside the moved tree, and moving it again, keep working.
    (mnt / "renamed/3/7").write_text("changed")
    os.rename(mnt / "renamed/4", mnt / "four")
    os.rename(mnt / "renamed", mnt / "again")
    assert (mnt / "again/3/7").read_text() == "changed"
    assert (mnt / "four/99").read_text() == "499"
    assert sorted(os.listdir(mnt / "again")) == [str(d) for d in range(10) if d != 4]


def test_moved_directory_survives_a_remount(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"a/b/c": "c", "a/x": "x"})
    first = unions.mount([up, low], rw=True)
    os.rename(first / "a", first / "z")
    os.rename(first / "z/b", first / "bee")
    for again in range(2):
        if again:
            unions.unmount(first)
            first = unions.mount([up, low], rw=True)
        assert sorted(os.listdir(first)) == ["bee", "z"]
        assert os.listdir(first / "z") == ["x"]
        assert (first / "bee/c").read_text() == "c"


def test_rename_a_directory_over_an_empty_one(stack):
    mnt, _, _ = stack
    os.mkdir(mnt / "newempty")
    os.rename(mnt / "dir", mnt / "newempty")
    assert sorted(os.listdir(mnt / "newempty")) == ["inner", "sub"]
    os.unlink(mnt / "newempty/inner")
    os.rename(mnt / "newempty/sub", mnt / "empty")  # over an empty lower dir
    assert os.listdir(mnt / "empty") == ["deep"]


def test_rename_over_a_directory_emptied_by_whiteouts(stack):
    mnt, _, _ = stack
    os.unlink(mnt / "dir/sub/deep")  # dir/sub is now empty, but holds a whiteout
    os.mkdir(mnt / "src")
    (mnt / "src/f").write_text("f")
    os.rename(mnt / "src", mnt / "dir/sub")
    assert os.listdir(mnt / "dir/sub") == ["f"]
    assert not (mnt / "src").exists()


def test_rename_refusals_are_posix(stack):
    mnt, _, _ = stack
    assert errno_of(os.rename, mnt / "dir", mnt / "file") == errno.ENOTDIR
    assert errno_of(os.rename, mnt / "file", mnt / "dir") == errno.EISDIR
    os.mkdir(mnt / "d2")
    assert errno_of(os.rename, mnt / "d2", mnt / "dir") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt / "nothing", mnt / "x") == errno.ENOENT
    assert errno_of(os.rename, mnt / "dir", mnt / "dir/sub/inside") == errno.EINVAL


def test_rename_noreplace_and_exchange(stack):
    mnt, _, _ = stack
    (mnt / "other").write_text("other")
    assert errno_of(renameat2, mnt / "file", mnt / "other", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(mnt / "file", mnt / "fresh", RENAME_NOREPLACE)
    assert (mnt / "fresh").read_text() == "lower file"
    renameat2(mnt / "fresh", mnt / "other", RENAME_EXCHANGE)
    assert (mnt / "fresh").read_text() == "other"
    assert (mnt / "other").read_text() == "lower file"
    renameat2(mnt / "dir", mnt / "empty", RENAME_EXCHANGE)
    assert os.listdir(mnt / "dir") == []
    assert sorted(os.listdir(mnt / "empty")) == ["inner", "sub"]
    assert errno_of(renameat2, mnt / "fresh", mnt / "none", RENAME_EXCHANGE) == errno.ENOENT


def test_rename_between_hard_links_of_one_file_does_nothing(stack):
    mnt, _, _ = stack
    os.link(mnt / "file", mnt / "twin")
    os.rename(mnt / "file", mnt / "twin")
    assert (mnt / "file").exists() and (mnt / "twin").exists()


# -- links --------------------------------------------------------------------

def test_hard_link_to_a_lower_file(stack):
    mnt, up, _ = stack
    os.link(mnt / "file", mnt / "dir/hard")
    a, b = os.stat(mnt / "file"), os.stat(mnt / "dir/hard")
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    with open(mnt / "dir/hard", "a") as f:
        f.write(" changed")
    assert (mnt / "file").read_text() == "lower file changed"
    assert os.stat(up / "file").st_ino == os.stat(up / "dir/hard").st_ino
    os.unlink(mnt / "file")
    assert os.stat(mnt / "dir/hard").st_nlink == 1


def test_symlinks_are_made_and_read_as_links(stack):
    mnt, _, _ = stack
    os.symlink("/etc/passwd", mnt / "abs")
    assert os.readlink(mnt / "abs") == "/etc/passwd"
    assert os.readlink(mnt / "link") == "file"
    os.rename(mnt / "link", mnt / "dir/link2")
    assert os.readlink(mnt / "dir/link2") == "file"


# -- attributes ---------------------------------------------------------------

def test_inode_numbers_survive_copy_up_and_remount(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"d/f": "x", "g": "y"})
    first = unions.mount([up, low], rw=True)
    before = {p: os.stat(first / p).st_ino for p in ("d", "d/f", "g")}
    (first / "d/f").write_text("changed")  # copies d and d/f up
    os.chmod(first / "g", 0o600)
    assert {p: os.stat(first / p).st_ino for p in before} == before
    unions.unmount(first)
    second = unions.mount([up, low], rw=True)
    assert {p: os.stat(second / p).st_ino for p in before} == before
    (second / "new").write_text("n")
    assert os.stat(second / "new").st_ino not in before.values()


def test_chmod_chown_utime_copy_up_and_keep_data(stack):
    mnt, up, low = stack
    ino = os.stat(mnt / "file").st_ino
    os.chmod(mnt / "file", 0o600)
    os.chown(mnt / "file", 42, 43)
    os.utime(mnt / "file", ns=(5 * 10**17, 6 * 10**17))
    st = os.stat(mnt / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 42, 43)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5 * 10**17, 6 * 10**17)
    assert st.st_ino == ino
    assert (mnt / "file").read_text() == "lower file"
    assert os.stat(up / "file").st_uid == 42


def test_truncate_shorter_longer_and_on_open(stack):
    mnt, _, _ = stack
    os.truncate(mnt / "file", 5)
    assert (mnt / "file").read_bytes() == b"lower"
    os.truncate(mnt / "file", 8)
    assert (mnt / "file").read_bytes() == b"lower\0\0\0"
    with open(mnt / "dir/inner", "w") as f:
        f.write("new")
    assert (mnt / "dir/inner").read_text() == "new"


def test_xattrs_set_and_removed_through_the_union(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"file": "x"})
    os.setxattr(low / "file", "user.old", b"1")
    mnt = unions.mount([up, low], rw=True)
    os.setxattr(mnt / "file", "user.new", b"2")
    assert sorted(os.listxattr(mnt / "file")) == ["user.new", "user.old"]
    os.removexattr(mnt / "file", "user.old")
    assert os.listxattr(mnt / "file") == ["user.new"]
    assert os.listxattr(low / "file") == ["user.old"]
    assert errno_of(os.setxattr, mnt / "file", "user.new", b"3", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.getxattr, mnt / "file", "trusted.pyunion") == errno.ENODATA
    assert errno_of(os.setxattr, mnt / "file", "trusted.pyunion", b"{}") == errno.EPERM


def test_private_xattr_never_shows(stack):
    mnt, up, _ = stack
    os.chmod(mnt / "file", 0o640)  # copy-up marks the upper file
    assert "trusted.pyunion" in os.listxattr(up / "file")
    assert "trusted.pyunion" not in os.listxattr(mnt / "file")


def test_fsync_and_statfs(stack):
    mnt, _, _ = stack
    fd = os.open(mnt / "file", os.O_RDWR)
    try:
        os.write(fd, b"X")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mnt / "dir", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert os.statvfs(mnt).f_bfree > 0
