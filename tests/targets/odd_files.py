"""odd_files.py: files and fds whose names are gone or strange.

    python3 odd_files.py DIR

In DIR (which it fills and empties itself) it sets up, then prints "ready":

  fd 10  a file named  a\\b'<newline>"c%  with data, unlinked (a ghost
         whose name cannot be journaled line by line unless escaped)
  fd 11  a directory DIR/gone/sub opened, then sub and gone removed (a
         ghost directory under a deleted directory)
  fd 12  an O_TMPFILE file in DIR with data (never had a name)
  fd 13  O_PATH|O_NOFOLLOW on a symlink DIR/live -> "target-1"
  fd 14  O_PATH|O_NOFOLLOW on a symlink DIR/dead -> "target-2", unlinked
  fd 15  a file DIR/again, unlinked, and DIR/again made anew (another file)
  cwd    DIR/cwd, removed while it is the cwd; fd 16 is open on it too

SIGTERM: checks every one of them from inside -- contents, nlink,
F_GETFL (O_TMPFILE), the symlinks' targets (readlinkat on the fd), the
cwd's readlink and that fd 16 is the cwd -- then prints PASS or
"FAIL: ..." and exits.
"""
import fcntl
import os
import signal
import stat
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def place(fd: int, at: int) -> None:
    os.dup2(fd, at)
    os.close(fd)


def main() -> int:
    d = sys.argv[1]
    signal.signal(signal.SIGTERM, on_term)
    odd = os.path.join(d, "a\\b'\n\"c%")
    with open(odd, "wb") as f:
        f.write(b"odd name\n" * 100)
    place(os.open(odd, os.O_RDWR), 10)
    os.unlink(odd)

    os.makedirs(os.path.join(d, "gone", "sub"))
    place(os.open(os.path.join(d, "gone", "sub"), os.O_RDONLY | os.O_DIRECTORY), 11)
    os.rmdir(os.path.join(d, "gone", "sub"))
    os.rmdir(os.path.join(d, "gone"))

    tmp = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
    os.write(tmp, b"never named\n" * 50)
    os.lseek(tmp, 7, os.SEEK_SET)
    place(tmp, 12)

    os.symlink("target-1", os.path.join(d, "live"))
    place(os.open(os.path.join(d, "live"), os.O_PATH | os.O_NOFOLLOW), 13)
    os.symlink("target-2", os.path.join(d, "dead"))
    place(os.open(os.path.join(d, "dead"), os.O_PATH | os.O_NOFOLLOW), 14)
    os.unlink(os.path.join(d, "dead"))

    again = os.path.join(d, "again")
    with open(again, "wb") as f:
        f.write(b"the first one\n")
    place(os.open(again, os.O_RDONLY), 15)
    os.unlink(again)
    with open(again, "wb") as f:
        f.write(b"the second one, longer\n")

    cwd = os.path.join(d, "cwd")
    os.mkdir(cwd, 0o750)
    os.chdir(cwd)
    place(os.open(".", os.O_RDONLY | os.O_DIRECTORY), 16)
    os.rmdir(cwd)
    cwd_link = os.readlink("/proc/self/cwd")
    tmpfl = fcntl.fcntl(12, fcntl.F_GETFL)

    say("ready")
    while not stop:
        time.sleep(0.05)

    errs = []

    def check(cond: bool, what: str) -> None:
        if not cond:
            errs.append(what)

    check(os.pread(10, 9000, 0) == b"odd name\n" * 100, "fd 10: contents")
    check(os.fstat(10).st_nlink == 0, "fd 10: not deleted")
    st = os.fstat(11)
    check(stat.S_ISDIR(st.st_mode) and st.st_nlink == 0, "fd 11: not a deleted directory")
    check(os.pread(12, 9000, 0) == b"never named\n" * 50, "fd 12: contents")
    check(os.lseek(12, 0, os.SEEK_CUR) == 7, "fd 12: position")
    check(fcntl.fcntl(12, fcntl.F_GETFL) == tmpfl,
          f"fd 12: flags {fcntl.fcntl(12, fcntl.F_GETFL):o}, were {tmpfl:o}")
    check(stat.S_IMODE(os.fstat(12).st_mode) == 0o640 and os.fstat(12).st_nlink == 0,
          "fd 12: mode or nlink")
    for fd, target, nlink in ((13, "target-1", 1), (14, "target-2", 0)):
        st = os.fstat(fd)
        check(stat.S_ISLNK(st.st_mode) and st.st_nlink == nlink, f"fd {fd}: not the symlink")
        check(os.readlink("", dir_fd=fd) == target, f"fd {fd}: symlink target")
        check(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH != 0, f"fd {fd}: not O_PATH")
    check(os.pread(15, 100, 0) == b"the first one\n" and os.fstat(15).st_nlink == 0,
          "fd 15: not the first, deleted, file")
    with open(again, "rb") as f:
        check(f.read() == b"the second one, longer\n", "the new 'again' was changed")
    check(os.readlink("/proc/self/cwd") == cwd_link,
          f"cwd reads {os.readlink('/proc/self/cwd')!r}, was {cwd_link!r}")
    a, b = os.stat("."), os.fstat(16)
    check((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and a.st_nlink == 0,
          "fd 16 is not the (deleted) cwd")
    check(stat.S_IMODE(a.st_mode) == 0o750, f"cwd mode {stat.S_IMODE(a.st_mode):o}")
    if errs:
        say("FAIL: " + "; ".join(errs))
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
