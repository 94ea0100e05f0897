"""Hard links across copy-up: lower files with several names keep one inode."""

import os

from helpers import build, pyunion


def lower_with_links(tmp_path):
    low = build(tmp_path / "low", {"a": "original", "dir/other": "x"})
    os.link(low / "a", low / "b")
    os.link(low / "a", low / "dir/c")
    return build(tmp_path / "up", {}), low


def names(mnt):
    return [mnt / "a", mnt / "b", mnt / "dir/c"]


def test_writing_one_name_changes_all_of_them_across_remounts(tmp_path, unions):
    up, low = lower_with_links(tmp_path)
    mnt = unions.mount([up, low], rw=True)
    with open(mnt / "a", "r+") as f:
        f.write("OVERWRIT")
    for again in range(2):
        if again:
            unions.unmount(mnt)
            mnt = unions.mount([up, low], rw=True)
        assert [p.read_text() for p in names(mnt)] == ["OVERWRIT"] * 3
        assert len({os.stat(p).st_ino for p in names(mnt)}) == 1
        assert [os.stat(p).st_nlink for p in names(mnt)] == [3, 3, 3]
    unions.unmount(mnt)
    second = unions.mount([up, low], rw=True)
    with open(second / "dir/c", "a") as f:  # a name that was never copied up itself
        f.write("+")
    assert (second / "b").read_text() == "OVERWRIT+"
    assert os.stat(up / "a").st_ino == os.stat(up / "dir/c").st_ino


def test_link_counts_follow_links_and_unlinks(tmp_path, unions):
    up, low = lower_with_links(tmp_path)
    mnt = unions.mount([up, low], rw=True)
    os.unlink(mnt / "b")  # never copied up: the index copy keeps the count
    assert os.stat(mnt / "a").st_nlink == 2
    os.link(mnt / "a", mnt / "d")
    assert [os.stat(mnt / n).st_nlink for n in ("a", "d", "dir/c")] == [3, 3, 3]
    os.unlink(mnt / "a")
    os.rename(mnt / "dir/other", mnt / "d")  # replacing a name drops one too
    assert os.stat(mnt / "dir/c").st_nlink == 1
    assert (mnt / "dir/c").read_text() == "original"
    unions.unmount(mnt)
    again = unions.mount([up, low], rw=True)
    assert os.stat(again / "dir/c").st_nlink == 1
    assert sorted(os.listdir(again)) == ["d", "dir"]


def test_the_index_never_shows(tmp_path, unions):
    up, low = lower_with_links(tmp_path)
    mnt = unions.mount([up, low], rw=True)
    os.chmod(mnt / "a", 0o600)
    assert os.listdir(up / ".wh..wh.pyunion/index")
    assert sorted(os.listdir(mnt)) == ["a", "b", "dir"]
    assert os.stat(mnt / "b").st_mode & 0o777 == 0o600


def test_flatten_links_every_name_and_then_drops_the_index_entry(tmp_path, unions):
    up, low = lower_with_links(tmp_path)
    mnt = unions.mount([up, low], rw=True)
    with open(mnt / "a", "r+") as f:
        f.write("OVERWRIT")
    index = up / ".wh..wh.pyunion/index"
    done = pyunion("flatten", str(mnt), "dir", check=False)
    assert done.returncode == 0, done.stderr
    assert os.stat(up / "dir/c").st_ino == os.stat(up / "a").st_ino
    assert len(os.listdir(index)) == 1  # "b" still finds its data there
    assert (mnt / "b").read_text() == "OVERWRIT"
    done = pyunion("flatten", str(mnt), check=False)
    assert done.returncode == 0, done.stderr
    assert os.listdir(index) == []
    assert os.stat(up / "a").st_nlink == 3
    for again in range(2):
        if again:
            unions.unmount(mnt)
            mnt = unions.mount([up, low], rw=True)
        assert [p.read_text() for p in names(mnt)] == ["OVERWRIT"] * 3
        assert [os.stat(p).st_nlink for p in names(mnt)] == [3, 3, 3]
    os.unlink(mnt / "b")  # the counts stay right without the index entry
    os.link(mnt / "a", mnt / "e")
    unions.unmount(mnt)
    mnt = unions.mount([up, low], rw=True)
    assert [os.stat(mnt / n).st_nlink for n in ("a", "e", "dir/c")] == [3, 3, 3]
    assert not (mnt / "b").exists()
