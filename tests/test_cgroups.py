"""Both cgroup drivers against the machine's real hierarchies."""

import os
import subprocess

import pytest

from container import cgroups
from container.cgroups import v1, v2
from container.spec import Limits


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def has_v1_memory():
    return os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")


@pytest.mark.skipif(not has_v1_memory(), reason="no cgroup v1 memory hierarchy")
def test_v1_limits_stats_and_removal(sleeper):
    group = v1.CgroupV1.create(f"test-{os.getpid()}")
    try:
        assert "/pycontainer/" in group.paths["memory"]
        own = cgroups.own_paths()["memory"]
        assert group.paths["memory"].startswith(f"/sys/fs/cgroup/memory{own.rstrip('/')}/")
        group.apply(Limits(memory=64 << 20, cpus=0.5, cpu_shares=512, cpuset_cpus="0",
                           pids=10).as_resources())
        group.add(sleeper.pid)
        assert group.pids() == [sleeper.pid]
        share = cgroups.share_of(group.paths["cpu"])  # the container's and its daemon's
        with open(f"{share}/cpu.cfs_quota_us") as f:
            assert f.read().strip() == "50000"
        stats = group.stats()
        assert stats.memory_limit == 64 << 20
        assert stats.pids_current == 1
        assert stats.memory_usage is not None and stats.cpu_usage_ns is not None
    finally:
        group.remove()
    assert sleeper.wait(timeout=5) == -9  # remove kills what is left
    assert not any(os.path.exists(cgroups.share_of(p)) for p in group.paths.values())


@pytest.mark.skipif(not has_v1_memory(), reason="no cgroup v1 memory hierarchy")
def test_v1_union_daemon_beside_the_container(sleeper):
    """The daemon goes in the container's share with a memory limit of its
    own; removing the container's cgroups moves it out, alive (it may still
    be unmounting), and removes them all."""
    group = v1.CgroupV1.create(f"test-{os.getpid()}")
    try:
        group.add_union_daemon(sleeper.pid, 128 << 20)
        union = cgroups.union_of(group.paths["memory"])
        with open(f"{union}/cgroup.procs") as f:
            assert f.read().split() == [str(sleeper.pid)]
        with open(f"{union}/memory.limit_in_bytes") as f:
            assert int(f.read()) == 128 << 20
        assert group.pids() == []  # not one of the container's processes
    finally:
        group.remove()
    assert sleeper.poll() is None
    assert not any(os.path.exists(cgroups.share_of(p)) for p in group.paths.values())


def test_union_memory_is_tied_to_the_containers():
    assert cgroups.union_memory(None) is None
    assert cgroups.union_memory(64 << 20) == (64 << 20) + cgroups.UNION_MEMORY_BASE


def test_v2_driver_on_the_unified_hierarchy(sleeper):
    root = "/sys/fs/cgroup/unified" if not cgroups.is_pure_v2() else cgroups.ROOT
    if not os.path.exists(f"{root}/cgroup.procs"):
        pytest.skip("no cgroup v2 hierarchy")
    group = v2.CgroupV2.create(f"test-{os.getpid()}", root=root)
    try:
        group.add(sleeper.pid)
        assert group.pids() == [sleeper.pid]
        assert group.stats().cpu_usage_ns is not None
        with open(f"{root}/cgroup.controllers") as f:
            if "memory" not in f.read().split():
                with pytest.raises(cgroups.CgroupError, match="memory controller"):
                    group.apply(Limits(memory=64 << 20).as_resources())
    finally:
        group.remove()
    assert sleeper.wait(timeout=5) == -9
    assert not os.path.exists(group.path)


def test_v2_limit_files():
    files = dict(v2.limit_files(Limits(memory=64 << 20, memory_swap=96 << 20, cpus=1.5,
                                       cpu_shares=1024, cpuset_cpus="0-1",
                                       pids=100).as_resources()))
    assert files == {"memory.max": str(64 << 20), "memory.swap.max": str(32 << 20),
                     "cpu.max": "150000 100000", "cpu.weight": "39",
                     "cpuset.cpus": "0-1", "pids.max": "100"}
    unlimited_swap = Limits(memory=1 << 30, memory_swap=-1).as_resources()
    assert dict(v2.limit_files(unlimited_swap))["memory.swap.max"] == "max"
    assert v2.limit_files(Limits().as_resources()) == []
