"""The container's namespaces (``linux.namespaces``): each new, or joined
by ``path`` (e.g. the network namespace an engine made).  Paths are opened
by the runtime on the host before anything is unshared, and joined with
setns(2) told the expected type, so a path to a namespace of another kind
is refused by the kernel.  User and time namespaces are refused: this
runtime does not map IDs."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import syscalls as sc
from .reader import ConfigError, Reader

FLAGS = {"pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET, "mount": sc.CLONE_NEWNS,
         "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS, "cgroup": sc.CLONE_NEWCGROUP}
#: their names under /proc/PID/ns
PROC_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
              "cgroup": "cgroup"}


@dataclass(frozen=True)
class Namespace:
    kind: str
    path: str | None = None


def parse(section: Reader) -> tuple[Namespace, ...]:
    namespaces = section.take_objects("namespaces", _namespace)
    kinds = [namespace.kind for namespace in namespaces]
    for kind in kinds:
        if kinds.count(kind) > 1:
            raise section.error("namespaces", f"{kind} is given twice")
    if "mount" not in kinds:
        raise section.error("namespaces", "a mount namespace is required")
    if any(ns.kind == "mount" and ns.path for ns in namespaces):
        raise section.error("namespaces", "joining a mount namespace is not supported")
    return namespaces


def _namespace(section: Reader) -> Namespace:
    kind = section.take("type", str)
    if kind in ("user", "time"):
        raise section.error("type", f"{kind} namespaces are not supported")
    if kind not in FLAGS:
        raise section.error("type", f"unknown namespace {kind!r}")
    path = section.take("path", str, None) or None
    if path is not None and not path.startswith("/"):
        raise section.error("path", "must be an absolute path")
    section.done()
    return Namespace(kind, path)


def has_own(namespaces: tuple[Namespace, ...], kind: str) -> bool:
    """Whether the container gets a ``kind`` namespace of its own (new,
    not the runtime's; one joined by path counts, as runc counts it)."""
    return any(ns.kind == kind for ns in namespaces)


class Joiner:
    """The namespaces to join, opened now (on the host), joined later by
    the container's first process; then the new ones are unshared."""

    def __init__(self, namespaces: tuple[Namespace, ...]):
        self._fds: list[tuple[int, int]] = []
        self._new = 0
        try:
            for ns in namespaces:
                if ns.path is None:
                    self._new |= FLAGS[ns.kind]
                else:
                    self._fds.append((_open(ns.path), FLAGS[ns.kind]))
        except BaseException:
            self.close()
            raise

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd, _ in self._fds)

    def pid_step(self) -> None:
        """Join or make the pid namespace: it applies to children only, so
        the caller forks next."""
        for fd, flag in self._fds:
            if flag == sc.CLONE_NEWPID:
                sc.setns(fd, flag)
        if self._new & sc.CLONE_NEWPID:
            sc.unshare(sc.CLONE_NEWPID)

    def rest(self) -> None:
        """Join every other namespace given by path, then unshare the new
        ones (the cgroup namespace last: rooted at the cgroup joined by then)."""
        for fd, flag in self._fds:
            if flag != sc.CLONE_NEWPID:
                sc.setns(fd, flag)
        self.close()
        others = self._new & ~sc.CLONE_NEWPID
        if others & ~sc.CLONE_NEWCGROUP:
            sc.unshare(others & ~sc.CLONE_NEWCGROUP)
        if others & sc.CLONE_NEWNET:  # a new one has its loopback down; runc's is up
            sc.loopback_up()
        if others & sc.CLONE_NEWCGROUP:
            sc.unshare(sc.CLONE_NEWCGROUP)

    def close(self) -> None:
        for fd, _ in self._fds:
            os.close(fd)
        self._fds = []


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"namespace {path}: {exc.strerror}") from None
