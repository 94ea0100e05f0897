"""Mount options (``-o a,b=c``) into a validated :class:`MountConfig`.

Three kinds of option are accepted:

* the union's own: ``br=``, or ``lowerdir=``/``upperdir=``/``workdir=``;
  ``copyup=partial|full`` (a copy-up brings data up chunk by chunk as it is
  written, or all of it at once); ``flatten`` (complete partial copies at
  unmount, so the writable branch is a plain tree for other tools);
  ``pagecache=keep|drop|direct`` (what the kernel keeps of lower files read
  through the mount: see ``fs.PageCache``); ``passthrough=auto|on|off``
  (whether the kernel reads and writes files itself where it can: see
  ``passthrough.py``; the environment variable ``PYUNION_PASSTHROUGH``
  changes its default, so that a whole test run can force it off);
  ``max_open=N`` (how many
  files the daemon keeps open for the mount's users at once: past it, an open fails with EMFILE, so they cannot make the daemon
  grow without end); ``quota=SIZE`` (what the
  writable branch may hold: see ``quota.py``); ``udba=none|reval|notify``
  (how a read-only branch changed under the mount shows: see ``udba.py``);
  ``volatile`` (no flush reaches the disk: see ``durable.py``; meaningless,
  and so accepted, on a read-only mount, as overlayfs does);
  fuse-overlayfs's ``uidmapping=``, ``gidmapping=``, ``squash_to_uid=``,
  ``squash_to_gid=``, ``squash_to_root`` (see ``owners.py``);
  ``whiteout=aufs|overlay`` (the format written in the writable branch:
  see ``whiteout.py``; ``overlay`` needs ``workdir=``);
* FUSE and kernel mount options, passed on to libfuse as they are;
* options that only mean something to ``mount(8)`` and fstab (``defaults``,
  ``noauto``, ``_netdev``, ``x-*``...), accepted and dropped.

Anything else is refused with a one-line error, before anything is mounted;
so are the options fuse-overlayfs takes that pyunion does not do yet
(``xattr_permissions=``, ``context=``), rather than accepted and ignored.  Empty items
(``a,,b``, a trailing comma) are skipped, as containers/storage writes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import branches, owners
from .branches import BranchError, BranchStack
from .owners import AS_STORED, Owners

FSTYPE = "pyunion"

_PATH_KEYS = {"br", "lowerdir", "upperdir", "workdir"}
_OWNER_KEYS = {"uidmapping", "gidmapping", "squash_to_uid", "squash_to_gid"}
_UNION_KEYS = _PATH_KEYS | _OWNER_KEYS | {"copyup", "pagecache", "passthrough", "max_open",
                                         "quota", "udba", "whiteout"}
_CHOICES = {"copyup": ("partial", "full"), "pagecache": ("keep", "drop", "direct"),
            "passthrough": ("auto", "on", "off"),
            "udba": ("none", "reval", "notify"), "whiteout": ("aufs", "overlay")}
_FUSE_FLAGS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions",
    "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
    "async", "sync", "dirsync", "atime", "noatime", "nodiratime", "relatime",
    "strictatime", "lazytime", "nolazytime",
}
_FUSE_KEYS = {"fsname", "subtype", "max_read", "blksize"}
_MOUNT8_ONLY = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner",
                "group", "_netdev", "nofail", "comment"}
_SIZE = re.compile(r"([0-9]+)([kmgt]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_QUOTA = 1 << 63
#: fuse-overlayfs's options that containers/storage may pass, not done yet
_NOT_YET = {
    "xattr_permissions": "keeping modes in xattrs (force_mask)",
    "context": "SELinux mount labels",
}


@dataclass(frozen=True)
class MountConfig:
    stack: BranchStack
    mountpoint: str
    fuse_options: frozenset[str]
    partial_copies: bool = True
    flatten_at_umount: bool = False
    pagecache: str = "keep"
    #: whether the kernel reads and writes files itself (``passthrough.py``)
    passthrough: str = "auto"
    max_open: int | None = None
    #: bytes the writable branch may hold; None: no quota
    quota: int | None = None
    #: how read-only branches changed under the mount show (``udba.py``)
    udba: str = "none"
    #: no flush reaches the disk (``durable.py``)
    volatile: bool = False
    #: how owners in the branches show through the mount (``owners.py``)
    owners: Owners = AS_STORED
    #: the format written in the writable branch (``whiteout.Format``)
    whiteout: str = "aufs"


def parse(option_args: list[str], mountpoint: str, source: str | None = None) -> MountConfig:
    """Build the config from every ``-o`` value given, in order.

    ``source`` is the first argument in the ``mount -t fuse.pyunion SOURCE
    MNT`` form: the branch list itself when no ``br=``/``lowerdir=`` option
    gives one, otherwise just the name shown in the mount table.
    """
    union: dict[str, str] = {}
    fuse: set[str] = set()
    flags: set[str] = set()
    for arg in option_args:
        path_before = None  # the path-valued option just before, if any
        for option in filter(None, arg.split(",")):
            key, sep, value = option.partition("=")
            if key in _UNION_KEYS and sep:
                if key in union:
                    raise BranchError(f"option {key}= is given twice")
                union[key] = value
            elif option in ("flatten", "volatile", "squash_to_root"):
                flags.add(option)
            elif key in _NOT_YET:
                raise BranchError(f"option {key}{sep} is not supported by pyunion yet "
                                  f"({_NOT_YET[key]})")
            elif option == "blkdev":
                raise BranchError("blkdev is not supported by pyunion (it needs fuseblk, "
                                  "a file system on a block device)")
            elif (key in _FUSE_FLAGS and not sep) or (key in _FUSE_KEYS and sep):
                if not option.isascii():
                    raise BranchError(f"mount option {option!r}: FUSE takes only ASCII options")
                fuse.add(option)
            elif key in _MOUNT8_ONLY or key.startswith("x-"):
                pass
            elif path_before is not None and _rest_of_a_path(path_before, option):
                raise BranchError(f"a comma cannot appear in a branch path given in -o "
                                  f"({path_before},{option}): commas separate options")
            else:
                raise BranchError(f"unknown mount option {option!r}")
            path_before = option if key in _PATH_KEYS and sep else None
    passthrough = _passthrough(union)
    copyup, pagecache, udba, whiteout = (_choice(union, key)
                                         for key in ("copyup", "pagecache", "udba", "whiteout"))
    quota = _quota(union.pop("quota")) if "quota" in union else None
    mapped = owners.parse({key: union.pop(key) for key in _OWNER_KEYS & union.keys()}
                          | ({"squash_to_root": ""} if "squash_to_root" in flags else {}))
    stack = _stack(union, source)
    if "flatten" in flags and stack.upper is None:
        raise BranchError("flatten needs a writable branch")
    if quota is not None and stack.upper is None:
        raise BranchError("quota= needs a writable branch")
    if whiteout == "overlay" and stack.upper is not None and stack.workdir is None:
        raise BranchError("whiteout=overlay needs workdir= (pyunion's own files go there, "
                          "out of the writable branch)")
    mnt = branches.check_mountpoint(mountpoint, stack)
    return MountConfig(stack, mnt, frozenset(_fuse_options(fuse, stack, source)),
                       partial_copies=copyup == "partial",
                       flatten_at_umount="flatten" in flags, pagecache=pagecache,
                       passthrough=passthrough,
                       max_open=_count(union, "max_open"), quota=quota, udba=udba,
                       volatile="volatile" in flags, owners=mapped,
                       whiteout=whiteout)


def _fsname(source: str) -> str:
    """``source`` as the value of a FUSE option: those are ASCII (pyfuse3),
    so other bytes are spelled ``\\xNN``; and libfuse splits them at every
    comma no backslash escapes."""
    text = os.fsencode(source).decode("ascii", "backslashreplace")
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _rest_of_a_path(path_option: str, option: str) -> bool:
    """Whether ``option``, not an option, is the rest of the path before it
    (split off at a comma): it holds a ``/``, or the path with it exists."""
    last_path = path_option.partition("=")[2].rpartition(":")[2]
    rest = option.partition(":")[0].removesuffix("=rw").removesuffix("=ro")
    return "/" in option or os.path.lexists(f"{last_path},{rest}")


def _passthrough(union: dict[str, str]) -> str:
    """``passthrough=``; by default ``PYUNION_PASSTHROUGH``'s value, if set."""
    if "passthrough" in union or "PYUNION_PASSTHROUGH" not in os.environ:
        return _choice(union, "passthrough")
    value = os.environ["PYUNION_PASSTHROUGH"]
    if value not in _CHOICES["passthrough"]:
        raise BranchError(f"PYUNION_PASSTHROUGH must be one of "
                          f"{', '.join(_CHOICES['passthrough'])}, not {value!r}")
    return value


def _choice(union: dict[str, str], key: str) -> str:
    """The value of an option with fixed choices (the first by default)."""
    choices = _CHOICES[key]
    value = union.pop(key, choices[0])
    if value not in choices:
        raise BranchError(f"{key}= must be one of {', '.join(choices)}, not {value!r}")
    return value


def _count(union: dict[str, str], key: str) -> int | None:
    """A count option's value: a positive whole number, or None if not given."""
    value = union.get(key)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise BranchError(f"{key}= must be a whole number above 0, not {value!r}")
    return int(value)


def _quota(text: str) -> int:
    """A ``quota=`` size: bytes, or a whole number with k, m, g or t
    (powers of 1024)."""
    match = _SIZE.fullmatch(text)
    size = int(match[1]) * _UNITS[match[2].lower()] if match else 0
    if not size:
        raise BranchError(f"quota= must be a size such as 512m or 10g, not {text!r}")
    if size >= MAX_QUOTA:
        raise BranchError(f"quota={text} is too big (the most is 8 EiB)")
    return size


def _stack(union: dict[str, str], source: str | None) -> BranchStack:
    overlay_style = union.keys() & {"lowerdir", "upperdir"}
    if "br" in union and overlay_style:
        raise BranchError("give either br= or lowerdir=/upperdir=, not both")
    if "br" in union:
        found = branches.parse_br(union["br"])
    elif overlay_style:
        found = branches.parse_overlay(union.get("lowerdir"), union.get("upperdir"))
    elif source:
        found = branches.parse_br(source)
    else:
        raise BranchError("no branches given (use -o br=/upper=rw:/lower=ro)")
    return branches.validate(found, union.get("workdir"))


def _fuse_options(given: set[str], stack: BranchStack, source: str | None) -> set[str]:
    options = set(given)
    options.add("default_permissions")
    if os.geteuid() == 0:
        # Every user reaches the files the permissions let them reach, as on
        # overlayfs and fuse-overlayfs: a container's processes run as any uid.
        options.add("allow_other")
    options.add(f"subtype={FSTYPE}")
    if not any(o.startswith("fsname=") for o in given):
        options.add(f"fsname={_fsname(source or FSTYPE)}")
    if stack.upper is None:
        # With nothing writable the mount is read-only, as overlayfs does.
        options.discard("rw")
        options.add("ro")
    return options
