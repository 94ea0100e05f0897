"""pyunion as podman's overlay ``mount_program``, called the way
containers/storage calls fuse-overlayfs (``drivers/overlay/overlay.go``):
``PROGRAM -o OPTIONS MERGED`` run in the driver's home, with stderr read
until EOF; lower layers are ``l/ID`` symlinks to ``../LAYER/diff``; unmount
is ``fusermount3 -u``.  And ``volatile``, which it passes for ``--rm``."""

from __future__ import annotations

import os
import signal
import struct
import subprocess

import pytest

from helpers import PYUNION, build, force_unmount, mounted, process_gone, pyunion, wait_for
from unionfs import daemon

MARKER = "work/work/incompat/volatile"  # in the driver's layer directory, as overlayfs's


@pytest.fixture
def home(tmp_path):
    """A driver home laid out as containers/storage lays it out: two image
    layers and a container layer with its diff, work and merged dirs."""
    for layer, files in (("base", {"etc/os": "base\n", "bin/sh": "sh\n"}),
                         ("top", {"etc/os": "top\n", "app": "app\n"})):
        build(tmp_path / layer / "diff", files)
        (tmp_path / "l").mkdir(exist_ok=True)
        os.symlink(f"../{layer}/diff", tmp_path / "l" / layer.upper())
    for name in ("diff", "work", "merged"):
        (tmp_path / "ctr" / name).mkdir(parents=True)
    yield tmp_path
    force_unmount(tmp_path / "ctr" / "merged")


def run_as_storage_does(home, options: str) -> subprocess.CompletedProcess:
    """Run pyunion with stdout and stderr on pipes read to their end: it
    returns only when the daemon holds neither."""
    return subprocess.run([PYUNION, "-o", options, "ctr/merged"], cwd=home,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def container_options(home, *extra: str) -> str:
    return ",".join([f"lowerdir={home}/l/TOP:{home}/l/BASE,upperdir={home}/ctr/diff,"
                     f"workdir={home}/ctr/work", *extra])


def test_the_mount_program_form_returns_with_the_mount_ready(home):
    done = run_as_storage_does(home, container_options(home, "", "volatile", ""))
    assert done.returncode == 0, done.stderr
    merged = home / "ctr" / "merged"
    assert mounted(merged, "fuse.pyunion")
    assert sorted(os.listdir(merged)) == ["app", "bin", "etc"]
    assert (merged / "etc" / "os").read_text() == "top\n"
    (merged / "etc" / "os").write_text("changed\n")
    os.unlink(merged / "app")
    pid = daemon.pid_of(str(merged))

    subprocess.run(["fusermount3", "-u", str(merged)], check=True)
    assert wait_for(lambda: process_gone(pid))
    assert not os.path.exists(daemon.pidfile_path(str(merged)))
    assert not os.path.exists(daemon.control_path(str(merged)))
    assert (home / "ctr" / "diff" / "etc" / "os").read_text() == "changed\n"
    assert (home / "top" / "diff" / "app").read_text() == "app\n"
    assert not (home / "ctr" / "diff" / "app").exists()  # hidden by a whiteout
    assert not (home / "ctr" / MARKER).exists()  # a clean end: flushed and unmarked


def test_relative_layer_paths_are_the_driver_homes(home):
    done = run_as_storage_does(home, "lowerdir=l/TOP:l/BASE,upperdir=ctr/diff,workdir=ctr/work")
    assert done.returncode == 0, done.stderr
    assert (home / "ctr" / "merged" / "app").read_text() == "app\n"


def test_a_lowerdir_alone_is_a_read_only_mount(home):
    """``podman diff``, ``commit`` and ``image mount`` mount a layer this way."""
    done = run_as_storage_does(home, f"lowerdir={home}/ctr/diff:{home}/l/TOP:{home}/l/BASE")
    assert done.returncode == 0, done.stderr
    merged = home / "ctr" / "merged"
    assert (merged / "etc" / "os").read_text() == "top\n"
    with pytest.raises(OSError) as raised:
        (merged / "new").write_text("x")
    assert raised.value.errno == 30  # EROFS
    pyunion("umount", str(merged))


@pytest.mark.parametrize("option", ["xattr_permissions=2", "context=system_u:object_r:s0"])
def test_options_not_done_yet_fail_in_one_line_and_mount_nothing(home, option):
    done = run_as_storage_does(home, container_options(home, option))
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: option {option.partition('=')[0]}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not mounted(home / "ctr" / "merged")
    assert os.listdir(home / "ctr" / "diff") == [] and os.listdir(home / "ctr" / "work") == []


@pytest.mark.parametrize("args, message", [
    (["-o"], "Error: Option '-o' requires an argument."),
    (["-o", "lowerdir=l/TOP"], "Error: Missing argument 'MOUNTPOINT'."),
    (["--debug", "-o", "lowerdir=l/TOP"], "Error: Missing argument 'MOUNTPOINT'."),
    (["-f", "--bogus", "-o", "lowerdir=l/TOP", "ctr/merged"], "Error: No such option '--bogus'."),
])
def test_a_command_line_that_does_not_parse_is_one_line(home, args, message):
    """Its caller quotes the mount program's stderr whole in its own error."""
    done = subprocess.run([PYUNION, *args], cwd=home, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (2, message + "\n")
    assert not mounted(home / "ctr" / "merged")


def test_volatile_marks_the_work_dir_while_mounted(home):
    assert run_as_storage_does(home, container_options(home, "volatile")).returncode == 0
    assert (home / "ctr" / MARKER).read_text().strip() == _boot_id()
    pyunion("umount", str(home / "ctr" / "merged"))
    assert not (home / "ctr" / MARKER).exists()


def test_a_volatile_daemon_killed_loses_nothing_the_machine_held(home):
    merged = home / "ctr" / "merged"
    assert run_as_storage_does(home, container_options(home, "volatile")).returncode == 0
    with open(merged / "kept", "w") as f:
        f.write("written\n")
        os.fsync(f.fileno())  # returns at once: nothing is flushed
    pid = daemon.pid_of(str(merged))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: process_gone(pid))
    force_unmount(merged)
    assert (home / "ctr" / MARKER).exists()  # left by the killed daemon, this boot

    assert run_as_storage_does(home, container_options(home, "volatile")).returncode == 0
    assert (merged / "kept").read_text() == "written\n"
    pyunion("umount", str(merged))


def test_a_volatile_branch_from_before_a_restart_is_refused(home):
    (home / "ctr" / MARKER).parent.mkdir(parents=True)
    (home / "ctr" / MARKER).write_text("00000000-0000-0000-0000-000000000000\n")
    done = run_as_storage_does(home, container_options(home))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: the writable branch was mounted volatile, and the machine has restarted "
        "since: its last changes may be lost or torn; remove "
        f"{home}/ctr/work/work/incompat to mount it anyway")
    assert not mounted(home / "ctr" / "merged")
    assert _no_failure_left(home)

    (home / "ctr" / MARKER).unlink()  # what containers/storage does before each mount
    assert run_as_storage_does(home, container_options(home)).returncode == 0
    pyunion("umount", str(home / "ctr" / "merged"))


@pytest.mark.parametrize("leave, since", [
    # kernel overlayfs's marker: the directory volatile/dirty
    (lambda m: (m / "dirty").mkdir(parents=True), "this marker tells nothing of the boot "
                                                  "it was made in"),
    (os.mkfifo, "this marker tells nothing of the boot it was made in"),  # never waited on
    (lambda m: m.write_bytes(b"\xff\xfe" * 10000), "the machine has restarted since"),
    (lambda m: m.parent.rmdir() or m.parent.symlink_to("/etc"),
     "this marker tells nothing of the boot it was made in"),
], ids=["overlayfs-dir", "fifo", "not-utf8", "symlinked"])
def test_a_volatile_marker_pyunion_did_not_write_is_refused_in_one_line(home, leave, since):
    """A marker that holds no boot id of this boot may be overlayfs's, or
    anything: the branch may be damaged, and the mount says so at once."""
    marker = home / "ctr" / MARKER
    marker.parent.mkdir(parents=True)
    leave(marker)
    done = run_as_storage_does(home, container_options(home))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: the writable branch was mounted volatile, and {since}: its last changes "
        f"may be lost or torn; remove {marker.parent} to mount it anyway")
    assert not mounted(home / "ctr" / "merged")
    assert _no_failure_left(home)


def test_volatile_flushes_nothing(monkeypatch, tmp_path):
    from unionfs import durable
    flushed = []
    monkeypatch.setattr(durable.os, "fsync", flushed.append)
    with open(tmp_path / "f", "w") as f:
        durable.fsync(f.fileno())
        monkeypatch.setattr(durable, "_volatile", True)
        durable.fsync(f.fileno())
        assert flushed == [f.fileno()]


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def test_owner_mappings_show_the_hosts_ids_and_store_the_containers(world_readable_dir, unions,
                                                                   tmp_path):
    """``podman run --uidmap 0:100000:65536``: the image's files belong to
    0 and 1; through the mount they are the host's 100000 and 100001, and
    what the container's processes make is stored as their own IDs."""
    low = build(tmp_path / "low", {"a": "a\n", "b": "b\n", "shared/keep": "k\n"})
    os.chown(low / "b", 1, 1)
    os.chmod(low / "shared", 0o1777)
    mnt, up = _mount_mapped(unions, low, world_readable_dir / "mnt")
    assert [(os.stat(mnt / n).st_uid, os.stat(mnt / n).st_gid) for n in ("a", "b")] \
        == [(100000, 100000), (100001, 100001)]

    def make_as_container_user():
        os.setresgid(100005, 100005, 100005)
        os.setresuid(100005, 100005, 100005)
        (mnt / "shared" / "new").write_text("n\n")
    _in_child(make_as_container_user)
    assert (os.stat(mnt / "shared" / "new").st_uid, os.lstat(up / "shared" / "new").st_uid) \
        == (100005, 5)

    os.chown(mnt / "a", 100007, 100008)
    assert (os.lstat(up / "a").st_uid, os.lstat(up / "a").st_gid) == (7, 8)
    (mnt / "made_by_host_root").write_text("r\n")  # root is outside the mapping
    assert os.lstat(up / "made_by_host_root").st_uid == 65534


def test_an_unmapped_owner_is_no_one_not_the_hosts_nobody(world_readable_dir, unions,
                                                        tmp_path):
    """A file whose owner is outside the mapping shows as the overflow ID
    (65534), as on overlayfs; but, as there, no process is its owner: not
    the host's nobody, to whom a root daemon's mount is open too."""
    low = build(tmp_path / "low", {"f": "not nobody's\n"})
    os.chown(low / "f", 70000, 70000)
    os.chmod(low / "f", 0o600)
    mnt, _ = _mount_mapped(unions, low, world_readable_dir / "mnt")
    assert (os.stat(mnt / "f").st_uid, os.stat(mnt / "f").st_gid) == (65534, 65534)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
    denied = subprocess.run([*as_nobody, str(mnt / "f")], capture_output=True, text=True)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_owner_mappings_map_the_ids_in_posix_acls(unions, tmp_path):
    """An ACL names users and groups as the owners do: a layer's
    ``user:5`` is the container's user 5, shown as the host's 100005, and
    one set through the mount for 100007 is stored for 7."""
    low = build(tmp_path / "low", {"f": "f\n", "g": ""})
    os.setxattr(low / "f", ACL, _acl(user=5))
    os.setxattr(low / "g", ACL, _acl(user=70000))  # outside the mapping: grants no one
    mnt, up = _mount_mapped(unions, low, tmp_path / "mnt")
    assert os.getxattr(mnt / "f", ACL) == _acl(user=100005)
    assert os.getxattr(mnt / "g", ACL) == _acl(user=None)
    os.setxattr(mnt / "f", ACL, _acl(user=100007))
    assert os.getxattr(up / "f", ACL) == _acl(user=7)


ACL = "system.posix_acl_access"


def _acl(user: int | None) -> bytes:
    """user::rw- user:USER:rw- group::r-- mask::rw- other::r--, as the
    kernel writes it; without the entry of USER if None."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), *([(0x02, 6, user)] if user is not None else []),
               (0x04, 4, undefined), (0x10, 6, undefined), (0x20, 4, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_squash_to_root_shows_every_file_as_roots(unions, tmp_path):
    low = build(tmp_path / "low", {"f": "f\n"})
    os.chown(low / "f", 1000, 1000)
    mnt = unions.mount([low], "squash_to_root")
    assert (os.stat(mnt / "f").st_uid, os.stat(mnt / "f").st_gid) == (0, 0)


def _mount_mapped(unions, low, mnt):
    """``low`` under a writable branch beside it, mapped as ``podman run
    --uidmap 0:100000:65536`` asks, on ``mnt`` (which other users reach);
    the mount point and the writable branch."""
    up, work = low.parent / "up", low.parent / "work"
    up.mkdir(), work.mkdir(), mnt.mkdir()
    return unions.mount_overlay_style([low], up, work, "uidmapping=:0:100000:65536",
                                      "gidmapping=:0:100000:65536", mnt=mnt), up


def _no_failure_left(home) -> bool:
    """A mount refused before it was made leaves no failure record (those
    are for daemons that fail after serving, for ``pyunion umount``)."""
    return not os.path.exists(daemon._failure_path(str(home / "ctr" / "merged")))


def _in_child(work) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            work()
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
