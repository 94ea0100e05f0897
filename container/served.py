"""Which ``pycontainer`` command lines the fork server runs
(``unionfs/launcher.py``): those on a container's hot path, where
Python's start-up would be most of the wait.  Every other one runs in the
launcher's own process, as pip's script would run it.

Import-light (nothing beyond the interpreter's start-up), because the
launcher decides with it before loading anything.
"""

from __future__ import annotations

#: ``run`` (``-d`` too), ``exec``, and what stops and removes a container
SERVED = ("run", "exec", "rm", "stop", "kill")


def served(args: list[str]) -> bool:
    return args[:1] != [] and args[0] in SERVED
