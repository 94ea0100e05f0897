"""Branches changed on a live mount: ``pyunion branch`` and ``mount -o
remount,...``, and the rules they follow (README, *Semantics*)."""

from __future__ import annotations

import errno
import json
import mmap
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from container import runtime
from unionfs import daemon
from unionfs.whiteout import META_DIR

from helpers import DIR, PYUNION, build, pyunion, snapshot, wait_for

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def branches_of(mnt: Path) -> list[tuple[str, str]]:
    listed = json.loads(pyunion("branch", "ls", "--json", str(mnt)).stdout)
    assert [b["index"] for b in listed] == list(range(len(listed)))
    return [(b["path"], b["mode"]) for b in listed]


def refused(*args: str, why: str) -> str:
    done = pyunion(*args, check=False)
    assert done.returncode == 1, done
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert why in done.stderr, done.stderr
    return done.stderr


@pytest.fixture
def stack(tmp_path, unions, request):
    """A writable union over ``base``, and a branch ``new`` to add (mount
    options in ``request.param``, if given)."""
    up = build(tmp_path / "up", {})
    base = build(tmp_path / "base", {"fileA": "base A\n", "d/in-base": "b", "same": "base",
                                     "gone": "below", "kind": "a file below", "dir/x": "x"})
    new = build(tmp_path / "new", {"fileA": "new A, longer\n", "d/in-new": "n",
                                   ".wh.gone": "", "kind/inside": "a dir now",
                                   "dir/.wh..wh..opq": "", "dir/y": "y", "only-new/f": "f"})
    mnt = unions.mount([up, base], *getattr(request, "param", ()), rw=True)
    before = snapshot(new)
    yield mnt, up, base, new
    unions.unmount_all()
    if not request.node.get_closest_marker("changes_new"):
        assert snapshot(new) == before  # a branch added read-only is never written


def test_the_talks_file_a(stack):
    """A reader of fileA keeps its bytes; a new open after the add reads the
    added branch's fileA; after the del, the old one again."""
    mnt, up, base, new = stack
    with open(mnt / "fileA") as reader:
        old_ino = os.fstat(reader.fileno()).st_ino
        pyunion("branch", "add", str(mnt), str(new))
        assert branches_of(mnt) == [(str(up), "rw"), (str(new), "ro"), (str(base), "ro")]
        assert (mnt / "fileA").read_text() == "new A, longer\n"
        assert (mnt / "fileA").stat().st_ino != old_ino
        assert reader.read() == "base A\n"
        assert os.fstat(reader.fileno()).st_size == len("base A\n")
        reader.seek(0)
        pyunion("branch", "del", str(mnt), str(new))
        assert reader.read() == "base A\n"
    assert (mnt / "fileA").read_text() == "base A\n"
    assert (mnt / "fileA").stat().st_ino == old_ino


def test_new_names_show_at_once_whatever_the_kernel_cached(stack):
    mnt, up, base, new = stack
    assert not (mnt / "only-new").exists()  # a cached "no such name"
    assert (mnt / "gone").read_text() == "below"
    assert (mnt / "kind").is_file()
    assert sorted(os.listdir(mnt / "dir")) == ["x"]
    pyunion("branch", "add", str(mnt), str(new))
    assert (mnt / "only-new" / "f").read_text() == "f"
    assert not (mnt / "gone").exists()  # a whiteout in the added branch
    assert "gone" not in os.listdir(mnt)
    assert (mnt / "kind").is_dir() and os.listdir(mnt / "kind") == ["inside"]  # file -> dir
    assert sorted(os.listdir(mnt / "dir")) == ["y"]  # opaque in the added branch
    assert not (mnt / "dir" / "x").exists()
    assert sorted(os.listdir(mnt / "d")) == ["in-base", "in-new"]
    pyunion("branch", "del", str(mnt), str(new))
    assert not (mnt / "only-new").exists()
    assert (mnt / "gone").read_text() == "below"
    assert (mnt / "kind").is_file()  # dir -> file
    assert sorted(os.listdir(mnt / "dir")) == ["x"]


def test_a_directory_keeps_its_number_and_a_cwd_in_it_stays(stack):
    mnt, up, base, new = stack
    before = (mnt / "d").stat().st_ino
    reader = subprocess.Popen(["sh", "-c", "read line; ls"], cwd=mnt / "d", text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pyunion("branch", "add", "--index", "1", str(mnt), str(new))
        out, _ = reader.communicate("go\n", timeout=30)
    finally:
        reader.kill()
        reader.wait()
    assert out.split() == ["in-base", "in-new"]
    assert (mnt / "d").stat().st_ino == before


def test_the_aufs_remount_spelling_left_to_right(stack, tmp_path):
    mnt, up, base, new = stack
    other = build(tmp_path / "other", {"o": "o"})
    subprocess.run(["mount", "-o", f"remount,add:1:{new}=ro,append:{other},del:{base}",
                    str(mnt)], check=True, capture_output=True)
    assert branches_of(mnt) == [(str(up), "rw"), (str(new), "ro"), (str(other), "ro")]
    done = subprocess.run(["mount", "-o", f"remount,del:{other},prepend:{base}", str(mnt)],
                          capture_output=True, text=True)  # base above the rw one
    assert done.returncode != 0 and "only the top branch may be rw" in done.stderr
    assert branches_of(mnt) == [(str(up), "rw"), (str(new), "ro"), (str(other), "ro")]
    done = subprocess.run(["mount", "-o", f"remount,mod:{up}=ro,prepend:{base},"
                           f"ins:3:{tmp_path / 'up'}", str(mnt)], capture_output=True, text=True)
    assert done.returncode != 0 and "given twice" in done.stderr
    assert branches_of(mnt) == [(str(up), "rw"), (str(new), "ro"), (str(other), "ro")]
    subprocess.run(["mount", "-o", f"remount,mod:{up}=ro,prepend:{base}", str(mnt)],
                   check=True, capture_output=True)
    assert branches_of(mnt) == [(str(base), "ro"), (str(up), "ro"), (str(new), "ro"),
                                (str(other), "ro")]
    assert (mnt / "o").read_text() == "o" and (mnt / "fileA").read_text() == "base A\n"
    with pytest.raises(OSError) as caught:
        (mnt / "w").write_text("no")
    assert caught.value.errno == errno.EROFS
    done = subprocess.run(["mount", "-o", "remount,frobnicate", str(mnt)], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "unknown option 'frobnicate'" in done.stderr


def test_bad_requests_change_nothing(stack, tmp_path):
    mnt, up, base, new = stack
    dirty = build(tmp_path / "dirty", {f"{META_DIR}/chunks/abc": "a map", "f": "f"})
    before = branches_of(mnt)
    refused("branch", "del", str(mnt), str(tmp_path / "nowhere"), why="is not a branch")
    refused("branch", "add", "--index", "5", str(mnt), str(new), why="index 5 is out of range")
    refused("branch", "add", "--index", "0", str(mnt), str(new), why="only the top branch")
    refused("branch", "add", str(mnt), f"{new}=rw", why="only the top branch may be rw")
    refused("branch", "add", str(mnt), str(base / "d"), why="inside branch")
    refused("branch", "add", str(mnt), str(mnt / "d"), why="inside the mount")
    refused("branch", "add", str(mnt), str(tmp_path), why="inside branch")
    refused("branch", "add", str(mnt), str(base), why="given twice")
    refused("branch", "add", str(mnt), str(tmp_path / "nowhere"), why="no such directory")
    refused("branch", "add", str(mnt), f"{new}=rx", why="unknown mode 'rx'")
    refused("branch", "add", str(mnt), str(dirty), why="holds partial copies")
    refused("branch", "mod", str(mnt), str(base), why="mod needs a mode")
    refused("branch", "mod", str(mnt), f"{base}=rw", why="only the top branch may be rw")
    refused("branch", "ls", str(tmp_path), why="is not a pyunion mount")
    pyunion("branch", "del", str(mnt), str(up))
    refused("branch", "del", str(mnt), str(base), why="the last branch cannot be removed")
    refused("branch", "add", "--index", "0", str(mnt), f"{new}=rw", why="cannot be rw: only")
    pyunion("branch", "add", "--index", "0", str(mnt), f"{up}=rw")
    assert branches_of(mnt) == before
    (mnt / "still-writable").write_text("yes")


def test_only_root_or_the_owner_may_ask(stack):
    mnt, up, base, new = stack
    done = subprocess.run([*AS_NOBODY, PYUNION, "branch", "add", str(mnt), str(new)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "permission denied" in done.stderr
    done = subprocess.run([*AS_NOBODY, PYUNION, "branch", "ls", str(mnt)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "may list or change its branches" in done.stderr
    sock = daemon.control_path(str(mnt.resolve()))
    os.chmod(sock, 0o666)  # past the file mode: the daemon checks the caller itself
    probe = ("import json, socket, sys\n"
             "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
             "s.sendall(json.dumps({'changes': [{'action': 'del', 'path': sys.argv[2],"
             " 'mode': None, 'index': None}]}).encode()); s.shutdown(socket.SHUT_WR)\n"
             "print(s.recv(4096).decode())\n")
    done = subprocess.run([*AS_NOBODY, "/usr/bin/python3", "-c", probe, sock, str(base)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "only root or the mount's owner" in json.loads(done.stdout)["error"]
    assert len(branches_of(mnt)) == 2
    assert not any(name.endswith(".sock") for name in os.listdir(mnt))


def test_a_branch_in_use_is_busy(stack):
    mnt, up, base, new = stack
    pyunion("branch", "add", str(mnt), str(new))
    with open(mnt / "fileA", "rb") as f:
        refused("branch", "del", str(mnt), str(new), why="is busy: 1 open file")
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:  # the map holds the file open
        refused("branch", "del", str(mnt), str(new), why="is busy: 1 open file")
    finally:
        mapped.close()
    fd = os.open(mnt / "only-new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        refused("branch", "del", str(mnt), str(new), why=f"process {os.getpid()} (fd {fd})")
    finally:
        os.close(fd)
    sleeper = subprocess.Popen(["sleep", "60"], cwd=mnt / "only-new")
    try:
        refused("branch", "del", str(mnt), str(new), why=f"process {sleeper.pid} (cwd)")
    finally:
        sleeper.kill()
        sleeper.wait()
    with open(mnt / "written", "w"):
        refused("branch", "mod", str(mnt), f"{up}=ro", why="1 file open for writing")
        refused("branch", "del", str(mnt), str(up), why="1 open file")
    pyunion("branch", "del", str(mnt), str(new))


# The kernel writes a file passed through itself: --force cannot make
# its branch read-only (test_passthrough.py).
@pytest.mark.parametrize("stack", [("passthrough=off",)], indirect=True)
def test_force_takes_it_out_and_says_what_became_of_users(stack):
    mnt, up, base, new = stack
    pyunion("branch", "add", str(mnt), str(new))
    reader = open(mnt / "fileA")
    writer = open(mnt / "written", "w")
    inside = subprocess.Popen(["sh", "-c", "read line; ls -a; touch made"], text=True,
                              cwd=mnt / "only-new", stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pyunion("branch", "del", "--force", str(mnt), str(new))
        assert reader.read() == "new A, longer\n"  # its file, though no name leads to it
        out, err = inside.communicate("go\n", timeout=30)
        assert out == "" and "touch" in err  # a removed directory, as after rmdir
        pyunion("branch", "mod", "--force", str(mnt), f"{up}=ro")
        writer.write("x")
        with pytest.raises(OSError) as caught:
            writer.flush()
        assert caught.value.errno == errno.EROFS
    finally:
        inside.kill()
        inside.wait()
        reader.close()
        with pytest.raises(OSError):
            writer.close()
    assert (mnt / "fileA").read_text() == "base A\n"
    pyunion("branch", "mod", str(mnt), f"{up}=rw")
    (mnt / "written").write_text("again")


def test_partial_copies_follow_their_branch(tmp_path, unions):
    """A partial copy reads its absent chunks from its branch wherever
    branches come and go above it, and keeps it from going."""
    data = os.urandom(1 << 20)
    up, base = tmp_path / "up", build(tmp_path / "base", {"big": data})
    up.mkdir()
    new = build(tmp_path / "new", {"big2": "x"})
    mnt = unions.mount([up, base], rw=True)
    with open(mnt / "big", "r+b") as f:
        f.write(b"!")
    expected = b"!" + data[1:]
    pyunion("branch", "add", "--index", "1", str(mnt), str(new))
    assert (mnt / "big").read_bytes() == expected
    refused("branch", "del", str(mnt), str(base), why="1 partial copy reading from it")
    pyunion("branch", "del", str(mnt), str(new))
    pyunion("branch", "add", "--index", "1", str(mnt), str(new))
    pyunion("branch", "del", "--force", str(mnt), str(base))  # completes it first
    assert (mnt / "big").read_bytes() == expected
    assert (up / "big").read_bytes() == expected


def test_views_are_one_stack_or_the_other(stack):
    """Listings and lookups made while the stack flips see the old stack or
    the new one, never a mix."""
    mnt, up, base, new = stack
    old_view = sorted(os.listdir(mnt))
    pyunion("branch", "add", str(mnt), str(new))
    new_view = sorted(os.listdir(mnt))
    pyunion("branch", "del", str(mnt), str(new))
    seen, stop = [], threading.Event()

    def look() -> None:
        while not stop.is_set():
            seen.append(sorted(os.listdir(mnt)))

    looker = threading.Thread(target=look)
    looker.start()
    try:
        for _ in range(10):
            pyunion("branch", "add", str(mnt), str(new))
            pyunion("branch", "del", str(mnt), str(new))
    finally:
        stop.set()
        looker.join()
    assert seen and all(view in (old_view, new_view) for view in seen)
    assert {tuple(view) for view in seen} >= {tuple(old_view)}


def test_a_read_only_mount_takes_branches_on_top(tmp_path, unions):
    base = build(tmp_path / "base", {"a": "base", "d": DIR})
    top = build(tmp_path / "top", {"a": "top"})
    mnt = unions.mount([base])
    pyunion("branch", "add", str(mnt), str(top))
    assert branches_of(mnt) == [(str(top), "ro"), (str(base), "ro")]
    assert (mnt / "a").read_text() == "top"
    assert stat.S_ISDIR((mnt / "d").stat().st_mode)
    refused("branch", "mod", str(mnt), f"{top}=rw", why="made read-only")


def test_a_stale_control_socket_is_no_trouble(stack):
    mnt, up, base, new = stack
    sock = daemon.control_path(str(mnt.resolve()))
    for rubbish in (b"\xff not json", b"[" * 100_000 + b"]" * 100_000):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(rubbish)
            s.shutdown(socket.SHUT_WR)
            assert "malformed request" in json.loads(s.recv(4096))["error"]
    assert len(branches_of(mnt)) == 2


def test_writers_write_on_across_changes(stack):
    """Handles open for writing, on a new file and on a partial copy of a
    lower one, keep writing the file they opened while branches come and go."""
    mnt, up, base, new = stack
    with open(mnt / "log", "w") as log, open(mnt / "fileA", "r+") as copied:
        log.write("one\n")
        log.flush()
        copied.write("BASE")
        copied.flush()
        pyunion("branch", "add", str(mnt), str(new))
        log.write("two\n")
        copied.seek(0, os.SEEK_END)
        copied.write("more\n")
        log.flush()
        copied.flush()
        pyunion("branch", "del", str(mnt), str(new))
        log.write("three\n")
    assert (mnt / "log").read_text() == "one\ntwo\nthree\n"
    assert (mnt / "fileA").read_text() == "BASE A\nmore\n"


def test_an_added_branch_is_watched_with_notify(tmp_path, unions):
    """With ``udba=notify``, a branch added at run time is watched as the
    others are, and one taken out is no longer."""
    up, base = build(tmp_path / "up", {}), build(tmp_path / "base", {"b": "b"})
    new = build(tmp_path / "new", {"d/f": "f"})
    mnt = unions.mount([up, base], "udba=notify", rw=True, changed_below=True)
    pyunion("branch", "add", str(mnt), str(new))
    assert os.listdir(mnt / "d") == ["f"]
    (new / "d" / "g").write_text("g")  # changed below, behind the union's back
    assert wait_for(lambda: sorted(os.listdir(mnt / "d")) == ["f", "g"])
    pyunion("branch", "del", str(mnt), str(new))
    (new / "d" / "h").write_text("h")
    assert not (mnt / "d").exists() and (mnt / "b").read_text() == "b"


@pytest.mark.changes_new  # on purpose, while it is out
def test_changes_while_a_writer_creates_in_the_changed_directory(stack):
    """A create waiting for the change lock holds its directory's lock in
    the kernel, which dropping a cached name of that directory needs: the
    branch change must not hold the change lock while it tells the kernel
    (else the daemon waits on itself for ever, even past SIGKILL)."""
    mnt, up, base, new = stack
    for i in range(200):
        (new / "d" / f"n{i}").write_text("n")
        assert not (mnt / "d" / f"n{i}").exists()  # cached: dropped at the add
    stop, created = threading.Event(), []

    def create() -> None:
        while not stop.is_set():
            (mnt / "d" / f"w{len(created)}").write_text("w")
            created.append(1)

    writer = threading.Thread(target=create, daemon=True)  # stuck for good if it hangs
    writer.start()
    try:
        for _ in range(5):
            pyunion("branch", "add", str(mnt), str(new))
            pyunion("branch", "del", str(mnt), str(new))
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive() and created
    assert len([n for n in os.listdir(mnt / "d") if n.startswith("w")]) == len(created)


def test_a_branch_that_leads_into_the_mount_is_refused(stack, tmp_path):
    """Through a symlink or a bind mount of the union: a branch served by
    the mount itself would make the daemon wait on itself."""
    mnt, up, base, new = stack
    bound = tmp_path / "bound"
    bound.mkdir()
    subprocess.run(["mount", "--bind", str(mnt / "d"), str(bound)], check=True)
    try:
        refused("branch", "add", str(mnt), str(bound), why="lies inside the mount")
    finally:
        subprocess.run(["umount", str(bound)], check=True)
    (tmp_path / "link").symlink_to(mnt / "d")
    refused("branch", "add", str(mnt), str(tmp_path / "link"), why="lies inside the mount")
    refused("branch", "del", str(mnt), str(tmp_path / "link"), why="lies inside the mount")
    assert branches_of(mnt) == [(str(up), "rw"), (str(base), "ro")]
    assert (mnt / "d" / "in-base").read_text() == "b"


def test_a_branch_named_with_equals_comma_and_colon(stack, tmp_path):
    """``=`` in a name reads as a mode only when the name is no directory:
    such a branch can be added, and named again to take it out."""
    mnt, up, base, new = stack
    odd = build(tmp_path / "we,ird=x:y", {"odd": "odd"})
    pyunion("branch", "add", str(mnt), str(odd))
    assert (mnt / "odd").read_text() == "odd"
    pyunion("branch", "mod", str(mnt), f"{odd}=ro")
    pyunion("branch", "del", str(mnt), str(odd))
    assert not (mnt / "odd").exists()
    refused("branch", "add", str(mnt), f"{new}=rx", why="unknown mode 'rx'")
    assert branches_of(mnt) == [(str(up), "rw"), (str(base), "ro")]


def test_a_branch_added_under_a_running_container(pyc, image_root, tmp_path):
    """The container's own mounts on its root (/proc, /etc/hosts...) stay
    across an add and a del; the image it runs from is busy."""
    name = pyc.name()
    assert pyc("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "60",
               ).returncode == 0
    root = runtime.State.load(name).rootfs
    extra = build(tmp_path / "extra", {"added/f": "added", "etc/extra": "x", "proc": DIR,
                                       "tmp/t": "t"})
    look = ["sh", "-c", "cat /proc/1/comm /etc/hostname; ls /added /etc/extra"]
    before = pyc("exec", name, *look)
    pyunion("branch", "add", root, str(extra))
    during = pyc("exec", name, *look)
    assert during.returncode == 0, during.stderr
    assert "/etc/extra" in during.stdout and "f" in during.stdout.split()
    assert during.stdout.splitlines()[:2] == before.stdout.splitlines()[:2]
    refused("branch", "del", root, str(image_root), why="is busy")
    pyunion("branch", "del", root, str(extra))
    after = pyc("exec", name, *look)
    assert after.stdout.splitlines()[:2] == before.stdout.splitlines()[:2]
    assert pyc("exec", name, "ls", "/added").returncode != 0


@pytest.mark.changes_new  # on purpose, while it is out
def test_a_directory_renamed_in_a_branch_taken_out_has_its_own_number(stack):
    """``new/d`` kept the number of ``base/d`` while on top of it; once
    taken out, renamed and added again, it is another directory and must
    not share that number."""
    mnt, up, base, new = stack
    number = (mnt / "d").stat().st_ino
    pyunion("branch", "add", str(mnt), str(new))
    assert (mnt / "d").stat().st_ino == number
    pyunion("branch", "del", str(mnt), str(new))
    (new / "d").rename(new / "e")
    pyunion("branch", "add", str(mnt), str(new))
    assert (mnt / "d").stat().st_ino == number
    assert (mnt / "e").stat().st_ino != number
    assert sorted(os.listdir(mnt / "e")) == ["in-new"]


@pytest.mark.changes_new  # on purpose, while it is out
def test_a_branch_added_again_shows_what_it_holds_now(stack):
    """A branch taken out may change; added again, the kernel is told of
    the names it holds now, cached "no such name" answers included."""
    mnt, up, base, new = stack
    pyunion("branch", "add", str(mnt), str(new))
    pyunion("branch", "del", str(mnt), str(new))
    (new / "later").write_text("later")
    assert not (mnt / "later").exists()
    pyunion("branch", "add", str(mnt), str(new))
    assert (mnt / "later").read_text() == "later"


def test_a_deep_union_sees_what_a_branch_added_again_holds_now(tmp_path, unions):
    """A directory merged from many read-only branches keeps an index of
    where its names lie (``holders.py``); a branch taken out, changed and
    added again gives the same stack as before, and the index is not
    trusted for it."""
    up = build(tmp_path / "up", {})
    empties = [build(tmp_path / f"empty{i}", {}) for i in range(9)]
    base = build(tmp_path / "base", {"x": "base x", "y": "base y"})
    new = build(tmp_path / "new", {".wh.x": "", "z": "new z"})
    mnt = unions.mount([up, *empties, base], rw=True)
    assert (mnt / "x").read_text() == "base x" and not (mnt / "z").exists()
    pyunion("branch", "add", str(mnt), str(new))
    assert not (mnt / "x").exists() and (mnt / "z").read_text() == "new z"
    assert not (mnt / "later").exists()
    pyunion("branch", "del", str(mnt), str(new))
    assert (mnt / "x").read_text() == "base x"
    (new / "later").write_text("later")
    (new / ".wh.x").unlink()
    pyunion("branch", "add", str(mnt), str(new))
    assert (mnt / "later").read_text() == "later"
    assert (mnt / "x").read_text() == "base x" and (mnt / "y").read_text() == "base y"
