"""Which devices a container may use: rules as plain data that each driver
applies its own way (v1 writes them to ``devices.allow`` or ``devices.deny``
after denying all; v2 compiles them into an eBPF program, ``devices_bpf.py``).

A container starts with every device denied; its rules then apply in
order as cgroup v1 reads them (:func:`effective` says what they come to):
a rule for every device (type ``a``) sets what is allowed by default and
forgets the exceptions; any other rule adds an exception to that default,
or takes access away from the exception for exactly its devices (a wildcard
exception cannot be punched a hole in).
``pycontainer run`` gives docker's defaults; an OCI config gives its own
list followed by runc's defaults.  Both deny all but making any device node
(``mknod``; the node is of no use without read or write) and reading and
writing the standard character devices.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """Devices allowed or denied: type ``c`` or ``b`` with numbers (None
    for any), or ``a`` (every device, every access); access of ``rwm``."""
    type: str
    major: int | None
    minor: int | None
    access: str
    allow: bool = True

    def __str__(self) -> str:
        """The rule as cgroup v1's ``devices.allow`` reads it."""
        def number(n):
            return "*" if n is None else str(n)
        return f"{self.type} {number(self.major)}:{number(self.minor)} {self.access}"


DEFAULT_ALLOWED = (
    Rule("c", None, None, "m"),
    Rule("b", None, None, "m"),
    Rule("c", 1, 3, "rwm"),    # null
    Rule("c", 1, 5, "rwm"),    # zero
    Rule("c", 1, 7, "rwm"),    # full
    Rule("c", 1, 8, "rwm"),    # random
    Rule("c", 1, 9, "rwm"),    # urandom
    Rule("c", 5, 0, "rwm"),    # tty
    Rule("c", 5, 1, "rwm"),    # console
    Rule("c", 5, 2, "rwm"),    # ptmx
    Rule("c", 136, None, "rwm"),  # pts/*
)

#: runc's (specconv's AllowedDevices): docker's without the console, with tun
RUNC_ALLOWED = tuple(rule for rule in DEFAULT_ALLOWED if (rule.major, rule.minor) != (5, 1)) \
    + (Rule("c", 10, 200, "rwm"),)  # net/tun


def effective(rules: tuple[Rule, ...]) -> tuple[bool, tuple[Rule, ...]]:
    """What ``rules`` come to after denying every device, as the cgroup v1
    kernel keeps them: whether devices are allowed by default, and the
    exceptions to that (each allowing or denying, the opposite of the
    default).  runc's emulator does the same for cgroup v2."""
    default_allow, exceptions = False, {}
    for rule in rules:
        if rule.type == "a":
            default_allow, exceptions = rule.allow, {}
            continue
        key = (rule.type, rule.major, rule.minor)
        if rule.allow == default_allow:  # takes access from an exception
            access = exceptions.pop(key, "")
            left = "".join(a for a in "rwm" if a in access and a not in rule.access)
            if left:
                exceptions[key] = left
        else:
            access = exceptions.get(key, "") + rule.access
            exceptions[key] = "".join(a for a in "rwm" if a in access)
    return default_allow, tuple(Rule(*key, access, not default_allow)
                                for key, access in exceptions.items())
