"""Live changes of a mounted union's branches: checked, applied whole, and
shown at once.

The rules (the README's *Semantics* says them for users):

* Only the top branch may be ``rw``, and only the branch the mount was made
  writable with (its work directory, chunk maps and lock are this daemon's).
  The last branch cannot go.  A branch may not lie inside another, nor hold
  or lie inside the mount point; an added branch may not hold partial
  copies (an upper of another mount, not flattened).
* Taking a branch out, or making the ``rw`` branch ``ro``, is refused
  (:class:`BranchBusy`) while something refers to it: an open file of it
  (a memory map holds one), a partial copy whose absent chunks are read
  from it, an open directory or a process's working or root directory
  whose top lies in it; for ``rw`` to ``ro``, a file open for writing.
  ``force`` goes on: partial copies are completed first; open files keep
  the file they opened (reads go on; writes to a branch no longer
  writable fail with EROFS); a working directory that was only in the
  branch is a removed directory from then on.
* The change is atomic for the union: it is checked, then applied between
  two requests (the caller holds the change lock), and the kernel is told
  what it had cached that the new stack answers differently before the
  caller is answered.  Directories keep their inode numbers when another
  branch's directory comes to stand on top of them, so working directories
  and mounts on them stay; a name whose file or type changes gets a new
  inode at its next lookup, and a file open through the old one keeps it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from typing import Callable

import pyfuse3
import trio

from . import branches, mounts, restack
from .branches import Branch, BranchError
from .chunkmap import ChunkMap
from .handles import OpenFiles
from .inodes import Held, InodeNumbers, InodeTable, Node
from .layer import ROOT, Layer
from .partial import PartialFiles
from .tree import Entry, Location, Tree, is_opaque
from .upper import Upper
from .whiteout import META_DIR, hidden_by, is_reserved


class BranchBusy(BranchError):
    """A branch cannot go, or become read-only, while in use."""


@dataclass
class _Stale:
    """What the kernel and the daemon hold that a new stack answers otherwise."""

    #: (directory inode, name): names whose file or type changed
    entries: list[tuple[int, str]] = field(default_factory=list)
    #: inodes whose attributes changed (a merged directory's parts...)
    attributes: set[int] = field(default_factory=set)
    #: (the branch of a directory's new top, its real stat, the number it keeps)
    kept: list[tuple[Layer, os.stat_result, int]] = field(default_factory=list)
    #: (node, directory inode, name, its old entry): links that go
    dropped: list[tuple[Node, int, str, Entry]] = field(default_factory=list)


class LiveStack:
    """Changes the branch list ``layers`` (shared with the mount's tree and
    partial files) in place."""

    def __init__(self, layers: list[Layer], tree: Tree, numbers: InodeNumbers,
                 inodes: InodeTable, open_files: OpenFiles, upper: Upper | None,
                 partials: PartialFiles | None, resolve: Callable[[Node], Entry],
                 on_changed: Callable[[list[Layer], list[Layer]], None]):
        self._layers = layers
        self._tree = tree
        self._numbers = numbers
        self._inodes = inodes
        self._open_files = open_files
        self._upper = upper
        self._index = tree.index
        self._partials = partials
        self._resolve = resolve
        #: told the branches that came (or became read-only) and went (or
        #: became writable), after each change
        self._on_changed = on_changed
        #: branches taken out, kept open: a location resolved before the
        #: change may still be read, and must not reach a reused descriptor
        self._retired: dict[str, Layer] = {}
        #: the directories of each branch that keep the number of the one
        #: they came to stand on (``InodeNumbers.keep``)
        self._kept: dict[Layer, list[os.stat_result]] = {}

    def close(self) -> None:
        for layer in self._retired.values():
            layer.close()

    async def change(self, changes: list[restack.Change], mountpoint: str, workdir: str | None,
                     force: bool = False) -> tuple[list[Branch], _Stale]:
        """Apply ``changes``; the new branch list, and what to tell the
        kernel (:meth:`tell_kernel`).  The caller holds the mount's change
        lock."""
        # Off the loop: a path given may lead through this very mount.
        wanted, layers, opened = await trio.to_thread.run_sync(
            self._open, changes, mountpoint, workdir)
        try:
            removed = [layer for layer in self._layers if layer not in layers]
            made_ro = [layer for layer, branch in zip(layers, wanted)
                       if layer.writable and not branch.writable]
            processes = await trio.to_thread.run_sync(
                _held_by_processes, _device(mountpoint)) if removed else {}
            # From here to the swap nothing waits, unless forced: what the
            # daemon found unused (its open files, partial copies) is still
            # unused when the stack changes; what processes hold is as the
            # scan above saw it.
            complaint, partial_copies = self._in_use(removed, made_ro, processes)
            if complaint and not force:
                raise BranchBusy(f"{complaint} (--force goes on: see pyunion branch --help)")
            self._check_no_passed_writers(made_ro + [layer for layer in removed
                                                     if layer.writable])
            if partial_copies:
                await self._partials.complete_below(Location(self._upper.layer, ROOT),
                                                    self._inodes.new_epoch)
            stale = self._stale(layers, set(removed) | {l for l in layers
                                                        if l not in self._layers})
        except BaseException:
            for layer in opened:
                layer.close()
            raise
        self._swap(layers, wanted, removed, stale)
        return wanted, stale

    @staticmethod
    async def tell_kernel(stale: _Stale) -> None:
        """Drop what the kernel cached that the new stack answers otherwise.
        Call it without the change lock: the kernel takes a directory's lock
        to drop a name of it, and a handler waiting for the change lock (a
        create there) holds that directory's lock until it is answered."""
        await trio.to_thread.run_sync(_tell_kernel, stale)

    def _open(self, changes: list[restack.Change], mountpoint: str, workdir: str | None):
        """The stack ``changes`` make, checked against the rules, canonical,
        and its layers: those of the stack now where their order is kept,
        others opened."""
        wanted = restack.apply(changes, tuple(layer.branch for layer in self._layers))
        if not wanted:
            raise BranchError("the last branch cannot be removed")
        stack = branches.validate(wanted, workdir if wanted[0].writable else None)
        branches.check_mountpoint(mountpoint, stack)
        upper_path = self._upper.layer.branch.path if self._upper else None
        for branch in stack.branches:
            if branch.writable and branch.path != upper_path:
                raise BranchError(
                    f"branch {branch.path} cannot be rw: only {upper_path}, the branch this "
                    "mount writes to, can" if upper_path else
                    "this mount was made read-only: none of its branches can be rw")
        now = {layer.branch.path: (at, layer) for at, layer in enumerate(self._layers)}
        layers, opened, last = [], [], -1
        try:
            for branch in stack.branches:
                at, layer = now.get(branch.path, (-1, None))
                if layer is not None and at > last:  # kept, in order
                    last = at
                elif branch.path in self._retired:
                    layer = self._retired[branch.path]
                    layer.forget_all_names()  # changed while out? compare the stacks on what it holds
                else:
                    _check_no_partial_copies(branch.path)
                    layer = Layer(branch, len(layers))
                    opened.append(layer)
                layers.append(layer)
        except BaseException:
            for layer in opened:
                layer.close()
            raise
        return list(stack.branches), layers, opened

    def _in_use(self, removed: list[Layer], made_ro: list[Layer],
                processes: dict[int, list[str]]) -> tuple[str, int]:
        """What keeps ``removed`` from going, or ``made_ro`` from becoming
        read-only, in one line (empty if nothing does); and how many
        partial copies read from the branches that go.  ``processes``:
        what processes hold (:func:`_held_by_processes`)."""
        said, partial_copies = [], 0
        for layer in removed + made_ro:
            going = layer in removed
            uses = _counted(self._open_files.users_of(layer, writing=not going),
                            "open file" if going else "file open for writing")
            if going:
                uses += [what for ino, whats in processes.items()
                         if self._top_layer(ino) is layer for what in whats]
                if not layer.writable:
                    count = self._partial_copies_from(layer)
                    partial_copies += count
                    uses += _counted(count, "partial copy reading from it",
                                     "partial copies reading from it")
            if uses:
                said.append(f"branch {layer.branch.path} is busy: {', '.join(uses)}")
        return "; ".join(said), partial_copies

    def _check_no_passed_writers(self, layers: list[Layer]) -> None:
        """Even ``force`` cannot make a writable branch read-only, or take
        it out, while the kernel writes files of it itself (passthrough):
        nothing could stop those writes."""
        for layer in layers:
            if count := self._open_files.users_of(layer, writing=True, passed=True):
                raise BranchBusy(
                    f"branch {layer.branch.path} is busy: "
                    f"{', '.join(_counted(count, 'file open for writing'))} that the kernel "
                    f"writes itself (passthrough), which --force cannot stop: close them first")

    def _top_layer(self, ino: int) -> Layer | None:
        node = self._inodes.find(ino)
        try:
            return self._resolve(node).top.layer if node is not None else None
        except OSError:
            return None  # no name left: it refers to no branch

    def _partial_copies_from(self, layer: Layer) -> int:
        """The partial copies whose absent chunks come from ``layer``: it
        holds their source file (by number; any regular file at their
        source path, for maps made before numbers were recorded)."""
        if self._upper is None:
            return 0
        count = 0
        for map_id in os.listdir(self._upper.chunks_fd):
            with contextlib.suppress(OSError):
                source = ChunkMap.source_of(self._upper.chunks_fd, map_id)
                st = layer.lstat_or_none(source.path)
                count += st is not None and stat.S_ISREG(st.st_mode) and (
                    source.origin is None or self._numbers(st) == source.origin)
        return count

    def _stale(self, layers: list[Layer], changed: set[Layer]) -> _Stale:
        """Compare, for every directory the kernel holds, the names the
        changed branches hold there, in the old stack and the new one."""
        old = Tree(list(self._layers), self._tree.index)
        new = Tree(layers, self._index if self._upper and self._upper.layer in layers else None)
        stale = _Stale()
        if not changed:
            return stale
        for node in self._inodes.nodes():
            try:
                before = self._resolve(node)
            except OSError:
                continue
            if not _is_directory(before):
                continue
            try:
                after = new.resolve(before.path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # its own name changed: seen in its parent
            if not _is_directory(after):
                continue
            if after.locations != before.locations:
                stale.attributes.add(node.ino)
            for name in _names_touched(before, after, changed):
                self._compare(node.ino, old.lookup(before, name), new.lookup(after, name), stale)
        return stale

    def _compare(self, parent: int, before, after, stale: _Stale) -> None:
        """One name's lookups, ``(entry, stat)`` or None, before and after."""
        if before is None and after is None:
            return
        name = (before or after)[0].path.rpartition("/")[2]
        old = self._numbers.of(*before) if before else None
        new = self._numbers.of(*after) if after else None
        if before and after and stat.S_ISDIR(before[1].st_mode) and stat.S_ISDIR(after[1].st_mode):
            if new != old:
                stale.kept.append((after[0].top.layer, after[1], old))
            if before[0].locations != after[0].locations:
                stale.attributes.add(old)
        elif old != new or (before and after and stat.S_IFMT(before[1].st_mode)
                            != stat.S_IFMT(after[1].st_mode)):
            stale.entries.append((parent, name))
            if (node := self._inodes.find(old)) is not None:
                stale.dropped.append((node, parent, name, before[0]))

    def _held_if_last(self, node: Node, entry: Entry) -> Held | None:
        """When its last name goes: the file, for the inode the kernel holds
        (a working directory that was only in a branch taken out is then a
        removed directory, as after ``rmdir``)."""
        if len(node.links) > 1 or node.removed is not None:
            return None
        try:
            return Held(entry.top.layer.open(entry.top.path, os.O_PATH),
                        entry.top.layer.writable)
        except OSError:
            return None  # gone from its branch too

    def _swap(self, layers: list[Layer], wanted: list[Branch], removed: list[Layer],
              stale: _Stale) -> None:
        came, went = [], list(removed)
        for at, (layer, branch) in enumerate(zip(layers, wanted)):
            layer.index = at
            if layer.branch.mode is not branch.mode or layer not in self._layers:
                layer.set_mode(branch.mode)  # a retired one comes back: names read afresh
                (went if branch.writable else came).append(layer)
            self._retired.pop(branch.path, None)
        self._retired.update((layer.branch.path, layer) for layer in removed)
        self._layers[:] = layers
        self._tree.index = self._index if self._upper and self._upper.layer in layers else None
        for layer in removed:  # its directories may be renamed or gone when it comes back
            for st in self._kept.pop(layer, ()):
                self._numbers.forget_kept(st)
        for layer, st, number in stale.kept:
            self._numbers.keep(st, number)
            self._kept.setdefault(layer, []).append(st)
        for node, parent, name, entry in stale.dropped:
            self._inodes.unlink(node, parent, name, self._held_if_last(node, entry))
        for ino in stale.attributes:  # a directory may stand on another one now
            if (node := self._inodes.find(ino)) is not None:
                node.told = None  # what the kernel is told next (``udba.py``)
        self._open_files.writable = layers[0].writable
        self._inodes.new_epoch()
        self._on_changed(came, went)


def outside_the_mount(changes: list[restack.Change], mountpoint: str) -> None:
    """Refuse a path that leads into the mount (as written, through a
    symlink, or through a bind mount of it), before the change lock is
    taken: the daemon would wait on itself, resolving it while a handler
    waiting for the lock holds a directory lock of the mount, or reading a
    branch served by this very mount.  (Stats the mount: call it off the
    loop.)"""
    device = _device(mountpoint)
    for change in changes:
        path = os.path.realpath(change.path)
        try:
            on_the_mount = os.stat(path).st_dev == device
        except OSError:
            on_the_mount = False  # said in one line once the stack is checked
        if on_the_mount or path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/"):
            raise BranchError(f"branch {change.path} lies inside the mount {mountpoint}")


def _tell_kernel(stale: _Stale) -> None:
    """In a thread: the kernel may ask the loop for things meanwhile."""
    for parent, name in stale.entries:
        with contextlib.suppress(OSError):  # not cached
            pyfuse3.invalidate_entry(parent, os.fsencode(name))
    # The kernel drops a directory's kept listing along with its pages.
    for ino in stale.attributes | {parent for parent, _ in stale.entries}:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(ino, attr_only=False)


def _names_touched(before: Entry, after: Entry, changed: set[Layer]) -> set[str]:
    """The names of a directory that a changed branch holds or hides; all
    of its names when one of them makes it opaque there."""
    touched = [loc for loc in (*before.locations, *after.locations) if loc.layer in changed]
    if any(is_opaque(loc) for loc in touched):
        touched = [*before.locations, *after.locations]
    names = set()
    for layer, path in touched:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            names.update(hidden_by(name) if is_reserved(name) else name
                         for name in layer.listdir(path))
    return {name for name in names if not is_reserved(name)}


def _is_directory(entry: Entry) -> bool:
    st = entry.top.layer.lstat_or_none(entry.top.path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _device(mountpoint: str) -> int | None:
    found = mounts.find(mountpoint)
    return os.makedev(*map(int, found.device.split(":"))) if found else None


def _held_by_processes(device: int | None) -> dict[int, list[str]]:
    """The union inodes that processes hold as working or root directory,
    or open (a directory, which the kernel opens without the daemon,
    ``fs.opendir``, or a file): inode -> ["process PID (cwd)", "process PID
    (fd 3)", ...].  Open descriptors are read from ``fdinfo`` (their mount and
    inode), which asks no file system anything.  (A stat of a cwd is
    answered by this daemon: call it off the loop.)"""
    found: dict[int, list[str]] = {}
    if device is None:
        return found
    mount_ids: dict[str, set[bytes]] = {}  # by mount namespace
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for what in ("cwd", "root"):
            try:
                st = os.stat(f"/proc/{pid}/{what}")
            except OSError:
                continue
            if st.st_dev == device:
                found.setdefault(st.st_ino, []).append(f"process {pid} ({what})")
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
            if namespace not in mount_ids:
                mount_ids[namespace] = mounts.ids_of(device, pid)
            for fd, ino in _open_on(pid, mount_ids[namespace]):
                found.setdefault(ino, []).append(f"process {pid} (fd {fd})")
        except OSError:
            continue  # gone meanwhile
    return found


def _open_on(pid: str, mount_ids: set[bytes]) -> list[tuple[str, int]]:
    """``pid``'s descriptors open on one of the mounts ``mount_ids``, and
    their inodes."""
    if not mount_ids:
        return []
    found = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if b":" in line)
        except OSError:
            continue  # closed meanwhile
        if fields.get(b"mnt_id", b"").strip() in mount_ids and b"ino" in fields:
            found.append((fd, int(fields[b"ino"])))
    return found


def _check_no_partial_copies(path: str) -> None:
    try:
        held = os.listdir(os.path.join(path, META_DIR, "chunks"))
    except OSError:
        return
    if held:
        raise BranchError(f"branch {path} holds partial copies of a pyunion mount: "
                          "flatten it first (pyunion flatten, or -o flatten)")


def _counted(count: int, one: str, many: str | None = None) -> list[str]:
    if not count:
        return []
    return [f"1 {one}" if count == 1 else f"{count} {many or one + 's'}"]
