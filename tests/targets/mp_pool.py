"""multiprocessing.Pool of 4 workers (issue 4): map() rounds checked
against the expected squares; prints "round N ok".  SIGTERM: close and
join the pool, PASS/FAIL."""
import multiprocessing
import os
import signal
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def square(x):
    return x * x


def say(text):
    os.write(1, (text + "\n").encode())


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    pool = multiprocessing.Pool(4)
    signal.signal(signal.SIGTERM, on_term)
    say("ready")
    rounds = 0
    failed = False
    expect = [x * x for x in range(200)]
    while not stop:
        got = pool.map(square, range(200), chunksize=10)
        rounds += 1
        if got != expect:
            say(f"FAIL: round {rounds} wrong results")
            failed = True
        say(f"round {rounds} ok")
        time.sleep(0.05)
    pool.close()
    pool.join()
    if not failed:
        say("PASS")
    sys.exit(1 if failed else 0)
