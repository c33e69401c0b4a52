"""nestpid.py: a tree with a pid namespace nested inside it, as
``unshare -fp`` makes one (a container started from a shell that is
itself checkpointed).

    python3 nestpid.py FILE [nofork]

The root (in the caller's pid namespace) runs ``unshare -fp python3
nestpid.py FILE inner``: unshare stays, its pid_for_children pointing at
the new namespace; the inner process is pid 1 there and forks a child
(pid 2 there) that answers each byte on a pipe with its own pid.  The
inner one prints "ready", then every ~50 ms writes the next number to
FILE and asks its child once.  On SIGTERM the root sends SIGTERM to the
inner one, which checks that it is pid 1 and its child pid 2 and still
answers, prints PASS or "FAIL: ..." and exits; then the root exits.
With "nofork" it only unshares CLONE_NEWPID (its next child would start a
new namespace) and counts, printing PASS on SIGTERM.
"""
import ctypes
import os
import signal
import subprocess
import sys
import time


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def inner(out: str) -> int:
    if os.getpid() != 1:
        say(f"FAIL: inner is pid {os.getpid()}, not 1")
        return 1
    ask_r, ask_w = os.pipe()
    ans_r, ans_w = os.pipe()
    if os.fork() == 0:
        while os.read(ask_r, 1):
            os.write(ans_w, f"{os.getpid():8d}".encode())
        os._exit(0)

    def ask() -> int:
        os.write(ask_w, b"?")
        return int(os.read(ans_r, 8))

    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    say("ready")
    n = 0
    with open(out, "a") as f:
        while not stop:
            n += 1
            f.write(f"{n}\n")
            f.flush()
            if ask() != 2:
                say("FAIL: the child is not pid 2")
                return 1
            time.sleep(0.05)
    if os.getpid() != 1 or ask() != 2:
        say("FAIL: pids changed")
        return 1
    say("PASS")
    return 0


def count_only(out: str) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    say("ready")
    n = 0
    with open(out, "a") as f:
        while not stop:
            n += 1
            f.write(f"{n}\n")
            f.flush()
            time.sleep(0.05)
    say("PASS")
    return 0


def main() -> int:
    out = sys.argv[1]
    if sys.argv[2:] == ["inner"]:
        return inner(out)
    if sys.argv[2:] == ["nofork"]:
        # unshare(CLONE_NEWPID) and no child yet: the next child would be
        # the init of a namespace that has none now
        if ctypes.CDLL(None, use_errno=True).unshare(0x20000000) != 0:
            say(f"FAIL: unshare: {os.strerror(ctypes.get_errno())}")
            return 1
        return count_only(out)
    # each dies with its parent (a killed test leaves nothing behind)
    p = subprocess.Popen(["unshare", "-fp", "--kill-child", sys.executable,
                          os.path.abspath(__file__), out, "inner"],
                         preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGKILL))
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    while not stop:
        time.sleep(0.05)
    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
        kid = int(f.read().split()[0])
    os.kill(kid, signal.SIGTERM)
    return p.wait()


if __name__ == "__main__":
    sys.exit(main())
