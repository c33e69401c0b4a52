"""nsfds.py: a counter in network and uts namespaces of its own that holds
fds on namespaces (as zdtm proc-self, ip netns and container runtimes do).

    python3 nsfds.py FILE [NSFILE]

Re-executes itself under ``unshare -n -u`` (same pid), then opens
/proc/self/ns/net as fd 10 and /proc/self/ns/uts as fd 11 (its own
namespaces) and /proc/self/ns/ipc as fd 12 (the host's, which it shares);
with NSFILE also that file as fd 13, opened before the unshare (a
namespace outside the tree).
Prints "ready", then every ~50 ms writes the next number to FILE.  On
SIGTERM it checks that fds 10-12 name the namespaces it lives in now
(readlink and inode equal to a fresh /proc/self/ns/KIND) and prints PASS
or "FAIL: ..." and exits.
"""
import os
import signal
import sys
import time

FDS = {10: "net", 11: "uts", 12: "ipc"}


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> int:
    out = sys.argv[1]
    if os.environ.get("NSFDS_INSIDE") != "1":
        os.environ["NSFDS_INSIDE"] = "1"
        if len(sys.argv) > 2:
            # opened outside the new namespaces, kept across the exec
            os.dup2(os.open(sys.argv[2], os.O_RDONLY), 13)
        os.execvp("unshare", ["unshare", "-n", "-u", sys.executable, *sys.argv])
    for fd, kind in FDS.items():
        os.dup2(os.open(f"/proc/self/ns/{kind}", os.O_RDONLY), fd)
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
    for fd, kind in FDS.items():
        now = os.readlink(f"/proc/self/ns/{kind}")
        held = os.readlink(f"/proc/self/fd/{fd}")
        if now != held or os.fstat(fd).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino:
            say(f"FAIL: fd {fd} names {held}, the task lives in {now}")
            return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
