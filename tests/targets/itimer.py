"""itimer.py: an interval timer that fires every 10 ms (ITIMER_REAL,
SIGALRM caught), as zdtm's timers arms one.

Prints "ready" once it has fired 5 times.  On SIGTERM it checks that the
timer is still armed with its 10 ms interval and fired again since the
last "ready"/"tick" it printed, then prints PASS or "FAIL: ..." and exits.
"""
import signal
import sys
import time

fired = [0]
stop = []


def main() -> int:
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
