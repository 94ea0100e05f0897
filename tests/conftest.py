"""Fixtures that mount real unions and always clean up after them.

Every read-only branch a test mounts is snapshotted (content, metadata,
xattrs) at mount time and compared after the unmount: a test that changed a
read-only branch fails, whatever it asserted itself.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pyroute2 import IPRoute

from helpers import PYUNION, force_unmount, mounted, process_gone, pyunion, snapshot, wait_for
from container import images, networks, runtime
from unionfs import daemon, forkserver, launcher, wire


_ALL_MOUNTPOINTS: list[Path] = []  # every mount point of this run, checked at its end


class Unions:
    """Mounts made by one test; all are unmounted when it ends."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self._mounts: list[tuple[Path, dict[Path, dict]]] = []

    def mount(self, branches: list[Path], *options: str, rw: bool = False,
              mnt: Path | None = None, changed_below: bool = False) -> Path:
        """Mount ``branches`` (top first); the top one is writable if ``rw``.
        With ``changed_below`` the test changes the read-only branches on
        purpose (``udba``): they are not checked."""
        modes = ["rw" if rw and i == 0 else "ro" for i in range(len(branches))]
        br = ":".join(f"{b}={m}" for b, m in zip(branches, modes))
        mnt = mnt or self.new_mountpoint()
        ro = [b for b, m in zip(branches, modes) if m == "ro"]
        self.track(mnt, [] if changed_below else ro)
        pyunion("mount", "-o", ",".join([f"br={br}", *options]), str(mnt))
        assert mounted(mnt, "fuse.pyunion")
        return mnt

    def unmount(self, mnt: Path) -> None:
        """Unmount one mount now (a writable branch serves one mount at a time)."""
        pyunion("umount", str(mnt))

    def mount_overlay_style(self, lower: list[Path], upper: Path, work: Path,
                            *options: str, mnt: Path | None = None) -> Path:
        mnt = mnt or self.new_mountpoint()
        self.track(mnt, lower)
        pyunion("mount", "-o", ",".join([f"lowerdir={':'.join(map(str, lower))},"
                                         f"upperdir={upper},workdir={work}", *options]), str(mnt))
        return mnt

    def new_mountpoint(self) -> Path:
        mnt = self.tmp_path / f"mnt{len(self._mounts)}"
        mnt.mkdir()
        return mnt

    def track(self, mnt: Path, read_only_branches: list[Path]) -> None:
        """Take care of a mount made some other way (and check its branches)."""
        _ALL_MOUNTPOINTS.append(mnt)
        self._mounts.append((mnt, {b: snapshot(b) for b in read_only_branches}))

    def unmount_all(self) -> None:
        """Unmount every mount, then say what went wrong (one failure must
        not leave the later mounts behind)."""
        problems = []
        for mnt, before in self._mounts:
            if mounted(mnt):
                pid = daemon.pid_of(str(mnt.resolve()))
                pyunion("umount", str(mnt), check=False)
                force_unmount(mnt)
                if pid is not None and not wait_for(lambda: process_gone(pid)):
                    problems.append(f"daemon {pid} outlived its mount")
            problems += [f"read-only branch {branch} changed"
                         for branch, snap in before.items() if snapshot(branch) != snap]
        assert not problems, problems


@pytest.fixture
def world_readable_dir():
    """A directory another user can reach (pytest's tmp_path is root's only)."""
    path = tempfile.mkdtemp(prefix="pyunion-test-")
    os.chmod(path, 0o755)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path)


@pytest.fixture
def unions(tmp_path):
    made = Unions(tmp_path)
    try:
        yield made
    finally:
        made.unmount_all()


@pytest.fixture
def long_run(request):
    """Skip a long test unless ``-m long`` or ``PYUNION_LONG=1`` asks for it."""
    if not (os.environ.get("PYUNION_LONG") == "1"
            or "long" in (request.config.getoption("markexpr") or "")):
        pytest.skip("long run: give -m long or PYUNION_LONG=1")


@pytest.fixture(scope="session", autouse=True)
def fork_server_stopped():
    """Stop the fork server this run started for its ``pyunion``: the one
    named after this code and the launcher's interpreter, if it is not the
    one that was running before the run (that one is not ours)."""
    with open(PYUNION) as f:
        interpreter = f.readline().removeprefix("#!").split()[0]
    path = wire.socket_path(launcher.package_dir(), interpreter)
    before = forkserver.serving(path)
    yield
    after = forkserver.serving(path)
    if after not in (None, before):
        os.kill(after, signal.SIGTERM)
        assert wait_for(lambda: process_gone(after))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any test left a union of its own mounted."""
    left = [str(mnt) for mnt in _ALL_MOUNTPOINTS if mounted(mnt)]
    if left:
        session.config.get_terminal_writer().line(f"mounts left behind: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- containers ---------------------------------------------------------------

#: Containers run in a network namespace of their own that stands in for
#: the host, so no test touches the machine's own network: their bridges,
#: veths and published ports live there.  It is held by a sleeping process
#: (no mount needed) and goes with it at the end.  Both commands are filled
#: in, in place, by the ``stand_in_host`` fixture.
IN_TEST_HOST: list[str] = []
PYCONTAINER: list[str] = []
#: the CLI in this test run's own interpreter, never handed to the fork
#: server: for a test that traces the process running the command
PYCONTAINER_HERE: list[str] = []


@pytest.fixture(scope="session")
def image_root():
    return Path(images.build_busybox())


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory):
    """A directory holding the compiled probe (tests/probe.c), to bind into
    containers."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probe")
    out = tmp_path_factory.mktemp("probe")
    subprocess.run(["gcc", "-static", "-O2", "-o", out / "probe",
                    Path(__file__).with_name("probe.c")], check=True)
    return out


@pytest.fixture(scope="session")
def stand_in_host():
    """The stand-in host's network namespace, with its loopback up."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        assert wait_for(lambda: os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino)
        with IPRoute(netns=path) as ip:
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        IN_TEST_HOST[:] = ["nsenter", f"--net={path}"]
        PYCONTAINER[:] = [*IN_TEST_HOST, str(Path(sys.executable).parent / "pycontainer")]
        PYCONTAINER_HERE[:] = [*IN_TEST_HOST, sys.executable, "-c",
                               "import sys; from container.cli import main; "
                               "sys.argv[0] = 'pycontainer'; main()"]
        yield path
    finally:
        holder.kill()
        holder.wait()


def stand_in_netns() -> str:
    return IN_TEST_HOST[1].removeprefix("--net=")


def stand_in_host_links() -> list[str]:
    with IPRoute(netns=stand_in_netns()) as ip:
        return sorted(link.get_attr("IFLA_IFNAME") for link in ip.get_links())


def leftovers(names):
    """What the containers ``names`` left behind: mounts, cgroups, address
    leases, and (in this run's stand-in host) links.  Only the test's own
    containers are looked at, so test runs side by side don't fail each other."""
    def ours(path) -> bool:
        return any(name in str(path) for name in names)

    with open("/proc/self/mountinfo", errors="surrogateescape") as f:  # names are bytes
        mounts = [line.split(" ")[4] for line in f if "pycontainer-" in line]
    # glob.glob, unlike Path.glob, goes on past a cgroup removed meanwhile
    groups = glob.glob("/sys/fs/cgroup/*/**/pycontainer/*", recursive=True)
    leases = [str(p) for p in Path(networks.LEASE_DIR).glob("*/*") if _owner(p) in names]
    leases += [str(p) for p in Path(networks.LEASE_DIR).glob("*")  # of removed networks
               if p.is_dir() and p.name not in {n.name for n in networks.all_networks()}]
    return ([m for m in mounts if ours(m)], [g for g in groups if ours(g)], leases,
            [n for n in stand_in_host_links() if n != "lo" and not _held_bridge(n)])


def _held_bridge(link: str) -> bool:
    """The default network's bridge, while a container (of another test
    run: leases are the machine's) still holds an address on it."""
    default = networks.get(networks.DEFAULT)
    return link == default.bridge and bool(networks.holders(default))


def _owner(lease: Path) -> str | None:
    try:
        return lease.read_text(errors="replace")
    except FileNotFoundError:  # another run's container let it go
        return None


@pytest.fixture
def pyc(image_root, stand_in_host):
    """Run the CLI; every container a test names is removed after it."""
    names = []
    image_before = snapshot(image_root)

    def run(*args, check=False, timeout=60, **kwargs):
        return subprocess.run([*PYCONTAINER, *args], capture_output=True, text=True,
                              timeout=timeout, check=check, **kwargs)

    def name():
        names.append(f"t{uuid.uuid4().hex[:10]}")
        return names[-1]

    run.name = name
    run.names = names
    yield run
    for n in names:
        if os.path.exists(os.path.join(runtime.STATE_DIR, n)):  # not removed by the test
            run("rm", "-f", n)
    assert leftovers(names) == ([], [], [], [])
    assert snapshot(image_root) == image_before, "the image changed"
