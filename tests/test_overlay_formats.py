"""overlay's on-disk format, read and written (``whiteout.py``).

An upper branch written by kernel overlayfs (with and without
``redirect_dir``) and one written by fuse-overlayfs, over the same lower
branches, mount under pyunion with the view those tools showed; and an
upper written by pyunion with ``whiteout=overlay`` (partial copies and
renamed directories included, then ``pyunion flatten``) mounts under
kernel overlayfs with the view pyunion showed, holding no ``.wh.`` name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import PYUNION, Symlink, build, mounted, pyunion, wait_for
from stacks import mount_overlay, unmount_overlay
from unionfs.whiteout import is_private_xattr

MiB = 1 << 20
OVERLAY_XATTRS = ("trusted.overlay.origin", "user.overlay.opaque", "user.fuseoverlayfs.origin")


def _lowers(tmp_path: Path) -> list[Path]:
    """Two read-only branches, top first."""
    base = build(tmp_path / "l0", {
        "keep.txt": "keep", "gone.txt": "gone", "chm.txt": "mode",
        "tree/a.txt": "a", "tree/sub/b.txt": "b",
        "f2d": "a file", "d2f/x.txt": "x",
        "moved/m1.txt": "m1", "moved/deep/m2.txt": "m2",
        "nest/inner/i.txt": "i", "merged/l.txt": "l", "far/sub/s.txt": "s",
        "link": Symlink("keep.txt"), "big.bin": b"\1" * (2 * MiB), "h1": "linked",
    })
    os.link(base / "h1", base / "h2")
    top = build(tmp_path / "l1", {"moved/m3.txt": "m3", "merged/l1.txt": "l1",
                                  "keep.txt": "keep, from l1", "nest/inner/j.txt": "j"})
    return [top, base]


def _change(mnt: Path) -> None:
    """The same changes, made through any of the unions."""
    (mnt / "gone.txt").unlink()
    shutil.rmtree(mnt / "tree")
    (mnt / "tree").mkdir()  # over a whiteout: opaque
    (mnt / "tree/new.txt").write_text("new")
    (mnt / "f2d").unlink()
    (mnt / "f2d").mkdir()
    (mnt / "f2d/in.txt").write_text("in")
    shutil.rmtree(mnt / "d2f")
    (mnt / "d2f").write_text("now a file")
    # mv, which copies where the union answers EXDEV (no redirect_dir)
    subprocess.run(["mv", str(mnt / "moved"), str(mnt / "renamed")], check=True)
    subprocess.run(["mv", str(mnt / "nest/inner"), str(mnt / "nest/inner2")], check=True)
    subprocess.run(["mv", str(mnt / "far/sub"), str(mnt / "near")], check=True)
    (mnt / "renamed/m1.txt").unlink()
    (mnt / "renamed/after.txt").write_text("after")
    os.chmod(mnt / "chm.txt", 0o600)
    os.utime(mnt / "chm.txt", (1_000_000_000, 1_000_000_000))
    (mnt / "merged/u.txt").write_text("u")
    (mnt / "merged/l.txt").unlink()
    os.chmod(mnt / "h1", 0o640)
    fd = os.open(mnt / "big.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"changed", MiB + 5)
    finally:
        os.close(fd)


def _view(mnt: Path) -> dict[str, tuple]:
    """Names, types, modes, sizes, contents and link targets under ``mnt``."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = (st.st_size, hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                what = (os.readlink(path),)
            else:
                what = ()
            seen[os.path.relpath(path, mnt)] = (stat.S_IFMT(st.st_mode),
                                                stat.S_IMODE(st.st_mode), *what)
    return seen


def _expected_shape(view: dict[str, tuple]) -> None:
    """What the changes must have made, in whichever union."""
    for gone in ("gone.txt", "tree/a.txt", "tree/sub", "d2f/x.txt", "moved", "renamed/m1.txt",
                 "nest/inner", "merged/l.txt", "far/sub"):
        assert gone not in view
    for there in ("tree/new.txt", "f2d/in.txt", "renamed/deep/m2.txt", "renamed/m3.txt",
                  "renamed/after.txt", "nest/inner2/i.txt", "nest/inner2/j.txt",
                  "merged/l1.txt", "merged/u.txt", "link", "near/s.txt", "h2"):
        assert there in view
    assert stat.S_ISREG(view["d2f"][0]) and stat.S_ISDIR(view["f2d"][0])
    assert view["chm.txt"][1] == 0o600


def _private_names_shown(mnt: Path) -> list[str]:
    shown = []
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            shown += [f"{path}: {x}" for x in os.listxattr(path, follow_symlinks=False)
                      if is_private_xattr(x)]
    return shown


def _xattrs_in(root: Path, prefix: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            found += [x for x in os.listxattr(path, follow_symlinks=False)
                      if x.startswith(prefix)]
    return found


def _stack(tmp_path: Path) -> tuple[list[Path], Path, Path, Path]:
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "tool-mnt"
    for path in (upper, work, mnt):
        path.mkdir()
    return _lowers(tmp_path), upper, work, mnt


def _overlay_options(lowers: list[Path], upper: Path, work: Path) -> str:
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


@contextlib.contextmanager
def _kernel_overlayfs(mnt: Path, options: str):
    mount_overlay(mnt, options)
    try:
        yield mnt
    finally:
        unmount_overlay(mnt)


@contextlib.contextmanager
def _fuse_overlayfs(mnt: Path, options: str):
    daemon = subprocess.Popen(["fuse-overlayfs", "-f", "-o", options, str(mnt)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: mounted(mnt, "fuse.fuse-overlayfs")), "fuse-overlayfs mounts"
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        unmount_overlay(mnt)
        daemon.wait(timeout=30)


def _changed_by(tool, mnt: Path, options: str) -> dict[str, tuple]:
    """Make the changes through ``tool``, then what it shows of its upper
    when mounted afresh (what it kept, not what it held in memory)."""
    with tool(mnt, options):
        _change(mnt)
    with tool(mnt, options):
        return _view(mnt)


# -- uppers written by the overlay tools, read by pyunion ---------------------------


@pytest.mark.parametrize("redirect_dir", ["off", "on"])
def test_kernel_overlayfs_upper_reads_the_same(tmp_path, unions, redirect_dir):
    lowers, upper, work, mnt = _stack(tmp_path)
    before = _changed_by(_kernel_overlayfs, mnt,
                         f"{_overlay_options(lowers, upper, work)},redirect_dir={redirect_dir}")
    _expected_shape(before)
    redirects = {name: os.getxattr(upper / name, "trusted.overlay.redirect")
                 for name in ("renamed", "nest/inner2", "near") if redirect_dir == "on"}
    assert redirects == ({} if redirect_dir == "off" else
                         {"renamed": b"moved", "nest/inner2": b"inner", "near": b"/far/sub"})
    assert os.getxattr(upper / "tree", "trusted.overlay.opaque") == b"y"

    shown = unions.mount_overlay_style(lowers, upper, work)
    assert _view(shown) == before
    assert _private_names_shown(shown) == []


def test_fuse_overlayfs_upper_reads_the_same(tmp_path, unions):
    lowers, upper, work, mnt = _stack(tmp_path)
    before = _changed_by(_fuse_overlayfs, mnt, _overlay_options(lowers, upper, work))
    _expected_shape(before)
    whiteout = os.lstat(upper / "gone.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0, "written as root"

    shown = unions.mount_overlay_style(lowers, upper, work)
    assert _view(shown) == before
    assert _private_names_shown(shown) == []


# -- an upper written by pyunion, read by kernel overlayfs --------------------------


def test_pyunion_overlay_upper_reads_the_same_under_kernel_overlayfs(tmp_path, unions):
    lowers, upper, work, mnt = _stack(tmp_path)
    union = unions.mount_overlay_style(lowers, upper, work, "whiteout=overlay",
                                       "copyup=partial")
    _change(union)
    before = _view(union)
    assert os.listdir(work / "chunks"), "a partial copy was made"
    pyunion("flatten", str(union))
    assert _view(union) == before
    unions.unmount(union)
    _expected_shape(before)
    assert not os.listdir(work / "chunks")
    names = [name for _, dirs, files in os.walk(upper) for name in dirs + files]
    assert [n for n in names if n.startswith(".wh.")] == []
    assert os.getxattr(upper / "tree", "trusted.overlay.opaque") == b"y"

    with _kernel_overlayfs(mnt, _overlay_options(lowers, upper, work)):
        assert _view(mnt) == before


def test_pyunion_overlay_whiteouts_are_devices(tmp_path, unions):
    lowers, upper, work, _ = _stack(tmp_path)
    union = unions.mount_overlay_style(lowers, upper, work, "whiteout=overlay", "quota=64m")
    os.chmod(union / "h1", 0o600)  # into the hard-link index, in workdir=
    assert os.lstat(union / "h2").st_mode & 0o777 == 0o600
    (union / "gone.txt").unlink()
    os.rename(union / "keep.txt", union / "kept.txt")  # RENAME_WHITEOUT
    shutil.rmtree(union / "tree")
    unions.unmount(union)
    for name in ("gone.txt", "keep.txt", "tree"):
        st = os.lstat(upper / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert sorted(os.listdir(upper)) == ["gone.txt", "h1", "keep.txt", "kept.txt", "tree"]
    assert len(os.listdir(work / ".wh..wh.pyunion/index")) == 1


# -- private xattrs ----------------------------------------------------------------


def test_overlay_xattrs_never_show_through(tmp_path, unions):
    lower = build(tmp_path / "lower", {"f": "data", "d/g": "g"})
    for path in (lower / "f", lower / "d"):
        for name in OVERLAY_XATTRS:
            os.setxattr(path, name, b"n")
        os.setxattr(path, "user.mine", b"1")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    union = unions.mount_overlay_style([lower], upper, work)
    for path in (union / "f", union / "d"):
        assert os.listxattr(path) == ["user.mine"]
        for name in OVERLAY_XATTRS:
            with pytest.raises(OSError) as caught:
                os.getxattr(path, name)
            assert caught.value.errno == errno.ENODATA
        with pytest.raises(PermissionError):
            os.setxattr(path, "user.overlay.opaque", b"y")
    os.chmod(union / "f", 0o600)  # a copy-up
    (union / "d/new").write_text("new")  # d copied up
    assert _xattrs_in(upper, "trusted.overlay.") + _xattrs_in(upper, "user.overlay.") \
        + _xattrs_in(upper, "user.fuseoverlayfs.") == []
    assert os.getxattr(upper / "f", "user.mine") == b"1"
    assert sorted(os.listdir(union / "d")) == ["g", "new"], "d's copy is not opaque"


def test_opaque_and_redirect_xattrs_in_a_read_only_branch(tmp_path, unions):
    """A lower layer in overlay's format, non-root flavours included."""
    bottom = build(tmp_path / "bottom", {"a/old.txt": "old", "b/old.txt": "old",
                                          "c/old.txt": "old", "src/s.txt": "s", "p/q/t.txt": "t"})
    middle = build(tmp_path / "middle", {"a/new.txt": "n", "b/new.txt": "n", "c/new.txt": "n",
                                          "dst/d.txt": "d", "p/q2/u.txt": "u"})
    os.setxattr(middle / "a", "trusted.overlay.opaque", b"y")
    os.setxattr(middle / "b", "user.fuseoverlayfs.opaque", b"y")
    os.setxattr(middle / "c", "trusted.overlay.opaque", b"x")  # xwhiteouts: not opaque
    os.setxattr(middle / "dst", "trusted.overlay.redirect", b"/src")
    os.setxattr(middle / "p/q2", "trusted.overlay.redirect", b"q")
    os.setxattr(middle / "c", "user.overlay.redirect", b"/src")  # anyone's: not followed
    os.mknod(middle / "src", stat.S_IFCHR, 0)
    union = unions.mount([middle, bottom])
    assert sorted(os.listdir(union)) == ["a", "b", "c", "dst", "p"]
    assert sorted(os.listdir(union / "a")) == ["new.txt"]
    assert sorted(os.listdir(union / "b")) == ["new.txt"]
    assert sorted(os.listdir(union / "c")) == ["new.txt", "old.txt"]
    assert sorted(os.listdir(union / "dst")) == ["d.txt", "s.txt"]
    assert sorted(os.listdir(union / "p")) == ["q", "q2"]
    assert sorted(os.listdir(union / "p/q2")) == ["t.txt", "u.txt"]
    assert _private_names_shown(union) == []


# -- refusals -----------------------------------------------------------------------


def _refused(*args: str) -> str:
    result = pyunion(*args, check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_bad_whiteout_options_are_one_line_errors(tmp_path):
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for path in (lower, upper, work, mnt):
        path.mkdir()
    assert "whiteout= must be one of aufs, overlay" in _refused(
        "mount", "-o", f"br={upper}=rw:{lower}=ro,whiteout=fancy", str(mnt))
    assert "whiteout=overlay needs workdir=" in _refused(
        "mount", "-o", f"br={upper}=rw:{lower}=ro,whiteout=overlay", str(mnt))
    assert "whiteout=overlay needs workdir=" in _refused(
        "mount", "-o", f"lowerdir={lower},upperdir={upper},whiteout=overlay", str(mnt))
    assert not mounted(mnt)


def test_overlay_format_without_privilege_is_refused(tmp_path):
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for path in (lower, upper, work, mnt):
        path.mkdir()
    result = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", PYUNION, "mount", "-o",
         f"lowerdir={lower},upperdir={upper},workdir={work},whiteout=overlay", str(mnt)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "whiteout=overlay" in result.stderr and "CAP_SYS_ADMIN" in result.stderr
    assert not mounted(mnt)
    assert os.listdir(work) == [] and os.listdir(upper) == []


def test_bookkeeping_of_the_other_format_is_refused(tmp_path, unions):
    """A hard-link index kept in workdir= (overlay format) is not where
    the aufs format looks: mounting that way is refused, not shown wrong."""
    lowers, upper, work, mnt = _stack(tmp_path)
    union = unions.mount_overlay_style(lowers, upper, work, "whiteout=overlay")
    os.chmod(union / "h1", 0o600)
    unions.unmount(union)
    assert "mount it with whiteout=overlay" in _refused(
        "mount", "-o", f"{_overlay_options(lowers, upper, work)},whiteout=aufs", str(mnt))
    assert not mounted(mnt)


@pytest.mark.parametrize("udba", ["reval", "notify"])
def test_opaque_xattr_set_below_the_mount_shows(tmp_path, unions, udba):
    """overlay's marks are kept with a directory's names: a change to them
    shows as a change of names does (``udba``)."""
    bottom = build(tmp_path / "bottom", {"d/old.txt": "old"})
    middle = build(tmp_path / "middle", {"d/new.txt": "new"})
    union = unions.mount([middle, bottom], f"udba={udba}", changed_below=True)
    assert sorted(os.listdir(union / "d")) == ["new.txt", "old.txt"]
    os.setxattr(middle / "d", "trusted.overlay.opaque", b"y")
    assert wait_for(lambda: sorted(os.listdir(union / "d")) == ["new.txt"])


def test_a_redirect_a_user_set_does_not_open_a_private_directory_below(world_readable_dir,
                                                                      unions, tmp_path):
    """Kernel overlayfs follows ``user.overlay.*`` only on a ``userxattr``
    mount (one made in the user's own namespace); a user who owns a
    directory of a branch must not reach, through it, a directory below
    that the permissions keep from them."""
    low = build(tmp_path / "low", {"secret/s.txt": "secret\n"})
    os.chmod(low / "secret", 0o700)
    mine = tmp_path / "users" / "mine"
    mine.mkdir(parents=True)
    os.chown(mine, 1000, 1000)
    os.setxattr(mine, "user.overlay.redirect", b"/secret")  # as uid 1000 may
    (world_readable_dir / "mnt").mkdir()
    mnt = unions.mount([tmp_path / "users", low], mnt=world_readable_dir / "mnt")

    def look_as_user():
        os.setresgid(1000, 1000, 1000)
        os.setresuid(1000, 1000, 1000)
        with contextlib.suppress(OSError):
            os.listdir(mnt / "secret")
            os._exit(2)
        os._exit(3 if os.listdir(mnt / "mine") else 0)
    pid = os.fork()
    if pid == 0:
        look_as_user()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
