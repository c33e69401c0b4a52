"""A FUSE file system that answers per caller, as lxcfs does.

    python3 tests/fuse_server.py MOUNTPOINT ALLOWFILE

It serves one directory with one file, ``/data`` (the bytes of DATA,
writable in place).  Lookups, getattr and open of ``/data`` succeed only
for callers whose pid is listed in ALLOWFILE (one pid a line, re-read on
every request); every other caller gets ENOENT.  The root directory
answers everyone, so the mount itself stays usable.

Why this shape: lxcfs decides what a file is from the caller's cgroup and
pid namespace.  For a process outside the container a lookup fails, the
kernel then drops the cached name, and from then on readlink of the
container process's fd says "(deleted)" although the file is alive -- the
case that made CRIU try a link remap on lxcfs.  Here, too, any lookup by
someone else than the listed pids (the test, or a dumper) turns the name
into "(deleted)", and even fstat through /proc/PID/fd/N from another
process fails with ENOENT, because attributes are never cached
(attr_timeout=0, entry_timeout=0).

Real libfuse 3 through the mfusepy binding (pip package mfusepy, Debian
packages fuse3 and libfuse3-3).
"""
from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time

import mfusepy as fuse

DATA = b"".join(b"line %04d of the per-caller file\n" % i for i in range(200))


class PerCaller(fuse.Operations):
    use_ns = True  # times in nanoseconds (the float API is deprecated)

    def __init__(self, allowfile: str) -> None:
        self.allowfile = allowfile
        self.data = bytearray(DATA)
        self.mutex = threading.Lock()  # not "lock": that name is a FUSE operation
        now = time.time_ns()
        self.times = (now, now)

    def _allowed(self) -> bool:
        _, _, pid = fuse.fuse_get_context()
        try:
            with open(self.allowfile) as f:
                pids = {int(x) for x in f.read().split()}
        except (OSError, ValueError):
            return False
        return pid in pids

    def _check(self, path: str) -> None:
        if path == "/":
            return
        if path != "/data" or not self._allowed():
            raise fuse.FuseOSError(errno.ENOENT)

    def getattr(self, path: str, fh: int | None = None) -> dict:
        self._check(path)
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                    "st_atime": self.times[0], "st_mtime": self.times[1],
                    "st_ctime": self.times[1]}
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": len(self.data),
                "st_atime": self.times[0], "st_mtime": self.times[1],
                "st_ctime": self.times[1]}

    def readdir(self, path: str, fh: int) -> list[str]:
        self._check(path)
        return [".", ".."] + (["data"] if self._allowed() else [])

    def open(self, path: str, flags: int) -> int:
        self._check(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            return bytes(self.data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            end = offset + len(data)
            if end > len(self.data):
                self.data.extend(bytes(end - len(self.data)))
            self.data[offset:end] = data
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check(path)
        with self.mutex:
            del self.data[length:]
        return 0

    def statfs(self, path: str) -> dict:
        return {"f_bsize": 4096, "f_blocks": 1, "f_namemax": 255}


def main() -> None:
    # libfuse changes directory to /: keep the allow file reachable.
    mountpoint, allowfile = sys.argv[1], os.path.abspath(sys.argv[2])
    fuse.FUSE(PerCaller(allowfile), mountpoint, foreground=True, fsname="percaller",
              entry_timeout=0, attr_timeout=0, negative_timeout=0)
    os._exit(0)


if __name__ == "__main__":
    main()
