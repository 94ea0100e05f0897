"""docker's defaults for a container's process, which ``pycontainer run``
writes into its bundle (``bundle.py``): its capabilities (in the bounding,
effective and permitted sets) and its open-files limit.  Its seccomp
profile is ``seccomp_profile``, compiled by ``oci.seccomp`` as any
bundle's is."""

from __future__ import annotations

DEFAULT_CAPABILITIES = frozenset({
    0,   # CHOWN
    1,   # DAC_OVERRIDE
    3,   # FOWNER
    4,   # FSETID
    5,   # KILL
    6,   # SETGID
    7,   # SETUID
    8,   # SETPCAP
    10,  # NET_BIND_SERVICE
    13,  # NET_RAW
    18,  # SYS_CHROOT
    27,  # MKNOD
    29,  # AUDIT_WRITE
    31,  # SETFCAP
})
NOFILE = 1_048_576  # docker's usual default for open files
