"""Inode numbers and lookup counts, with the daemon in this very process
(pytest-trio), so its inode table can be looked at directly."""

import os

import pyfuse3
import pytest
import trio

from helpers import build
from unionfs.branches import parse_br, validate
from unionfs.fs import UnionOperations
from unionfs.inodes import ROOT_INODE, InodeNumbers
from unionfs.layer import Layer


class InProcessUnion:
    """A union served by this process's trio loop; touch it only from threads."""

    def __init__(self, branches, mnt):
        stack = validate(parse_br(":".join(f"{b}=ro" for b in branches)))
        self.layers = [Layer(b, i) for i, b in enumerate(stack.branches)]
        self.ops = UnionOperations(self.layers)
        self.mnt = mnt

    async def __aenter__(self):
        pyfuse3.init(self.ops, str(self.mnt), {"default_permissions", "ro", "subtype=pyunion"})
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(pyfuse3.main)
        return self

    async def __aexit__(self, *exc):
        pyfuse3.terminate()
        try:
            return await self._nursery_cm.__aexit__(*exc)
        finally:
            pyfuse3.close(unmount=True)
            for layer in self.layers:
                layer.close()


def drop_kernel_caches():
    """Make the kernel evict unused dentries and inodes, so it sends FORGET."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def walk(mnt):
    count = 0
    for _, dirs, files in os.walk(mnt):
        count += len(dirs) + len(files)
    return count


@pytest.mark.trio
async def test_forget_empties_the_table_and_forgotten_inodes_come_back(tmp_path):
    spec = {f"d{i}/f{j}": "x" for i in range(20) for j in range(100)}
    b1 = build(tmp_path / "b1", spec)
    b2 = build(tmp_path / "b2", {f"d{i}/g": "y" for i in range(20)})
    (tmp_path / "mnt").mkdir()
    async with InProcessUnion([b1, b2], tmp_path / "mnt") as union:
        assert await trio.to_thread.run_sync(walk, union.mnt) == 20 + 2000 + 20
        grown = len(union.ops.inodes)
        assert grown > 2000
        for _ in range(50):
            await trio.to_thread.run_sync(drop_kernel_caches)
            await trio.sleep(0.1)
            if len(union.ops.inodes) == 1:
                break
        assert len(union.ops.inodes) == 1  # only the root is left
        # Everything forgotten can be found again, under the same numbers.
        st = await trio.to_thread.run_sync(os.stat, union.mnt / "d7/f42")
        assert st.st_ino == os.stat(b1 / "d7/f42").st_ino
        assert await trio.to_thread.run_sync(walk, union.mnt) == 2040


def test_numbers_keep_real_inodes_on_the_first_file_system(tmp_path):
    build(tmp_path / "b", {"f": "x"})
    root = os.stat(tmp_path / "b")
    numbers = InodeNumbers(root, [root.st_dev])
    assert numbers(os.stat(tmp_path / "b/f")) == os.stat(tmp_path / "b/f").st_ino
    assert numbers(root) == ROOT_INODE


def test_a_file_whose_number_is_the_roots_gets_the_roots_real_number(tmp_path):
    root = os.stat(tmp_path)
    numbers = InodeNumbers(root, [root.st_dev])
    clash = os.stat_result((0o100644, ROOT_INODE, root.st_dev, 1, 0, 0, 0, 0, 0, 0))
    assert numbers(clash) == root.st_ino


def test_other_file_systems_get_their_index_in_the_top_bits(tmp_path):
    root = os.stat(tmp_path)
    numbers = InodeNumbers(root, [root.st_dev, root.st_dev + 1])
    other = os.stat_result((0o100644, 77, root.st_dev + 1, 1, 0, 0, 0, 0, 0, 0))
    unseen = os.stat_result((0o100644, 77, root.st_dev + 2, 1, 0, 0, 0, 0, 0, 0))
    assert numbers(other) == 1 << 56 | 77
    assert numbers(unseen) == 2 << 56 | 77
    huge = os.stat_result((0o100644, 1 << 60, root.st_dev, 1, 0, 0, 0, 0, 0, 0))
    with pytest.raises(OSError):
        numbers(huge)
