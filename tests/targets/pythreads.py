"""CPython threads (issue 4): workers fed through a queue.Queue, results
under a threading.Lock.  Prints "round N ok" as rounds complete.  SIGTERM:
send each worker a sentinel, join them all, check the sums, PASS/FAIL."""
import os
import queue
import signal
import sys
import threading
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(text):
    os.write(1, (text + "\n").encode())


signal.signal(signal.SIGTERM, on_term)
jobs: "queue.Queue[int | None]" = queue.Queue()
lock = threading.Lock()
done = [0] * 4


def worker(i):
    while True:
        item = jobs.get()
        if item is None:
            jobs.task_done()
            return
        with lock:
            done[i] += item
        jobs.task_done()


threads = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(4)]
for t in threads:
    t.start()
say("ready")
sent = 0
rounds = 0
failed = False
while not stop:
    for _ in range(20):
        jobs.put(1)
        sent += 1
    jobs.join()
    with lock:
        total = sum(done)
    rounds += 1
    if total != sent:
        say(f"FAIL: round {rounds}: {total} done, {sent} sent")
        failed = True
    say(f"round {rounds} ok")
    time.sleep(0.05)
for _ in threads:
    jobs.put(None)
for t in threads:
    t.join(10)
    if t.is_alive():
        say(f"FAIL: {t.name} did not join")
        failed = True
if sum(done) != sent:
    say(f"FAIL: {sum(done)} done, {sent} sent")
    failed = True
if not failed:
    say("PASS")
sys.exit(1 if failed else 0)
