"""A tiny pyfuse3 file system for tests/test_pyfuse3_passthrough.py.

``python passthrough_fs.py MOUNTPOINT BACKING_FILE EVENTS [--no-opendir]``
mounts, in the foreground, a root directory holding:

* ``file``: opened with FUSE passthrough onto BACKING_FILE when the kernel
  grants it (one backing id per inode, closed by a task of its own once the
  last open is released), through read/write handlers otherwise;
* ``direct``: the same backing file through the daemon, opened with
  ``direct_io`` (shared maps need ``enable_direct_io_allow_mmap``);
* ``ctl``: a plain file; writing ``invalidate`` to it drops the kernel's
  cached listing of the root directory, ``probe`` tries ``backing_open`` on
  a directory and a pipe, and ``backing_close`` on an unknown id;
* ``many``: a directory of 300 entries with long names, listed in several
  requests, opened with a plain handle (pyfuse3's old ``opendir`` form).

The root directory is opened with ``cache_readdir``; with ``--no-opendir``,
opendir answers ENOSYS, so the kernel opens directories itself.  Every handler call and
every backing id change is appended to EVENTS as a JSON line, which is how
the tests see what the kernel asked.  Lookup counts are not kept: the test
mounts are short.  Unmounting ends the process.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys

import pyfuse3
import trio

FILE, CTL, MANY, DIRECT = 2, 3, 4, 5
MANY_NAMES = {f"entry-{i:03d}-" + "x" * 80: 1000 + i for i in range(300)}


class PassthroughFS(pyfuse3.Operations):
    enable_passthrough = True
    enable_readdirplus_auto = True
    enable_direct_io_allow_mmap = True

    def __init__(self, backing: str, events: str, no_opendir: bool = False):
        super().__init__()
        self.no_opendir = no_opendir
        self.backing = backing
        self.events = open(events, "a", buffering=1)
        self.backing_id = 0
        self.passthrough_fhs: set[int] = set()  # the opens using backing_id
        self.closing = trio.open_memory_channel(16)
        self.next_fh = 10
        self.fds: dict[int, int] = {}

    def log(self, event: str, **fields) -> None:
        self.events.write(json.dumps({"event": event, **fields}) + "\n")

    def init(self) -> None:
        self.log("init", passthrough=pyfuse3.passthrough_enabled())

    def attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode in (pyfuse3.ROOT_INODE, MANY):
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        else:
            attr.st_mode = stat.S_IFREG | 0o666
            if inode in (FILE, DIRECT):
                attr.st_size = os.stat(self.backing).st_size
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        attr.attr_timeout = attr.entry_timeout = 0 if inode in (FILE, DIRECT) else 300
        return attr

    def entries(self, inode: int) -> list[tuple[bytes, int]]:
        if inode == pyfuse3.ROOT_INODE:
            return [(b"file", FILE), (b"direct", DIRECT), (b"ctl", CTL), (b"many", MANY)]
        return [(name.encode(), ino) for name, ino in MANY_NAMES.items()]

    async def lookup(self, parent_inode, name, ctx):
        found = dict(self.entries(parent_inode)) if parent_inode in (pyfuse3.ROOT_INODE, MANY) else {}
        if name not in found:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(found[name])

    async def getattr(self, inode, ctx):
        return self.attrs(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size and inode in (FILE, DIRECT):
            os.truncate(self.backing, attr.st_size)
        return self.attrs(inode)

    async def opendir(self, inode, ctx):
        self.log("opendir", inode=inode)
        if self.no_opendir:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if inode == pyfuse3.ROOT_INODE:
            return pyfuse3.FileInfo(fh=inode, cache_readdir=True)
        return inode

    async def readdir(self, fh, start_id, token):
        self.log("readdir", inode=fh, start=start_id, plus=token.plus)
        listed = 0
        for i, (name, inode) in enumerate(self.entries(fh)[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self.attrs(inode), i):
                break
            listed += 1
        self.log("readdir-replied", inode=fh, plus=token.plus, entries=listed)

    async def releasedir(self, fh):
        self.log("releasedir", fh=fh)

    async def fsyncdir(self, fh, datasync):
        self.log("fsyncdir", fh=fh)

    async def open(self, inode, flags, ctx):
        fh = self.next_fh
        self.next_fh += 1
        if inode == CTL:
            return pyfuse3.FileInfo(fh=fh)
        self.fds[fh] = os.open(self.backing, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
        if inode == DIRECT:
            self.log("open", fh=fh, direct_io=True)
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if pyfuse3.passthrough_enabled():
            try:
                self.backing_id = self.backing_id or pyfuse3.backing_open(self.fds[fh])
            except OSError as exc:
                self.log("backing_open-failed", errno=errno.errorcode[exc.errno])
        if self.backing_id:
            self.passthrough_fhs.add(fh)
        self.log("open", fh=fh, backing_id=self.backing_id)
        # keep_cache stays at its default (True): pyfuse3 must not send it.
        return pyfuse3.FileInfo(fh=fh, backing_id=self.backing_id)

    async def read(self, fh, off, size):
        self.log("read", fh=fh)
        return os.pread(self.fds[fh], size, off)

    async def write(self, fh, off, buf):
        self.log("write", fh=fh)
        if fh in self.fds:
            return os.pwrite(self.fds[fh], buf, off)
        command = buf.decode().strip()
        if command == "invalidate":
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.ROOT_INODE)
        elif command == "probe":
            self.probe()
        return len(buf)

    def probe(self) -> None:
        """backing_open of what is not a regular file, backing_close of an
        id never given."""
        read_end, write_end = os.pipe()
        directory = os.open(os.path.dirname(self.backing), os.O_RDONLY | os.O_DIRECTORY)
        for kind, fd in (("directory", directory), ("pipe", read_end)):
            try:
                self.log("probe", kind=kind, backing_id=pyfuse3.backing_open(fd))
            except OSError as exc:
                self.log("probe", kind=kind, errno=errno.errorcode[exc.errno])
        for fd in (read_end, write_end, directory):
            os.close(fd)
        try:
            pyfuse3.backing_close(12345)
        except OSError as exc:
            self.log("probe", kind="unknown id", errno=errno.errorcode[exc.errno])

    async def flush(self, fh):
        pass

    async def release(self, fh):
        fd = self.fds.pop(fh, None)
        if fd is None:
            return
        os.close(fd)
        self.log("release", fh=fh)
        if fh in self.passthrough_fhs:
            self.passthrough_fhs.remove(fh)
            if not self.passthrough_fhs:
                await self.closing[0].send(self.backing_id)
                self.backing_id = 0

    async def close_backing_ids(self) -> None:
        """Closes backing ids outside any request, as a file system must
        when its handles move to another file."""
        async for backing_id in self.closing[1]:
            pyfuse3.backing_close(backing_id)
            self.log("backing_close", backing_id=backing_id)


async def serve(fs: PassthroughFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.close_backing_ids)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    mountpoint, backing, events, *mode = sys.argv[1:]
    fs = PassthroughFS(backing, events, no_opendir=mode == ["--no-opendir"])
    options = set(pyfuse3.default_options) | {"fsname=passthrough_fs"}
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(serve, fs)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
