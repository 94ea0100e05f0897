"""Flatten makes a former writable branch a plain aufs-format layer: stacked
read-only over the same lower branches, honouring none of pyunion's marks,
it shows what the live union showed (renamed directories, hard links,
partial copies and deletions included), also after a kill mid-flatten.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import trio

from helpers import DIR, PYUNION, Symlink, build, force_unmount, process_gone, pyunion, wait_for
from unionfs import daemon
from unionfs.branches import parse_br
from unionfs.inodes import InodeNumbers
from unionfs.layer import ROOT, Layer
from unionfs.partial import PartialFiles
from unionfs.tree import Tree
from unionfs.upper import Upper

MiB = 1 << 20
META = ".wh..wh.pyunion"
XATTR = "trusted.pyunion"


def view(root: Path) -> dict[str, tuple]:
    """What a union shows: names, types, data and link counts of files."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = ("file", hashlib.sha256(f.read()).hexdigest(), st.st_nlink)
            elif stat.S_ISLNK(st.st_mode):
                what = ("symlink", os.readlink(path))
            else:
                what = (stat.S_IFMT(st.st_mode),)
            seen[os.path.relpath(path, root)] = what
    return seen


def all_marks(up: Path) -> dict[str, dict]:
    """The pyunion marks in a branch, outside its own directory."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(up):
        if dirpath == str(up) and META in dirnames:
            dirnames.remove(META)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                found[os.path.relpath(path, up)] = json.loads(
                    os.getxattr(path, XATTR, follow_symlinks=False))
            except OSError:
                pass
    return found


def flatten(mnt: Path, *path: str) -> None:
    done = pyunion("flatten", str(mnt), *path, check=False)
    assert done.returncode == 0, done.stderr


def as_layer(tmp_path: Path, unions, up: Path, low: Path) -> Path:
    """``up`` mounted read-only under a fresh writable branch, over ``low``."""
    top = build(tmp_path / f"top{len(list(tmp_path.glob('top*')))}", {})
    return unions.mount([top, up, low], rw=True)


def lower_tree(low: Path) -> Path:
    build(low, {
        "a/f": "in a", "a/gone": "deleted later", "a/link": Symlink("f"),
        "a/sub/g": "in a/sub", "a/sub/deep/h": "deep", "a/sub/empty": DIR,
        "a/keep/k": "kept", "c/x": "in c", "d/inner/y": "in d/inner", "d/z": "in d",
        "plain/p": "plain", "plain/q": "removed", "links": DIR,
    })
    (low / "a/big").write_bytes(random.Random(1).randbytes(MiB))
    (low / "h1").write_text("linked")
    os.link(low / "h1", low / "h2")
    os.link(low / "h1", low / "links/h3")
    (low / "k1").write_text("linked too")
    os.link(low / "k1", low / "k2")
    (low / "a/sub/g1").write_text("linked into a renamed dir")
    os.link(low / "a/sub/g1", low / "g2")
    return low


def changes_in(mnt: Path) -> None:
    """Renames of lower directories (nested too), hard links, partial
    writes and deletions, through the union."""
    os.rename(mnt / "a", mnt / "b")
    os.rename(mnt / "b/sub", mnt / "b/sub2")  # a renamed directory inside one
    os.rename(mnt / "b/sub2/deep", mnt / "b/deep2")
    os.unlink(mnt / "b/gone")
    (mnt / "b/new").write_text("made in b")
    with open(mnt / "b/big", "r+b") as f:  # a partial copy in a renamed dir
        f.seek(100_000)
        f.write(b"patched")
    os.mkdir(mnt / "fresh")
    os.rename(mnt / "c", mnt / "fresh/c")  # a redirect under a new directory
    os.rename(mnt / "d", mnt / "e")
    os.rename(mnt / "e/inner", mnt / "inner")  # out of a renamed directory
    with open(mnt / "h1", "r+") as f:  # into the index; h2, links/h3 follow
        f.write("LINKED")
    os.unlink(mnt / "h2")
    os.link(mnt / "k1", mnt / "k3")
    os.unlink(mnt / "plain/q")


def test_a_flattened_branch_is_a_layer_with_the_same_view(tmp_path, unions):
    low = lower_tree(tmp_path / "low")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    changes_in(mnt)
    live = view(mnt)
    assert live["b/sub2/g"] == ("file", hashlib.sha256(b"in a/sub").hexdigest(), 1)
    assert live["links/h3"][1] == hashlib.sha256(b"LINKED").hexdigest()
    assert [live[n][2] for n in ("h1", "links/h3", "k1", "k3", "b/sub2/g1")] == [2, 2, 3, 3, 2]
    flatten(mnt)
    assert view(mnt) == live
    pyunion("umount", str(mnt))
    assert not [m for m in all_marks(up).values() if "redirect" in m or "partial" in m]
    assert os.listdir(up / META / "chunks") == []
    assert os.listdir(up / META / "index") == []
    layer = as_layer(tmp_path, unions, up, low)
    assert view(layer) == live
    unions.unmount(layer)
    assert view(unions.mount([up, low], rw=True)) == live  # and still a writable branch


def test_flatten_option_makes_the_layer_at_unmount(tmp_path, unions):
    low = lower_tree(tmp_path / "low")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], "flatten", rw=True)
    changes_in(mnt)
    live = view(mnt)
    pyunion("umount", str(mnt))
    assert view(as_layer(tmp_path, unions, up, low)) == live


def test_flatten_of_a_path_resolves_the_renames_below_it(tmp_path, unions):
    low = lower_tree(tmp_path / "low")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    changes_in(mnt)
    live = view(mnt)
    flatten(mnt, "fresh")
    assert "redirect" not in all_marks(up)["fresh/c"]
    assert "redirect" in all_marks(up)["b"]
    assert view(mnt) == live
    flatten(mnt, "b")
    assert view(mnt) == live
    flatten(mnt, "links/h3")  # a name that shows the index copy: now a link to it
    assert os.stat(up / "links/h3").st_ino == os.stat(up / "h1").st_ino
    assert view(mnt) == live
    pyunion("umount", str(mnt))
    layer = view(as_layer(tmp_path, unions, up, low))
    assert {k: v for k, v in layer.items() if k.startswith(("b", "fresh"))} == \
        {k: v for k, v in live.items() if k.startswith(("b", "fresh"))}


def moved_state(up: Path) -> tuple[bool, int]:
    """Whether ``moved`` still has its redirect, and how many partial copies
    the branch holds (a kill may leave a map that no file names: harmless)."""
    marks = all_marks(up)
    return "redirect" in marks.get("moved", {}), sum("partial" in m for m in marks.values())


@pytest.mark.parametrize("when", ["copying up", "completing"])
def test_a_daemon_killed_mid_flatten_leaves_the_view_and_a_rerun_finishes(tmp_path, unions,
                                                                         when):
    low = build(tmp_path / "low", {"keep": "kept"})
    rng = random.Random(7)
    for n in range(40):
        build(low, {f"tree/d{n % 5}/f{n}": rng.randbytes(4 * MiB + n)})
    build(low, {f"tree/d{n % 5}/small{n}": f"small {n}" for n in range(200)})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.rename(mnt / "tree", mnt / "moved")
    os.rename(mnt / "moved/d1", mnt / "moved/d1b")
    live = view(mnt)
    pid = daemon.pid_of(str(mnt))
    flattening = subprocess.Popen([PYUNION, "flatten", str(mnt)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if when == "copying up":
            assert wait_for(lambda: len(list((up / "moved").glob("*/f*"))) >= 3, 60)
        else:
            assert wait_for(lambda: moved_state(up)[0] is False, 60)
        os.kill(pid, signal.SIGKILL)
    finally:
        flattening.wait(30)
    assert wait_for(lambda: process_gone(pid))
    force_unmount(mnt)
    redirect, partial_copies = moved_state(up)
    assert partial_copies > 0 and redirect == (when == "copying up"), "killed too late"
    again = unions.mount([up, low], rw=True)
    assert view(again) == live
    flatten(again)
    assert view(again) == live
    pyunion("umount", str(again))
    assert moved_state(up) == (False, 0)
    assert view(as_layer(tmp_path, unions, up, low)) == live


def test_flatten_while_the_renamed_tree_is_changed(tmp_path, unions):
    low = build(tmp_path / "low", {})
    rng = random.Random(9)
    for n in range(300):
        build(low, {f"tree/d{n % 7}/f{n}": rng.randbytes(rng.choice([10, 70_000, MiB]))})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.rename(mnt / "tree", mnt / "moved")
    names = sorted(os.path.relpath(p, mnt) for p in (mnt / "moved").glob("*/*"))
    model = {name: (mnt / name).read_bytes() for name in names}
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def change():
        """Writes, appends and deletions in the renamed tree, one at a time."""
        try:
            while not stop.is_set() and len(model) > 10:
                name = rng.choice(sorted(model))
                how = rng.randrange(3)
                if how == 0:
                    os.unlink(mnt / name)
                    del model[name]
                    done[0] += 1
                    continue
                with open(mnt / name, "r+b" if how == 1 else "ab") as f:
                    f.write(b"changed during flatten")
                data = bytearray(model[name])
                if how == 1:
                    data[:22] = b"changed during flatten"
                else:
                    data += b"changed during flatten"
                model[name] = bytes(data)
                done[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=change)
    thread.start()
    try:
        assert wait_for(lambda: done[0] > 0)
        before = done[0]
        flatten(mnt)
        during = done[0] - before
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert during > 20, "nothing changed while flatten ran"
    expected = {name: ("file", hashlib.sha256(data).hexdigest(), 1) for name, data in model.items()}
    files = {k: v for k, v in view(mnt).items() if v[0] == "file"}
    assert files == expected
    flatten(mnt)  # what the changes meanwhile left to do
    pyunion("umount", str(mnt))
    files = {k: v for k, v in view(as_layer(tmp_path, unions, up, low)).items() if v[0] == "file"}
    assert files == expected


def test_flatten_reports_each_copy_up_with_its_union_inode_number(tmp_path, unions):
    """What the mount needs so that files open on a lower file follow its
    copy, as after any copy-up."""
    low = lower_tree(tmp_path / "low")
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    changes_in(mnt)
    numbers = {os.path.relpath(os.path.join(d, n), mnt): os.lstat(os.path.join(d, n)).st_ino
               for d, dirs, files in os.walk(mnt) for n in dirs + files}
    pyunion("umount", str(mnt))
    layers = [Layer(branch, i) for i, branch in enumerate(parse_br(f"{up}=rw:{low}=ro"))]
    upper = Upper(layers[0], None)
    reported: dict[str, int] = {}
    try:
        upper.prepare()
        partials = PartialFiles(layers, upper, InodeNumbers(
            layers[0].lstat(ROOT), [layer.lstat(ROOT).st_dev for layer in layers]))
        trio.run(partials.flatten, Tree(layers).root(), lambda: None, lambda numbers: None,
                 lambda ino, entry: reported.setdefault(entry.path, ino))
    finally:
        upper.close()
        for layer in layers:
            layer.close()
    assert {"b/f", "b/sub2/g", "b/deep2/h", "fresh/c/x", "links/h3", "g2"} <= set(reported)
    assert reported == {path: numbers[path] for path in reported}


def test_a_file_open_before_flatten_reads_what_is_written_after(tmp_path, unions):
    low = build(tmp_path / "low", {"a/f": b"old data".ljust(4096, b".")})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.rename(mnt / "a", mnt / "b")
    reader = os.open(mnt / "b/f", os.O_RDONLY | os.O_DIRECT)
    try:
        flatten(mnt)
        with open(mnt / "b/f", "r+b") as f:
            f.write(b"new")
        assert os.pread(reader, 4096, 0)[:8] == b"new data"
    finally:
        os.close(reader)


def test_a_renamed_directory_moved_away_and_back_during_flatten_keeps_its_tree(tmp_path,
                                                                              unions):
    low = build(tmp_path / "low", {f"tree/s{n % 40}/t{n % 3}/f{n}": f"file {n}"
                                   for n in range(600)})
    up = build(tmp_path / "up", {})
    mnt = unions.mount([up, low], rw=True)
    os.mkdir(mnt / "in")  # flatten's setxattr locks the root: the moves are in here
    os.rename(mnt / "tree", mnt / "in/moved")
    live = view(mnt)
    stop = threading.Event()
    moves = [0]

    def move_away_and_back():
        while not stop.is_set():
            os.rename(mnt / "in/moved", mnt / "in/away")
            os.rename(mnt / "in/away", mnt / "in/moved")
            moves[0] += 1

    thread = threading.Thread(target=move_away_and_back)
    thread.start()
    try:
        assert wait_for(lambda: moves[0] > 0)
        flatten(mnt)
    finally:
        stop.set()
        thread.join()
    assert view(mnt) == live
    flatten(mnt)
    assert view(mnt) == live
    pyunion("umount", str(mnt))
    assert view(as_layer(tmp_path, unions, up, low)) == live
