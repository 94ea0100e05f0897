"""``linux.seccomp``: a system call filter, read strictly into a plain
record (``parse``) and compiled by libseccomp through its own Python
bindings (``Seccomp.compile``).  pycontainer's own face goes through here
too: its bundles hold docker's default profile rendered as this section
(``seccomp_profile.oci``).

The semantics are runc's (``libcontainer/specconv`` and ``seccomp``):

* ``SCMP_ACT_ERRNO`` and ``SCMP_ACT_TRACE`` return EPERM unless
  ``errnoRet`` (``defaultErrnoRet``) says otherwise; the value goes with
  no other action, and is refused with one.
* A rule whose action is the default action is dropped (libseccomp
  refuses it, and it changes nothing).
* A rule's argument tests must all hold; but when two test the same
  argument, the rule is split into one rule per test, so any one suffices
  (how docker's profiles allow ``personality`` several values).
* Names the installed libseccomp does not know are skipped: calls newer
  than it get the default action.  (runc patches its filter so those
  answer ENOSYS; this one does not.)  An architecture it does not know is
  refused.
* ``flags`` absent means SECCOMP_FILTER_FLAG_SPEC_ALLOW where the kernel
  has it; a flag listed that libseccomp cannot set is refused.
* The filter leaves ``no_new_privs`` to ``process.noNewPrivileges``
  (loading it without that needs CAP_SYS_ADMIN).

A filter is compiled into its BPF program once per process
(:meth:`Seccomp.compile`): libseccomp spends milliseconds building its
rules and again generating the program at each load, and every container
of a profile loads the same program twice (its init and its command).
The program is loaded with seccomp(2) itself, with the flags libseccomp
would pass.

Not supported, and refused: seccomp notify (``SCMP_ACT_NOTIFY``,
``listenerPath``, ``listenerMetadata``).
"""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass, field

import seccomp as libseccomp

from .. import syscalls as sc
from .reader import ConfigError, Reader

#: The spec's actions (without ``SCMP_ACT_``) as libseccomp's; ERRNO and
#: TRACE take a value.
_ACTIONS = {"ALLOW": libseccomp.ALLOW, "ERRNO": libseccomp.ERRNO, "KILL": libseccomp.KILL,
            "KILL_THREAD": libseccomp.KILL, "KILL_PROCESS": libseccomp.KILL_PROCESS,
            "TRAP": libseccomp.TRAP, "LOG": libseccomp.LOG, "TRACE": libseccomp.TRACE}
#: The largest value ERRNO and TRACE take (the kernel caps an errno at 4095;
#: a trace value has 16 bits).
_VALUE_LIMITS = {"ERRNO": 4095, "TRACE": 0xFFFF}
_OPERATORS = ("NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ")
#: The spec's flags as libseccomp's filter attributes (this libseccomp may
#: lack some; it tells whether the kernel has them) and as seccomp(2)'s bits
_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": ("CTL_TSYNC", 1), "SECCOMP_FILTER_FLAG_LOG": ("CTL_LOG", 2),
          "SECCOMP_FILTER_FLAG_SPEC_ALLOW": ("CTL_SSB", 4),
          "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": ("CTL_WAITKILL", 32)}
_DEFAULT_FLAGS = ("SECCOMP_FILTER_FLAG_SPEC_ALLOW",)  # runc's, where it can be set
#: distinct filters a process keeps compiled (a runtime sees a handful)
_KEPT_PROGRAMS = 16
_NO_NOTIFY = "seccomp notify is not supported"
_MAX_ARGUMENTS = 6
_UNKNOWN = -1  # libseccomp's __NR_SCMP_ERROR: a name it does not know
_OPTIMIZE_PAST = 32  # rules past which a binary tree beats a list (runc's figure)


@dataclass(frozen=True)
class Action:
    """An action by its spec name without ``SCMP_ACT_``; ``value`` is the
    errno of ERRNO and the trace value of TRACE (None for the others)."""

    name: str
    value: int | None = None

    def compiled(self) -> int:
        made = _ACTIONS[self.name]
        return made if self.value is None else made(self.value)


@dataclass(frozen=True)
class Arg:
    """A test of argument ``index``; ``op`` is libseccomp's name (``EQ``,
    ``MASKED_EQ``, ...).  MASKED_EQ holds when ``arg & value == value_two``."""

    index: int
    op: str
    value: int
    value_two: int = 0

    def compiled(self) -> libseccomp.Arg:
        return libseccomp.Arg(self.index, getattr(libseccomp, self.op), self.value,
                              self.value_two)


@dataclass(frozen=True)
class Rule:
    """``action`` for each of ``names`` when its ``args`` hold; ``where``
    is the path of its names in the config, for libseccomp's refusals."""

    names: tuple[str, ...]
    action: Action
    args: tuple[Arg, ...] = ()
    where: str = field(default="", compare=False)

    def conditions(self) -> tuple[tuple[Arg, ...], ...]:
        """The tests of each libseccomp rule this one makes: all in one,
        or one rule per test when two test the same argument (runc's
        rule: they then hold when any one does)."""
        indexes = [arg.index for arg in self.args]
        if len(set(indexes)) == len(indexes):
            return (self.args,)
        return tuple((arg,) for arg in self.args)


@dataclass(frozen=True)
class Seccomp:
    """A filter: ``default`` for any call no rule matches, over the native
    architecture and ``architectures`` (libseccomp's names, e.g. ``X86``),
    with ``flags`` (the spec's names)."""

    default: Action
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    def compile(self) -> Program:
        """The filter's program: compile it while the host's libraries are
        reachable; ``load()`` it in the process about to exec.  Compiled
        once per process for each filter (an equal filter, read from
        another config, gets the same program)."""
        return _program(self)

    def _filter(self) -> libseccomp.SyscallFilter:
        """libseccomp's filter, its rules added."""
        default = self.default.compiled()
        compiled = libseccomp.SyscallFilter(default)
        compiled.set_attr(libseccomp.Attr.CTL_NNP, 0)
        for name in self.architectures:
            arch = getattr(libseccomp.Arch, name)
            if not compiled.exist_arch(arch):  # the native one is always there
                compiled.add_arch(arch)
        calls = [(name, rule) for rule in self.rules for name in rule.names
                 if libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, name) != _UNKNOWN]
        if len(calls) > _OPTIMIZE_PAST:
            compiled.set_attr(libseccomp.Attr.CTL_OPTIMIZE, 2)
        for name, rule in calls:
            action = rule.action.compiled()
            if action != default:
                for args in rule.conditions():
                    _add(compiled, rule, action, name, args)
        return compiled


@dataclass(frozen=True)
class Program:
    """A filter as the kernel takes it: its BPF instructions, and the
    seccomp(2) flags to load them with."""

    code: bytes
    flags: int

    def load(self) -> None:
        """Confine this process (and, with TSYNC, its other threads)."""
        sc.seccomp_filter(self.code, self.flags)


@functools.lru_cache(maxsize=_KEPT_PROGRAMS)
def _program(seccomp: Seccomp) -> Program:
    """libseccomp's program for ``seccomp``, exported as its load would
    generate it."""
    with os.fdopen(os.memfd_create("seccomp", os.MFD_CLOEXEC), "w+b") as exported:
        seccomp._filter().export_bpf(exported)
        exported.seek(0)
        code = exported.read()
    return Program(code, sum(_FLAGS[flag][1] for flag in seccomp.flags))


def _add(compiled: libseccomp.SyscallFilter, rule: Rule, action: int, name: str,
         args: tuple[Arg, ...]) -> None:
    try:
        compiled.add_rule(action, name, *(arg.compiled() for arg in args))
    except RuntimeError as exc:  # e.g. the same call and tests with two actions
        raise ConfigError(f"{rule.where}: libseccomp refuses the rule for {name}: {exc}") \
            from None


def parse(section: Reader) -> Seccomp:
    """The filter ``section`` describes (runtime-spec config-linux.md)."""
    section.refuse("listenerPath", _NO_NOTIFY)
    section.refuse("listenerMetadata", _NO_NOTIFY)
    seccomp = Seccomp(
        default=_action(section, "defaultAction", "defaultErrnoRet"),
        architectures=tuple(_architecture(section, index, name) for index, name
                            in enumerate(section.take_list("architectures", str))),
        flags=_flags(section),
        rules=section.take_objects("syscalls", _rule))
    section.done()
    return seccomp


def _action(reader: Reader, key: str, value_key: str) -> Action:
    spelled = reader.take(key, str)
    name = spelled.removeprefix("SCMP_ACT_")
    if name == "NOTIFY":
        raise reader.error(key, f"{spelled}: {_NO_NOTIFY}")
    if name not in _ACTIONS or name == spelled:
        raise reader.error(key, f"unknown action {spelled}")
    value = reader.take(value_key, int, None)
    if name not in _VALUE_LIMITS:
        if value is not None:
            raise reader.error(value_key, "goes only with SCMP_ACT_ERRNO or SCMP_ACT_TRACE")
        return Action(name)
    if value is None:
        return Action(name, errno.EPERM)
    if not 0 <= value <= _VALUE_LIMITS[name]:
        raise reader.error(value_key, f"must be from 0 to {_VALUE_LIMITS[name]}")
    return Action(name, value)


def features() -> dict:
    """What ``features`` tells of seccomp here, in the spec's names."""
    return {"enabled": True,
            "actions": sorted(f"SCMP_ACT_{name}" for name in _ACTIONS),
            "operators": sorted(f"SCMP_CMP_{name}" for name in _OPERATORS),
            "archs": sorted(f"SCMP_ARCH_{name}" for name in dir(libseccomp.Arch)
                            if name.isupper() and name != "NATIVE")}


def _architecture(section: Reader, index: int, spelled: str) -> str:
    name = spelled.removeprefix("SCMP_ARCH_")
    if name == spelled or name == "NATIVE" or not hasattr(libseccomp.Arch, name):
        raise section.error(f"architectures[{index}]",
                            f"{spelled} is not an architecture the installed libseccomp knows")
    return name


def _flags(section: Reader) -> tuple[str, ...]:
    if section.take("flags", list, None) is None:
        return tuple(flag for flag in _DEFAULT_FLAGS if _settable(flag))
    flags = section.take_list("flags", str)
    for index, flag in enumerate(flags):
        if flag not in _FLAGS:
            raise section.error(f"flags[{index}]", f"unknown flag {flag}")
        if not _settable(flag):
            raise section.error(f"flags[{index}]", f"{flag} is not supported by the installed "
                                                   "libseccomp or this kernel")
    return tuple(flags)


def _settable(flag: str) -> bool:
    """Whether libseccomp has an attribute for ``flag`` and will set it
    (it checks the kernel)."""
    attribute = getattr(libseccomp.Attr, _FLAGS[flag][0], None)
    if attribute is None:
        return False
    try:
        libseccomp.SyscallFilter(libseccomp.ALLOW).set_attr(attribute, 1)
    except RuntimeError:
        return False
    return True


def _rule(reader: Reader) -> Rule:
    names = tuple(reader.take_list("names", str))
    if not names:
        raise reader.error("names", "must name at least one call")
    for index, name in enumerate(names):
        if not name:
            raise reader.error(f"names[{index}]", "must not be empty")
    rule = Rule(names, _action(reader, "action", "errnoRet"), reader.take_objects("args", _arg),
                where=reader.path("names"))
    reader.done()
    return rule


def _arg(reader: Reader) -> Arg:
    index = reader.take("index", int)
    if not 0 <= index < _MAX_ARGUMENTS:
        raise reader.error("index", f"must be from 0 to {_MAX_ARGUMENTS - 1}")
    value, value_two = _u64(reader, "value"), _u64(reader, "valueTwo", 0)
    spelled = reader.take("op", str)
    op = spelled.removeprefix("SCMP_CMP_")
    if op == spelled or op not in _OPERATORS:
        raise reader.error("op", f"unknown operator {spelled}")
    reader.done()
    return Arg(index, op, value, value_two)


def _u64(reader: Reader, key: str, *default: int) -> int:
    """An unsigned 64-bit value (required without ``default``)."""
    value = reader.take(key, int, *default)
    if not 0 <= value < 1 << 64:
        raise reader.error(key, "must be from 0 to 2**64-1")
    return value
