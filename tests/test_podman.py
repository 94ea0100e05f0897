"""The real podman with pyunion as the overlay driver's ``mount_program``,
the way fuse-overlayfs is used: every container start, ``diff``,
``commit`` and ``mount`` goes through ``pyunion -o ... MERGED`` and
``fusermount3 -u MERGED``.  Each podman has its own throwaway roots and
configuration (bench/podman_env.py); nothing may be left mounted or
running, and the host's own container storage is never touched.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.podman_env import HOST_DIRS, PODMAN, Podman, busybox_tar, libpod_cgroups
from helpers import PYUNION, mounted

pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman is not installed")

MOUNT_PROGRAM = PYUNION
FSTYPE = "fuse.pyunion"

#: Three layers: busybox; one adding files and a tree; one deleting a file
#: and replacing the tree with a directory of other content.
CONTAINERFILE = """\
FROM localhost/busybox
RUN mkdir -p /data/old && echo one > /data/old/f && echo gone > /gone && echo keep > /keep
RUN rm /gone && rm -rf /data && mkdir /data && echo two > /data/new
"""
#: What a container of that image shows, checked by a shell inside it.
CHECK_IMAGE = 'test ! -e /gone && test "$(ls -A /data)" = new && cat /keep /data/new'


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    """The busybox tar and the build context of the three-layer image."""
    work = tmp_path_factory.mktemp("podman-context")
    busybox_tar(work)
    (work / "Containerfile").write_text(CONTAINERFILE)
    return work


def make_images(podman: Podman, context: Path) -> None:
    podman.copying("import", str(context / "busybox.tar"), "localhost/busybox")
    podman.copying("build", "--pull=never", "--network", "none", "-t", "localhost/three",
                   "-f", str(context / "Containerfile"), str(context))


@pytest.fixture(scope="module")
def host_untouched():
    """The host's default container storage neither appears nor changes,
    and no cgroup of podman's is left."""
    before = {d: _listing(d) for d in HOST_DIRS}, libpod_cgroups()
    yield
    assert ({d: _listing(d) for d in HOST_DIRS}, libpod_cgroups()) == before


def _listing(directory: str):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else None


@pytest.fixture(scope="module")
def shared(context, host_untouched):
    """One podman with pyunion as its mount program, holding both images."""
    podman = Podman(MOUNT_PROGRAM)
    # containers/storage 1.43 (podman 4.3) idmaps the lower layers of a
    # user-namespaced container where the kernel can, and passes
    # uidmapping= to the mount program as well: owners would be mapped
    # twice, with fuse-overlayfs too (later versions idmap only without a
    # mount program).  Its cached answer "the kernel cannot" leaves the
    # mapping to pyunion.
    (podman.root / "run" / "overlay").mkdir(parents=True)
    (podman.root / "run" / "overlay" / "idmapped-lower-dir-false").write_text("")
    try:
        make_images(podman, context)
        yield podman
    finally:
        podman.tear_down()


@pytest.fixture
def podman(shared):
    """The shared podman; after each test its containers go, and nothing of
    them may be left: mounts, processes (pyunion daemons, conmons), pyunion's
    records (once podman's own clean-ups have ended)."""
    yield shared
    if shared("rm", "-af", "-t", "0", check=False).returncode != 0:
        # It raced an exited container's own clean-up (podman container
        # cleanup, which unmounts its shm): once that has ended, again.
        shared.settle()
        shared("rm", "-af", "-t", "0")
    shared.settle()
    assert shared.leftovers() == ([], [], [])


def run(podman: Podman, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("run", "--network", "none", *args, check=check)


def merged_dir(podman: Podman, name: str) -> str:
    return podman("inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", name).stdout.strip()


def test_run_rm_shows_the_three_layers(podman):
    done = run(podman, "--rm", "localhost/three", "sh", "-c", CHECK_IMAGE)
    assert done.stdout == "keep\ntwo\n"
    assert run(podman, "--rm", "localhost/three", "sh", "-c", "exit 7",
               check=False).returncode == 7
    assert podman("ps", "-aq").stdout == ""


def test_run_detached_exec_and_stop(podman):
    run(podman, "-d", "--name", "sleeper", "localhost/three", "sleep", "600")
    merged = merged_dir(podman, "sleeper")
    assert mounted(merged, FSTYPE)
    podman("exec", "sleeper", "sh", "-c", "echo written > /data/new && rm /keep")
    assert podman("exec", "sleeper", "sh", "-c", "cat /data/new; ls /keep",
                  check=False).stdout == "written\n"
    assert Path(merged, "data/new").read_text() == "written\n"
    assert {"C /data/new", "D /keep"} <= set(podman("diff", "sleeper").stdout.splitlines())
    exported = podman("export", "sleeper", text=False).stdout  # the whole tree, read through
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("data/new").read() == b"written\n"
    assert {"bin/busybox", "data/new"} <= names and not {"keep", "gone", "data/old"} & names
    podman("stop", "-t", "1", "sleeper")
    assert podman("inspect", "-f", "{{.State.Status}}", "sleeper").stdout.strip() == "exited"
    assert not mounted(merged)
    podman.settle()
    assert podman.leftovers() == ([], [], [])


def test_diff_commit_and_run_the_committed_image(podman):
    podman("create", "--network", "none", "--name", "changer", "localhost/three", "sh", "-c",
           "echo added > /added && rm /keep && echo more >> /data/new && mkdir /dir")
    podman("start", "-a", "changer")
    changes = set(podman("diff", "changer").stdout.splitlines())
    assert {"A /added", "D /keep", "C /data", "C /data/new", "A /dir"} <= changes
    assert not [c for c in changes if "/gone" in c or "/data/old" in c], changes
    podman.copying("commit", "-q", "changer", "localhost/committed")
    done = run(podman, "--rm", "localhost/committed", "sh", "-c",
               "test ! -e /keep && test -d /dir && test ! -e /gone && cat /added /data/new")
    assert done.stdout == "added\ntwo\nmore\n"


def test_mount_and_unmount(podman):
    podman("create", "--network", "none", "--name", "mounted", "localhost/three", "true")
    merged = podman("mount", "mounted").stdout.strip()
    assert mounted(merged, FSTYPE)
    assert Path(merged, "keep").read_text() == "keep\n"
    assert sorted(os.listdir(Path(merged, "data"))) == ["new"]
    assert not Path(merged, "gone").exists()
    podman("unmount", "mounted")
    assert not mounted(merged)
    image = podman("image", "mount", "localhost/three").stdout.strip()  # read-only
    assert mounted(image, FSTYPE)
    assert sorted(os.listdir(Path(image, "data"))) == ["new"]
    podman("image", "unmount", "localhost/three")
    assert not mounted(image)


def test_rm_removes_the_container_and_its_layer(podman):
    run(podman, "--name", "gone", "localhost/three", "sh", "-c", "echo x > /x")
    upper = Path(podman("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "gone").stdout.strip())
    assert (upper / "x").read_text() == "x\n"
    podman("rm", "gone")
    assert not upper.parent.exists()
    assert podman("ps", "-aq").stdout == ""


def test_a_user_namespaced_container_sees_its_own_ids(podman):
    """``--uidmap``: pyunion shows the image's owners (0) as the host's IDs
    of the namespace (``uidmapping=``), which the container sees as 0 again,
    and stores what the container makes as the container's own IDs."""
    mapping = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]
    run(podman, *mapping, "--name", "userns", "localhost/three", "sh", "-c",
        "id -u && stat -c %u:%g /bin/busybox /keep && touch /made && chown 5:6 /keep")
    done = podman("logs", "userns")
    assert done.stdout == "0\n0:0\n0:0\n"
    upper = Path(podman("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "userns")
                 .stdout.strip())
    assert [(os.lstat(upper / n).st_uid, os.lstat(upper / n).st_gid) for n in ("made", "keep")] \
        == [(0, 0), (5, 6)]


def test_switch_from_the_kernel_driver_and_back(context, host_untouched):
    """Containers made with the kernel's overlay driver (layers and uppers in
    overlay's format) keep their files when one line of storage.conf makes
    pyunion their mount program, and what they change under pyunion is there
    when they go back: written in overlay's format (``whiteout=overlay``),
    with the partial copy of a changed file and the redirect of a renamed
    directory made plain at each unmount (``flatten``)."""
    podman = Podman()
    try:
        make_images(podman, context)
        run(podman, "-d", "--name", "kept", "localhost/three", "sleep", "600")
        assert mounted(merged_dir(podman, "kept"), "overlay")
        podman("exec", "kept", "sh", "-c", "echo kernel > /kfile && rm /keep"
               " && rm -rf /data && mkdir /data && echo k > /data/k")
        podman("stop", "-t", "1", "kept")

        # A switch waits for podman's clean-ups: one still running would
        # write the old driver's mark (below) after the switch.
        podman.settle()
        podman.use(MOUNT_PROGRAM, mountopt="whiteout=overlay,flatten")
        assert run(podman, "--rm", "localhost/three", "sh", "-c", CHECK_IMAGE
                   ).stdout == "keep\ntwo\n"
        podman("start", "kept")
        assert mounted(merged_dir(podman, "kept"), FSTYPE)
        assert podman("exec", "kept", "sh", "-c", "test ! -e /keep && test ! -e /gone"
                      " && ls -A /data && cat /kfile").stdout == "k\nkernel\n"
        podman("exec", "kept", "sh", "-c", "echo pyunion > /pfile && rm /kfile && rm /data/k"
               " && mkdir /data/sub && echo q > /data/sub/q && rm /bin/vi"
               " && echo extra:x:5: >> /etc/group && mv /usr/sbin /usr/moved")
        podman("stop", "-t", "1", "kept")
        podman.settle()

        # Once a mount program has served a graphroot, c/storage writes
        # "true" to overlay/.has-mount-program and, run as root, keeps
        # using one there (fuse-overlayfs when none is configured) whatever
        # storage.conf says; "false" lets the kernel's driver serve it again.
        podman.use(None)
        (podman.graphroot / "overlay/.has-mount-program").write_text("false")
        podman("start", "kept")
        assert mounted(merged_dir(podman, "kept"), "overlay")
        assert podman("exec", "kept", "sh", "-c", "test ! -e /kfile && test ! -e /keep"
                      " && test ! -e /bin/vi && test ! -e /usr/sbin && test -L /usr/moved/chroot"
                      " && ls -A /data && cat /pfile /data/sub/q /etc/group"
                      ).stdout == "sub\npyunion\nq\nroot:x:0:\nnogroup:x:65534:\nextra:x:5:\n"
        podman("stop", "-t", "1", "kept")
        assert podman("ps", "-aq", "--no-trunc").stdout.split() == [
            podman("inspect", "-f", "{{.Id}}", "kept").stdout.strip()]
        podman("rm", "kept")
        podman.settle()
        assert podman.leftovers() == ([], [], [])
    finally:
        podman.tear_down()
