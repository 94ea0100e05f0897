"""Names of 252-255 bytes, whose ``.wh.NAME`` would pass ``NAME_MAX``: their
whiteout is overlayfs's, a character device 0/0 of the name itself.

Checked through real mounts, and against the kernel's overlayfs, which
whites out every name that way."""

import errno
import os
import stat

import pytest

from helpers import build, pyunion
from stacks import mount_overlay, unmount_overlay

LENGTHS = (252, 253, 254, 255)


def long(tag: str, length: int) -> str:
    return tag + "x" * (length - len(tag))


def view(mnt) -> list[tuple]:
    """What a reader sees under ``mnt``: (path, type, data) sorted."""
    seen = []
    for dir_path, dir_names, file_names in os.walk(mnt):
        for name in dir_names + file_names:
            path = os.path.join(dir_path, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else b""
            seen.append((os.path.relpath(path, mnt), stat.S_IFMT(st.st_mode), data))
    return sorted(seen)


def is_whiteout_device(path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def remount(unions, mnt, branches):
    pyunion("umount", str(mnt))
    return unions.mount(branches, rw=True, mnt=mnt)


def test_long_names_of_lower_branches_show(tmp_path, unions):
    spec = {f"{long('f', n)}": f"f{n}" for n in LENGTHS}
    spec.update({f"{long('d', n)}/{long('i', n)}": f"i{n}" for n in LENGTHS})
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", spec)
    mnt = unions.mount([up, low], rw=True)  # whose whiteouts a lookup asks for
    assert sorted(os.listdir(mnt)) == sorted(long(t, n) for t in "fd" for n in LENGTHS)
    for n in LENGTHS:
        assert (mnt / long("f", n)).read_text() == f"f{n}"
        assert (mnt / long("d", n) / long("i", n)).read_text() == f"i{n}"
        assert not (mnt / long("g", n)).exists()


def test_a_device_whiteout_in_any_branch_hides_the_name_below(tmp_path, unions):
    top = build(tmp_path / "top", {"d/keep": "k"})
    for name in ("short", long("f", 255), "d/gone"):
        os.mknod(top / name, stat.S_IFCHR, 0)
    low = build(tmp_path / "low", {"short": "s", long("f", 255): "f", "d/gone": "g", "other": "o"})
    mnt = unions.mount([top, low])
    assert sorted(os.listdir(mnt)) == ["d", "other"]
    assert os.listdir(mnt / "d") == ["keep"]
    for name in ("short", long("f", 255), "d/gone"):
        assert not (mnt / name).exists()


def test_long_names_made_renamed_and_removed_in_the_upper(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"d": "x"})
    mnt = unions.mount([up, low], rw=True)
    for n in LENGTHS:
        (mnt / long("n", n)).write_text(f"n{n}")
        os.mkdir(mnt / long("m", n))
        (mnt / long("m", n) / long("i", n)).write_text("inner")
        os.rename(mnt / long("n", n), mnt / long("r", n))
        os.link(mnt / long("r", n), mnt / long("l", n))
        os.symlink(long("r", n), mnt / long("s", n))
    mnt = remount(unions, mnt, [up, low])
    for n in LENGTHS:
        assert (mnt / long("r", n)).read_text() == f"n{n}"
        assert (mnt / long("s", n)).read_text() == f"n{n}"
        assert os.stat(mnt / long("l", n)).st_nlink == 2
        os.unlink(mnt / long("r", n))
        os.unlink(mnt / long("l", n))
        os.unlink(mnt / long("s", n))
        os.unlink(mnt / long("m", n) / long("i", n))
        os.rmdir(mnt / long("m", n))
    assert os.listdir(mnt) == ["d"]
    assert sorted(os.listdir(up)) == [".wh..wh.pyunion"]  # nothing below to hide


def test_unlinking_a_long_lower_name_leaves_a_device_whiteout(tmp_path, unions):
    up = build(tmp_path / "up", {})
    low = build(tmp_path / "low", {long("f", n): f"f{n}" for n in LENGTHS})
    mnt = unions.mount([up, low], rw=True)
    for n in LENGTHS:
        os.unlink(mnt / long("f", n))
        assert not (mnt / long("f", n)).exists()
        assert is_whiteout_device(up / long("f", n))
    assert os.listdir(mnt) == []
    mnt = remount(unions, mnt, [up, low])
    assert os.listdir(mnt) == []
    for n in LENGTHS:  # and made again over its whiteout
        (mnt / long("f", n)).write_text("again")
    mnt = remount(unions, mnt, [up, low])
    assert sorted(os.listdir(mnt)) == sorted(long("f", n) for n in LENGTHS)
    assert all((mnt / long("f", n)).read_text() == "again" for n in LENGTHS)


def _lower_tree(root):
    spec = {}
    for n in LENGTHS:
        spec.update({long("f", n): "kept", long("u", n): "unlinked", long("r", n): "renamed",
                     long("b", n): "copied up, then unlinked", long("w", n): "replaced",
                     f"{long('d', n)}/in": "rmdir'ed", f"{long('e', n)}/in": "moved",
                     f"{long('c', n)}/x": "copied-up dir, removed"})
    return build(root, spec)


def _scenario(mnt):
    """Every way a long name is removed, moved or made again, through ``mnt``."""
    for n in LENGTHS:
        at = lambda tag: mnt / long(tag, n)  # noqa: E731
        os.unlink(at("u"))
        os.rename(at("r"), at("s"))
        with open(at("b"), "a") as f:
            f.write("+")
        os.unlink(at("b"))
        os.unlink(at("d") / "in")
        os.rmdir(at("d"))
        os.rename(at("e"), at("g"))
        (at("c") / "new").write_text("n")
        for name in ("new", "x"):
            os.unlink(at("c") / name)
        os.rmdir(at("c"))
        at("v").write_text("over")
        os.rename(at("v"), at("w"))
        # made again over their whiteouts
        at("u").write_text("new u")
        os.mkdir(at("d"))
        os.link(at("f"), at("b"))
        os.mkdir(mnt / "t")
        (mnt / "t/in").write_text("t")
        os.rename(mnt / "t", at("c"))
        os.rename(at("s"), at("r"))


def test_long_names_against_overlayfs(tmp_path, unions):
    ovl_low, ovl_up, work = (_lower_tree(tmp_path / "ovl_low"), build(tmp_path / "ovl_up", {}),
                             build(tmp_path / "ovl_work", {}))
    ovl = tmp_path / "ovl"
    ovl.mkdir()
    mount_overlay(ovl, f"lowerdir={ovl_low},upperdir={ovl_up},workdir={work},redirect_dir=on")
    try:
        _scenario(ovl)
        expected = view(ovl)
    finally:
        unmount_overlay(ovl)
    low, up = _lower_tree(tmp_path / "low"), build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    _scenario(mnt)
    assert view(mnt) == expected
    mnt = remount(unions, mnt, [up, low])
    assert view(mnt) == expected
    for n in LENGTHS:  # whited out by devices, which names made again replaced
        assert is_whiteout_device(up / long("e", n))
        assert not is_whiteout_device(up / long("u", n))


def test_a_whiteout_device_cannot_be_made_through_the_mount(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {"f": "x"})
    mnt = unions.mount([up, low], rw=True)
    with pytest.raises(OSError) as refused:
        os.mknod(mnt / "new", stat.S_IFCHR | 0o600, 0)
    assert refused.value.errno == errno.EPERM  # as overlayfs
    assert os.listdir(up) == [".wh..wh.pyunion"]
    os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # other devices are fine


def test_statfs_reports_the_name_max_of_the_branch(tmp_path, unions):
    up, low = build(tmp_path / "up", {}), build(tmp_path / "low", {})
    mnt = unions.mount([up, low], rw=True)
    assert os.statvfs(mnt).f_namemax == os.statvfs(up).f_namemax == 255
