"""``linux.seccomp``: what a bundle may say (each refusal in one line), and
what the compiled filter does to a process that loads it, tried with the
static probe (tests/probe.c) exec'd under it: podman's real profile, each
action, the argument tests, and the same profile under runc side by side."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import seccomp as libseccomp

import runc_as_docker
from container.oci.reader import ConfigError, Reader
from container.oci.seccomp import Action, Arg, Rule, Seccomp, parse

PODMAN = json.loads((Path(__file__).parent / "data" / "podman-seccomp.json").read_text())
SYS_GETPID, SYS_GETPPID, SYS_ADD_KEY, SYS_KCMP = 39, 110, 248, 312  # x86_64
I386_GETPID, I386_VM86 = 20, 113
READ_IMPLIES_EXEC = 0x400000
KILLED_BY_SIGSYS = -signal.SIGSYS


def read(section: dict) -> Seccomp:
    return parse(Reader(section, "linux.seccomp"))


def allowing(*syscalls: dict, **keys) -> Seccomp:
    """A filter that allows every call but the rules ``syscalls`` name."""
    return read({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(syscalls), **keys})


@pytest.fixture
def probe(probe_dir):
    """Run the probe under a filter: its errno (0 for success), or the
    negated signal that killed it."""
    def run(seccomp: Seccomp | None, *call) -> int:
        load = None if seccomp is None else seccomp.compile().load
        done = subprocess.run([probe_dir / "probe", *map(str, call)], preexec_fn=load,
                              capture_output=True, text=True)
        return int(done.stdout) if done.returncode == 0 else done.returncode
    return run


# -- reading -------------------------------------------------------------------

def test_podmans_profile_is_read_whole():
    seccomp = read(PODMAN)
    assert seccomp.default == Action("ERRNO", errno.ENOSYS)
    assert seccomp.architectures == ("X86_64", "X86", "X32")
    assert len(seccomp.rules) == len(PODMAN["syscalls"])
    assert seccomp.rules[0].action == Action("ERRNO", errno.EPERM)
    assert seccomp.rules[2] == Rule(("personality",), Action("ALLOW"), (Arg(0, "EQ", 0),))
    assert seccomp.rules[6].args == (Arg(0, "EQ", 0xFFFFFFFF),)


def test_errno_and_trace_return_eperm_unless_told():
    seccomp = read({"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["kcmp"], "action": "SCMP_ACT_TRACE"},
                                 {"names": ["kcmp"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
                                 {"names": ["kcmp"], "action": "SCMP_ACT_KILL"}]})
    assert seccomp.default == Action("ERRNO", errno.EPERM)
    assert [rule.action for rule in seccomp.rules] == [
        Action("TRACE", errno.EPERM), Action("TRACE", 7), Action("KILL")]


def test_flags_absent_mean_runcs_default_and_listed_ones_are_kept():
    assert allowing().flags == ("SECCOMP_FILTER_FLAG_SPEC_ALLOW",)
    assert allowing(flags=[]).flags == ()
    assert allowing(flags=["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC"]).flags \
        == ("SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC")


KCMP = {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO"}


@pytest.mark.parametrize("section, message", [
    ({}, "linux.seccomp.defaultAction: required"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"},
     "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY: seccomp notify is not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
     "linux.seccomp.listenerPath: seccomp notify is not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"},
     "linux.seccomp.listenerMetadata: seccomp notify is not supported"),
    ({"defaultAction": "SCMP_ACT_PANIC"},
     "linux.seccomp.defaultAction: unknown action SCMP_ACT_PANIC"),
    ({"defaultAction": "ALLOW"}, "linux.seccomp.defaultAction: unknown action ALLOW"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
     "linux.seccomp.defaultErrnoRet: goes only with SCMP_ACT_ERRNO or SCMP_ACT_TRACE"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096},
     "linux.seccomp.defaultErrnoRet: must be from 0 to 4095"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
     "linux.seccomp.defaultErrnoRet: must be from 0 to 4095"),
    ({"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 65536},
     "linux.seccomp.defaultErrnoRet: must be from 0 to 65535"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_VAX"]},
     "linux.seccomp.architectures[1]: SCMP_ARCH_VAX is not an architecture the installed "
     "libseccomp knows"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]},
     "linux.seccomp.architectures[0]: x86_64 is not an architecture the installed libseccomp "
     "knows"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NATIVE"]},
     "linux.seccomp.architectures[0]: SCMP_ARCH_NATIVE is not an architecture the installed "
     "libseccomp knows"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG", "FLAG_FAST"]},
     "linux.seccomp.flags[1]: unknown flag FLAG_FAST"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "seccompProfile": "default"},
     "linux.seccomp.seccompProfile: not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{**KCMP, "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY: seccomp notify is not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]},
     "linux.seccomp.syscalls[0].names: must name at least one call"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [KCMP, {**KCMP, "names": ["kcmp", ""]}]},
     "linux.seccomp.syscalls[1].names[1]: must not be empty"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kcmp"]}]},
     "linux.seccomp.syscalls[0].action: required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{**KCMP, "action": "SCMP_ACT_LOG",
                                                       "errnoRet": 1}]},
     "linux.seccomp.syscalls[0].errnoRet: goes only with SCMP_ACT_ERRNO or SCMP_ACT_TRACE"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{**KCMP, "comment": "why"}]},
     "linux.seccomp.syscalls[0].comment: not supported"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].index: must be from 0 to 5"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].value: must be from 0 to 2**64-1"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "value": 1, "valueTwo": 1 << 64,
                                      "op": "SCMP_CMP_MASKED_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].valueTwo: must be from 0 to 2**64-1"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].value: required"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XOR"}]}]},
     "linux.seccomp.syscalls[0].args[0].op: unknown operator SCMP_CMP_XOR"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "value": 1, "op": "EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].op: unknown operator EQ"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{**KCMP, "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ",
                                      "mask": 1}]}]},
     "linux.seccomp.syscalls[0].args[0].mask: not supported"),
])
def test_refusals(section, message):
    with pytest.raises(ConfigError) as refused:
        read(section)
    assert str(refused.value) == message


@pytest.mark.skipif(hasattr(libseccomp.Attr, "CTL_WAITKILL"),
                    reason="this libseccomp can set the flag")
def test_a_flag_this_libseccomp_cannot_set_is_refused():
    with pytest.raises(ConfigError) as refused:
        allowing(flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"])
    assert str(refused.value) == ("linux.seccomp.flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
                                  " is not supported by the installed libseccomp or this kernel")


def test_rules_libseccomp_refuses_are_refused_at_compile_time():
    """The same call and tests with two actions: libseccomp cannot have both."""
    test = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]
    seccomp = allowing({**KCMP, "args": test}, {**KCMP, "action": "SCMP_ACT_LOG", "args": test})
    with pytest.raises(ConfigError) as refused:
        seccomp.compile()
    assert str(refused.value).startswith(
        "linux.seccomp.syscalls[1].names: libseccomp refuses the rule for kcmp: ")


# -- behaviour: podman's profile -------------------------------------------------

def test_podmans_profile(probe):
    podman = read(PODMAN)
    calls = {
        "the query of personality, allowed by value": ("personality", 0xFFFFFFFF),
        "a personality podman does not list": ("personality", READ_IMPLIES_EXEC),
        "a call podman does not list": ("syscall", SYS_ADD_KEY),
        "a call listed with errnoRet 1": ("syscall", SYS_KCMP, 0, 0, 99),
        "an i386 call allowed": ("i386", I386_GETPID),
        "an i386 call listed with errnoRet 1": ("i386", I386_VM86),
    }
    unfiltered = {what: probe(None, *call) for what, call in calls.items()}
    assert unfiltered == {
        "the query of personality, allowed by value": 0,
        "a personality podman does not list": 0,
        "a call podman does not list": errno.EFAULT,
        "a call listed with errnoRet 1": errno.ESRCH,
        "an i386 call allowed": 0,
        "an i386 call listed with errnoRet 1": errno.ENOSYS,
    }
    assert {what: probe(podman, *call) for what, call in calls.items()} == {
        "the query of personality, allowed by value": 0,
        "a personality podman does not list": errno.ENOSYS,  # its defaultErrnoRet
        "a call podman does not list": errno.ENOSYS,
        "a call listed with errnoRet 1": errno.EPERM,
        "an i386 call allowed": 0,
        "an i386 call listed with errnoRet 1": errno.EPERM,
    }


@pytest.mark.parametrize("action, outcome", [
    ("SCMP_ACT_ALLOW", 0),
    ("SCMP_ACT_LOG", 0),  # allowed, and logged by the kernel
    ("SCMP_ACT_TRACE", errno.ENOSYS),  # with no tracer the call fails
    ("SCMP_ACT_KILL", KILLED_BY_SIGSYS),
    ("SCMP_ACT_KILL_THREAD", KILLED_BY_SIGSYS),  # the probe's only thread
    ("SCMP_ACT_KILL_PROCESS", KILLED_BY_SIGSYS),
    ("SCMP_ACT_TRAP", KILLED_BY_SIGSYS),  # SIGSYS, which the probe does not catch
])
def test_each_action(probe, action, outcome):
    seccomp = allowing({"names": ["getppid"], "action": action})
    assert probe(seccomp, "syscall", SYS_GETPPID) == outcome


def test_the_default_action_and_errno(probe):
    seccomp = allowing({"names": ["add_key"], "action": "SCMP_ACT_ERRNO"},
                       {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
                       {"names": ["no_such_call", "getppid"], "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.ENOEXEC},
                       {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"})  # the default: dropped
    assert [probe(seccomp, "syscall", nr) for nr in (SYS_ADD_KEY, SYS_KCMP, SYS_GETPPID,
                                                     SYS_GETPID)] \
        == [errno.EPERM, errno.EACCES, errno.ENOEXEC, 0]



def test_a_filter_is_compiled_once_per_process_and_per_profile(probe):
    """Equal filters (read apart) share one program; filters that differ
    in one errno get programs of their own, each giving its own answer."""
    def refusing_getppid(errno_ret: int) -> Seccomp:
        return allowing({"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": errno_ret})
    eacces, again, enoexec = (refusing_getppid(e) for e in
                              (errno.EACCES, errno.EACCES, errno.ENOEXEC))
    assert eacces is not again and eacces.compile() is again.compile()
    assert eacces.compile().code != enoexec.compile().code
    assert [probe(s, "syscall", SYS_GETPPID) for s in (eacces, enoexec, again)] \
        == [errno.EACCES, errno.ENOEXEC, errno.EACCES]

# -- behaviour: argument tests ----------------------------------------------------

def refusing_getpid(*args: dict) -> Seccomp:
    """getpid refused with EACCES when ``args`` hold (getpid ignores its
    arguments, so the probe passes any)."""
    return allowing({"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
                     "args": list(args)})


def refused(probe, seccomp: Seccomp, *arguments: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Which of the argument lists getpid is refused with."""
    return [given for given in arguments
            if probe(seccomp, "syscall", SYS_GETPID, *given) == errno.EACCES]


def test_tests_on_different_arguments_must_all_hold(probe):
    seccomp = refusing_getpid({"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                              {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"})
    assert refused(probe, seccomp, (1, 2), (1, 0), (0, 2), (0, 0)) == [(1, 2)]


def test_tests_on_the_same_argument_hold_when_any_does(probe):
    """runc splits such a rule into one rule per test; so do we."""
    seccomp = refusing_getpid({"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                              {"index": 0, "value": 7, "op": "SCMP_CMP_GE"})
    assert refused(probe, seccomp, (0,), (1,), (2,), (7,), (8,)) == [(1,), (7,), (8,)]


@pytest.mark.parametrize("op, value, refused_for", [
    ("SCMP_CMP_NE", 5, [0, 4, 6, 2**63]),
    ("SCMP_CMP_LT", 5, [0, 4]),
    ("SCMP_CMP_LE", 5, [0, 4, 5]),
    ("SCMP_CMP_EQ", 5, [5]),
    ("SCMP_CMP_GE", 5, [5, 6, 2**63]),
    ("SCMP_CMP_GT", 5, [6, 2**63]),
])
def test_each_comparison(probe, op, value, refused_for):
    seccomp = refusing_getpid({"index": 2, "value": value, "op": op})
    assert refused(probe, seccomp, *((0, 0, n) for n in (0, 4, 5, 6, 2**63))) \
        == [(0, 0, n) for n in refused_for]


def test_masked_eq_compares_the_masked_bits(probe):
    """Refused when bits 8-15 of the first argument are 0x12, whatever the
    others are (the clone rule of docker's profile is one of these)."""
    seccomp = refusing_getpid({"index": 0, "value": 0xFF00, "valueTwo": 0x1200,
                               "op": "SCMP_CMP_MASKED_EQ"})
    assert refused(probe, seccomp, (0x1200,), (0xFF12FF,), (0x1300,), (0x0200,), (0,)) \
        == [(0x1200,), (0xFF12FF,)]


# -- behaviour: architectures and flags ------------------------------------------------

def test_an_architecture_not_listed_is_killed(probe):
    """libseccomp's action for a foreign ABI kills the thread, as runc's does."""
    native_only, with_i386 = allowing(), allowing(architectures=["SCMP_ARCH_X86"])
    assert probe(native_only, "i386", I386_GETPID) == KILLED_BY_SIGSYS
    assert probe(with_i386, "i386", I386_GETPID) == 0
    assert probe(native_only, "syscall", SYS_GETPID) == 0


def seccomp_modes_of_threads(seccomp: Seccomp) -> list[str]:
    """The ``Seccomp:`` field of each thread of a child that loads
    ``seccomp`` in its main thread while a second thread waits."""
    compiled = seccomp.compile()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            done = threading.Event()
            waiting = threading.Thread(target=done.wait)
            waiting.start()
            compiled.load()
            modes = []
            for task in sorted(os.listdir("/proc/self/task")):
                with open(f"/proc/self/task/{task}/status") as status:
                    modes += [line.split()[1] for line in status if line.startswith("Seccomp:")]
            os.write(writer, " ".join(modes).encode())
            done.set()
            waiting.join()
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        modes = pipe.read().split()
    assert os.waitpid(pid, 0)[1] == 0
    return modes


def test_tsync_filters_every_thread():
    rule = {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO"}
    assert sorted(seccomp_modes_of_threads(allowing(rule, flags=[]))) == ["0", "2"]
    assert seccomp_modes_of_threads(allowing(rule, flags=["SECCOMP_FILTER_FLAG_TSYNC"])) \
        == ["2", "2"]


# -- side by side with runc --------------------------------------------------------

def test_podmans_profile_under_runc_gives_the_same_answers(probe, probe_dir, image_root,
                                                           tmp_path):
    calls = [("personality", 0xFFFFFFFF), ("personality", READ_IMPLIES_EXEC),
             ("syscall", SYS_ADD_KEY), ("syscall", SYS_KCMP, 0, 0, 99), ("i386", I386_GETPID),
             ("i386", I386_VM86), ("syscall", SYS_GETPID)]
    script = "; ".join("/probe/probe " + " ".join(map(str, call)) for call in calls)
    done = runc_as_docker.run(tmp_path, str(image_root), ["sh", "-c", script],
                              binds={"/probe": (str(probe_dir), True)}, memory=64 << 20,
                              pids=32, seccomp=PODMAN)
    assert done.returncode == 0, done.stderr
    theirs = [int(line) for line in done.stdout.split()]
    assert theirs == [probe(read(PODMAN), *call) for call in calls]
    assert theirs == [0, errno.ENOSYS, errno.ENOSYS, errno.EPERM, 0, errno.EPERM, 0]
