"""``criu swrk FD``'s first step, before anything heavy is imported.

runc and Podman start one ``criu swrk`` just to ask VERSION (go-criu's
version check, before every checkpoint and restore): answering it must
not cost the import of the images layer and protobuf (about 0.3 s of a
Python start).  A request that is exactly go-criu's VERSION (type 10, no
other field) is answered here with the bytes rpc.py's VERSION answer
serializes to (a unit test checks they are the same); anything else is
left in the socket for rpc.py.  This module imports only the standard
library.
"""
from __future__ import annotations

import os
import socket

VERSION_REQ = b"\x08\x0a"                    # criu_req{type: VERSION}
# criu_resp{type: VERSION, success: true,
#           version{major_number: 4, minor_number: 2, name: "procsnap"}}
VERSION_RESP = b"\x08\x0a\x10\x01\x52\x0e\x08\x04\x10\x02\x32\x08procsnap"


def fast_version(fd: int) -> bool:
    """Answer a plain VERSION request on fd; True when done (the session is
    over, as criu's without keep_open), False when rpc.py must serve."""
    try:
        sk = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        data = sk.recv(len(VERSION_REQ) + 1, socket.MSG_PEEK)
        if data != VERSION_REQ:
            return False
        sk.recv(len(VERSION_REQ) + 1)
        sk.send(VERSION_RESP, socket.MSG_NOSIGNAL)
        return True
    except OSError:
        return False
    finally:
        sk.close()
