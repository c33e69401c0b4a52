"""CRIU's older layout of open files: one image per kind, before files.img.

CRIU before 3.x wrote each kind of open file description to an image of
its own (reg-files.img, pipes.img, fifo.img, unixsk.img, inetsk.img,
packetsk.img, netlinksk.img, eventfd.img, eventpoll.img, signalfd.img,
timerfd.img, inotify.img, fanotify.img, ext-files.img, ns-files.img,
tty.img, tunfile.img), each entry carrying its file id, and some lists in
images of their own again (eventpoll-tfd.img, inotify-wd.img,
fanotify-mark.img, each entry naming its file by id).  fdinfo-N.img is the
same in both layouts: (fd, file id, type, flags).  CRIU 4.x still reads the
old layout when there is no files.img (criu/files.c: files_collected(), the
collect_image_info of each kind); so does procsnap: file_entries() gives the
files.img entries either layout describes.
"""
from __future__ import annotations

import os

from google.protobuf.message import Message

from procsnap.errors import ImageError
from procsnap.images.framing import image_path, read_image
from procsnap.images.pb import fdinfo_pb2

T = fdinfo_pb2

# per-kind image -> (its field in file_entry, fd type), as CRIU's
# collect_one_file() maps them the other way
KINDS: tuple[tuple[str, str, int], ...] = (
    ("reg-files", "reg", T.REG),
    ("pipes", "pipe", T.PIPE),
    ("fifo", "fifo", T.FIFO),
    ("unixsk", "usk", T.UNIXSK),
    ("inetsk", "isk", T.INETSK),
    ("packetsk", "psk", T.PACKETSK),
    ("netlinksk", "nlsk", T.NETLINKSK),
    ("eventfd", "efd", T.EVENTFD),
    ("eventpoll", "epfd", T.EVENTPOLL),
    ("signalfd", "sgfd", T.SIGNALFD),
    ("timerfd", "tfd", T.TIMERFD),
    ("inotify", "ify", T.INOTIFY),
    ("fanotify", "ffy", T.FANOTIFY),
    ("ext-files", "ext", T.EXT),
    ("ns-files", "nsf", T.NS),
    ("tty-files", "tty", T.TTY),
)

# lists kept in images of their own: (image, file_entry field, list field)
LISTS: tuple[tuple[str, str, str], ...] = (
    ("eventpoll-tfd", "epfd", "tfd"),
    ("inotify-wd", "ify", "wd"),
    ("fanotify-mark", "ffy", "mark"),
)


def _exists(images_dir: str, kind: str) -> bool:
    return os.path.exists(image_path(images_dir, kind, None))


def is_old_layout(images_dir: str) -> bool:
    """No files.img, and one of the per-kind images instead."""
    return not _exists(images_dir, "files") and any(
        _exists(images_dir, k) for k, _, _ in KINDS)


def file_entries(images_dir: str) -> list[Message]:
    """files.img's entries, or those the per-kind images describe."""
    if _exists(images_dir, "files") or not is_old_layout(images_dir):
        return read_image(images_dir, "files")
    out: dict[int, Message] = {}
    for kind, field, ftype in KINDS:
        if not _exists(images_dir, kind):
            continue
        path = image_path(images_dir, kind, None)
        for msg in read_image(images_dir, kind):
            if msg.id in out:
                other = T.fd_types.Name(out[msg.id].type)
                raise ImageError(path, f"file id {msg.id} is described twice (also as {other})")
            fe = T.file_entry(id=msg.id)
            fe.type = ftype  # type: ignore[assignment]
            getattr(fe, field).CopyFrom(msg)
            out[msg.id] = fe
    for kind, field, name in LISTS:
        if not _exists(images_dir, kind):
            continue
        path = image_path(images_dir, kind, None)
        for msg in read_image(images_dir, kind):
            have = out.get(msg.id)
            if have is None or not have.HasField(field):
                raise ImageError(path, f"an entry for file id {msg.id}, which no "
                                 f"{kind.split('-')[0]}.img entry describes")
            getattr(getattr(have, field), name).append(msg)
    if _exists(images_dir, "tunfile") and read_image(images_dir, "tunfile"):
        # (files.img has no field for them either: procsnap makes no tun files)
        raise ImageError(image_path(images_dir, "tunfile", None),
                         "tun device files: procsnap does not restore them")
    return [out[i] for i in sorted(out)]


__all__ = ["file_entries", "is_old_layout", "KINDS", "LISTS"]
