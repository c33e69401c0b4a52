"""The code a batch of injected calls runs (inject.batch_code): checked
against known encodings, and decoded by objdump where it is installed;
and the choice of the signal that ends a batch (inject.batch_signal)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from procsnap.inject import (BATCH_SIGNALS, HOME_OFFSET, Answer, Out, Read, batch_code,
                             batch_signal, landing_pad)
from procsnap.kernel import consts as C
from procsnap.kernel.structs import UserRegs

AT = 0x7F0000001000
RESULTS = 0x7F0000002000
HOME = 0x7F0000000000 + HOME_OFFSET
SIGWINCH = 28


def _code() -> tuple[bytes, int]:
    calls = [(C.NR["prctl"], (C.PR_GET_TIMERSLACK, 0, 0, 0, 0)),
             (C.NR["get_mempolicy"], (0x1122334455667788, 0x99, 1024, 0, 0)),
             (C.NR["brk"], (0,)),
             (C.NR["getpid"], ())]
    return batch_code(AT, calls, RESULTS, SIGWINCH, HOME)


def test_known_bytes() -> None:
    code, end = _code()
    le = lambda v: v.to_bytes(8, "little")  # noqa: E731
    first = (b"\x48\xbf" + le(C.PR_GET_TIMERSLACK) + b"\x48\xbe" + le(0) + b"\x48\xba" + le(0)
             + b"\x49\xba" + le(0) + b"\x49\xb8" + le(0)
             + b"\x48\xb8" + le(157) + b"\x0f\x05" + b"\x48\xa3" + le(RESULTS))
    assert code.startswith(first)
    # the last call: no argument, its result in slot 3
    last = b"\x48\xb8" + le(39) + b"\x0f\x05" + b"\x48\xa3" + le(RESULTS + 24)
    tail = (b"\x48\xb8" + le(39) + b"\x0f\x05" + b"\x48\xa3" + le(RESULTS + 32)  # getpid -> slot 4
            + b"\x48\x89\xc7"                                                  # mov rdi, rax
            + b"\x48\xb8" + le(186) + b"\x0f\x05" + b"\x48\x89\xc6"            # gettid; mov rsi, rax
            + b"\x48\xba" + le(SIGWINCH) + b"\x48\xb8" + le(234) + b"\x0f\x05")  # tgkill
    assert code[:end].endswith(last + tail)
    assert code[end - 2:end] == b"\x0f\x05", "the end stop is right after the tgkill"
    rel = int.from_bytes(code[end + 1:end + 5], "little", signed=True)
    assert code[end:end + 1] == b"\xe9" and AT + end + 5 + rel == HOME
    assert len(code) == end + 5


def test_too_many_arguments() -> None:
    with pytest.raises(ValueError):
        batch_code(AT, [(0, (1, 2, 3, 4, 5, 6, 7))], RESULTS, SIGWINCH, HOME)


def test_home_out_of_reach() -> None:
    with pytest.raises(ValueError):
        batch_code(AT, [], RESULTS, SIGWINCH, AT + (1 << 32))


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_objdump_decodes_it(tmp_path: Path) -> None:
    code, end = _code()
    raw = tmp_path / "batch.bin"
    raw.write_bytes(code)
    out = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", "-Mintel",
                          f"--adjust-vma={AT:#x}", str(raw)],
                         capture_output=True, text=True, check=True).stdout
    insns = []
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(.*)$", line)
        if m and m.group(2).strip():
            insns.append((int(m.group(1), 16), " ".join(m.group(2).split())))
    text = [i for _, i in insns]
    assert text[:7] == [f"movabs rdi,{C.PR_GET_TIMERSLACK:#x}", "movabs rsi,0x0", "movabs rdx,0x0",
                        "movabs r10,0x0", "movabs r8,0x0", "movabs rax,0x9d", "syscall"]
    assert text[7] == f"movabs ds:{RESULTS:#x},rax"
    assert "movabs rdi,0x1122334455667788" in text
    assert text.count("syscall") == 4 + 3
    assert text[-9:] == [f"movabs ds:{RESULTS + 32:#x},rax", "mov rdi,rax",
                         "movabs rax,0xba", "syscall", "mov rsi,rax",
                         f"movabs rdx,{SIGWINCH:#x}", "movabs rax,0xea", "syscall",
                         f"jmp {HOME:#x}"]
    # every instruction decodes, and the end stop is the jmp's address
    assert insns[-1][0] == AT + end


def test_landing_pad_home_is_after_its_syscall() -> None:
    pad = landing_pad(0x1000, UserRegs())
    assert pad[:HOME_OFFSET] == b"\x0f\x05" and pad[HOME_OFFSET:HOME_OFFSET + 2] == b"\x48\xbc"


def test_batch_signal_choice() -> None:
    bit = lambda s: 1 << (s - 1)  # noqa: E731
    SIGURG, SIGCHLD = 23, 17
    assert BATCH_SIGNALS == (SIGURG, SIGWINCH, SIGCHLD)
    assert batch_signal(0, 0, 0) == SIGURG
    assert batch_signal(bit(SIGURG), 0, 0) == SIGWINCH        # blocked
    assert batch_signal(0, bit(SIGURG), 0) == SIGWINCH        # caught
    assert batch_signal(0, 0, bit(SIGURG)) == SIGWINCH        # pending
    assert batch_signal(bit(SIGWINCH), bit(SIGURG), 0) == SIGCHLD
    assert batch_signal(bit(SIGWINCH), bit(SIGURG), bit(SIGCHLD)) == 0
    assert batch_signal(~0 & ((1 << 64) - 1), 0, 0) == 0


def test_read_and_answer() -> None:
    r = Read("prctl", C.PR_GET_PDEATHSIG, Out(0), 0, 0, 0, out=8)
    assert r.check and not r.leader_only and isinstance(r.args[1], Out)
    a = Answer(0, (10).to_bytes(4, "little") + b"\xff\xff\xff\xff")
    assert a.u32() == 10 and a.u64() == 0xFFFFFFFF0000000A


def test_puppet_batch_ends_with_int3() -> None:
    """A puppet's batch (no signal) stops at an int3 right after its last
    call's result is stored: no getpid, tgkill or jump home."""
    calls = [(C.NR["munmap"], (0x1000, 0x2000))]
    code, end = batch_code(AT, calls, RESULTS)
    le = lambda v: v.to_bytes(8, "little")  # noqa: E731
    assert code == (b"\x48\xbf" + le(0x1000) + b"\x48\xbe" + le(0x2000) + b"\x48\xb8" + le(11)
                    + b"\x0f\x05" + b"\x48\xa3" + le(RESULTS) + b"\xcc")
    assert end == len(code), "the stop is reported with rip right after the int3"


def test_room_reserved_for_a_batch_covers_the_code() -> None:
    """inject._BATCH_CALL/_BATCH_END bound the scratch a batch takes (a
    longer batch is split): the largest call and the longest end."""
    from procsnap import inject
    one = [(1, (1, 2, 3, 4, 5, 6))]
    code, _ = batch_code(AT, one * 50, RESULTS, SIGWINCH, HOME)
    assert len(code) + 8 * 51 + 16 <= 50 * inject._BATCH_CALL + inject._BATCH_END
    code, _ = batch_code(AT, [], RESULTS, SIGWINCH, HOME)
    assert len(code) + 8 + 16 <= inject._BATCH_END
