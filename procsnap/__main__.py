import os
import sys

from .cli import main

rc = main() or 0
# Leave without Python's finalization: freeing every module and object of
# a restore costs 40-110 ms here, and a caller waiting for `restore -d`
# (a test, runc, LXC) waits for it.  procsnap starts no threads and
# registers nothing at exit; what is buffered is flushed first.
try:
    sys.stdout.flush()
    sys.stderr.flush()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
except BaseException:
    raise SystemExit(rc)
os._exit(rc if isinstance(rc, int) else 1)
