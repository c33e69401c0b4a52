"""itimer.py: an interval timer that fires every 10 ms (ITIMER_REAL,
SIGALRM caught), as zdtm's timers arms one.

Prints "ready" once it has fired 5 times.  On SIGTERM it checks that the
timer is still armed with its 10 ms interval and fired again since the
last "ready"/"tick" it printed, then prints PASS or "FAIL: ..." and exits.

    python3 itimer.py blocked

SIGALRM is blocked: the timer expires once and its signal stays pending,
and ITIMER_REAL is reloaded only when SIGALRM is taken, so it reads 0 left
with its 10 ms interval (what a dump then sees).  On SIGTERM it unblocks
SIGALRM and checks that the pending signal is taken and the timer fires
again after it (its interval was kept).
"""
import signal
import sys
import time

fired = [0]
stop = []


def blocked() -> int:
    signal.signal(signal.SIGALRM, lambda *a: fired.__setitem__(0, fired[0] + 1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(fired[0]))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.01)
    while signal.SIGALRM not in signal.sigpending():
        time.sleep(0.001)
    print("ready", flush=True)
    while not stop:
        time.sleep(0.05)
    value, interval = signal.getitimer(signal.ITIMER_REAL)
    if abs(interval - 0.01) > 0.0005:
        print(f"FAIL: the timer is {value}/{interval}", flush=True)
        return 1
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    deadline = time.monotonic() + 2
    while fired[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    if fired[0] < 3:
        print(f"FAIL: the timer fired {fired[0]} times after SIGALRM was unblocked", flush=True)
        return 1
    print("PASS", flush=True)
    return 0


def main() -> int:
    if sys.argv[1:] == ["blocked"]:
        return blocked()
    signal.signal(signal.SIGALRM, lambda *a: fired.__setitem__(0, fired[0] + 1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(fired[0]))
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.01)
    while fired[0] < 5:
        time.sleep(0.001)
    print("ready", flush=True)
    seen = fired[0]
    while not stop:
        time.sleep(0.05)
    value, interval = signal.getitimer(signal.ITIMER_REAL)
    if abs(interval - 0.01) > 0.0005 or value <= 0:
        print(f"FAIL: the timer is {value}/{interval}", flush=True)
        return 1
    if stop[0] <= seen:
        print(f"FAIL: the timer did not fire after restore ({stop[0]} <= {seen})", flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
