"""nft commands run in this process through libnftables, the library the
``nft`` command is a thin front end of: same syntax, same kernel requests,
no fork and exec of nft (8-35 ms a run on these machines, the network
lock's cost inside a dump's frozen time, against ~1 ms in process).

The library's netlink socket is made by ``nft_ctx_new`` in the calling
thread's network namespace, so each run gets a context of its own: a
caller inside another namespace (kernel/netns.py) acts on that one, as a
``nft`` it ran there would.  Without libnftables (no .so.1 on the
machine) the ``nft`` command is run instead.
"""
from __future__ import annotations

import ctypes
import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from subprocess import CompletedProcess
    from threading import Thread

_lib: ctypes.CDLL | None = None
_tried = False
_freeing: "Thread | None" = None  # see run(wait=False)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    try:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    _lib = lib
    return lib


class Result:
    """What ``nft -f -`` would have given: its exit status (0 or 1), its
    output and its error messages (the fields of subprocess's
    CompletedProcess that callers read; subprocess itself is imported
    only for the fallback, its import sat in the dump's frozen time)."""
    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def command() -> str | None:
    """The nft command, for the fallback (and to say it is missing)."""
    import shutil
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def available() -> bool:
    return _load() is not None or command() is not None


def run(script: str, wait: bool = True) -> "Result | CompletedProcess[str]":
    """Run an nft script (one command a line); the result as ``nft -f -``'s
    would be: returncode 0 or 1, its output and its error messages.

    ``wait=False``: the script's effect is in place when this returns, but
    the library's context is freed in a thread of its own.  Closing its
    netlink socket after a command that deleted something waits for the
    kernel to free what was deleted (nf_tables flushes its destroy work,
    an RCU grace period: 10-15 ms here); the caller goes on meanwhile."""
    lib = _load()
    if lib is None:
        nft = command()
        if nft is None:
            raise FileNotFoundError(2, "nft: neither libnftables.so.1 nor the nft command")
        import subprocess
        return subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True,
                              timeout=30)
    # The thread freeing the context of the last run(wait=False), if any:
    # this run waits for it, the library not being known to be thread-safe.
    global _freeing
    if _freeing is not None:
        _freeing.join()
        _freeing = None
    ctx = lib.nft_ctx_new(0)    # NFT_CTX_DEFAULT
    if not ctx:
        raise OSError(ctypes.get_errno() or 12, "nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    except BaseException:
        lib.nft_ctx_free(ctx)
        raise
    if wait:
        lib.nft_ctx_free(ctx)
    else:
        import threading
        # (ctypes lets go of the GIL for the call; a process that exits
        # meanwhile waits for the close in the kernel, as it would have)
        freeing = threading.Thread(target=lib.nft_ctx_free, args=(ctx,), daemon=True,
                                   name="nft_ctx_free")
        freeing.start()
        _freeing = freeing
    return Result(0 if rc == 0 else 1, out, err)
