"""Union paths near and past ``PATH_MAX``, used from a working directory
deep inside the mount: the daemon must never build a longer path than the
kernel takes (``DIR/.wh.NAME``, ``/proc/self/fd/N/PATH``)."""

import contextlib
import errno
import os

import pytest

from deep import fingerprint, make_chain, remove_tree
from helpers import build, pyunion
from unionfs.branches import Branch, Mode
from unionfs.layer import Layer
from unionfs.whiteout import FLATTEN_XATTR

DIRS = [c * 250 for c in "abcdefghijklmnop"]  # 16 levels: 4,016 bytes with their slashes
DEEP = sum(len(d) + 1 for d in DIRS)
LENGTHS = (4080, 4088, 4091, 4092, 4094, 4095)  # of the union paths of the files


def leaf(tag: str, length: int) -> str:
    """A name that makes a union path of ``length`` bytes in the deep directory."""
    return tag + "x" * (length - DEEP - len(tag))


@contextlib.contextmanager
def inside(path, names):
    """The working directory at ``path/names[0]/...``, entered a level at a time."""
    back = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(path)
        for name in names:
            os.chdir(name)
        yield
    finally:
        os.fchdir(back)
        os.close(back)


@contextlib.contextmanager
def checked_mount(unions, up, low):
    """``up`` over ``low``, mounted; afterwards ``low`` must be unchanged
    and both are removed (the fixture's own snapshot takes absolute paths,
    and pytest's clean-up recursion, neither of which such trees allow)."""
    before = fingerprint(low)
    mnt = unions.new_mountpoint()
    unions.track(mnt, [])
    try:
        pyunion("mount", "-o", f"br={up}=rw:{low}=ro", str(mnt))
        yield mnt
    finally:
        unions.unmount_all()
        assert fingerprint(low) == before, "the read-only branch changed"
        remove_tree(up)
        remove_tree(low)


@pytest.fixture
def deep_union(tmp_path, unions):
    """A union whose lower branch has files with union paths of every
    length in LENGTHS, in a directory 16 levels down."""
    low = build(tmp_path / "low", {})
    up = build(tmp_path / "up", {})
    make_chain(low, DIRS)
    with inside(low, DIRS):
        for length in LENGTHS:
            for tag in "furcx":
                with open(leaf(tag, length), "w") as f:
                    f.write(f"{tag} {length}")
    with checked_mount(unions, up, low) as mnt:
        yield mnt, up, low


def test_long_paths_read_create_write_unlink_rename_chmod(deep_union):
    mnt, up, low = deep_union
    with inside(mnt, DIRS):
        for n in LENGTHS:
            assert os.stat(leaf("f", n)).st_size == len(f"f {n}")
            with open(leaf("f", n)) as f:
                assert f.read() == f"f {n}"
            with open(leaf("n", n), "w") as f:  # a new file
                f.write("new")
            with open(leaf("f", n), "a") as f:  # a copy-up by write
                f.write("+")
            os.unlink(leaf("u", n))  # a whiteout of a lower file
            os.rename(leaf("r", n), leaf("s", n))
            os.chmod(leaf("c", n), 0o600)
        for n in LENGTHS:
            with open(leaf("f", n)) as f:
                assert f.read() == f"f {n}+"
            with open(leaf("n", n)) as f:
                assert f.read() == "new"
            with open(leaf("s", n)) as f:
                assert f.read() == f"r {n}"
            assert os.stat(leaf("c", n)).st_mode & 0o777 == 0o600
            for gone in ("u", "r"):
                with pytest.raises(FileNotFoundError):
                    os.stat(leaf(gone, n))
        names = set(os.listdir("."))
    assert names == {leaf(t, n) for t in "fnscx" for n in LENGTHS}
    with inside(up, DIRS):
        assert {leaf(t, n) for t in "fnsc" for n in LENGTHS} <= set(os.listdir("."))


def test_long_paths_setxattr(deep_union):
    mnt, up, low = deep_union
    with inside(mnt, DIRS):
        for n in LENGTHS:
            os.setxattr(leaf("x", n), "user.k", b"v")
            assert os.getxattr(leaf("x", n), "user.k") == b"v"
            os.removexattr(leaf("x", n), "user.k")
            with pytest.raises(OSError) as failed:
                os.getxattr(leaf("x", n), "user.k")
            assert failed.value.errno == errno.ENODATA


def test_a_layer_walks_any_depth_and_length(tmp_path):
    root = build(tmp_path / "root", {"top": "t", "a/b": "b"})
    levels = ["d" * 200] * 30 + ["e"] * 2000  # 6,000 bytes, then 2,000 levels
    make_chain(root / "a", levels)
    deepest = "a/" + "/".join(levels)
    layer = Layer(Branch(str(root), Mode.RO), 0)
    try:
        os.close(layer.open(f"{deepest}/f", os.O_CREAT | os.O_WRONLY, 0o600))
        assert layer.lstat(f"{deepest}/f").st_size == 0
        walked = list(layer.walk("."))
        assert len(walked) == 1 + 1 + len(levels)
        assert walked[0] == (".", ["a"], ["top"])
        assert walked[-1] == (deepest, [], ["f"])
        assert [path for path, _, files in walked if files] == [".", "a", deepest]
        pruned = layer.walk(".")
        next(pruned)[1].clear()
        assert list(pruned) == []
    finally:
        layer.close()
        remove_tree(root)


#: deeper than Python's recursion limit (1,000), 5,050 bytes long (PATH_MAX: 4,096);
#: the test's cost grows with the square of the depth
LEVELS = ["dddd"] * 1010


def test_a_tree_deeper_than_the_recursion_limit_and_longer_than_path_max(tmp_path, unions):
    low, up = build(tmp_path / "low", {}), build(tmp_path / "up", {})
    make_chain(low, LEVELS)
    with inside(low, LEVELS):
        for tag in "furcx":
            with open(tag, "w") as f:
                f.write(tag)
    with checked_mount(unions, up, low) as mnt:
        with inside(mnt, LEVELS):
            with open("f") as f:
                assert f.read() == "f"
            with open("n", "w") as f:
                f.write("new")
            with open("f", "a") as f:
                f.write("+")
            os.unlink("u")
            os.rename("r", "s")
            os.chmod("c", 0o600)
            os.setxattr("x", "user.k", b"v")
            os.rename(mnt / LEVELS[0], mnt / "moved")  # all of it, from the working directory
            assert sorted(os.listdir(".")) == ["c", "f", "n", "s", "x"]
            with open("f") as f:
                assert f.read() == "f+"
            with open("after", "w") as f:
                f.write("a")
        os.setxattr(mnt, FLATTEN_XATTR, b"")  # walks the whole writable branch
        pyunion("umount", str(mnt))
        pyunion("mount", "-o", f"br={up}=rw:{low}=ro", str(mnt))
        with inside(mnt, ["moved", *LEVELS[1:]]):
            assert sorted(os.listdir(".")) == ["after", "c", "f", "n", "s", "x"]
            assert os.stat("c").st_mode & 0o777 == 0o600
            assert os.getxattr("x", "user.k") == b"v"
            with open("s") as f:
                assert f.read() == "r"
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / LEVELS[0])
