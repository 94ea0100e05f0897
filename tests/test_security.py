"""What a container's command may do: capabilities, no_new_privs, seccomp,
rlimits (checked from inside real containers)."""

import resource

from container.security import DEFAULT_CAPABILITIES, NOFILE

DOCKER_DEFAULT_CAPS = "00000000a80425fb"


def status_of(pyc, *args):
    done = pyc("run", "--rm", *args, "busybox", "sh", "-c",
               "grep -E '^(Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status; ulimit -n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    return dict(line.split(":\t") for line in lines if ":\t" in line), lines[-2]


def test_root_in_a_container_has_dockers_default_capabilities(pyc):
    assert sum(1 << c for c in DEFAULT_CAPABILITIES) == int(DOCKER_DEFAULT_CAPS, 16)
    status, nofile = status_of(pyc)
    for field in ("CapPrm", "CapEff", "CapBnd"):
        assert status[field] == DOCKER_DEFAULT_CAPS, field
    assert status["CapInh"] == status["CapAmb"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert int(nofile) == min(NOFILE, hard)


def test_another_user_has_no_capabilities_and_seccomp_can_be_turned_off(pyc):
    status, _ = status_of(pyc, "-u", "1000", "--security-opt", "seccomp=unconfined")
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
    assert status["CapBnd"] == DOCKER_DEFAULT_CAPS
    assert status["Seccomp"] == "0"


def test_privileged_operations_are_refused(pyc):
    done = pyc("run", "--rm", "busybox", "sh", "-c",
               "mount -t tmpfs none /mnt; echo 1 > /proc/sys/kernel/domainname;"
               "cat /proc/timer_list | wc -c")
    said = done.stdout + done.stderr
    assert "permission denied" in said.lower()
    assert "Read-only file system" in said
    assert done.stdout.split()[-1] == "0"  # masked


def test_unknown_security_option(pyc):
    done = pyc("run", "--rm", "--security-opt", "apparmor=x", "busybox", "true")
    assert done.returncode == 125 and "not supported" in done.stderr
