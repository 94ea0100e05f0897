"""Real programs at work inside a union: git, tar, a C build; open files
that lose their name; memory that stays bounded over a big tree."""

import os
import shutil
import subprocess
import tarfile
import time

import pytest

from helpers import build
from unionfs import daemon


@pytest.fixture
def union(tmp_path, unions):
    low = build(tmp_path / "low", {"src/hello.c": '#include <stdio.h>\nint main(void)'
                                   '{ puts("hello from the union"); return 0; }\n',
                                   "README": "base\n"})
    return unions.mount([build(tmp_path / "up", {}), low], rw=True)


def run(*args, cwd):
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_git_init_add_commit(union):
    run("git", "init", "-q", cwd=union)
    run("git", "add", "-A", cwd=union)
    run("git", "commit", "-qm", "first", cwd=union)
    (union / "README").write_text("changed\n")
    run("git", "commit", "-qam", "second", cwd=union)
    assert run("git", "log", "--oneline", cwd=union).count("\n") == 2
    assert run("git", "status", "--porcelain", cwd=union) == ""
    run("git", "fsck", "--strict", cwd=union)


def test_tar_extract_and_list(union, tmp_path):
    archive = tmp_path / "t.tar"
    source = build(tmp_path / "src", {f"pkg/{i}/file{j}": f"{i}-{j}" * 50
                                      for i in range(20) for j in range(20)})
    os.symlink("0/file0", source / "pkg/link")
    os.link(source / "pkg/1/file1", source / "pkg/hard")
    with tarfile.open(archive, "w") as tar:
        tar.add(source / "pkg", arcname="pkg")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(union)], check=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(union)], check=True)  # over itself
    assert (union / "pkg/7/file3").read_text() == "7-3" * 50
    assert os.readlink(union / "pkg/link") == "0/file0"
    assert os.stat(union / "pkg/hard").st_ino == os.stat(union / "pkg/1/file1").st_ino
    diff = subprocess.run(["diff", "-r", str(source / "pkg"), str(union / "pkg")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_compile_and_run_a_c_program(union):
    run("cc", "-o", "src/hello", "src/hello.c", cwd=union)
    assert run("./src/hello", cwd=union) == "hello from the union\n"
    assert os.access(union / "src/hello", os.X_OK)


def test_unlinked_open_file_stays_readable_and_writable(union):
    with open(union / "README", "r+") as f:
        os.unlink(union / "README")
        assert not (union / "README").exists()
        assert f.read() == "base\n"
        f.write("more\n")
        f.seek(0)
        assert f.read() == "base\nmore\n"
        assert os.fstat(f.fileno()).st_nlink == 0
    assert not (union / "README").exists()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def drop_kernel_caches():
    """Make the kernel evict unused dentries and inodes, so it sends FORGET."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    time.sleep(1)  # the FORGETs reach the daemon asynchronously


def _walk_and_stat(mnt) -> int:
    """Walk and stat every file, so that the kernel looks each one up (a
    listing alone may come as plain READDIR, which looks nothing up)."""
    return sum(1 for dirpath, _, files in os.walk(mnt)
               for name in files if os.lstat(os.path.join(dirpath, name)))


def test_walking_100k_files_does_not_grow_the_daemon_without_bound(tmp_path, unions):
    low = tmp_path / "low"
    for d in range(100):
        os.makedirs(low / f"d{d}")
        for f in range(1000):
            open(low / f"d{d}/f{f}", "w").close()
    mnt = unions.mount([build(tmp_path / "up", {}), low], rw=True)
    pid = daemon.pid_of(str(mnt))
    _walk_and_stat(mnt)
    holding_everything = rss_kib(pid)  # the kernel still holds every inode here
    drop_kernel_caches()
    after = []
    for _ in range(3):
        assert _walk_and_stat(mnt) == 100_000
        drop_kernel_caches()
        after.append(rss_kib(pid))
    # The inode table empties when the kernel forgets; walks after the first
    # must reuse that memory, not add to it.
    print("daemon RSS (KiB) holding 100k inodes:", holding_everything, "after walks:", after)
    assert after[2] - after[0] < (holding_everything - after[0]) / 4, (holding_everything, after)
