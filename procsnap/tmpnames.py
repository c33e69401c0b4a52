"""Temporary names procsnap puts into the target's file systems, and their
journal (``procsnap-tmpnames.txt`` in the images directory).

Two kinds of name are made outside the images directory:

* link remaps (``DIR/link_remap.ID``, at dump, with --link-remap): a hard
  link that keeps an unlinked-but-linked-elsewhere file reachable until the
  restore, which removes it;
* ghosts (``PATH.cr.ID.ghost``, at restore): the recreated contents of a
  deleted file, opened by the restored process and then unlinked.

Both are removed when the run that made them fails.  Only a kill -9 of
procsnap itself can leave one behind, so every name is written to the
journal *before* it is created and marked when it is removed or handed
over to the images.  The next dump or restore with the same directory
reports what is left; ``procsnap cleanup DIR`` removes it.

Journal lines: ``+ PATH`` (created, temporary), ``= PATH`` (a link remap
that a complete dump now owns: not a leftover, but cleanup removes it),
``- PATH`` (removed).  A path may hold any bytes but NUL (a deleted
file may be named ``a\\b'\n"c``): it is written with surrogateescape
and escaped, ``\\`` for a backslash and ``\n`` for a newline, so each
line is one whole name.  Ghosts may need parent directories made again
(their directory was deleted too): those are journaled first, removed
last.

A name procsnap reaches through a process -- ``/proc/PID/root/...`` of a
target in another mount namespace, ``/proc/OUR PID/fd/N/...`` of a
restored tree's root -- names nothing once that process is gone, and a
SIGKILLed procsnap is gone.  Such a name is journaled as the same file's
path from our own root where one exists (``lasting``): found through a
file handle of its directory, opened on a mount of ours of the same file
system.
"""
from __future__ import annotations

import ctypes
import os

from . import logs
from .errors import ProcsnapError
from .kernel import consts as C
from .kernel.libc import syscall
from .procfs.parse import unescape_octal

JOURNAL = "procsnap-tmpnames.txt"
log = logs.Logger("procsnap.tmpnames")


def _journal(images_dir: str) -> str:
    return os.path.join(images_dir, JOURNAL)


def note(images_dir: str, state: str, *paths: str) -> None:
    """Append one line per path, in one write, and make them durable
    before the names are touched.  A removal ("-") is not synced: a name
    whose "-" line a crash lost is gone all the same, and leftovers()
    reports only names that still exist."""
    data = "".join(f"{state} {escape(lasting(p))}\n"
                   for p in paths).encode("utf-8", "surrogateescape")
    fd = os.open(_journal(images_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        if state != "-":
            os.fsync(fd)
    finally:
        os.close(fd)


MAX_HANDLE_SZ = 128
AT_SYMLINK_FOLLOW = 0x400  # the parent may be /proc/PID/fd/N itself


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def lasting(path: str) -> str:
    """``path`` as a name that outlives the process it goes through.

    Only /proc/... names go through a process.  The directory's file
    handle is opened on each of our mounts of its device: one that reaches
    it gives its path from our root (checked by device and inode).  None
    does (the tree's own tmpfs, a file system without handles): the name
    as given, which dies with the tree's namespace anyway or is reported."""
    if not path.startswith("/proc/"):
        return path
    parent, base = os.path.split(path)
    try:
        st = os.stat(parent)
        fh = _FileHandle(handle_bytes=MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(0)
        name = ctypes.create_string_buffer(os.fsencode(parent))
        syscall(C.NR["name_to_handle_at"], C.AT_FDCWD, ctypes.addressof(name),
                ctypes.addressof(fh), ctypes.addressof(mount_id), AT_SYMLINK_FOLLOW)
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return path
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5 or fields[2] != want:
            continue
        mount_point = unescape_octal(fields[4])
        try:
            # not O_PATH: open_by_handle_at() refuses an O_PATH mount fd
            mfd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = syscall(C.NR["open_by_handle_at"], mfd, ctypes.addressof(fh),
                         C.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # ESTALE: not below this mount's root
        finally:
            os.close(mfd)
        try:
            found = os.readlink(f"/proc/self/fd/{fd}")
            there = os.stat(found)
        except OSError:
            continue
        finally:
            os.close(fd)
        if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
            return os.path.join(found, base)
    return path


def escape(path: str) -> str:
    """One journal line's worth of ``path``: backslash and newline escaped."""
    return path.replace("\\", "\\\\").replace("\n", "\\n")


def unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def states(images_dir: str) -> dict[str, str]:
    """path -> its last state in the journal (in order of first mention)."""
    try:
        with open(_journal(images_dir), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: dict[str, str] = {}
    # split on "\n" only: an escaped name holds no newline, but may hold
    # other characters str.splitlines() would break at (\r, \x1c, ...).
    for line in raw.decode("utf-8", "surrogateescape").split("\n"):
        state, _, path = line.partition(" ")
        if state in ("+", "=", "-") and path:
            out[unescape(path)] = state
    return out


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def leftovers(images_dir: str, *, owned: bool = False) -> list[str]:
    """Names from the journal that still exist: temporary ones, and with
    ``owned`` also the link remaps a finished dump handed to its images."""
    want = {"+", "="} if owned else {"+"}
    return [p for p, s in states(images_dir).items() if s in want and _exists(p)]


def report(images_dir: str) -> None:
    """Warn (once per run) about names an interrupted run left behind."""
    left = leftovers(images_dir)
    if left:
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        log.warning("%s: %d temporary name(s) left by an interrupted procsnap run: %s; "
                    "remove them with: procsnap cleanup %s", images_dir, len(left), shown,
                    images_dir)


def remove(images_dir: str | None, path: str, *, is_dir: bool = False) -> None:
    """Remove one name we made (gone already is fine) and journal it."""
    try:
        if is_dir:
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    if images_dir is not None:
        try:
            note(images_dir, "-", path)
        except OSError:
            pass  # a read-only images dir: the name is gone all the same


def cleanup(images_dir: str) -> list[str]:
    """Remove every journaled name that still exists; returns them.

    Link remaps of a finished dump go too: the caller asked to give the
    images up (a restore of files that needed them then fails, clearly).
    """
    if not os.path.isdir(images_dir):
        raise ProcsnapError(f"{images_dir}: no such images directory")
    done: list[str] = []
    # Newest first: a ghost goes before the parent directory made for it.
    for path in reversed(leftovers(images_dir, owned=True)):
        try:
            remove(images_dir, path, is_dir=os.path.isdir(path) and not os.path.islink(path))
        except OSError as exc:
            raise ProcsnapError(f"{path}: cannot remove: {exc.strerror}") from None
        done.append(path)
    # Half-written images of a killed run (ImageWriter's ".NAME.*.part").
    for name in os.listdir(images_dir):
        if name.startswith(".") and name.endswith(".part"):
            path = os.path.join(images_dir, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            done.append(path)
    try:
        os.unlink(_journal(images_dir))
    except FileNotFoundError:
        pass
    return done
