"""The root file system part of the OCI core: ``mounts``, ``root.readonly``,
masked and read-only paths, ``rootfsPropagation`` and ``linux.devices``
parsed strictly (container/oci/mounts.py, devices.py), and carried out
(mounts.setup) in a forked child that unshares a mount
namespace over a throwaway busybox root: when it ends, so do its mounts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from container import syscalls as sc
from container.oci import devices as dev
from container.oci import mounts
from container.oci.mounts import DEFAULT_PROPAGATION, Mount, Plan, parse, parse_mount
from container.oci.reader import ConfigError, Reader

PODMAN = Path(__file__).parent / "data" / "podman-mounts.json"
HARDENED = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


class SetupFailed(Exception):
    pass


def mount(**fields) -> Mount:
    return parse_mount(Reader(fields, "mounts[0]"))


def plan(config: dict, read_only_root: bool = False) -> Plan:
    reader = Reader(config, "")
    return parse(reader, reader.take_object("linux") or Reader({}, "linux"), read_only_root)


def inside(root: Path, the_plan: Plan, check, shared: bool = False, before=None, **kwargs):
    """``check()``'s result, run in a child that set up ``root`` by
    ``the_plan`` in its own mount namespace and is in it; with ``shared``,
    its mounts are peers of a namespace it keeps (as a host's are, under
    systemd); ``before()`` runs in the namespace first."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            sc.unshare(sc.CLONE_NEWNS)
            if shared:
                sc.mount("none", "/", None, sc.MS_SHARED | sc.MS_REC)
                kept = os.open("/proc/self/ns/mnt", os.O_RDONLY)  # noqa: F841 - its peers
                sc.unshare(sc.CLONE_NEWNS)
            if before is not None:
                before()
            mounts.setup(str(root), the_plan, **kwargs)
            result = {"ok": check()}
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result = {"error": str(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    if "error" in result:
        raise SetupFailed(result["error"])
    return result["ok"]


def mount_info(path: str) -> dict:
    """The last (top) line of /proc/self/mountinfo for ``path``."""
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f if line.split()[4] == path]
    fields = lines[-1]
    dash = fields.index("-")
    return {"options": fields[5].split(","), "optional": fields[6:dash], "type": fields[dash + 1],
            "super": fields[dash + 3].split(",")}


def fails_with(action) -> str | None:
    try:
        action()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None


def write(path: str) -> None:
    with open(path, "w") as f:
        f.write("x")


@pytest.fixture(autouse=True)
def nothing_left_mounted(tmp_path):
    """The child's mounts end with its namespace; none reached the host's."""
    yield
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(tmp_path) in line]


@pytest.fixture
def root(image_root, tmp_path) -> Path:
    path = tmp_path / "root"
    shutil.copytree(image_root, path, symlinks=True)
    return path


BASICS = (Mount("/proc", "proc", "proc", HARDENED),
          Mount("/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, data="mode=755"),
          Mount("/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                data="newinstance,ptmxmode=0666,mode=0620,gid=5"))


# -- parsing ----------------------------------------------------------------

def test_options_are_read_as_runc_reads_them():
    parsed = mount(destination="/data/", type="tmpfs", source="tmpfs",
                   options=["nosuid", "ro", "rw", "nodev", "dev", "strictatime", "mode=700",
                            "size=1m", "rshared", "private", "tmpcopyup"])
    assert parsed == Mount("/data", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME,
                           sc.MS_RDONLY | sc.MS_NODEV, (sc.MS_SHARED | sc.MS_REC, sc.MS_PRIVATE),
                           "mode=700,size=1m", copy_up=True)


def test_the_options_honoured_are_listed():
    assert {"nosuid", "rbind", "rslave", "strictatime", "tmpcopyup"} <= mounts.OPTIONS
    assert not {"idmap", "ridmap", "rro", "mode=755"} & mounts.OPTIONS


def test_a_bind_is_a_bind_whatever_its_type():
    parsed = mount(destination="/v", type="none", source="/srv", options=["rbind", "ro"])
    assert (parsed.type, parsed.flags) == ("bind", sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY)


def test_podmans_list_parses():
    config = json.loads(PODMAN.read_text())
    parsed = plan(config)
    by_place = {m.destination: m for m in parsed.mounts}
    assert by_place["/dev"] == Mount("/dev", "tmpfs", "tmpfs",
                                     sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_STRICTATIME,
                                     data="mode=755,size=65536k")
    assert by_place["/dev/pts"].data == "newinstance,ptmxmode=0666,mode=0620,gid=5"
    assert by_place["/etc/hosts"] == Mount("/etc/hosts", "bind", "/SCRATCH/hosts", sc.MS_BIND,
                                           propagation=(sc.MS_PRIVATE | sc.MS_REC,))
    assert by_place["/sys/fs/cgroup"].flags == HARDENED | sc.MS_RELATIME | sc.MS_RDONLY
    assert parsed.masked[0] == "/proc/acpi" and parsed.read_only_paths[-1] == "/proc/sysrq-trigger"
    assert (parsed.propagation, parsed.devices) == (DEFAULT_PROPAGATION, dev.DEFAULTS)


@pytest.mark.parametrize("fields, message", [
    ({"destination": "data", "type": "tmpfs"},
     "mounts[0].destination: 'data' must be an absolute path"),
    ({"destination": "/", "type": "tmpfs"},
     "mounts[0].destination: cannot mount onto the root itself"),
    ({"destination": "/v", "type": "bind", "source": "srv", "options": ["bind"]},
     "mounts[0].source: 'srv': a bind source must be an absolute path"),
    ({"destination": "/v", "type": "bind", "source": "/srv"},
     "mounts[0].options: a bind mount needs 'bind' or 'rbind'"),
    ({"destination": "/v"}, "mounts[0].type: required"),
    ({"destination": "/v", "type": "bind", "source": "/srv", "options": ["bind", "idmap"]},
     "mounts[0].options: idmap: ID-mapped mounts are not supported"),
    ({"destination": "/v", "type": "bind", "source": "/srv", "options": ["rbind", "ridmap"]},
     "mounts[0].options: ridmap: ID-mapped mounts are not supported"),
    ({"destination": "/v", "type": "bind", "source": "/srv", "options": ["rbind"],
      "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]},
     "mounts[0].uidMappings: ID-mapped mounts are not supported"),
    ({"destination": "/v", "type": "bind", "source": "/srv", "options": ["rbind", "rro"]},
     "mounts[0].options: rro: recursive mount attributes are not supported"),
    ({"destination": "/v", "type": "bind", "source": "/srv", "options": ["bind", "tmpcopyup"]},
     "mounts[0].options: tmpcopyup is for tmpfs mounts only"),
    ({"destination": "/proc/sys/kernel", "type": "tmpfs"},
     "mounts[0].destination: /proc/sys/kernel: cannot mount inside /proc"),
    ({"destination": "/proc", "type": "tmpfs"},
     "mounts[0].destination: /proc: only a proc file system may be mounted there"),
    ({"destination": "/v", "type": "tmpfs", "source": "a\0b"},
     "mounts[0].source: contains a null byte"),
    ({"destination": "/v", "type": "tmpfs", "propagation": "shared"},
     "mounts[0].propagation: not supported"),
    ({"destination": "/v", "type": "tmpfs", "options": "ro"}, "mounts[0].options: must be a list"),
])
def test_a_mount_is_refused(fields, message):
    with pytest.raises(ConfigError) as caught:
        mount(**fields)
    assert str(caught.value) == message


def test_lxcfs_files_may_cover_proc_files():
    assert mount(destination="/proc/meminfo", type="bind", source="/var/lib/lxcfs/proc/meminfo",
                 options=["rbind"]).destination == "/proc/meminfo"


@pytest.mark.parametrize("linux, message", [
    ({"rootfsPropagation": "sideways"}, "linux.rootfsPropagation: 'sideways': must be one of "
     "rprivate, private, rslave, slave, rshared, shared, runbindable, unbindable"),
    ({"mountLabel": "system_u:object_r:container_file_t:s0"},
     "linux.mountLabel: SELinux labels are not supported"),
    ({"maskedPaths": ["proc/kcore"]},
     "linux.maskedPaths[0]: 'proc/kcore' must be an absolute path"),
    ({"readonlyPaths": [1]}, "linux.readonlyPaths[0]: must be a string"),
    ({"devices": [{"path": "/etc/null", "type": "c", "major": 1, "minor": 3}]},
     "linux.devices[0].path: '/etc/null' must be an absolute path under /dev"),
    ({"devices": [{"path": "/dev/x", "type": "s", "major": 1, "minor": 3}]},
     "linux.devices[0].type: 's': must be one of c, u, b, p"),
    ({"devices": [{"path": "/dev/x", "type": "b", "minor": 3}]},
     "linux.devices[0].major: required"),
    ({"devices": [{"path": "/dev/x", "type": "c", "major": 1, "minor": -1}]},
     "linux.devices[0].minor: -1 is out of range"),
    ({"devices": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 3, "access": "rwm"}]},
     "linux.devices[0].access: not supported"),
])
def test_the_linux_part_is_refused(linux, message):
    with pytest.raises(ConfigError) as caught:
        plan({"linux": linux})
    assert str(caught.value) == message


def test_devices_replace_the_defaults_they_name():
    parsed = plan({"linux": {
        "rootfsPropagation": "rprivate", "mountLabel": "",
        "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o20600},
                    {"path": "/dev/fifo", "type": "p", "uid": 7, "gid": 8},
                    {"path": "/dev/../dev/ttyS0", "type": "u", "major": 4, "minor": 64}]}})
    assert parsed.devices[-3:] == (dev.Device("/dev/null", stat.S_IFCHR, 1, 3, 0o600),
                                   dev.Device("/dev/fifo", stat.S_IFIFO, uid=7, gid=8),
                                   dev.Device("/dev/ttyS0", stat.S_IFCHR, 4, 64))
    assert [d.path for d in parsed.devices].count("/dev/null") == 1
    assert parsed.propagation == sc.MS_PRIVATE | sc.MS_REC


# -- carrying it out --------------------------------------------------------

def _cgroup_paths() -> dict[str, str]:
    """This process's own cgroup, controller -> directory, as the cgroups
    part records a container's (v1)."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller and not controller.startswith("name="):
                    own[controller] = os.path.normpath(f"/sys/fs/cgroup/{controllers}{path}")
    return {c: path for c, path in own.items() if os.path.isdir(path)}


def test_podmans_full_list(root, tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "shm").mkdir(parents=True)
    for name in (".containerenv", "hostname", "hosts", "resolv.conf"):
        (scratch / name).write_text(f"{name} from the host\n")
    config = json.loads(PODMAN.read_text().replace("/SCRATCH", str(scratch)))
    cgroups = _cgroup_paths()

    def check():
        null = os.stat("/dev/null")
        return {
            "types": {path: mount_info(path)["type"]
                      for path in ("/proc", "/dev", "/sys", "/dev/pts", "/dev/mqueue")},
            "hostname": open("/etc/hostname").read(),
            "null": [stat.S_ISCHR(null.st_mode), os.major(null.st_rdev), os.minor(null.st_rdev),
                     stat.S_IMODE(null.st_mode)],
            "dev": sorted(os.listdir("/dev")), "ptmx": os.readlink("/dev/ptmx"),
            "fd": os.readlink("/dev/fd"),
            "sys": "ro" in mount_info("/sys")["options"],
            "cgroups": sorted(os.listdir("/sys/fs/cgroup")),
            "cgroup_ro": fails_with(lambda: os.mkdir(  # a name nobody else makes
                f"/sys/fs/cgroup/{next(iter(cgroups))}/{uuid.uuid4().hex}")),
            "keys": os.stat("/proc/keys").st_rdev == null.st_rdev,
            "firmware": os.listdir("/sys/firmware"),
            "proc_sys": fails_with(lambda: write("/proc/sys/kernel/hostname")),
            "shm": mount_info("/dev/shm")["options"],
        }

    seen = inside(root, plan(config), check, cgroup_paths=cgroups)
    assert seen["types"] == {"/proc": "proc", "/dev": "tmpfs", "/sys": "sysfs",
                             "/dev/pts": "devpts", "/dev/mqueue": "mqueue"}
    assert seen["hostname"] == "hostname from the host\n"
    assert seen["null"] == [True, 1, 3, 0o666]
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
            "fd", "stdin", "stdout", "stderr"} <= set(seen["dev"])
    assert (seen["ptmx"], seen["fd"], seen["sys"]) == ("pts/ptmx", "/proc/self/fd", True)
    assert set(cgroups) <= set(seen["cgroups"]) and seen["cgroup_ro"] == "EROFS"
    assert seen["keys"] and seen["firmware"] == [] and seen["proc_sys"] == "EROFS"
    assert {"nosuid", "nodev", "noexec"} <= set(seen["shm"])


def test_mknod_devices_with_their_modes_and_owners(root):
    the_plan = Plan(BASICS, dev.with_defaults((
        dev.Device("/dev/null", stat.S_IFCHR, 1, 3, 0o600, 5, 6),
        dev.Device("/dev/sub/fifo", stat.S_IFIFO, mode=0o640, uid=7))))

    def check():
        return [[stat.S_IFMT(s.st_mode), s.st_rdev, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid]
                for s in map(os.stat, ("/dev/null", "/dev/sub/fifo", "/dev/zero"))]

    assert inside(root, the_plan, check) == [
        [stat.S_IFCHR, os.makedev(1, 3), 0o600, 5, 6], [stat.S_IFIFO, 0, 0o640, 7, 0],
        [stat.S_IFCHR, os.makedev(1, 5), 0o666, 0, 0]]


def test_on_a_nodev_dev_the_hosts_nodes_are_bound(root):
    the_plan = Plan((BASICS[0], Mount("/dev", "tmpfs", "tmpfs", sc.MS_NODEV)))

    def check():
        with open("/dev/zero", "rb") as f:
            return [f.read(2).hex(), mount_info("/dev/zero")["type"]]

    assert inside(root, the_plan, check) == ["0000", "devtmpfs"]


def test_a_bound_dev_gets_no_devices(root, tmp_path):
    (tmp_path / "mydev").mkdir()
    the_plan = Plan((Mount("/dev", "bind", str(tmp_path / "mydev"), sc.MS_BIND),))
    assert inside(root, the_plan, lambda: os.listdir("/dev")) == []


def test_the_console_is_the_terminal_given(root):
    """A terminal of the container's own devpts, opened in the new root."""
    def check():
        master, slave = os.openpty()
        mounts.bind_console(os.ttyname(slave))
        os.write(master, b"typed\n")
        with open("/dev/console", "rb", buffering=0) as console:
            return [os.ttyname(slave).startswith("/dev/pts/"), console.read(6).decode()]

    assert inside(root, Plan(BASICS), check) == [True, "typed\n"]


def test_tmpfs_options(root):
    the_plan = Plan((*BASICS, Mount("/scratch", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_RDONLY,
                                    data="mode=1770,size=1m")))

    def check():
        info = mount_info("/scratch")
        return [info["type"], "ro" in info["options"], "nosuid" in info["options"],
                "size=1024k" in info["super"], oct(stat.S_IMODE(os.stat("/scratch").st_mode)),
                fails_with(lambda: write("/scratch/x"))]

    assert inside(root, the_plan, check) == ["tmpfs", True, True, True, "0o1770", "EROFS"]


def test_a_tmpfs_takes_the_mode_of_what_it_covers(root):
    os.chmod(root / "tmp", 0o1777)
    the_plan = Plan((Mount("/tmp", "tmpfs", "tmpfs"),))
    assert inside(root, the_plan, lambda: oct(os.stat("/tmp").st_mode & 0o7777)) == "0o1777"


def test_tmpcopyup(root):
    stuff = root / "opt" / "stuff"
    (stuff / "sub").mkdir(parents=True)
    (stuff / "sub" / "file").write_text("kept")
    os.chown(stuff / "sub" / "file", 1000, 1001)
    os.chmod(stuff / "sub" / "file", 0o640)
    (stuff / "link").symlink_to("sub/file")
    os.mkfifo(stuff / "fifo")
    the_plan = Plan((BASICS[0], Mount("/opt/stuff", "tmpfs", "tmpfs", copy_up=True)))

    def check():
        info = os.stat("/opt/stuff/sub/file")
        write("/opt/stuff/new")
        return [mount_info("/opt/stuff")["type"], open("/opt/stuff/link").read(),
                info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode)),
                stat.S_ISFIFO(os.stat("/opt/stuff/fifo").st_mode)]

    assert inside(root, the_plan, check) == ["tmpfs", "kept", 1000, 1001, "0o640", True]
    assert sorted(os.listdir(stuff)) == ["fifo", "link", "sub"]


def test_bind_options_and_propagation(root, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("under")
    the_plan = Plan((
        BASICS[0],
        Mount("/ro", "bind", str(source), sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOEXEC,
              propagation=(sc.MS_SHARED,)),
        Mount("/flat", "bind", "/sys/fs", sc.MS_BIND),
        Mount("/deep", "bind", "/sys/fs", sc.MS_BIND | sc.MS_REC, propagation=(sc.MS_PRIVATE,)),
        Mount("/file", "bind", str(source / "sub" / "file"), sc.MS_BIND)))

    def check():
        ro = mount_info("/ro")
        return ["ro" in ro["options"], "noexec" in ro["options"],
                any(tag.startswith("shared:") for tag in ro["optional"]),
                mount_info("/deep")["optional"], os.listdir("/flat/cgroup"),
                bool(os.listdir("/deep/cgroup")), open("/file").read(),
                fails_with(lambda: write("/ro/x"))]

    assert inside(root, the_plan, check) == [True, True, True, [], [], True, "under", "EROFS"]


@pytest.mark.parametrize("propagation, tag", [(sc.MS_SLAVE | sc.MS_REC, "master:"),
                                              (sc.MS_PRIVATE | sc.MS_REC, None),
                                              (sc.MS_SHARED | sc.MS_REC, "shared:")])
def test_root_propagation(root, propagation, tag):
    def check():
        return [t.split(":")[0] + ":" for t in mount_info("/")["optional"]]

    seen = inside(root, Plan(BASICS[:1], propagation=propagation), check, shared=True)
    assert seen == ([tag] if tag else [])


def test_masked_and_read_only_paths(root):
    (root / "secret").mkdir()
    (root / "secret" / "key").write_text("hidden")
    (root / "note").write_text("hidden too")
    (root / "etc" / "fixed").write_text("as is")
    the_plan = Plan(BASICS, masked=("/secret", "/note", "/missing", "/secret"),
                    read_only_paths=("/etc/fixed", "/missing", "/proc/sys"))

    def check():
        return [os.listdir("/secret"), open("/note").read(), fails_with(lambda: write("/secret/x")),
                open("/etc/fixed").read(), fails_with(lambda: write("/etc/fixed")),
                fails_with(lambda: write("/proc/sys/kernel/hostname")),
                os.path.exists("/missing")]

    assert inside(root, the_plan, check) == [[], "", "EROFS", "as is", "EROFS", "EROFS", False]


def test_a_read_only_root(root):
    the_plan = Plan((*BASICS, Mount("/tmp", "tmpfs", "tmpfs")), read_only_root=True)

    def check():
        write("/tmp/fine")
        return [fails_with(lambda: write("/x")), "nodev" in mount_info("/")["options"]]

    assert inside(root, the_plan, check) == ["EROFS", True]


def test_set_uid_works_in_the_root_but_nodes_do_not(root):
    os.mknod(root / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))

    def check():
        return [fails_with(lambda: open("/zero", "rb")), "nosuid" in mount_info("/")["options"]]

    assert inside(root, Plan(BASICS[:1]), check) == ["EACCES", False]


def test_no_symlink_leads_a_mount_out_of_the_root(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(f"/../../../../../..{outside}")
    (root / "relative").symlink_to("../../../../../../../..")
    the_plan = Plan((BASICS[0], Mount("/escape/x", "tmpfs", "tmpfs"),
                     Mount("/relative/y", "tmpfs", "tmpfs")))
    made = inside(root, the_plan, lambda: [mount_info(f"{outside}/x")["type"],
                                           mount_info("/y")["type"]])
    assert made == ["tmpfs", "tmpfs"]
    assert list(outside.iterdir()) == [] and (root / outside.relative_to("/") / "x").is_dir()


@pytest.mark.parametrize("link, the_mount, message", [
    ("/proc/sys/kernel", Mount("/data", "tmpfs", "tmpfs"),
     "mount target /data leads to /proc/sys/kernel: cannot mount inside /proc"),
    ("/somewhere", Mount("/data", "proc", "proc"),
     "proc goes on the directory /data itself, not through a link to /somewhere"),
    ("/dev/shm", Mount("/data", "bind", "/etc", sc.MS_BIND),
     "mount target /data leads to /dev/shm, which the runtime mounts"),
    ("/", Mount("/data", "tmpfs", "tmpfs"), "mount target /data leads to the root itself"),
    ("/data/x", Mount("/data", "tmpfs", "tmpfs"),
     "[Errno 40] Too many levels of symbolic links: '/data'"),
    (None, Mount("/data", "sysfs", "sysfs"), "sysfs goes on a directory; /data is not one"),
])
def test_a_mount_led_astray_is_refused(root, link, the_mount, message):
    if link is None:
        (root / "data").write_text("a file")
    else:
        (root / "data").symlink_to(link)
    with pytest.raises(SetupFailed) as caught:
        inside(root, Plan((BASICS[0], the_mount), guarded=("/proc", "/sys", "/dev")), lambda: 0)
    assert str(caught.value) == message


def test_cgroup_v1_layout_with_comounted_controllers(root, tmp_path):
    hierarchies = [tmp_path / name for name in ("cpu,cpuacct", "memory")]
    paths = {"cpu": f"{hierarchies[0]}/ctr", "cpuacct": f"{hierarchies[0]}/ctr",
             "memory": f"{hierarchies[1]}/ctr"}

    def stand_in_hierarchies():  # mounted as the host mounts them, in the child only
        for hierarchy in hierarchies:
            hierarchy.mkdir()
            sc.mount("tmpfs", str(hierarchy), "tmpfs")
            (hierarchy / "ctr").mkdir()
            (hierarchy / "ctr" / "tasks").write_text("1\n")

    the_plan = Plan((BASICS[0],
                     Mount("/sys/fs/cgroup", "cgroup", "cgroup", HARDENED | sc.MS_RDONLY)))

    def check():
        return [sorted(os.listdir("/sys/fs/cgroup")), os.readlink("/sys/fs/cgroup/cpu"),
                open("/sys/fs/cgroup/cpuacct/tasks").read(), mount_info("/sys/fs/cgroup")["type"],
                fails_with(lambda: write("/sys/fs/cgroup/memory/tasks")),
                fails_with(lambda: os.mkdir("/sys/fs/cgroup/x"))]

    seen = inside(root, the_plan, check, before=stand_in_hierarchies, cgroup_paths=paths)
    assert seen == [["cpu", "cpu,cpuacct", "cpuacct", "memory"], "cpu,cpuacct", "1\n", "tmpfs",
                    "EROFS", "EROFS"]


def test_cgroup_v2_is_a_cgroup2_mount(root):
    the_plan = Plan((BASICS[0], Mount("/sys/fs/cgroup", "cgroup", "cgroup", HARDENED)))
    assert inside(root, the_plan, lambda: mount_info("/sys/fs/cgroup")["type"],
                  cgroup_paths={"unified": "/sys/fs/cgroup/unified"}) == "cgroup2"
