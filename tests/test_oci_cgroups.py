"""An OCI config's linux.resources and linux.cgroupsPath: parsed strictly,
then applied by the cgroup drivers at a cgroupsPath on the machine's real
hierarchies (each test's cgroups are throwaway and removed even when it
fails)."""

import contextlib
import glob
import json
import os
import select
import subprocess
import sys
import uuid

import pytest

from container import cgroups
from container.cgroups import devices, resources, v1, v2
from container.cgroups.resources import (BlockIO, Cpu, HugepageLimit, Memory, Resources,
                                         ThrottleDevice, WeightDevice)
from container.oci.reader import ConfigError, Reader
from container.spec import Limits
from helpers import open_nodes

UNIFIED = cgroups.ROOT if cgroups.is_pure_v2() else "/sys/fs/cgroup/unified"
V1 = not cgroups.is_pure_v2() and os.path.exists("/sys/fs/cgroup/devices/devices.list")
needs_v1 = pytest.mark.skipif(not V1, reason="no cgroup v1 hierarchies (devices among them)")
needs_v2 = pytest.mark.skipif(not os.path.exists(f"{UNIFIED}/cgroup.procs"),
                              reason="no cgroup v2 hierarchy")


def parse(data: dict) -> Resources:
    return resources.parse(Reader(data, "linux.resources"))


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return str(caught.value)


# --- parsing --------------------------------------------------------------

def test_a_full_section():
    parsed = parse({
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 10, "minor": -1, "access": "rw"}],
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20,
                   "swappiness": 10, "disableOOMKiller": True, "kernel": 0},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "realtimeRuntime": 0,
                "cpus": "0-1", "mems": "0", "idle": 0},
        "pids": {"limit": 32},
        "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1 << 20}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "unified": {"memory.high": "50000000"},
    })
    assert parsed == Resources(
        devices=(devices.Rule("a", None, None, "rwm", allow=False),
                 devices.Rule("c", 10, None, "rw")) + devices.RUNC_ALLOWED,
        memory=Memory(limit=64 << 20, reservation=32 << 20, swap=96 << 20, swappiness=10,
                      disable_oom_killer=True),
        cpu=Cpu(shares=512, quota=50000, period=100000, cpus="0-1", mems="0", idle=0),
        pids=32,
        block_io=BlockIO(weight=500, weight_device=(WeightDevice(8, 0, 100),),
                         read_bps=(ThrottleDevice(8, 0, 1 << 20),)),
        hugepages=(HugepageLimit("2MB", 4 << 20),),
        unified=(("memory.high", "50000000"),))


def test_an_absent_section_is_runcs_defaults():
    assert resources.parse(None) == Resources()
    assert parse({}).devices == devices.RUNC_ALLOWED
    assert [str(rule) for rule in devices.RUNC_ALLOWED] == [
        "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
        "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm"]


def test_zero_is_not_set_and_minus_one_unlimited():
    parsed = parse({"memory": {"limit": -1, "swap": -1, "reservation": 0},
                    "cpu": {"shares": 0, "quota": -1}, "pids": {"limit": 0}})
    assert parsed.memory == Memory(limit=-1, swap=-1)
    assert parsed.cpu == Cpu(quota=-1)
    assert parsed.pids is None


@pytest.mark.parametrize("data, message", [
    ({"memory": {"limit": 1 << 20, "bogus": 1}}, "linux.resources.memory.bogus: not supported"),
    ({"oom": 1}, "linux.resources.oom: not supported"),
    ({"memory": {"kernel": 1 << 20}},
     "linux.resources.memory.kernel: kernel memory limits are no longer enforced"),
    ({"memory": {"kernelTCP": 1 << 20}},
     "linux.resources.memory.kernelTCP: kernel memory limits are no longer enforced"),
    ({"memory": {"swap": 1 << 30}},
     "linux.resources.memory.swap: is memory plus swap: it needs a memory limit"),
    ({"memory": {"limit": 1 << 30, "swap": 1 << 20}},
     "linux.resources.memory.swap: is memory plus swap: 1048576 is below the memory limit"),
    ({"memory": {"limit": "1g"}}, "linux.resources.memory.limit: must be an integer"),
    ({"memory": {"limit": -2}}, "linux.resources.memory.limit: -2 is below -1 (unlimited)"),
    ({"memory": {"swappiness": 101}},
     "linux.resources.memory.swappiness: 101 is not within 0..100"),
    ({"cpu": {"shares": -1}}, "linux.resources.cpu.shares: -1 is negative"),
    ({"cpu": {"cpus": "0-1;3"}}, "linux.resources.cpu.cpus: '0-1;3' is not a list"),
    ({"cpu": {"idle": 2}}, "linux.resources.cpu.idle: 2 is not 0 or 1"),
    ({"pids": {"limit": True}}, "linux.resources.pids.limit: must be an integer"),
    ({"devices": [{"access": "rwm"}]}, "linux.resources.devices[0].allow: required"),
    ({"devices": [{"allow": True, "type": "p", "access": "r"}]},
     "linux.resources.devices[0].type: 'p' is not a, c or b"),
    ({"devices": [{"allow": True, "type": "c", "major": 1}]},
     "linux.resources.devices[0].access: '' is not made of r, w and m"),
    ({"devices": [{"allow": True, "type": "c", "access": "rx"}]},
     "linux.resources.devices[0].access: 'rx' is not made of r, w and m"),
    ({"devices": [{"allow": False, "major": 8, "access": "rwm"}]},
     "linux.resources.devices[0].type: a stands for every device with every access"),
    ({"devices": [{"allow": True, "type": "c", "major": -5, "access": "r"}]},
     "linux.resources.devices[0].major: -5 is not a device number"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight: 5 is not within 10..1000"),
    ({"blockIO": {"throttleWriteIOPSDevice": [{"major": 8, "minor": 0}]}},
     "linux.resources.blockIO.throttleWriteIOPSDevice[0].rate: required"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
     "linux.resources.hugepageLimits[0].pageSize: '2M' is not a page size such as 2MB"),
    ({"network": {"classID": 1}},
     "linux.resources.network: net_cls and net_prio are not supported"),
    ({"rdma": {"mlx4_0": {"hcaHandles": 3}}},
     "linux.resources.rdma: the rdma controller is not supported"),
    ({"unified": {"../cgroup.procs": "1"}},
     "linux.resources.unified.../cgroup.procs: must be a file name such as memory.high"),
    ({"unified": {"memory.high": 5}}, "linux.resources.unified.memory.high: must be a string"),
])
def test_refused(data, message):
    assert refused(data).startswith(message)


def test_device_rules_come_to_what_cgroup_v1_keeps():
    """A default and exceptions: a rule for every device resets them; no
    hole is punched in a wildcard exception; access is added and taken
    for exactly the same devices."""
    def rule(text, allow=True):
        kind, numbers, access = text.split()
        major, minor = (None if n == "*" else int(n) for n in numbers.split(":"))
        return devices.Rule(kind, major, minor, access, allow)
    assert devices.effective((rule("c 1:3 r"), rule("c 1:3 w"), rule("b 7:* r"),
                              rule("b 7:0 r", allow=False), rule("c 1:3 r", allow=False))) \
        == (False, (rule("b 7:* r"), rule("c 1:3 w")))
    assert devices.effective((rule("c 1:3 rwm"), rule("a *:* rwm"),
                              rule("c 1:11 rw", allow=False), rule("c 1:11 w"))) \
        == (True, (rule("c 1:11 r", allow=False),))


def test_cgroups_path():
    assert resources.parse_path(Reader({}, "linux")) == ""
    assert resources.parse_path(Reader({"cgroupsPath": "/a/b"}, "linux")) == "/a/b"
    with pytest.raises(ConfigError, match=r"^linux.cgroupsPath: 'system.slice:docker:1' is "
                                          r"systemd's slice:prefix:name form"):
        resources.parse_path(Reader({"cgroupsPath": "system.slice:docker:1"}, "linux"))


def test_where_the_cgroup_goes_as_runc_cleans_it():
    assert resources.inner_path("/libpod_parent/libpod-1", "1") == "/libpod_parent/libpod-1"
    assert resources.inner_path("/a/../../b/", "1") == "/b"
    assert resources.inner_path("../../x/y", "1") == "x/y"
    assert resources.inner_path("", "abc") == "abc"
    for path in ("/", "..", "a/.."):
        with pytest.raises(ConfigError, match="^linux.cgroupsPath: .* names a cgroup the "
                                              "container does not own"):
            resources.inner_path(path, "abc")


def test_the_front_ends_limits_are_resources():
    assert Limits(memory=64 << 20, memory_swap=-1, cpus=1.5, cpu_shares=512,
                  cpuset_cpus="0", pids=10).as_resources() == Resources(
        devices=devices.DEFAULT_ALLOWED,
        memory=Memory(limit=64 << 20, swap=-1),
        cpu=Cpu(shares=512, quota=150_000, period=100_000, cpus="0"), pids=10)


def test_v2_files_as_runc_converts_them():
    files = v2.limit_files(parse({
        "memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 1 << 20},
        "cpu": {"shares": 2, "quota": -1, "idle": 1},
        "pids": {"limit": -1},
        "blockIO": {"weight": 1000, "weightDevice": [{"major": 8, "minor": 0, "weight": 10}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 7}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"memory.max": "max"}}))
    assert files == [("memory.max", str(64 << 20)), ("memory.swap.max", str(32 << 20)),
                     ("memory.low", str(1 << 20)), ("cpu.weight", "1"), ("cpu.max", "max"),
                     ("cpu.idle", "1"), ("pids.max", "max"), ("io.weight", "10000"),
                     ("io.weight", "8:0 1"), ("io.max", "8:0 rbps=100"),
                     ("io.max", "8:0 wiops=7"), ("hugetlb.2MB.max", "0"),
                     ("memory.max", "max")]


@pytest.mark.parametrize("data, message", [
    ({"memory": {"swappiness": 0}}, "memory.swappiness: cgroup v2 has no swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "memory.disableOOMKiller: cgroup v2 cannot"),
    ({"cpu": {"realtimeRuntime": 1000}}, "cpu.realtimeRuntime: cgroup v2 has no realtime"),
    ({"blockIO": {"leafWeight": 100}}, "blockIO.leafWeight: cgroup v2 has no leaf weights"),
])
def test_v2_refuses_what_it_has_not(data, message):
    with pytest.raises(cgroups.CgroupError) as caught:
        v2.limit_files(parse(data))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("data, message", [
    ({"unified": {"memory.high": "1"}}, "unified: cgroup v2 files, and this machine's "
                                        "controllers are cgroup v1"),
    ({"cpu": {"idle": 1}}, "cpu.idle: honoured on cgroup v2 only"),
])
def test_v1_refuses_what_it_has_not(data, message):
    with pytest.raises(cgroups.CgroupError) as caught:
        v1.limit_files(parse(data))
    assert str(caught.value).startswith(message)


def test_a_missing_cgroup_file_is_refused_with_its_reason(tmp_path):
    """A directory without the file stands for a kernel without swap accounting."""
    with pytest.raises(cgroups.CgroupError, match=r"^memory.memsw.limit_in_bytes: not in .* on "
                                                  r"this machine: the kernel does not account "
                                                  r"swap"):
        cgroups.write_settings([("memory.memsw.limit_in_bytes", "1")], lambda _: str(tmp_path))
    with pytest.raises(cgroups.CgroupError, match="^hugetlb.2MB.limit_in_bytes: this machine "
                                                  "has no cgroup hugetlb hierarchy"):
        cgroups.write_settings([("hugetlb.2MB.limit_in_bytes", "1")], lambda _: None)


# --- on this machine ------------------------------------------------------

def _v1_mounts() -> list[str]:
    return sorted({v1._mount_points()[c] for c in v1.CONTROLLERS if c in v1._mount_points()})


@contextlib.contextmanager
def throwaway(create, top: str, roots: list[str]):
    """The cgroup ``create`` makes under the throwaway ``top``; everything
    under ``top`` in each of ``roots`` removed however the test ends."""
    group = None
    try:
        group = create()
        yield group
    finally:
        with contextlib.suppress(Exception):
            if group is not None:
                group.remove()
        for root in roots:
            cgroups.remove_tree(os.path.join(root, top.lstrip("/")))


@pytest.fixture
def v1_group():
    if not V1:
        pytest.skip("no cgroup v1 hierarchies (devices among them)")
    top = f"/pyc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with throwaway(lambda: cgroups.create_at(f"{top}/ctr"), top, _v1_mounts()) as group:
        yield group


@pytest.fixture
def v2_group():
    if not os.path.exists(f"{UNIFIED}/cgroup.procs"):
        pytest.skip("no cgroup v2 hierarchy")
    top = f"/pyc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with throwaway(lambda: v2.CgroupV2.create_at(f"{top}/ctr", root=UNIFIED), top,
                   [UNIFIED]) as group:
        yield group


@pytest.fixture
def started():
    """Processes a test starts, killed and reaped when it ends."""
    procs = []

    def start(*args, **kwargs):
        procs.append(subprocess.Popen(*args, **kwargs))
        return procs[-1]
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@needs_v1
def test_an_absolute_path_is_under_each_hierarchys_root(v1_group):
    for controller, path in v1_group.paths.items():
        assert path.startswith(f"{v1._mount_points()[controller]}/pyc-test-")
        assert path.endswith("/ctr") and os.path.isdir(path)
    assert "devices" in v1_group.paths and "freezer" in v1_group.paths


@needs_v1
def test_a_relative_path_is_under_the_runtimes_own_cgroup():
    inner = f"pyc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    own, mounts = cgroups.own_paths(), v1._mount_points()
    homes = [os.path.join(mounts[c], own[c].lstrip("/")) for c in v1.CONTROLLERS if c in mounts]
    with throwaway(lambda: cgroups.create_at(inner), inner, homes) as group:
        for controller, path in group.paths.items():
            assert path == os.path.join(mounts[controller], own[controller].lstrip("/"), inner)
    assert not any(os.path.exists(path) for path in group.paths.values())


@needs_v1
def test_v1_limits(v1_group, started):
    v1_group.apply(parse({
        "memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 32 << 20,
                   "swappiness": 0},
        "cpu": {"shares": 512, "quota": 50000, "period": 200000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 3}}))
    paths = v1_group.paths
    assert read(f"{paths['memory']}/memory.limit_in_bytes") == str(64 << 20)
    assert read(f"{paths['memory']}/memory.memsw.limit_in_bytes") == str(96 << 20)
    assert read(f"{paths['memory']}/memory.soft_limit_in_bytes") == str(32 << 20)
    assert read(f"{paths['cpu']}/cpu.shares") == "512"
    assert read(f"{paths['cpu']}/cpu.cfs_quota_us") == "50000"
    assert read(f"{paths['cpu']}/cpu.cfs_period_us") == "200000"
    assert read(f"{paths['cpuset']}/cpuset.cpus") == "0"
    assert read(f"{paths['pids']}/pids.max") == "3"
    sleeper = started(["sleep", "60"])
    v1_group.add(sleeper.pid)
    stats = v1_group.stats()
    assert stats.memory_limit == 64 << 20 and stats.pids_current == 1
    assert stats.cpu_usage_ns is not None
    assert v1_group.pids() == [sleeper.pid]


@needs_v1
def test_v1_refuses_what_the_machine_lacks(v1_group):
    if "hugetlb" not in v1._mount_points():
        with pytest.raises(cgroups.CgroupError, match="^hugetlb.2MB.limit_in_bytes: this "
                                                      "machine has no cgroup hugetlb"):
            v1_group.apply(parse({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}))
    v1_group.apply(parse({"memory": {"limit": 1 << 30, "swap": 2 << 30}}))
    with pytest.raises(cgroups.CgroupError, match=r"^memory.limit_in_bytes: the kernel refused "
                                                  r"'4294967296': Invalid argument$"):
        v1_group.apply(parse({"memory": {"limit": 4 << 30}}))  # above memory+swap
    with pytest.raises(cgroups.CgroupError, match="^cpu.rt_runtime_us: the kernel refused"):
        v1_group.apply(parse({"cpu": {"realtimeRuntime": 10 ** 9}}))


def _has_blkio_file(group, name: str) -> bool:
    return "blkio" in group.paths and os.path.exists(f"{group.paths['blkio']}/{name}")


def _whole_disk() -> tuple[int, int]:
    """The disk (not a partition) that holds the root file system."""
    dev = os.stat("/").st_dev
    sysfs = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if os.path.exists(f"{sysfs}/partition"):
        sysfs = os.path.dirname(sysfs)
    major, minor = read(f"{sysfs}/dev").split(":")
    return int(major), int(minor)


@needs_v1
def test_v1_block_io_throttles(v1_group):
    major, minor = _whole_disk()
    if not _has_blkio_file(v1_group, "blkio.throttle.read_bps_device"):
        pytest.skip("no blkio throttling on this machine")
    v1_group.apply(parse({"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 50}]}}))
    blkio = v1_group.paths["blkio"]
    assert read(f"{blkio}/blkio.throttle.read_bps_device") == f"{major}:{minor} {1 << 20}"
    assert read(f"{blkio}/blkio.throttle.write_iops_device") == f"{major}:{minor} 50"


@needs_v1
def test_v1_block_io_weight(v1_group):
    if not _has_blkio_file(v1_group, "blkio.weight"):
        pytest.skip("this machine's blkio controller has no blkio.weight (no CFQ or BFQ "
                    "weights); its refusal is checked by the test below")
    v1_group.apply(parse({"blockIO": {"weight": 300}}))
    assert read(f"{v1_group.paths['blkio']}/blkio.weight") == "300"


@needs_v1
def test_v1_block_io_weight_refused_where_missing(v1_group):
    if "blkio" not in v1_group.paths or _has_blkio_file(v1_group, "blkio.weight"):
        pytest.skip("this machine has no blkio controller, or one with weights")
    with pytest.raises(cgroups.CgroupError, match=r"^blkio.weight: not in .* on this machine: "
                                                  r"no I/O scheduler with weights"):
        v1_group.apply(parse({"blockIO": {"weight": 300}}))


#: the nodes each probe makes
NODES = {"kmsg": ["c", 1, 11], "null": ["c", 1, 3], "loop0": ["b", 7, 0], "loop1": ["b", 7, 1]}
DEVICES = {"devices": [{"allow": False, "access": "rwm"},
                       {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"},
                       {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "rw"},
                       {"allow": True, "type": "b", "major": 7, "minor": 1, "access": "r"},
                       {"allow": False, "type": "b", "major": 7, "minor": 0, "access": "r"}]}
#: all allowed but the kernel log
ALL_BUT_KMSG = {"devices": [{"allow": True, "access": "rwm"},
                            {"allow": False, "type": "c", "major": 1, "minor": 11,
                             "access": "rw"}]}
#: a loop device may be opened: then the kernel says what it says of it
ALLOWED_LOOP = ("opened", "ENXIO")


def probe(directory, group) -> dict:
    return open_nodes(directory, NODES, [f"{p}/cgroup.procs" for p in group.paths.values()])


#: what the probe says under each list of rules (a loop device the rules
#: let be opened may give ENXIO: it says what the kernel says of it)
PROBED = [(DEVICES, {"kmsg": "opened", "null": "opened", "loop0": "EPERM", "loop1": "ENXIO"}),
          (ALL_BUT_KMSG, {"kmsg": "EPERM", "null": "opened", "loop0": "ENXIO",
                          "loop1": "ENXIO"})]


def _as_probed(said: dict) -> dict:
    return {name: "ENXIO" if name.startswith("loop") and result in ALLOWED_LOOP else result
            for name, result in said.items()}


@needs_v1
@pytest.mark.parametrize("config, expected", PROBED, ids=["allow-list", "deny-list"])
def test_v1_devices(v1_group, tmp_path, config, expected):
    v1_group.apply(parse(config))
    assert _as_probed(probe(tmp_path / "nodes", v1_group)) == expected


@needs_v2
@pytest.mark.parametrize("config, expected", PROBED, ids=["allow-list", "deny-list"])
def test_v2_devices(v2_group, tmp_path, config, expected):
    v2_group.apply(parse(config))
    assert _as_probed(probe(tmp_path / "nodes", v2_group)) == expected


def _reapplied(group, tmp_path):
    group.apply(parse(DEVICES))
    group.apply(parse(ALL_BUT_KMSG))
    assert _as_probed(probe(tmp_path / "nodes", group)) == PROBED[1][1]


@needs_v1
def test_v1_devices_reapplied_replace_the_first(v1_group, tmp_path):
    _reapplied(v1_group, tmp_path)


@needs_v2
def test_v2_devices_reapplied_replace_the_first(v2_group, tmp_path):
    """The second program replaces the first; beside it, it could only narrow it."""
    _reapplied(v2_group, tmp_path)


#: writes a byte to stdout as fast as it can
BUSY = "import os\nwhile True:\n    os.write(1, b'x')\n"


def _progresses(pipe, seconds: float) -> bool:
    """Whether the process at the other end of ``pipe`` writes within ``seconds``,
    once what it wrote before is drained."""
    os.set_blocking(pipe.fileno(), False)
    with contextlib.suppress(BlockingIOError):
        while os.read(pipe.fileno(), 1 << 16):
            pass
    return bool(select.select([pipe], [], [], seconds)[0])


def _freeze_and_thaw(group, started, state_file: str, frozen_reads: str):
    busy = started([sys.executable, "-c", BUSY], stdout=subprocess.PIPE)
    group.add(busy.pid)
    assert _progresses(busy.stdout, 10)
    group.freeze()
    assert group.is_frozen()
    assert read(state_file) == frozen_reads
    assert not _progresses(busy.stdout, 0.5)
    group.thaw()
    assert not group.is_frozen()
    assert _progresses(busy.stdout, 10)


@needs_v1
def test_v1_freeze_and_thaw(v1_group, started):
    _freeze_and_thaw(v1_group, started, f"{v1_group.paths['freezer']}/freezer.state", "FROZEN")


@needs_v2
def test_v2_freeze_and_thaw(v2_group, started):
    if not os.path.exists(f"{v2_group.path}/cgroup.freeze"):
        pytest.skip("this kernel's cgroup v2 has no freezer")
    _freeze_and_thaw(v2_group, started, f"{v2_group.path}/cgroup.freeze", "1")


def _kill_all(group, started):
    """Every process dies, a frozen one too, one in a cgroup below included."""
    sleepers = [started(["sleep", "60"]) for _ in range(3)]
    for sleeper in sleepers[:2]:
        group.add(sleeper.pid)
    for name, path in group.paths.items():
        path = os.path.join(path, "below")
        os.mkdir(path)
        if name == "cpuset":
            v1._inherit_cpuset(path)
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write(str(sleepers[2].pid))
    assert group.pids() == sorted(s.pid for s in sleepers)
    group.freeze()
    group.kill_all()
    assert [s.wait(timeout=10) for s in sleepers] == [-9, -9, -9]
    assert group.pids() == []


@needs_v1
def test_v1_kill_all(v1_group, started):
    _kill_all(v1_group, started)


@needs_v2
def test_v2_kill_all(v2_group, started):
    if not os.path.exists(f"{v2_group.path}/cgroup.freeze"):
        pytest.skip("this kernel's cgroup v2 has no freezer")
    _kill_all(v2_group, started)


@needs_v1
def test_v1_remove_leaves_its_parents(v1_group, started):
    """The container's cgroup goes, with any below it and its processes;
    its parent stays for whoever else uses it, as runc leaves it."""
    sleeper = started(["sleep", "60"])
    v1_group.add(sleeper.pid)
    os.mkdir(f"{v1_group.paths['memory']}/below")
    v1_group.remove()
    assert sleeper.wait(timeout=10) == -9
    top = os.path.basename(os.path.dirname(v1_group.paths["memory"]))
    assert glob.glob(f"/sys/fs/cgroup/*/{top}/ctr") == []
    assert all(os.path.isdir(os.path.dirname(path)) for path in v1_group.paths.values())


@needs_v1
def test_v1_a_sibling_outlives_its_neighbour(v1_group, started):
    """Two containers in one parent (as podman's libpod_parent holds them):
    removing one leaves the other and its processes alone."""
    sleeper = started(["sleep", "60"])
    parent = os.path.dirname(v1_group.paths["memory"])
    sibling = cgroups.create_at(f"/{os.path.basename(parent)}/sibling")  # the fixture's top
    sibling.add(sleeper.pid)
    v1_group.remove()
    assert sibling.pids() == [sleeper.pid]
    assert all(os.path.isdir(path) for path in sibling.paths.values())
    sibling.remove()
    assert sleeper.wait(timeout=10) == -9


@needs_v2
def test_v2_remove_leaves_its_parent(v2_group, started):
    sleeper = started(["sleep", "60"])
    v2_group.add(sleeper.pid)
    v2_group.remove()
    assert sleeper.wait(timeout=10) == -9
    assert not os.path.exists(v2_group.path)
    assert os.path.isdir(os.path.dirname(v2_group.path))


@needs_v1
def test_reopened_from_its_recorded_paths(v1_group, started):
    sleeper = started(["sleep", "60"])
    v1_group.add(sleeper.pid)
    again = cgroups.reopen(json.loads(json.dumps(v1_group.paths)), in_share=False)
    assert again.pids() == [sleeper.pid]
    again.remove()
    assert sleeper.wait(timeout=10) == -9
    assert not any(os.path.exists(path) for path in v1_group.paths.values())


#: On a pure cgroup v2 machine (as this script's mount namespace shows it):
#: the cgroup made at the path given, limited, frozen, thawed, removed.
PURE_V2 = """
import json, subprocess, sys
from container import cgroups
from container.cgroups import resources
from container.oci.reader import Reader
group = cgroups.create_at(sys.argv[1])
sleeper = subprocess.Popen(["sleep", "60"])
try:
    group.add(sleeper.pid)
    group.apply(resources.parse(Reader({"unified": {"cgroup.max.descendants": "3"}}, "r")))
    with open(f"{group.path}/cgroup.max.descendants") as f:
        descendants = f.read().strip()
    group.freeze()
    frozen = group.is_frozen()
    group.thaw()
    said = {"path": group.path, "pids": group.pids() == [sleeper.pid], "frozen": frozen,
            "thawed": not group.is_frozen(), "descendants": descendants}
finally:
    group.remove()
said["killed"] = sleeper.wait() == -9
print(json.dumps(said))
"""


@needs_v2
def test_on_a_pure_cgroup2_machine():
    """This host may be hybrid: a private mount namespace that shows only
    its cgroup2 hierarchy makes create_at take the v2 driver, as runc's fs2
    places it, and ``unified`` is honoured there."""
    top = f"/pyc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && "
             'exec "$@"', "-", sys.executable, "-c", PURE_V2, f"{top}/ctr"],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "path": f"/sys/fs/cgroup{top}/ctr", "pids": True, "frozen": True, "thawed": True,
            "descendants": "3", "killed": True}
        assert not os.path.exists(f"{UNIFIED}{top}/ctr")
    finally:
        cgroups.remove_tree(f"{UNIFIED}{top}")

