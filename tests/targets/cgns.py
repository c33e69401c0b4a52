"""A task in a cgroup namespace of its own (as unshare --cgroup, or a
container, makes it): argv[1] is a cgroup2 group, argv[2] a v1 hierarchy's
directory and argv[3] the cgroup in it; it joins them, unshares
CLONE_NEWCGROUP there and moves into the "inner" child of each.  It
prints "ready" with /proc/self/cgroup as it sees it; on SIGTERM it checks
that view is unchanged (its namespace's roots came back), PASS/FAIL."""
import ctypes
import os
import signal
import sys
import time

CLONE_NEWCGROUP = 0x02000000
stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(text):
    os.write(1, (text + "\n").encode())


def view():
    with open("/proc/self/cgroup") as f:
        return sorted(line for line in f.read().splitlines() if line)


signal.signal(signal.SIGTERM, on_term)
v2, v1 = sys.argv[1], os.path.join(sys.argv[2], sys.argv[3].lstrip("/"))
for d in (v2, v1):
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWCGROUP) != 0:
    say(f"FAIL: unshare: {os.strerror(ctypes.get_errno())}")
    sys.exit(1)
for d in (v2, v1):
    os.mkdir(os.path.join(d, "inner"))
    with open(os.path.join(d, "inner", "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
before = view()
say("ready " + " ".join(before))
while not stop:
    time.sleep(0.05)
after = view()
say("PASS" if after == before else f"FAIL: cgroups seen {after}, were {before}")
