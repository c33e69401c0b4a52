"""The x86 XSAVE area as ptrace returns it, split into CRIU's fields.

PTRACE_GETREGSET(NT_X86_XSTATE) returns the *standard* (non-compacted)
XSAVE layout: 512 bytes of legacy FXSAVE area, a 64-byte header whose first
word is XSTATE_BV, then each extended component at the offset CPUID leaf
0xD sub-leaf i reports in EBX.  Those offsets differ between CPUs (and
hypervisors), so they are read from the kernel's cpuid device rather than
assumed.  CRIU stores each component in its own repeated field; we do the
same so CRIU can read our images and we can read CRIU's.
"""
from __future__ import annotations

import os
import struct
from ..record import record
from functools import lru_cache
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

# component number -> (CRIU field name in user_x86_xsave_entry, element size)
COMPONENTS: dict[int, tuple[str, int]] = {
    2: ("ymmh_space", 4),     # AVX: upper halves of ymm0-15
    3: ("bndreg_state", 8),   # MPX bound registers
    4: ("bndcsr_state", 8),   # MPX config/status
    5: ("opmask_reg", 8),     # AVX-512 k0-k7
    6: ("zmm_upper", 8),      # AVX-512 upper halves of zmm0-15
    7: ("hi16_zmm", 8),       # AVX-512 zmm16-31
    9: ("pkru", 4),           # protection keys
}
LEGACY_FEATURES = 0b11  # x87 and SSE live in the legacy area


@record(frozen=True)
class Layout:
    """The XSAVE standard-format layout of this CPU and kernel."""
    size: int                     # total standard-format size for XCR0
    xcr0: int                     # features the OS enabled
    offsets: dict[int, tuple[int, int]]  # component -> (offset, size)


def _cpuid(fd: int, leaf: int, sub: int) -> tuple[int, int, int, int]:
    return struct.unpack("<4I", os.pread(fd, 16, leaf | (sub << 32)))


# void cpuid(uint32 leaf, uint32 sub, uint32 out[4]): push rbx; mov r8,rdx;
# mov eax,edi; mov ecx,esi; cpuid; mov [r8],eax; mov [r8+4],ebx;
# mov [r8+8],ecx; mov [r8+12],edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("534989d089f889f10fa2418900418958044189480841895" "00c5bc3")


def _cpuid_insn() -> Any:
    """The CPUID instruction run by this process (a 31-byte function in an
    executable page of its own): for when the cpuid device cannot be
    opened -- runc moves the criu it runs for a restore into the
    container's devices cgroup, which does not allow /dev/cpu/N/cpuid."""
    import ctypes
    import mmap
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(addr, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of the cpuid page")
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32,
                          ctypes.POINTER(ctypes.c_uint32))(addr)

    def call(leaf: int, sub: int) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        fn(leaf, sub, out)
        return out[0], out[1], out[2], out[3]
    call.page = page  # type: ignore[attr-defined]  # the code lives as long as the function
    return call


@lru_cache(maxsize=1)
def layout() -> Layout:
    """Offsets of XSAVE components on this CPU, from /dev/cpu/0/cpuid (or,
    where there is none -- a kernel without CONFIG_X86_CPUID -- or a devices
    cgroup forbids it, from the CPUID instruction run here: both gave the
    same layout wherever both could be read)."""
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _layout(_cpuid_insn())
    try:
        return _layout(lambda leaf, sub: _cpuid(fd, leaf, sub))
    finally:
        os.close(fd)


def _layout(cpuid: Any) -> Layout:
    eax, ebx, _, edx = cpuid(0xD, 0)
    xcr0 = eax | (edx << 32)
    offsets = {}
    for comp in range(2, 64):
        if xcr0 & (1 << comp):
            size, off, _, _ = cpuid(0xD, comp)
            offsets[comp] = (off, size)
    return Layout(size=ebx, xcr0=xcr0, offsets=offsets)


def split(area: bytes) -> dict[str, dict[str, Any]]:
    """Cut an XSAVE area into the fields of CRIU's fpregs/xsave messages.

    Returns {"fpregs": {...legacy fields...}, "xsave": {...}}; raises
    ValueError naming an enabled component CRIU has no field for.
    """
    if len(area) < 576:
        raise ValueError(f"xsave area of {len(area)} bytes is too short")
    cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask = struct.unpack_from("<HHHHQQII", area, 0)
    fpregs: dict[str, Any] = {
        "cwd": cwd, "swd": swd, "twd": twd, "fop": fop, "rip": rip, "rdp": rdp,
        "mxcsr": mxcsr, "mxcsr_mask": mxcsr_mask,
        "st_space": list(struct.unpack_from("<32I", area, 32)),
        "xmm_space": list(struct.unpack_from("<64I", area, 160)),
        "padding": list(struct.unpack_from("<24I", area, 416)),
    }
    (xstate_bv,) = struct.unpack_from("<Q", area, 512)
    xsave: dict[str, Any] = {"xstate_bv": xstate_bv}
    lay = layout()
    for comp, (off, size) in sorted(lay.offsets.items()):
        if comp not in COMPONENTS:
            if xstate_bv & (1 << comp):
                raise ValueError(f"xsave component {comp} is in use and not supported")
            continue
        name, width = COMPONENTS[comp]
        if off + size > len(area):
            continue
        fmt = "<%d%s" % (size // width, "I" if width == 4 else "Q")
        xsave[name] = list(struct.unpack_from(fmt, area, off))
    return {"fpregs": fpregs, "xsave": xsave}


def join(fpregs: dict, xsave: dict | None, size: int) -> bytes:
    """Inverse of :func:`split`: build a standard-format area of ``size`` bytes."""
    area = bytearray(size)
    struct.pack_into("<HHHHQQII", area, 0, fpregs["cwd"], fpregs["swd"], fpregs["twd"],
                     fpregs["fop"], fpregs["rip"], fpregs["rdp"], fpregs["mxcsr"],
                     fpregs["mxcsr_mask"])
    struct.pack_into("<32I", area, 32, *_fit(fpregs["st_space"], 32))
    struct.pack_into("<64I", area, 160, *_fit(fpregs["xmm_space"], 64))
    # The padding words carry the kernel's software-reserved bytes; the
    # kernel ignores them on SETREGSET, so zeros are as good as the dump's.
    if not xsave:
        struct.pack_into("<Q", area, 512, LEGACY_FEATURES)
        return bytes(area)
    xstate_bv = int(xsave.get("xstate_bv", LEGACY_FEATURES))
    lay = layout()
    for comp, (name, width) in COMPONENTS.items():
        values = xsave.get(name) or []
        if not values:
            continue
        if comp not in lay.offsets:
            if xstate_bv & (1 << comp):
                raise ValueError(f"image uses xsave component {comp} ({name}) "
                                 "which this CPU does not enable")
            continue
        off, csize = lay.offsets[comp]
        n = csize // width
        struct.pack_into("<%d%s" % (n, "I" if width == 4 else "Q"), area, off, *_fit(values, n))
    struct.pack_into("<Q", area, 512, xstate_bv & lay.xcr0)
    return bytes(area)


def _fit(values, n: int) -> list[int]:
    vals = list(values)[:n]
    return vals + [0] * (n - len(vals))
