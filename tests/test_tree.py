"""The union's naming rules, seen through a real mount."""

import errno
import os
import random
import stat

import pytest

from helpers import DIR, Symlink, build
from unionfs import holders
from unionfs.branches import Branch, Mode
from unionfs.layer import Layer
from unionfs.tree import Entry, Tree


def listing(path):
    return sorted(os.listdir(path))


def test_top_branch_wins_and_names_merge(tmp_path, unions):
    up = build(tmp_path / "up", {"a": "top a", "only_up": "u"})
    low = build(tmp_path / "low", {"a": "low a", "only_low": "l"})
    mnt = unions.mount([up, low])
    assert listing(mnt) == ["a", "only_low", "only_up"]
    assert (mnt / "a").read_text() == "top a"
    assert (mnt / "only_low").read_text() == "l"


def test_directories_merge_at_every_depth(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"d/x": "1", "d/sub/p": "p1"})
    b2 = build(tmp_path / "b2", {"d/y": "2", "d/sub/q": "q2"})
    b3 = build(tmp_path / "b3", {"d/z": "3", "d/sub/p": "shadowed"})
    mnt = unions.mount([b1, b2, b3])
    assert listing(mnt / "d") == ["sub", "x", "y", "z"]
    assert listing(mnt / "d/sub") == ["p", "q"]
    assert (mnt / "d/sub/p").read_text() == "p1"


def test_a_file_hides_a_directory_below_and_ends_the_merge(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"name": "file on top", "d/keep": "k"})
    b2 = build(tmp_path / "b2", {"name/inside": "hidden", "d": "a file below a dir"})
    b3 = build(tmp_path / "b3", {"d/under_the_file": "hidden too"})
    mnt = unions.mount([b1, b2, b3])
    assert (mnt / "name").read_text() == "file on top"
    assert listing(mnt / "d") == ["keep"]


def test_whiteout_hides_the_name_in_every_lower_branch(tmp_path, unions):
    b1 = build(tmp_path / "b1", {".wh.gone": "", ".wh.gonedir": "", "d/.wh.f": ""})
    b2 = build(tmp_path / "b2", {"gone": "x", "gonedir/inner": "y", "d/f": "z", "d/g": "g"})
    b3 = build(tmp_path / "b3", {"gone": "deeper"})
    mnt = unions.mount([b1, b2, b3])
    assert listing(mnt) == ["d"]
    assert listing(mnt / "d") == ["g"]
    assert not (mnt / "gone").exists()
    assert not (mnt / "gonedir/inner").exists()


def test_whiteout_does_not_hide_its_own_branch(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"name": "same branch", ".wh.name": ""})
    b2 = build(tmp_path / "b2", {"name": "below"})
    mnt = unions.mount([b1, b2])
    assert listing(mnt) == ["name"]
    assert (mnt / "name").read_text() == "same branch"


def test_whiteout_in_the_middle_stops_a_directory_merge(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"d/a": "1"})
    b2 = build(tmp_path / "b2", {".wh.d": ""})
    b3 = build(tmp_path / "b3", {"d/b": "2"})
    mnt = unions.mount([b1, b2, b3])
    assert listing(mnt / "d") == ["a"]
    assert os.stat(mnt / "d").st_nlink == 2  # not merged


def test_opaque_directory_hides_only_what_is_below(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"d/.wh..wh..opq": "", "d/mine": "m"})
    b2 = build(tmp_path / "b2", {"d/theirs": "t", "other": "o"})
    mnt = unions.mount([b1, b2])
    assert listing(mnt / "d") == ["mine"]
    assert listing(mnt) == ["d", "other"]


def test_opaque_root(tmp_path, unions):
    b1 = build(tmp_path / "b1", {".wh..wh..opq": "", "mine": "m"})
    b2 = build(tmp_path / "b2", {"theirs": "t"})
    mnt = unions.mount([b1, b2])
    assert listing(mnt) == ["mine"]


def test_reserved_names_never_show_and_cannot_be_looked_up(tmp_path, unions):
    b1 = build(tmp_path / "b1", {".wh.x": "", ".wh..wh.pyunion/work": DIR, "d/.wh..wh..opq": ""})
    b2 = build(tmp_path / "b2", {"x": "hidden"})
    mnt = unions.mount([b1, b2])
    assert listing(mnt) == ["d"]
    assert listing(mnt / "d") == []
    for name in (".wh.x", ".wh..wh.pyunion", "d/.wh..wh..opq", ".wh.nothing"):
        with pytest.raises(OSError) as caught:
            os.lstat(mnt / name)
        assert caught.value.errno == errno.EPERM


def test_dot_and_dotdot_are_listed(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"d/f": "x"})
    mnt = unions.mount([b1])
    out = os.popen(f"ls -a1 {mnt / 'd'}").read().split()
    assert out == [".", "..", "f"]
    assert os.stat(mnt / "d/..").st_ino == os.stat(mnt).st_ino


def test_symlinks_are_links_and_are_never_followed_by_the_daemon(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"rel": Symlink("target"), "abs": Symlink("/etc/passwd"),
                                 "dangling": Symlink("nowhere"), "dirlink": Symlink("d")})
    b2 = build(tmp_path / "b2", {"target": "through the link", "d/inner": "i"})
    mnt = unions.mount([b1, b2])
    assert os.readlink(mnt / "rel") == "target"
    assert (mnt / "rel").read_text() == "through the link"
    assert os.readlink(mnt / "abs") == "/etc/passwd"
    assert os.path.islink(mnt / "dangling") and not (mnt / "dangling").exists()
    assert listing(mnt / "dirlink") == ["inner"]
    # It is a link in the mount, not the file it points to.
    assert (mnt / "abs").lstat().st_size == len("/etc/passwd")
    with pytest.raises(OSError) as caught:
        os.open(mnt / "abs", os.O_RDONLY | os.O_NOFOLLOW)
    assert caught.value.errno == errno.ELOOP


def test_merged_directory_reports_one_link_like_overlayfs(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"merged/a": "1", "single/s": DIR})
    b2 = build(tmp_path / "b2", {"merged/b": "2"})
    mnt = unions.mount([b1, b2])
    os.listdir(mnt)  # attributes arrive through readdirplus first
    assert os.stat(mnt / "merged").st_nlink == 1
    assert os.stat(mnt / "single").st_nlink == 3


def test_sixty_four_branches(tmp_path, unions):
    branches = [build(tmp_path / f"b{i:02}", {f"f{i}": str(i), "shared/x": f"from {i}",
                                              f"shared/only{i}": "o"})
                for i in range(64)]
    mnt = unions.mount(branches)
    assert len(os.listdir(mnt)) == 65
    assert len(os.listdir(mnt / "shared")) == 65
    assert (mnt / "shared/x").read_text() == "from 0"
    assert (mnt / "f63").read_text() == "63"


def test_single_branch(tmp_path, unions):
    b1 = build(tmp_path / "b1", {"a/b/c": "deep"})
    mnt = unions.mount([b1])
    assert (mnt / "a/b/c").read_text() == "deep"


def _random_deep_stack(root, seed: int, branches: int = 12) -> list:
    """``branches`` read-only branches of random names, aufs and overlay
    whiteouts, opaque directories and merged subdirectories."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(30)]
    paths = []
    for b in range(branches):
        branch = root / f"b{b:02}"
        for where in (branch, branch / "d"):
            where.mkdir(parents=True)
            for name in rng.sample(names, 8):
                kind = rng.choice(["file", "file", "dir", "aufs-whiteout", "overlay-whiteout"])
                if kind == "file":
                    (where / name).write_text(f"{b}")
                elif kind == "dir":
                    (where / name).mkdir()
                    (where / name / f"in{b}").write_text("")
                elif kind == "aufs-whiteout":
                    (where / f".wh.{name}").write_text("")
                elif not (where / name).exists():
                    os.mknod(where / name, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            if rng.random() < 0.2:
                (where / ".wh..wh.opq").write_text("")
        paths.append(branch)
    return paths


@pytest.mark.parametrize("seed", range(6))
def test_a_deep_directory_resolves_every_name_as_branch_by_branch(tmp_path, monkeypatch, seed):
    """A directory merged from many read-only branches finds a name's first
    holder in one index (``holders.py``): each name, present, hidden by
    either whiteout, under an opaque directory or merged, resolves as the
    branch-by-branch look finds it, with and without the writable part."""
    up = build(tmp_path / "up", {"n1": "up", "d/n2": "up"})
    stack = [Layer(Branch(str(up), Mode.RW), 0)] + [
        Layer(Branch(str(path), Mode.RO), i + 1)
        for i, path in enumerate(_random_deep_stack(tmp_path, seed))]

    def resolved(tree: Tree) -> dict:
        seen = {}
        for start in (tree.root(), tree.lookup(tree.root(), "d")):
            if start is None:
                continue
            start = start[0] if isinstance(start, tuple) else start
            for entry in (start, Entry(start.path, start.lower)):
                for name in [f"n{i}" for i in range(32)]:
                    found = tree.lookup(entry, name)
                    seen[(entry.path, len(entry.locations), name)] = None if found is None else (
                        [(loc.layer.index, loc.path) for loc in found[0].locations],
                        found[1].st_ino)
        return seen

    indexed = resolved(Tree(stack))
    monkeypatch.setattr(holders, "DEEP", 10**6)
    assert indexed == resolved(Tree(stack))
    for layer in stack:
        layer.close()
