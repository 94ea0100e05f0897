"""Mount options into a config (no mount needed)."""

import os

import pytest

from unionfs.branches import BranchError
from unionfs.options import parse
from unionfs.owners import NO_ID


@pytest.fixture
def stack(tmp_path):
    for name in ("up", "low", "mnt", "work"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_union_fuse_and_mount8_options(stack):
    config = parse([f"br={stack}/up=rw:{stack}/low=ro,allow_other", "noauto,_netdev,x-systemd.foo"],
                   str(stack / "mnt"))
    assert config.mountpoint == str(stack / "mnt")
    assert {"allow_other", "default_permissions", "subtype=pyunion", "fsname=pyunion"} \
        == set(config.fuse_options)


def test_no_writable_branch_mounts_read_only(stack):
    config = parse([f"br={stack}/low=ro,rw"], str(stack / "mnt"))
    assert "ro" in config.fuse_options and "rw" not in config.fuse_options


def test_source_is_the_branch_list_when_no_option_gives_one(stack):
    source = f"{stack}/up=rw:{stack}/low=ro"
    config = parse([], str(stack / "mnt"), source)
    assert [b.path for b in config.stack.branches] == [f"{stack}/up", f"{stack}/low"]
    assert f"fsname={source}" in config.fuse_options


def test_source_is_only_a_name_when_br_is_given(stack):
    config = parse([f"br={stack}/low"], str(stack / "mnt"), "myunion")
    assert [b.path for b in config.stack.branches] == [f"{stack}/low"]
    assert "fsname=myunion" in config.fuse_options


def test_overlay_options(stack):
    config = parse([f"lowerdir={stack}/low,upperdir={stack}/up,workdir={stack}/work"],
                   str(stack / "mnt"))
    assert config.stack.upper.path == f"{stack}/up"
    assert config.stack.workdir == f"{stack}/work"


@pytest.mark.parametrize("options, message", [
    (["nosuchoption"], "unknown mount option 'nosuchoption'"),
    (["allow_other=1"], "unknown mount option"),
    (["br={s}/low,br={s}/up"], "given twice"),
    (["br={s}/low,lowerdir={s}/up"], "either br= or lowerdir="),
    ([], "no branches given"),
    (["br="], "no branches given"),
    (["upperdir={s}/up"], "lowerdir= is required"),
    (["br={s}/low,max_open=0"], "max_open= must be a whole number above 0, not '0'"),
    (["br={s}/low,max_open=lots"], "max_open= must be a whole number"),
    (["br={s}/up=rw:{s}/low=ro,quota=1.5g"], r"^quota= must be a size such as 512m or 10g, not '1.5g'$"),
    (["br={s}/up=rw:{s}/low=ro,quota=-1"], "quota= must be a size"),
    (["br={s}/up=rw:{s}/low=ro,quota=8192p"], "quota= must be a size"),
    (["br={s}/up=rw:{s}/low=ro,quota=8388608t"], r"^quota=8388608t is too big \(the most is 8 EiB\)$"),
    (["br={s}/low=ro,quota=1m"], "^quota= needs a writable branch$"),
])
def test_bad_options(stack, options, message):
    with pytest.raises(BranchError, match=message):
        parse([o.format(s=stack) for o in options], str(stack / "mnt"))


def test_quota_sizes(stack):
    for text, size in (("4096", 4096), ("512k", 512 << 10), ("10M", 10 << 20), ("2g", 2 << 30)):
        config = parse([f"br={stack}/up=rw:{stack}/low=ro,quota={text}"], str(stack / "mnt"))
        assert config.quota == size
    assert parse([f"br={stack}/up=rw:{stack}/low=ro"], str(stack / "mnt")).quota is None


@pytest.mark.parametrize("mnt, message", [
    ("missing", "mount point .* no such directory"),
    ("low", "is inside branch"),
    ("low/sub", "is inside branch"),
    (".", "would hide branch"),
])
def test_bad_mountpoints(stack, mnt, message):
    (stack / "low/sub").mkdir()
    with pytest.raises(BranchError, match=message):
        parse([f"br={stack}/up=rw:{stack}/low=ro"], str(stack / mnt))


@pytest.mark.parametrize("mnt, workdir, message", [
    ("work", "work", "mount point .*/work is inside workdir .*/work$"),
    ("work/sub", "work", "is inside workdir"),
    ("mnt", "mnt/work", "would hide workdir .*/mnt/work$"),
    ("mnt", "link-to-mnt/work", "would hide workdir .*/mnt/work$"),
    ("link-to-work", "work", "is inside workdir"),
])
def test_workdir_and_mountpoint_must_not_overlap(stack, mnt, workdir, message):
    """A daemon whose work dir is reached through its own mount waits on
    itself for ever (in D state): refused before anything is mounted."""
    (stack / "work/sub").mkdir()
    (stack / "mnt/work").mkdir()
    (stack / "link-to-mnt").symlink_to(stack / "mnt")
    (stack / "link-to-work").symlink_to(stack / "work")
    with pytest.raises(BranchError, match=message):
        parse([f"lowerdir={stack}/low,upperdir={stack}/up,workdir={stack}/{workdir}"],
              str(stack / mnt))


@pytest.mark.parametrize("options, message", [
    (["br={s}/a,b=rw:{s}/low=ro"], r"a comma cannot appear in a branch path given in -o "
                                   r"\(br=.*/a,b=rw:.*/low=ro\): commas separate options$"),
    (["br={s}/up=rw:{s}/a,b=ro"], "a comma cannot appear in a branch path"),
    (["lowerdir={s}/a,b"], r"a comma cannot appear .* \(lowerdir=.*/a,b\)"),
    (["lowerdir={s}/low,upperdir={s}/a,b,workdir={s}/work"], r"\(upperdir=.*/a,b\)"),
    (["br={s}/low,allow_othr"], "^unknown mount option 'allow_othr'$"),
    (["br={s}/low=ro,b"], "^unknown mount option 'b'$"),
    (["br={s}/low,blkdev"], r"^blkdev is not supported by pyunion \(it needs fuseblk"),
])
def test_commas_in_paths_and_blkdev_say_what_is_wrong(stack, options, message):
    (stack / "a,b").mkdir()
    with pytest.raises(BranchError, match=message):
        parse([o.format(s=stack) for o in options], str(stack / "mnt"))


def test_a_comma_in_the_source_reaches_libfuse_escaped(stack):
    (stack / "a,b").mkdir()
    config = parse([], str(stack / "mnt"), f"{stack}/a,b=rw:{stack}/low=ro")
    assert config.stack.upper.path == f"{stack}/a,b"
    assert f"fsname={stack}/a\\,b=rw:{stack}/low=ro" in config.fuse_options


def test_the_source_as_fsname_is_ascii_for_libfuse(stack):
    (stack / "a,b").mkdir()
    up = stack / os.fsdecode(b"up\xff\\")
    up.mkdir()
    config = parse([], str(stack / "mnt"), f"{up}=rw:{stack}/a,b=ro")
    assert f"fsname={stack}/up\\\\xff\\\\=rw:{stack}/a\\,b=ro" in config.fuse_options
    with pytest.raises(BranchError, match="FUSE takes only ASCII options"):
        parse([f"br={stack}/low,fsname=\u00e9"], str(stack / "mnt"))


def test_udba_is_none_unless_chosen(stack):
    low, mnt = stack / "low", str(stack / "mnt")
    assert parse([f"br={low}=ro"], mnt).udba == "none"
    assert parse([f"br={low}=ro,udba=notify"], mnt).udba == "notify"
    with pytest.raises(BranchError, match=r"^udba= must be one of none, reval, notify, "
                                          r"not 'always'$"):
        parse([f"br={low}=ro,udba=always"], mnt)


def test_empty_items_are_skipped_as_containers_storage_writes_them(stack):
    config = parse([f"lowerdir={stack}/low,upperdir={stack}/up,workdir={stack}/work,,volatile,"],
                   str(stack / "mnt"))
    assert config.volatile and config.stack.workdir == f"{stack}/work"


def test_volatile_is_meaningless_and_accepted_without_a_writable_branch(stack):
    config = parse([f"lowerdir={stack}/low,volatile"], str(stack / "mnt"))
    assert config.stack.upper is None and "ro" in config.fuse_options


@pytest.mark.parametrize("option", [
    "xattr_permissions=2", 'context="system_u:object_r:container_file_t:s0"'])
def test_fuse_overlayfs_options_not_done_yet_are_refused_by_name(stack, option):
    key = option.partition("=")[0]
    sep = "=" if "=" in option else ""
    with pytest.raises(BranchError, match=rf"^option {key}{sep} is not supported by pyunion yet \("):
        parse([f"lowerdir={stack}/low,upperdir={stack}/up,workdir={stack}/work,{option}"],
              str(stack / "mnt"))


def test_owner_mappings_as_containers_storage_writes_them(stack):
    config = parse([f"lowerdir={stack}/low,uidmapping=:0:100000:65536:65536:300000:1,"
                    "gidmapping=:0:200000:10"], str(stack / "mnt"))
    uids, gids = config.owners.uids, config.owners.gids
    assert [uids.shown(i) for i in (0, 1, 65535, 65536, 70000)] \
        == [100000, 100001, 165535, 300000, NO_ID]
    assert [uids.stored(i) for i in (100000, 165535, 300000, 0, 99999)] \
        == [0, 65535, 65536, 65534, 65534]
    assert (gids.shown(9), gids.shown(10), gids.stored(200009)) == (200009, NO_ID, 9)


def test_squashes_show_one_owner_and_store_as_mapped(stack):
    config = parse([f"lowerdir={stack}/low,squash_to_root,squash_to_uid=1000"],
                   str(stack / "mnt"))
    uids, gids = config.owners.uids, config.owners.gids
    assert (uids.shown(5), gids.shown(5)) == (1000, 0)  # squash_to_uid comes first
    assert (uids.stored(5), gids.stored(7)) == (5, 7)
    assert not parse([f"lowerdir={stack}/low"], str(stack / "mnt")).owners.mapped


@pytest.mark.parametrize("option, message", [
    ("uidmapping=0:1000", r"^uidmapping= must be triples ID:HOST-ID:COUNT, not '0:1000'$"),
    ("gidmapping=a:b:c", "^gidmapping= must be triples"),
    ("uidmapping=", "^uidmapping= must be triples"),
    ("uidmapping=0:1000:0", "^uidmapping= has a range of no IDs"),
    ("uidmapping=0:4294967295:2", "^uidmapping= goes past the largest ID"),
    # (uid_t)-1 is no ID: chown's "leave it", the kernel's invalid ID
    ("uidmapping=0:4294967295:1", "^uidmapping= goes past the largest ID"),
    ("gidmapping=4294967295:0:1", "^gidmapping= goes past the largest ID"),
    ("squash_to_uid=4294967295", "^squash_to_uid= must be a user or group ID"),
    ("squash_to_uid=-1", r"^squash_to_uid= must be a user or group ID, not '-1'$"),
    ("squash_to_gid=4294967296", "^squash_to_gid= must be a user or group ID"),
])
def test_bad_owner_options(stack, option, message):
    with pytest.raises(BranchError, match=message):
        parse([f"lowerdir={stack}/low,{option}"], str(stack / "mnt"))
