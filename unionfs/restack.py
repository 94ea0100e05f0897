"""Changes to the branches of a live mount, as asked for: the new stack.

Two spellings ask for them:

* ``pyunion branch add|del|mod MNT ...``, one change at a time;
* aufs's remount options, applied left to right as aufs does:
  ``mount -o remount,add:1:/new=ro,del:/old MNT``, with ``add:INDEX:DIR``
  (``ins:`` is the same), ``prepend:DIR`` (on top), ``append:DIR`` (at the
  bottom), ``del:DIR`` and ``mod:DIR=MODE``.

An added branch is ``ro`` unless it says ``=rw``; ``add`` without an index
puts it just below the writable branch (on top when there is none).  This
module turns the changes into the branch list they make, naming every
problem in one line (:class:`~unionfs.branches.BranchError`); the daemon
checks the list against its rules and applies it whole, or not at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .branches import Branch, BranchError, Mode

#: options mount(8) repeats from the mount table on a remount, which change
#: nothing here (the kernel's flags of a FUSE mount stay as mounted)
_REPEATED = {"rw", "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "relatime",
             "noatime", "strictatime", "nodiratime", "default_permissions", "allow_other",
             "sync", "async", "dirsync", "lazytime", "remount"}
_REPEATED_KEYS = {"user_id", "group_id", "fsname", "subtype", "max_read", "blksize"}
_ADD_FORMS = ("add", "ins", "prepend", "append")


@dataclass(frozen=True)
class Change:
    """One change: ``action`` is ``add``, ``del`` or ``mod``."""

    action: str
    path: str
    mode: Mode | None = None
    #: where ``add`` puts the branch (0 = top, -1 = bottom); None: just
    #: below the writable branch
    index: int | None = None

    def to_json(self) -> dict:
        return {"action": self.action, "path": self.path,
                "mode": self.mode.value if self.mode else None, "index": self.index}

    @classmethod
    def from_json(cls, fields: dict) -> Change:
        try:
            action, path, mode, index = (fields[k] for k in ("action", "path", "mode", "index"))
            if action not in ("add", "del", "mod") or not isinstance(path, str) or not (
                    index is None or isinstance(index, int)):
                raise ValueError
            return cls(action, path, Mode(mode) if mode else None, index)
        except (KeyError, TypeError, ValueError):
            raise BranchError(f"malformed branch change {fields!r}") from None


def parse_remount(options: list[str]) -> list[Change]:
    """The branch changes in ``-o`` values of a remount, in order; the
    flags mount(8) repeats from the mount table are passed over."""
    changes = []
    for arg in options:
        for option in filter(None, arg.split(",")):
            form, sep, rest = option.partition(":")
            if sep and form in _ADD_FORMS + ("del", "mod"):
                changes.append(_remount_change(form, rest))
            elif option not in _REPEATED and option.partition("=")[0] not in _REPEATED_KEYS:
                raise BranchError(f"remount: unknown option {option!r} (a remount changes "
                                  "branches: add:, ins:, prepend:, append:, del:, mod:)")
    if not changes:
        raise BranchError("remount: no branch change given (add:, ins:, prepend:, append:, "
                          "del:, mod:)")
    return changes


def branch_argument(text: str, action: str, index: int | None = None) -> Change:
    """A change from ``pyunion branch``'s ``DIR[=MODE]`` argument."""
    path, mode = _path_and_mode(text)
    if action == "mod" and mode is None:
        raise BranchError(f"mod needs a mode: {text}=ro or {text}=rw")
    if action == "del" and mode is not None:
        raise BranchError(f"del takes a branch, not a mode: {path}")
    return Change(action, _absolute(path), mode, index)


def apply(changes: list[Change], stack: tuple[Branch, ...]) -> list[Branch]:
    """The branch list ``changes`` make of ``stack``, left to right.  Paths
    are compared as given and as canonical (``realpath``)."""
    branches = list(stack)
    for change in changes:
        if change.action == "add":
            branches.insert(_position(change, branches),
                            Branch(os.path.realpath(change.path), change.mode or Mode.RO))
            continue
        at = _find(change.path, branches)
        if change.action == "del":
            del branches[at]
        else:
            branches[at] = Branch(branches[at].path, change.mode)
    return branches


def _remount_change(form: str, rest: str) -> Change:
    if form in ("add", "ins"):
        index_text, sep, target = rest.partition(":")
        if not sep or not index_text.isdigit():
            raise BranchError(f"{form}:{rest}: give {form}:INDEX:DIR (INDEX 0 is the top)")
        index: int | None = int(index_text)
    else:
        target, index = rest, (0 if form == "prepend" else -1 if form == "append" else None)
    path, mode = _path_and_mode(target)
    if form == "mod" and mode is None:
        raise BranchError(f"mod:{rest}: give mod:DIR=ro or mod:DIR=rw")
    if form == "del" and mode is not None:
        raise BranchError(f"del:{rest}: give del:DIR")
    return Change("mod" if form == "mod" else "del" if form == "del" else "add",
                  _absolute(path), mode, index)


def _path_and_mode(text: str) -> tuple[str, Mode | None]:
    """``DIR[=MODE]``; a directory whose name holds ``=`` is itself (so a
    branch added as ``DIR=ro`` can be named again to take it out)."""
    path, sep, mode_text = text.rpartition("=")
    if not sep:
        return text, None
    try:
        return path, Mode(mode_text)
    except ValueError:
        if os.path.isdir(text):
            return text, None
        raise BranchError(f"branch {path}: unknown mode {mode_text!r} (use rw or ro)") from None


def _absolute(path: str) -> str:
    if not path:
        raise BranchError("empty branch path")
    return os.path.abspath(path)


def _position(change: Change, branches: list[Branch]) -> int:
    if change.index is None:
        return 1 if branches and branches[0].writable else 0
    if change.index == -1:
        return len(branches)
    if not 0 <= change.index <= len(branches):
        raise BranchError(f"index {change.index} is out of range: the stack has "
                          f"{len(branches)} branches (0 to {len(branches)} may be given)")
    return change.index


def _find(path: str, branches: list[Branch]) -> int:
    wanted = {path, os.path.realpath(path)}
    for at, branch in enumerate(branches):
        if branch.path in wanted:
            return at
    raise BranchError(f"{path} is not a branch of this mount")
