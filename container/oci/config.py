"""A bundle's ``config.json``, read whole and strictly (runtime-spec
``config.md`` and ``config-linux.md``): every key is either honoured or
refused in one line naming it, never ignored.  Each part is read by the
module that carries it out; this one puts them together."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..cgroups import resources as oci_resources
from . import hooks as oci_hooks
from . import mounts as oci_mounts
from . import namespaces as oci_namespaces
from . import process as oci_process
from . import seccomp as oci_seccomp
from .reader import ConfigError, Reader

INIT_ANNOTATION = "io.pycontainer.init"
#: sysctls a container may set: the namespaced ones, each with the
#: namespace it needs of its own (runc's list)
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


@dataclass(frozen=True)
class Config:
    bundle: str
    root: str                                        # absolute
    process: oci_process.Process | None
    namespaces: tuple[oci_namespaces.Namespace, ...]
    mounts: oci_mounts.Plan
    hostname: str | None = None
    domainname: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    hooks: oci_hooks.Hooks = oci_hooks.Hooks()
    resources: oci_resources.Resources = oci_resources.Resources()
    cgroups_path: str = ""
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: oci_seccomp.Seccomp | None = None
    init: bool = False  # annotation io.pycontainer.init: an init as PID 1


def load(bundle: str) -> Config:
    """The config of the bundle directory ``bundle``."""
    bundle = os.path.abspath(bundle)
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{bundle}: no config.json in the bundle") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{bundle}/config.json: {exc}") from None
    return parse(data, bundle)


def parse(data: dict, bundle: str) -> Config:
    top = Reader(data, "")
    version = top.take("ociVersion", str)
    if not version.startswith("1."):
        raise top.error("ociVersion", f"{version!r} is not a 1.x runtime spec")
    root = top.take_object("root")
    if root is None:
        raise ConfigError("root: required")
    root_path = os.path.join(bundle, root.take("path", str))
    root_readonly = root.take("readonly", bool, False)
    root.done()
    process_section = top.take_object("process")
    linux = top.take_object("linux") or Reader({}, "linux")
    namespaces = oci_namespaces.parse(linux)
    annotations = top.take("annotations", dict, {})
    if not all(isinstance(value, str) for value in annotations.values()):
        raise top.error("annotations", "values must be strings")
    config = Config(
        bundle=bundle, root=root_path,
        process=oci_process.parse(process_section) if process_section else None,
        namespaces=namespaces,
        mounts=oci_mounts.parse(top, linux, root_readonly),
        hostname=_name(top, "hostname", namespaces),
        domainname=_name(top, "domainname", namespaces),
        annotations=annotations,
        hooks=oci_hooks.parse(top.take_object("hooks")),
        resources=oci_resources.parse(linux.take_object("resources")),
        cgroups_path=oci_resources.parse_path(linux),
        sysctl=_sysctl(linux, namespaces),
        seccomp=_seccomp(linux),
        init=_init(top, annotations))
    for key in ("uidMappings", "gidMappings", "timeOffsets", "intelRdt", "personality",
                "netDevices", "memoryPolicy"):
        linux.refuse(key)
    for key in ("solaris", "windows", "vm", "zos"):
        top.refuse(key, "is not for Linux")
    linux.done()
    top.done()
    return config


def _name(top: Reader, key: str, namespaces) -> str | None:
    name = top.take(key, str, None)
    if name and not oci_namespaces.has_own(namespaces, "uts"):
        raise top.error(key, "needs a uts namespace of the container's own")
    return name


def _init(top: Reader, annotations: dict[str, str]) -> bool:
    """``io.pycontainer.init``: "true" runs a small init as PID 1 that
    forwards signals to the command and reaps orphans (docker's and
    podman's ``--init``, built in)."""
    value = annotations.get(INIT_ANNOTATION, "false")
    if value not in ("true", "false"):
        raise top.error(f"annotations.{INIT_ANNOTATION}", "must be true or false")
    return value == "true"


def _seccomp(linux: Reader) -> oci_seccomp.Seccomp | None:
    section = linux.take_object("seccomp")
    return oci_seccomp.parse(section) if section else None


def _sysctl(linux: Reader, namespaces) -> dict[str, str]:
    values = linux.take("sysctl", dict, {})
    for key, value in values.items():
        where = f"sysctl.{key}"
        if not isinstance(value, str):
            raise linux.error(where, "must be a string")
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            needs = "ipc"
        elif key.startswith("net."):
            needs = "network"
        else:
            raise linux.error(where, "is not namespaced: it would change the host")
        if not oci_namespaces.has_own(namespaces, needs):
            raise linux.error(where, f"needs a {needs} namespace of the container's own")
        if "/" in key or ".." in key:
            raise linux.error(where, "is not a sysctl name")
    return values
