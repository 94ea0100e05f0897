"""``max_open=N``: the daemon serves at most N open files at once, so
whoever uses a mount cannot make the daemon grow without end.  Open
directories hold nothing of the daemon and do not count."""

import errno
import os

import pytest

from helpers import build


@pytest.fixture
def mnt(tmp_path, unions):
    build(tmp_path / "up", {})
    build(tmp_path / "low", {f"d/f{i}": "x" for i in range(12)})
    return unions.mount([tmp_path / "up", tmp_path / "low"], "max_open=10", rw=True)


def _open_until_refused(paths) -> tuple[list[int], OSError]:
    held = []
    for path in paths:
        try:
            held.append(os.open(path, os.O_RDONLY))
        except OSError as exc:
            return held, exc
    raise AssertionError("nothing was refused")


def test_files_past_the_bound_get_emfile(mnt):
    directory = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)  # does not count
    held, refused = _open_until_refused(mnt / "d" / f"f{i}" for i in range(12))
    try:
        assert refused.errno == errno.EMFILE and len(held) == 10
        with pytest.raises(OSError) as made:
            os.open(mnt / "d" / "new", os.O_CREAT | os.O_WRONLY)
        assert made.value.errno == errno.EMFILE
        assert not (mnt / "d" / "new").exists(), "a refused create made its file"
        os.close(held.pop())
        held.append(os.open(mnt / "d" / "new", os.O_CREAT | os.O_WRONLY))  # room again
    finally:
        for fd in [directory, *held]:
            os.close(fd)
    assert sorted(os.listdir(mnt / "d"))[:2] == ["f0", "f1"]  # all closed: served again
