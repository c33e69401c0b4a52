"""Ghost files: the contents of an open file that has no name left
(st_nlink == 0), carried in ``ghost-file-ID.img`` as CRIU 4.x writes it.

Image layout (criu/files-reg.c, dump_ghost_file): one ghost_file_entry
(uid, gid, mode, dev, ino, atim, mtim), then

* for regular files of 3 pages or more: ``chunks = true`` and ``size``,
  followed by ghost_chunk_entry records (off, len), each followed by len
  bytes -- one record per data extent found with SEEK_DATA/SEEK_HOLE, so a
  sparse file costs only its written blocks;
* for smaller files: the whole contents, raw, to the end of the image;
* for directories: nothing (a ghost directory is recreated empty);
* for symlinks (an O_PATH fd on a deleted symlink): nothing, the target
  is ``symlnk_target``;
* for FIFOs and device nodes: nothing (rdev, for devices, is in the
  entry); the node is made again with mknod.

At restore the ghost is recreated beside the original path under CRIU's
name ``PATH.cr.ID.ghost`` (ftruncate to the size first: what no chunk
covers stays a hole), given owner, mode and times, opened by the restored
process and unlinked.
"""
from __future__ import annotations

import errno
import os
import stat as st_mod
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import DumpError, ImageError, RestoreError
from ..images.pb import ghost_file_pb2, time_pb2

CHUNKS_THRESHOLD = 3 * 4096  # CRIU: tiny files are stored whole
COPY = 1 << 20


def stored_size(src: str, st: os.stat_result) -> int:
    """Bytes a ghost of this file costs in the image: its data extents.

    --ghost-limit is held against this, not st_size (as CRIU does): a
    sparse 100 MiB file with two written blocks costs two blocks.
    """
    if not st_mod.S_ISREG(st.st_mode):
        return 0
    fd = _open_src(src)
    try:
        if st.st_size < CHUNKS_THRESHOLD:
            return st.st_size
        return sum(length for _, length in _extents(fd, st.st_size))
    finally:
        os.close(fd)


def _open_src(src: str) -> int:
    # A fresh open of the magic link: the target's own fd may be
    # write-only, and its position must not move.
    try:
        return os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DumpError(f"{src}: cannot open the deleted file to save it: "
                        f"{exc.strerror}") from None


def dump(images_dir: str, gid: int, src: str, st: os.stat_result) -> str:
    """Write ghost-file-GID.img from the file reachable at ``src`` (a
    /proc/PID/fd/N or map_files link); returns the image path."""
    gfe = ghost_file_pb2.ghost_file_entry(
        uid=st.st_uid, gid=st.st_gid, mode=st.st_mode, dev=_criu_dev(st.st_dev), ino=st.st_ino,
        atim=_timeval(st.st_atime_ns), mtim=_timeval(st.st_mtime_ns))
    if st_mod.S_ISCHR(st.st_mode) or st_mod.S_ISBLK(st.st_mode):
        gfe.rdev = st.st_rdev & 0xFFFFFFFF  # CRIU: the user dev_t, old encoding
    if st_mod.S_ISLNK(st.st_mode):
        gfe.symlnk_target = _link_target(src)
    regular = st_mod.S_ISREG(st.st_mode)
    if regular and st.st_size >= CHUNKS_THRESHOLD:
        gfe.chunks = True
        gfe.size = st.st_size
    with images.ImageWriter(images_dir, "ghost-file", gid) as w:
        w.write(gfe)
        if regular:
            fd = _open_src(src)
            try:
                if gfe.chunks:
                    _copy_chunks(fd, w, st.st_size)
                else:
                    _copy_range(fd, w, 0, st.st_size)
            finally:
                os.close(fd)
    return w.path


def _link_target(src: str) -> str:
    """What a deleted symlink points to.  Opening the magic link with
    O_PATH lands on the symlink itself (the jump is not followed again);
    readlinkat with an empty name reads it."""
    try:
        pfd = os.open(src, os.O_PATH | os.O_CLOEXEC)
        try:
            return os.readlink("", dir_fd=pfd)
        finally:
            os.close(pfd)
    except OSError as exc:
        raise DumpError(f"{src}: cannot read the deleted symlink: {exc.strerror}") from None


def _timeval(ns: int) -> Any:
    return time_pb2.timeval(tv_sec=ns // 10**9, tv_usec=ns % 10**9 // 1000)


def _criu_dev(dev: int) -> int:
    # CRIU stores the old 32-bit encoding (kdev_t: major << 20 | minor).
    return (os.major(dev) << 20 | os.minor(dev)) & 0xFFFFFFFF


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of every data extent, as SEEK_DATA/SEEK_HOLE see it."""
    out: list[tuple[int, int]] = []
    hole = 0
    while hole < size:
        try:
            data = os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole up to the end
            if hole == 0 and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, size)]  # the fs cannot tell: take it all
            raise
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        if hole > data:
            out.append((data, hole - data))
    return out


def _copy_chunks(fd: int, w: images.ImageWriter, size: int) -> None:
    for off, length in _extents(fd, size):
        w.write(ghost_file_pb2.ghost_chunk_entry(off=off, len=length))
        _copy_range(fd, w, off, length)


def _copy_range(fd: int, w: images.ImageWriter, off: int, length: int) -> None:
    end = off + length
    while off < end:
        data = os.pread(fd, min(COPY, end - off), off)
        if not data:
            # The file shrank under us (a writer outside the frozen tree):
            # the image would lie about the size.
            raise DumpError(f"ghost file shrank while being saved (at offset {off} of {end})")
        w.write_raw(data)
        off += len(data)


def path_for(orig: str, gid: int) -> str:
    """CRIU's name for a ghost at restore (criu/files-reg.c, ghost_path)."""
    return f"{orig}.cr.{gid:x}.ghost"


def entry(images_dir: str, gid: int) -> Any:
    path = images.image_path(images_dir, "ghost-file", gid)
    for e in images.iter_entries(path, "ghost-file"):
        return e.msg
    raise ImageError(path, "empty ghost image")


def create(images_dir: str, gid: int, path: str, shown: str | None = None) -> bool:
    """Recreate ghost GID at ``path`` (which must not exist); True if it is
    a directory.  On failure nothing is left at ``path``.  ``shown``: the
    name errors give (the tree's, when ``path`` reaches it from here)."""
    img = images.image_path(images_dir, "ghost-file", gid)
    entries = iter(images.iter_entries(img, "ghost-file"))
    head = next(entries, None)
    if head is None:
        raise ImageError(img, "empty ghost image")
    gfe = head.msg
    mode = gfe.mode
    try:
        if st_mod.S_ISDIR(mode):
            os.mkdir(path, 0o700)
            _meta(path, gfe)
            return True
        if st_mod.S_ISLNK(mode):
            if not gfe.HasField("symlnk_target"):
                raise ImageError(img, "ghost symlink without a target")
            os.symlink(gfe.symlnk_target, path)
            try:
                _meta(path, gfe)
            except BaseException:
                os.unlink(path)
                raise
            return False
        if st_mod.S_ISFIFO(mode) or st_mod.S_ISCHR(mode) or st_mod.S_ISBLK(mode):
            # A node: the same kind of object again (a FIFO is a new,
            # empty pipe; fifo.py refills it), nothing to copy.
            if not st_mod.S_ISFIFO(mode) and not gfe.HasField("rdev"):
                raise ImageError(img, "ghost device node without rdev")
            os.mknod(path, st_mod.S_IFMT(mode) | 0o600, gfe.rdev if gfe.HasField("rdev") else 0)
            try:
                _meta(path, gfe)
            except BaseException:
                os.unlink(path)
                raise
            return False
        if not st_mod.S_ISREG(mode):
            raise RestoreError(f"{img}: ghost of mode {mode:o} is not supported")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RestoreError(f"{shown or path}: cannot create the ghost file: "
                           f"{exc.strerror}") from None
    try:
        try:
            if gfe.chunks:
                if not gfe.HasField("size"):
                    raise ImageError(img, "chunked ghost without a size")
                os.ftruncate(fd, gfe.size)  # uncovered ranges stay holes
                for e in entries:
                    _pwrite_all(fd, e.payload, e.msg.off)
            else:
                _pwrite_all(fd, head.payload, 0)
        finally:
            os.close(fd)
        _meta(path, gfe)
    except BaseException as exc:
        os.unlink(path)
        if isinstance(exc, OSError):
            raise RestoreError(f"{shown or path}: cannot fill the ghost file: "
                               f"{exc.strerror}") from None
        raise
    return False


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def _meta(path: str, gfe: Any) -> None:
    link = st_mod.S_ISLNK(gfe.mode)  # a symlink's own owner and times; it has no mode
    os.chown(path, gfe.uid, gfe.gid, follow_symlinks=not link)
    if not link:
        os.chmod(path, st_mod.S_IMODE(gfe.mode))
    if gfe.HasField("atim") and gfe.HasField("mtim"):
        os.utime(path, ns=(gfe.atim.tv_sec * 10**9 + gfe.atim.tv_usec * 1000,
                           gfe.mtim.tv_sec * 10**9 + gfe.mtim.tv_usec * 1000),
                 follow_symlinks=not link)
