"""A container pays for the work it makes its union daemon do (issue 12
item 7): the daemon's CPU counts against the container's --cpus, its memory
(and the page cache it dirties in the upper) is bounded by a limit of its
own, what it holds open for the container is bounded, and a container at its
memory limit is still served, stopped and removed."""

import errno
import os
import resource
import shutil
import time
import uuid
from pathlib import Path

import pytest

from container import cgroups, images, runtime
from helpers import wait_for

#: file work for the daemon: each stat and listing of /bin is served by it
FILE_WORK = "while :; do ls -l /bin /etc >/dev/null; done"


def _daemon_cgroup(pid: int, controller: str) -> str:
    """The directory of ``pid``'s cgroup in the v1 hierarchy ``controller``."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return f"/sys/fs/cgroup/{controller}{path}"
    raise AssertionError(f"no {controller} cgroup for {pid}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(pyc, *args: str) -> runtime.State:
    name = pyc.name()
    started = pyc("run", "-d", "--name", name, "--network", "none", *args)
    assert started.returncode == 0, started.stderr
    return runtime.State.load(name)


def test_the_daemons_cpu_counts_against_the_containers_quota(pyc):
    state = _start(pyc, "--cpus", "0.2", "busybox", "sh", "-c", FILE_WORK)
    group = cgroups.reopen(state.cgroup_paths)
    time.sleep(0.5)
    start = time.monotonic()
    container_before, daemon_before = _container_cpu(group), _cpu_seconds(state.daemon_pid)
    time.sleep(4)
    wall = time.monotonic() - start
    container = _container_cpu(group) - container_before
    daemon = _cpu_seconds(state.daemon_pid) - daemon_before
    assert daemon > 0.02 * wall, "the workload gave the daemon no work"
    assert (container + daemon) / wall < 0.2 * 1.35, \
        f"container {container / wall:.2f} + daemon {daemon / wall:.2f} of a core under --cpus 0.2"


def _container_cpu(group) -> float:
    """CPU seconds used by the container's own processes (not its daemon)."""
    with open(f"{group.paths['cpuacct']}/cpuacct.usage") as f:
        return int(f.read()) / 1e9


def test_the_daemons_memory_and_dirty_pages_are_bounded(pyc):
    state = _start(pyc, "--memory", "64m", "busybox", "sh", "-c",
                   "dd if=/dev/zero of=/big bs=1M count=512 2>/dev/null && sync && echo wrote; "
                   "sleep 60")
    assert wait_for(lambda: "wrote" in pyc("logs", state.name).stdout, seconds=120)
    memory = _daemon_cgroup(state.daemon_pid, "memory")
    limit = int(open(f"{memory}/memory.limit_in_bytes").read())
    assert limit == cgroups.union_memory(64 << 20)
    peak = int(open(f"{memory}/memory.max_usage_in_bytes").read())
    assert peak <= limit, "the daemon went past its own limit"
    with open(f"{memory}/memory.stat") as f:
        cache = dict(line.split() for line in f)["cache"]
    assert int(cache) <= limit  # the upper's page cache is the daemon's to pay for
    size = os.stat(os.path.join(state.data_dir, "upper", "big")).st_size
    assert size == 512 << 20, "writes were lost under the daemon's limit"


def test_what_the_daemon_holds_open_is_bounded(pyc):
    state = _start(pyc, "--memory", "64m", "busybox", "sleep", "60")
    allowed = cgroups.union_memory(64 << 20) // runtime.OPEN_FILE_COST
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < allowed + 100:
        pytest.skip(f"the open-files limit ({hard}) is below what the daemon allows")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opened = []
    try:
        with pytest.raises(OSError) as refused:
            while len(opened) <= allowed:
                opened.append(os.open(f"{state.rootfs}/etc/passwd", os.O_RDONLY))
        assert refused.value.errno == errno.EMFILE
        assert allowed - 20 <= len(opened) <= allowed  # the container holds a few itself
        for fd in opened[:10]:
            os.close(fd)
        del opened[:10]
        opened.append(os.open(f"{state.rootfs}/etc/passwd", os.O_RDONLY))  # room again
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert pyc("exec", state.name, "cat", "/etc/hostname").returncode == 0


def test_a_container_at_its_memory_limit_is_still_served_stopped_and_removed(pyc):
    # The hog is a subshell, bigger than the container's init (a Python
    # process), so the OOM killer takes it, again and again.
    state = _start(pyc, "--memory", "96m", "--memory-swap", "96m", "busybox", "sh", "-c",
                   "while :; do (x=$(head -c 300000000 /dev/zero | tr '\\0' a)); done")
    group = cgroups.reopen(state.cgroup_paths)
    assert wait_for(lambda: (group.stats().oom_kills or 0) >= 2, seconds=60)
    served = pyc("exec", state.name, "cat", "/etc/hostname")
    assert served.returncode == 0 and served.stdout.strip(), served.stderr
    assert pyc("stop", "-t", "2", state.name).returncode == 0
    assert pyc("rm", state.name).returncode == 0
    assert not os.path.exists(state.state_dir)


@pytest.fixture
def many_files_image(image_root):
    """The busybox image with 100,000 more files in 100 directories."""
    name = f"many{uuid.uuid4().hex[:8]}"
    root = Path(images.STORE) / name / "rootfs"
    shutil.copytree(image_root, root, symlinks=True)
    for d in range(100):
        (root / "many" / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (root / "many" / f"d{d}" / f"f{i}").touch()
    try:
        yield name
    finally:
        shutil.rmtree(root.parent)


@pytest.mark.long
def test_the_inodes_a_container_makes_its_daemon_hold_are_bounded(long_run, pyc, many_files_image):
    """The kernel caches an inode for each file the container looks up, and
    the daemon a node for each: the kernel's is charged to the container,
    whose limit makes the kernel forget them, so the daemon's stay within
    its own limit however many files the container walks."""
    state = _start(pyc, "--memory", "32m", many_files_image, "sleep", "600")
    for _ in range(2):
        walked = pyc("exec", state.name, "sh", "-c",
                     "ls -lR /many >/dev/null && find /many -type f | wc -l", timeout=300)
        assert walked.stdout.strip() == "100000", walked.stderr
    memory = _daemon_cgroup(state.daemon_pid, "memory")
    with open(f"{memory}/memory.stat") as f:
        anonymous = int(dict(line.split() for line in f)["rss"])
    assert anonymous < cgroups.union_memory(32 << 20) * 3 // 4, \
        f"the daemon holds {anonymous >> 20} MiB for a container limited to 32 MiB"
