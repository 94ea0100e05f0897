"""Docker's default seccomp profile, tried with a static probe
(tests/probe.c) that makes one system call and prints its errno (0
for success): inside real containers, and on the host under filters built
for other capability sets."""

import errno
import subprocess

import pytest


from container.oci import seccomp as oci_seccomp
from container.oci.reader import Reader
from container.seccomp_profile import SYS_ADMIN, oci
from container.security import DEFAULT_CAPABILITIES

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
I386_GETPID, I386_CLONE, I386_UNSHARE = 20, 120, 310  # arch/x86/entry/syscalls


@pytest.fixture
def probe(pyc, probe_dir):
    """Run probe calls (each a list of arguments) in one container; their
    errnos, in order."""
    def run(*calls):
        script = "; ".join("/probe/probe " + " ".join(map(str, call)) for call in calls)
        done = pyc("run", "--rm", "--network", "none", "-v", f"{probe_dir}:/probe:ro",
                   "busybox", "sh", "-c", script)
        assert done.returncode == 0, done.stderr
        return [int(line) for line in done.stdout.split()]
    return run


def test_namespaces_cannot_be_made(probe, pyc):
    assert probe(("clone", CLONE_NEWUSER), ("clone", CLONE_NEWNET), ("clone", 0),
                 ("clone3", CLONE_NEWUSER)) == [errno.EPERM, errno.EPERM, 0, errno.ENOSYS]
    done = pyc("run", "--rm", "--network", "none", "busybox", "unshare", "-U", "true")
    assert done.returncode != 0 and "Operation not permitted" in done.stderr


def test_io_uring_is_refused(probe):
    assert probe(("io_uring_setup",)) == [errno.EPERM]


def test_personality_takes_only_dockers_values(probe, pyc):
    read_implies_exec, addr_no_randomize, per_linux32 = 0x400000, 0x40000, 0x8
    assert probe(("personality", read_implies_exec), ("personality", addr_no_randomize),
                 ("personality", 0), ("personality", per_linux32)) \
        == [errno.EPERM, errno.EPERM, 0, 0]


def test_vsock_sockets_are_refused(probe):
    af_unix, af_vsock = 1, 40
    assert probe(("socket", af_vsock), ("socket", af_unix)) == [errno.EPERM, 0]


def test_i386_calls_are_filtered_as_native_ones(probe):
    assert probe(("i386", I386_GETPID), ("i386", I386_UNSHARE, CLONE_NEWUSER),
                 ("i386", I386_CLONE, CLONE_NEWUSER)) == [0, errno.EPERM, errno.EPERM]


def test_a_normal_workload_runs(pyc, probe_dir):
    """Shell, files, pipes, busybox applets, a 32-bit call, TCP over loopback."""
    done = pyc("run", "--rm", "--network", "none", "-v", f"{probe_dir}:/probe:ro",
               "busybox", "sh", "-c",
               "grep Seccomp: /proc/self/status; ls /bin | grep -c . >/dev/null;"
               "echo a > /tmp/f && cat /tmp/f | wc -l; linux32 uname -m;"
               "nc -l -p 7000 > /tmp/got &"
               "until echo hello | nc 127.0.0.1 7000 2>/dev/null; do sleep 0.1; done;"
               f"wait; cat /tmp/got; /probe/probe i386 {I386_GETPID}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Seccomp:", "2", "1", "i686", "hello", "0"]


def test_entries_follow_the_capability_set(probe_dir):
    """With CAP_SYS_ADMIN, docker's profile lets clone and clone3 make
    namespaces; without it, it does not."""
    def errno_under(seccomp, *call):
        done = subprocess.run([probe_dir / "probe", *map(str, call)], preexec_fn=seccomp.load,
                              capture_output=True, text=True, check=True)
        return int(done.stdout)

    confined, admin = (oci_seccomp.parse(Reader(oci(caps), "linux.seccomp")).compile()
                       for caps in (DEFAULT_CAPABILITIES, DEFAULT_CAPABILITIES | {SYS_ADMIN}))
    assert errno_under(confined, "clone", CLONE_NEWUSER) == errno.EPERM
    assert errno_under(confined, "clone3", 0) == errno.ENOSYS
    assert errno_under(admin, "clone", CLONE_NEWUSER) == 0
    assert errno_under(admin, "clone3", CLONE_NEWUSER) == 0
