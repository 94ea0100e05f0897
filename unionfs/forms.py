"""The shapes of a ``pyunion`` command line, before click sees it: which
command a bare form means, and which forms the fork server runs.

Import-light (nothing beyond the interpreter's start-up), because the
launcher decides with it before loading anything.
"""

from __future__ import annotations

#: the commands of ``cli.cli`` (tests check the two agree)
COMMANDS = ("mount", "umount", "flatten", "branch")
_HELP = ("-h", "--help")


def as_command(args: list[str]) -> list[str]:
    """The forms without a command, as ``mount``: ``pyunion SOURCE MNT -o
    OPTIONS`` (mount.fuse3) and ``pyunion -o OPTIONS MNT`` (a mount_program)."""
    flags = ["--debug"] if args[:1] == ["--debug"] else []
    rest = args[len(flags):]
    if not rest or rest[0] in COMMANDS or rest[0] in _HELP:
        return args
    if rest[0].startswith("-"):
        return [*flags, "mount", *rest]
    return [*flags, "mount", "--source", *rest]


def served(args: list[str]) -> bool:
    """True for a mount that goes to the background: ``pyunion mount`` and
    the bare forms, unless they ask for help, the foreground (``-f``: the
    caller's own process is the daemon) or a remount (a request to a
    running daemon, which needs no start-up saved).  When in doubt, False:
    in-process is always right, only slower."""
    command = as_command(args)
    if command[:1] == ["--debug"]:
        command = command[1:]
    if command[:1] != ["mount"]:
        return False
    for arg in command[1:]:
        options = arg[2:] if arg.startswith("-o") else arg  # "-oremount,..."
        if arg in _HELP or arg == "--foreground" or "remount" in options.split(","):
            return False
        if arg.startswith("-") and not arg.startswith("--"):
            flags = arg[1:].partition("o")[0]  # "-fo X", "-ofoo": the flags before -o
            if "f" in flags or "h" in flags:
                return False
    return True
