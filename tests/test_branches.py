"""Parsing and validation of branch lists (no mount needed)."""

import os

import pytest

from unionfs.branches import BranchError, Mode, parse_br, parse_overlay, validate


def dirs(tmp_path, *names):
    paths = []
    for name in names:
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        paths.append(path)
    return paths


def test_leftmost_on_top_and_aufs_default_modes(tmp_path):
    up, a, b = dirs(tmp_path, "up", "a", "b")
    stack = validate(parse_br(f"{up}:{a}:{b}"))
    assert [br.path for br in stack.branches] == [str(up), str(a), str(b)]
    assert [br.mode for br in stack.branches] == [Mode.RW, Mode.RO, Mode.RO]
    assert stack.upper.path == str(up)


def test_explicit_modes(tmp_path):
    a, b = dirs(tmp_path, "a", "b")
    stack = validate(parse_br(f"{a}=ro:{b}=ro"))
    assert stack.upper is None
    assert all(br.mode is Mode.RO for br in stack.branches)


def test_sixty_four_branches(tmp_path):
    paths = dirs(tmp_path, *[f"b{i}" for i in range(64)])
    stack = validate(parse_br(":".join(map(str, paths))))
    assert len(stack.branches) == 64


def test_relative_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    dirs(tmp_path, "up", "low")
    monkeypatch.chdir(tmp_path)
    stack = validate(parse_br("up=rw:./low=ro"))
    assert [br.path for br in stack.branches] == [str(tmp_path / "up"), str(tmp_path / "low")]


def test_symlinked_branch_is_canonical(tmp_path):
    (real,) = dirs(tmp_path, "real")
    (tmp_path / "alias").symlink_to(real)
    stack = validate(parse_br(f"{tmp_path / 'alias'}=ro"))
    assert stack.branches[0].path == str(real)


def test_overlay_spelling_makes_the_same_stack(tmp_path):
    up, work, l1, l2 = dirs(tmp_path, "up", "work", "l1", "l2")
    stack = validate(parse_overlay(f"{l1}:{l2}", str(up)), str(work))
    assert [(br.path, br.mode) for br in stack.branches] == [
        (str(up), Mode.RW), (str(l1), Mode.RO), (str(l2), Mode.RO)]
    assert stack.workdir == str(work)


@pytest.mark.parametrize("spec, message", [
    ("", "no branches given"),
    ("{a}=rx", "unknown mode 'rx'"),
    ("{a}=", "unknown mode ''"),
    ("{a}=rw::{b}=ro", "empty path (branch 2)"),
    ("{missing}=ro", "no such directory"),
    ("{file}=ro", "not a directory"),
    ("{a}=rw:{a}=ro", "is given twice"),
    ("{a}=rw:{a}/inner=ro", "is inside branch"),
    ("{a}/inner=rw:{a}=ro", "is inside branch"),
    ("{a}=ro:{b}=rw", "only the top branch may be rw"),
])
def test_bad_branch_lists(tmp_path, spec, message):
    a, b, _ = dirs(tmp_path, "a", "b", "a/inner")
    (tmp_path / "file").write_text("x")
    spec = spec.format(a=a, b=b, missing=tmp_path / "missing", file=tmp_path / "file")
    with pytest.raises(BranchError) as caught:
        validate(parse_br(spec))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("workdir, message", [
    ("{up}/w", "must not overlap"),
    ("{l1}", "overlaps read-only branch"),
    ("{missing}", "no such directory"),
])
def test_bad_workdirs(tmp_path, workdir, message):
    up, l1, _ = dirs(tmp_path, "up", "l1", "up/w")
    with pytest.raises(BranchError, match=message):
        validate(parse_overlay(str(l1), str(up)),
                 workdir.format(up=up, l1=l1, missing=tmp_path / "missing"))


def test_workdir_needs_an_upper(tmp_path):
    l1, w = dirs(tmp_path, "l1", "w")
    with pytest.raises(BranchError, match="needs a writable"):
        validate(parse_overlay(str(l1), None), str(w))


def test_workdir_on_another_file_system(tmp_path):
    (up,) = dirs(tmp_path, "up")
    if os.stat("/dev/shm").st_dev == os.stat(up).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    with pytest.raises(BranchError, match="same file system"):
        validate(parse_br(f"{up}=rw"), "/dev/shm")


def test_lowerdir_is_required(tmp_path):
    (up,) = dirs(tmp_path, "up")
    with pytest.raises(BranchError, match="lowerdir= is required"):
        parse_overlay(None, str(up))
