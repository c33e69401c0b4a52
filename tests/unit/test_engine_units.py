"""Unit tests of the engine's pure parts: the XSAVE split/join, the
syscall-restart rewind, and the two registries' invariants."""
from __future__ import annotations

import struct

import pytest

from procsnap.inject import restart_fixup
from procsnap.kernel import consts as C
from procsnap.kernel import xsave
from procsnap.kernel.structs import UserRegs
from procsnap import resources
from procsnap.resources import files


# ------------------------------------------------------------ xsave ----

def _fake_layout() -> xsave.Layout:
    # Intel-like standard layout: AVX at 576, opmask 1088, ZMM_Hi256 1152,
    # Hi16_ZMM 1664 (what this machine's CPUID reports), 2688 bytes in all.
    return xsave.Layout(size=2688, xcr0=0xE7,
                        offsets={2: (576, 256), 5: (1088, 64), 6: (1152, 512), 7: (1664, 1024)})


@pytest.fixture
def layout(monkeypatch: pytest.MonkeyPatch) -> xsave.Layout:
    lay = _fake_layout()
    monkeypatch.setattr(xsave, "layout", lambda: lay)
    return lay


def _area(layout: xsave.Layout) -> bytes:
    area = bytearray(layout.size)
    struct.pack_into("<HHHHQQII", area, 0, 0x37F, 0x20, 0xFF, 0x1F, 0x1234, 0x5678, 0x1F80, 0xFFFF)
    for i in range(32, 416):
        area[i] = i & 0xFF                    # st_space, xmm_space
    struct.pack_into("<Q", area, 512, 0xE7)   # xstate_bv: everything in use
    for comp, (off, size) in layout.offsets.items():
        for i in range(size):
            area[off + i] = (comp * 31 + i) & 0xFF
    return bytes(area)


def test_xsave_split_join_round_trip(layout: xsave.Layout) -> None:
    area = _area(layout)
    parts = xsave.split(area)
    assert parts["fpregs"]["cwd"] == 0x37F and parts["fpregs"]["mxcsr"] == 0x1F80
    assert len(parts["xsave"]["ymmh_space"]) == 64 and len(parts["xsave"]["hi16_zmm"]) == 128
    back = xsave.join(parts["fpregs"], parts["xsave"], layout.size)
    # the software-reserved padding (464..511) is not carried: the kernel ignores it
    assert back[:416] == area[:416] and back[512:] == area[512:]


def test_xsave_component_in_use_without_field_is_refused(layout: xsave.Layout,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lay = xsave.Layout(size=layout.size + 64, xcr0=layout.xcr0 | (1 << 11),
                       offsets={**layout.offsets, 11: (layout.size, 64)})  # CET, say
    monkeypatch.setattr(xsave, "layout", lambda: lay)
    area = bytearray(_area(layout)) + bytes(64)
    struct.pack_into("<Q", area, 512, 0xE7 | (1 << 11))
    with pytest.raises(ValueError, match="component 11"):
        xsave.split(bytes(area))


def test_xsave_join_refuses_what_this_cpu_lacks(layout: xsave.Layout) -> None:
    parts = xsave.split(_area(layout))
    parts["xsave"]["pkru"] = [1, 0]
    parts["xsave"]["xstate_bv"] |= 1 << 9
    with pytest.raises(ValueError, match="pkru"):
        xsave.join(parts["fpregs"], parts["xsave"], layout.size)


# ---------------------------------------------------- syscall restart ----

def _regs(rax: int, orig: int, rip: int = 0x1000) -> UserRegs:
    r = UserRegs()
    r.rax, r.orig_rax, r.rip = rax & (2**64 - 1), orig & (2**64 - 1), rip
    return r


@pytest.mark.parametrize("code", C.RESTART_CODES)
def test_interrupted_syscall_is_rewound(code: int) -> None:
    out = restart_fixup(_regs(-code, 230))
    assert out.rip == 0x1000 - 2 and out.rax == 230


def test_finished_syscall_or_user_code_untouched() -> None:
    for rax, orig in ((-4, 0), (0, 0), (42, 1), (-512, -1)):  # EINTR, results, not in a syscall
        out = restart_fixup(_regs(rax, orig))
        assert (out.rip, out.rax) == (0x1000, rax & (2**64 - 1))


# -------------------------------------------------------- registries ----

def test_resource_registry_has_both_halves() -> None:
    for mod in set(resources.DUMP_ORDER) | set(resources.RESTORE_ORDER):
        assert isinstance(mod.NAME, str)
        assert callable(mod.dump) and callable(mod.restore), mod.NAME
    assert set(resources.DUMP_ORDER) == set(resources.RESTORE_ORDER)


def test_fd_kinds_are_complete_and_distinct() -> None:
    types = [k.TYPE for k in files.FD_KINDS]
    assert len(types) == len(set(types)), "two fd kinds claim one file_entry type"
    for kind in files.FD_KINDS:
        for fn in ("matches", "dump", "open_fd"):
            assert callable(getattr(kind, fn, None)), f"{kind.NAME} has no {fn}()"
    assert files.BY_TYPE == {k.TYPE: k for k in files.FD_KINDS}
    # the kinds imported on use: found by the type of their entries
    for kind in files.FD_KINDS:
        assert files.kind_by_type(kind.TYPE) is kind, kind.NAME
    assert set(files._LAZY_TYPE.values()) == set(files._LAZY_PREFIX)


def test_a_small_process_does_not_load_socket_kinds() -> None:
    """Sockets and event fds cost their import only to a tree that has them."""
    import subprocess
    import sys
    code = ("import sys, procsnap.cli, procsnap.dumper, procsnap.restorer, procsnap.verify, "
            "procsnap.audit, procsnap.resources; "
            "print(sorted(m for m in sys.modules if m.rsplit('.', 1)[-1] in "
            "('unixsk', 'inetsk', 'netlinksk', 'packetsk', 'sockets', 'eventpoll', 'timerfd')))")
    import os
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == "[]", out


def test_xsave_layout_from_the_instruction_equals_the_device() -> None:
    """Where /dev/cpu/0/cpuid cannot be opened (no CONFIG_X86_CPUID, or a
    devices cgroup: runc's restore), the XSAVE layout comes from the CPUID
    instruction; both must give the same offsets."""
    import os
    try:
        fd = os.open("/dev/cpu/0/cpuid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        pytest.skip(f"no cpuid device to compare with: {exc}")
    try:
        by_device = xsave._layout(lambda leaf, sub: xsave._cpuid(fd, leaf, sub))
    finally:
        os.close(fd)
    by_insn = xsave._layout(xsave._cpuid_insn())
    assert by_insn == by_device
    assert by_insn.size > 512 and by_insn.xcr0 & 0x3 == 0x3   # x87 and SSE at least


def test_page_batches_cover_every_run_once_within_limits() -> None:
    """The restore's read batches (memory._batches), shared by the puppet
    and our fill thread: every byte of every run exactly once, at its own
    file offset, each batch contiguous in the file, within the byte limit
    and the kernel's 1024 iovecs."""
    from procsnap.resources import memory
    page = C.PAGE_SIZE
    runs = [(0x10000000, 40 << 20, 0),                  # one big run, split
            (0x20000000, page, 40 << 20),               # contiguous in the file
            (0x30000000, 3 * page, (40 << 20) + 2 * page)]   # a gap in the file
    runs += [(0x40000000 + 2 * i * page, page, (50 << 20) + i * page) for i in range(3000)]
    limit = 16 << 20
    got: list[tuple[int, int, int]] = []
    for off, size, iov in memory._batches(runs, limit):
        assert size <= limit and len(iov) // 2 <= 1024
        assert sum(iov[1::2]) == size
        pos = off
        for addr, n in zip(iov[0::2], iov[1::2]):
            got.append((addr, n, pos))
            pos += n
    want = []
    for addr, size, off in runs:
        want += [(addr + k * page, page, off + k * page) for k in range(size // page)]
    split = [(addr + k * page, page, off + k * page)
             for addr, n, off in got for k in range(n // page)]
    assert split == want


def test_pending_signals_are_seen_from_outside() -> None:
    """signals._has_pending decides whether a puppet thread's queue needs
    draining (an injected rt_sigtimedwait): it must see a signal pending
    for the thread (SigPnd) and for the process (ShdPnd)."""
    import os
    import signal
    import threading

    from procsnap.resources import signals

    pid, tid = os.getpid(), threading.get_native_id()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        assert not signals._has_pending(pid, tid)
        os.kill(pid, signal.SIGUSR2)                          # process-wide: ShdPnd
        assert signals._has_pending(pid, tid)
        assert signal.sigtimedwait({signal.SIGUSR2}, 0) is not None
        assert not signals._has_pending(pid, tid)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)   # this thread: SigPnd
        assert signals._has_pending(pid, tid)
        assert signal.sigtimedwait({signal.SIGUSR2}, 0) is not None
        assert not signals._has_pending(pid, tid)
    finally:
        while signal.sigtimedwait({signal.SIGUSR2}, 0) is not None:
            pass   # nothing left to end the test run once unblocked
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
