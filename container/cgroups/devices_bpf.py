"""cgroup v2's device rules: an eBPF program (``BPF_PROG_TYPE_CGROUP_DEVICE``)
made from device rules, loaded and attached to a cgroup with bpf(2), as
runc's ``devicefilter`` does.  No kept Python library builds such a program,
so it is written here as raw instructions.

The program reads ``struct bpf_cgroup_dev_ctx {u32 access_type, major,
minor}``: the device type (block 1, char 2) in access_type's low 16 bits,
the access asked (mknod 1, read 2, write 4) in its high ones.  The rules
come to a default and exceptions to it, as cgroup v1 keeps them
(``devices.effective``): an exception that matches allows (returns 1) or
denies (0), the opposite of the default, which is returned when none does.
An allowing exception matches an access wholly within its own; a denying
one, an access that touches its own, as the v1 kernel matches them.  The
kernel keeps an attached program until its cgroup is removed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

from .devices import Rule, effective

_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
#: a cgroup's own device programs: one, while one is being replaced two
MAX_PROGRAMS = 64
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

_LDX_W, _AND32_K, _RSH32_K, _MOV32_X, _MOV64_K = 0x61, 0x54, 0x74, 0xbc, 0xb7
_JEQ_K, _JNE_K, _JNE_X, _EXIT = 0x15, 0x55, 0x5d, 0x95
_TYPES = {"b": 1, "c": 2}
_ACCESS = {"m": 1, "r": 2, "w": 4}

_libc = ctypes.CDLL(None, use_errno=True)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def program(rules: tuple[Rule, ...]) -> bytes:
    """The instructions: load type (r2), access (r3), major (r4), minor
    (r5); one block per exception; the default."""
    default_allow, exceptions = effective(rules)
    code = [_insn(_LDX_W, 2, 1, 0), _insn(_AND32_K, 2, imm=0xFFFF),
            _insn(_LDX_W, 3, 1, 0), _insn(_RSH32_K, 3, imm=16),
            _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8)]
    for rule in exceptions:
        code += _rule(rule)
    code += [_insn(_MOV64_K, 0, imm=int(default_allow)), _insn(_EXIT)]
    return b"".join(code)


def _rule(rule: Rule) -> list[bytes]:
    """Allow or deny if type, access and numbers match; else jump past
    this block to the next exception."""
    steps = [(_JNE_K, 2, 0, _TYPES[rule.type])]
    if set(rule.access) != set(_ACCESS):
        mask = sum(_ACCESS[a] for a in rule.access)
        steps += [(_MOV32_X, 1, 3, 0), (_AND32_K, 1, 0, mask),
                  (_JNE_X, 1, 3, 0) if rule.allow else (_JEQ_K, 1, 0, 0)]
    if rule.major is not None:
        steps.append((_JNE_K, 4, 0, rule.major))
    if rule.minor is not None:
        steps.append((_JNE_K, 5, 0, rule.minor))
    steps += [(_MOV64_K, 0, 0, int(rule.allow)), (_EXIT, 0, 0, 0)]
    jumps = (_JEQ_K, _JNE_K, _JNE_X)
    return [_insn(code, dst, src, len(steps) - i - 1 if code in jumps else 0, imm)
            for i, (code, dst, src, imm) in enumerate(steps)]


def load(rules: tuple[Rule, ...]) -> int:
    """The program, checked by the kernel's verifier; its descriptor."""
    code = program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(1 << 16)
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log),
                       ctypes.addressof(log))
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"the device program was refused: "
                                 f"{log.value.decode(errors='replace').strip()}") from None


def attach(cgroup: str, rules: tuple[Rule, ...]) -> None:
    """Make ``rules`` the devices the processes in ``cgroup`` may use (as
    well as what its ancestors' programs allow), in place of the rules
    attached before: the new program goes on first, then the old ones come
    off (as runc does), so there is no moment without one."""
    program_fd = load(rules)
    target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    old = _attached(target)
    try:
        _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", target, program_fd, BPF_CGROUP_DEVICE,
                                          BPF_F_ALLOW_MULTI))
        for old_fd in old:
            _bpf(BPF_PROG_DETACH, struct.pack("<IIII", target, old_fd, BPF_CGROUP_DEVICE, 0))
    finally:
        for fd in (target, program_fd, *old):
            os.close(fd)


def _attached(target: int) -> list[int]:
    """Descriptors of the device programs attached to the cgroup ``target``
    itself (not its ancestors')."""
    ids = (ctypes.c_uint32 * MAX_PROGRAMS)()
    query = struct.pack("<IIIIQII", target, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids),
                        MAX_PROGRAMS, 0)
    attr = ctypes.create_string_buffer(query, len(query))
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return [_bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", ids[i], 0, 0)) for i in range(count)]


def _bpf(command: int, attr: bytes | ctypes.Array) -> int:
    """bpf(2); ``attr`` is copied unless it is a buffer the kernel is to
    write back into."""
    if not isinstance(attr, ctypes.Array):
        attr = ctypes.create_string_buffer(attr, len(attr))
    result = _libc.syscall(_BPF, command, attr, len(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result
