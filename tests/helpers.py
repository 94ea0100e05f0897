"""Building branch trees, mounting them for real, and checking them after."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import select
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from unionfs import mounts

BIN = Path(sys.executable).parent
PYUNION = str(BIN / "pyunion")


@dataclass(frozen=True)
class Symlink:
    target: str


DIR = object()  # marks a directory in a tree spec


def build(root: Path, spec: dict) -> Path:
    """Make ``root`` hold ``spec``: {"path": bytes|str|DIR|Symlink}.

    Parents are created as needed; order matters only for symlinks.
    """
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if what is DIR:
            path.mkdir(exist_ok=True)
        elif isinstance(what, Symlink):
            path.symlink_to(what.target)
        else:
            path.write_bytes(what.encode() if isinstance(what, str) else what)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about a tree that a write could change, per relative path."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = hashlib.sha256(os.readlink(path).encode()).hexdigest()
            elif stat.S_ISREG(st.st_mode):
                content = file_digest(path)
            else:
                content = ""
            xattrs = tuple(sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            ))
            result[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                st.st_ino, content, xattrs,
            )
    return result


def file_digest(path) -> str:
    """A hash of a file's data that reads only its data segments, so a big
    sparse file costs little (holes hash as their offsets)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            h.update(f"@{data}:".encode())
            while data < hole:
                chunk = os.pread(fd, min(1 << 22, hole - data), data)
                if not chunk:
                    break
                h.update(chunk)
                data += len(chunk)
            offset = hole
        h.update(f"size={size}".encode())
    finally:
        os.close(fd)
    return h.hexdigest()


def pyunion(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PYUNION, *args], capture_output=True, text=True, check=check,
                          timeout=60, **kwargs)


def mounted(mnt: Path | str, fstype: str | None = None) -> bool:
    found = mounts.find(os.path.realpath(mnt))
    return found is not None and fstype in (None, found.fstype)


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def force_unmount(mnt: Path | str) -> None:
    """Last resort for a test that failed half-way: detach whatever is there."""
    for _ in range(100):
        if not mounted(mnt):
            return
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    assert not mounted(mnt), f"{mnt} stays mounted"


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or during the read
        return True


#: Joins the cgroups whose ``cgroup.procs`` files follow its first argument,
#: makes the device nodes that argument names (JSON: name -> [b or c,
#: major, minor]) in ``$DIR``, and prints what opening each for reading gave.
_NODE_PROBE = """
import errno, json, os, stat, sys
for procs in sys.argv[2:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
said = {}
for name, (kind, major, minor) in json.loads(sys.argv[1]).items():
    path = os.path.join(os.environ["DIR"], name)
    os.mknod(path, (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o600,
             os.makedev(major, minor))
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        said[name] = "opened"
    except OSError as exc:
        said[name] = errno.errorcode[exc.errno]
print(json.dumps(said))
"""


def open_nodes(directory, nodes: dict, procs_files) -> dict[str, str]:
    """What opening each of ``nodes`` gave a process in the cgroups whose
    ``procs_files`` are given (see _NODE_PROBE); ``directory`` is made."""
    os.makedirs(directory, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _NODE_PROBE, json.dumps(nodes), *procs_files],
                          env={**os.environ, "DIR": str(directory)}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def talk_through_a_terminal(command: list[str], lines: list[bytes], seconds: float = 30,
                            **kwargs) -> str:
    """Run ``command`` (a pycontainer one) on a pty of our own and type
    each line at a shell prompt, as a person would; returns everything
    shown."""
    master, slave = os.openpty()
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, **kwargs)
    os.close(slave)
    output, pending = b"", list(lines)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            output += chunk
            if b"\x1b[6n" in chunk:  # line editing asks where the cursor is
                os.write(master, b"\x1b[1;1R")
            if pending and output.replace(b"\x1b[6n", b"").rstrip().endswith(b"#"):
                os.write(master, pending.pop(0))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return output.decode(errors="replace")


#: a container command that answers SIGINT once, after saying it is ready
INTERRUPTIBLE = ["sh", "-c", "trap 'echo got INT; exit 3' INT; echo ready; "
                             "while true; do sleep 0.1; done"]


def interrupted_once(proc) -> tuple[int, str, str]:
    """Ctrl-C at ``proc`` (a ``pycontainer run`` of :data:`INTERRUPTIBLE`,
    started in a session of its own, text pipes): its exit code, stdout
    and stderr."""
    try:
        assert proc.stdout.readline() == "ready\n"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err
