"""Reading and writing CRIU image files.

Layout of a framed image (all integers little-endian u32)::

    [prefix magic]  IMG_COMMON_MAGIC or IMG_SERVICE_MAGIC (not in inventory)
    magic           the image kind's own magic
    { size  message[size]  [raw tail] }   until end of file

Some kinds have a different message in their first entry (pagemap: a
pagemap_head) and some entries are followed by raw bytes whose length the
entry itself gives (pipes-data: ``bytes``); both are described per kind in
magic.KINDS.  Raw images (pages-N.img) have neither header nor framing.

Writers create the file under a temporary name in the same directory and
rename it into place only when closed after success, so an interrupted dump
never leaves a half-written image under CRIU's name.

Every problem met while reading raises ImageError naming the file.
"""
from __future__ import annotations

import os
import struct
from ..record import record
from types import TracebackType
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import BinaryIO, Iterable, Iterator

from google.protobuf.message import Message

from procsnap.errors import ImageError
from procsnap.images.magic import (
    IMG_COMMON_MAGIC,
    IMG_SERVICE_MAGIC,
    ImageKind,
    kind as _kind,
    kind_by_magic,
)

_U32 = struct.Struct("<I")


def image_path(images_dir: str, kind: str, ident: int | None = None) -> str:
    """Path of the image of this kind (and id) inside images_dir."""
    return os.path.join(images_dir, _kind(kind).file_name(ident))


@record(frozen=True)
class Entry:
    """One entry of an image: the message and the raw bytes that follow it."""

    msg: Message
    payload: bytes = b""
    offset: int = 0  # where the entry's size word starts in the file
    # where the raw tail starts in the file and its length (also when the
    # reader was asked to leave it there: iter_entries(tails=False))
    tail_offset: int = 0
    tail_len: int = 0


# --------------------------------------------------------------------------
# writing


def _create_part(images_dir: str, name: str) -> tuple[int, str]:
    """A new file ``.NAME.XXXXXXXX.part`` in images_dir, as tempfile.mkstemp
    would make it (O_EXCL, mode 0600), without importing tempfile (random,
    shutil...: 4 ms at every start of a dump)."""
    for _ in range(100):
        path = os.path.join(images_dir, f".{name}.{os.urandom(4).hex()}.part")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{images_dir}: no free temporary name for {name}")


class ImageWriter:
    """Write one image file; use as a context manager.

    The header is written on open.  ``write(msg)`` appends one framed
    entry, ``write_raw(data)`` appends bytes as they are (the tail of the
    previous entry, or page data for a raw image).  ``close()`` renames the
    finished file into place; leaving the ``with`` block by an exception
    removes it instead.
    """

    def __init__(self, images_dir: str, kind: str, ident: int | None = None) -> None:
        self.kind: ImageKind = _kind(kind)
        self.path = os.path.join(images_dir, self.kind.file_name(ident))
        self.entries = 0
        self._closed = False
        try:
            fd, self._tmp = _create_part(images_dir, os.path.basename(self.path))
        except OSError as e:
            raise ImageError(self.path, f"cannot create: {e.strerror or e}") from None
        self._f: BinaryIO = os.fdopen(fd, "wb")
        try:
            if self.kind.prefix is not None:
                self._f.write(_U32.pack(self.kind.prefix))
            if self.kind.header != "raw":
                self._f.write(_U32.pack(self.kind.magic))
        except OSError as e:
            self.abort()
            raise ImageError(self.path, f"cannot write header: {e.strerror or e}") from None

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def write(self, msg: Message) -> None:
        """Append one framed entry."""
        self._check_open()
        _pagemap_compat_out(msg)
        data = msg.SerializePartialToString()  # (required fields: checked below)
        # a kind whose classes follow the contents names its own
        expected = (self.kind.pick(data) if self.kind.pick is not None
                    else self.kind.entry_class(self.entries))
        if expected is None:
            raise TypeError(f"{self.path}: {self.kind.name} images are raw; use write_raw()")
        if msg.DESCRIPTOR.full_name != expected.DESCRIPTOR.full_name:
            raise TypeError(
                f"{self.path}: entry {self.entries} of a {self.kind.name} image must be "
                f"{expected.DESCRIPTOR.name}, not {msg.DESCRIPTOR.name}"
            )
        missing = msg.FindInitializationErrors()
        if missing:
            raise ImageError(
                self.path,
                f"entry {self.entries} ({msg.DESCRIPTOR.name}) lacks required "
                f"field(s): {', '.join(missing)}",
            )
        try:
            self._f.write(_U32.pack(len(data)))
            self._f.write(data)
        except OSError as e:
            raise ImageError(self.path, f"write failed: {e.strerror or e}") from None
        self.entries += 1

    def write_raw(self, data: bytes | memoryview) -> None:
        """Append unframed bytes (an entry's tail, or page data)."""
        self._check_open()
        try:
            self._f.write(data)
        except OSError as e:
            raise ImageError(self.path, f"write failed: {e.strerror or e}") from None

    def tell(self) -> int:
        """Where the next byte goes in the file."""
        return self._f.tell()

    def fileno(self) -> int:
        """The file's descriptor, all written so far flushed to it, for
        writing in place; resync() before the next write."""
        self._f.flush()
        return self._f.fileno()

    def resync(self, end: int) -> None:
        """Go on writing at ``end`` after the file was written in place."""
        self._f.seek(end)

    def close(self) -> None:
        """Finish the image and move it to its real name."""
        if self._closed:
            return
        if self.kind.head is not None and self.entries == 0:
            self.abort()
            raise ImageError(
                self.path, f"a {self.kind.name} image needs at least its {self.kind.head.DESCRIPTOR.name}"
            )
        try:
            # No fsync per image: the dump flushes the whole set once at the
            # end (sync_dir), one disk flush instead of one per file.
            self._f.flush()
            self._f.close()
            os.rename(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise ImageError(self.path, f"cannot finish image: {e.strerror or e}") from None
        self._closed = True

    def abort(self) -> None:
        """Drop the partial file; the real name is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._f.close()
        except OSError:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: image writer is closed")


_PAGEMAP_ENTRY = "criu.pagemap_entry"


def _pagemap_compat_out(msg: Message) -> None:
    """A pagemap entry carries its count in both fields, as readers of
    either age expect: nr_pages (field 5, CRIU 4.x) and compat_nr_pages
    (field 2, required; 0 when the count does not fit 32 bits, as CRIU)."""
    if msg.DESCRIPTOR.full_name != _PAGEMAP_ENTRY or msg.HasField("compat_nr_pages"):
        return
    n = msg.nr_pages  # type: ignore[attr-defined]
    msg.compat_nr_pages = n if n < 1 << 32 else 0  # type: ignore[attr-defined]


def write_image(
    images_dir: str, kind: str, msgs: Iterable[Message], ident: int | None = None
) -> str:
    """Write all msgs as one image; returns its path."""
    with ImageWriter(images_dir, kind, ident) as w:
        for m in msgs:
            w.write(m)
    return w.path


def write_one(images_dir: str, kind: str, msg: Message, ident: int | None = None) -> str:
    """Write an image holding the single entry msg; returns its path."""
    return write_image(images_dir, kind, [msg], ident)


def open_pages_writer(images_dir: str, pages_id: int) -> ImageWriter:
    """A writer for pages-<pages_id>.img; the caller streams page data with write_raw()."""
    return ImageWriter(images_dir, "pages", pages_id)


# --------------------------------------------------------------------------
# reading


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def read_header(path: str, f: BinaryIO, size: int, expect: ImageKind | None) -> ImageKind:
    """Read the magic words at the start of f; returns the image's kind."""
    if size == 0:
        raise ImageError(path, "empty file")
    first = _read_exact(f, 4)
    if len(first) < 4:
        raise ImageError(path, f"truncated header: {len(first)} byte(s), a magic takes 4")
    (magic,) = _U32.unpack(first)
    if magic in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        second = _read_exact(f, 4)
        if len(second) < 4:
            raise ImageError(path, f"truncated header: no image magic after the prefix {magic:#010x}")
        (magic,) = _U32.unpack(second)
    found = kind_by_magic(magic)
    if expect is not None:
        if magic != expect.magic or expect.header == "raw":
            what = f" (that is the {found.magic_name} magic)" if found is not None else ""
            raise ImageError(
                path,
                f"magic {magic:#010x} is not CRIU's {expect.name} image ({expect.magic:#010x}){what}",
            )
        return expect
    if found is None:
        raise ImageError(path, f"unknown magic {magic:#010x}: not a CRIU image procsnap knows")
    return found


_IS_PAGEMAP: dict[type[Message], bool] = {}


def _parse(path: str, cls: type[Message], data: bytes, index: int, offset: int) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # DecodeError, or a runtime-specific error
        raise ImageError(
            path,
            f"entry {index} at offset {offset}: cannot decode {cls.DESCRIPTOR.name}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
        ) from None
    if not msg.IsInitialized():
        raise ImageError(
            path,
            f"entry {index} at offset {offset}: {cls.DESCRIPTOR.name} lacks required "
            f"field(s): {', '.join(msg.FindInitializationErrors())}",
        )
    pagemap = _IS_PAGEMAP.get(cls)
    if pagemap is None:
        pagemap = _IS_PAGEMAP[cls] = cls.DESCRIPTOR.full_name == _PAGEMAP_ENTRY
    if pagemap and not msg.HasField("nr_pages"):
        # an image from CRIU before 4.0 or from an older procsnap: the
        # count is in field 2 only (criu/pagemap.c reads it the same way)
        msg.nr_pages = msg.compat_nr_pages  # type: ignore[attr-defined]
    return msg


def _iter_open(path: str, f: BinaryIO, kind: ImageKind, size: int,
               tails: bool = True) -> Iterator[Entry]:
    pos = f.tell()
    index = 0
    while pos < size:
        left = size - pos
        if left < 4:
            raise ImageError(path, f"truncated at offset {pos}: entry size needs 4 bytes, {left} left")
        (length,) = _U32.unpack(_read_exact(f, 4))
        left -= 4
        if length > left:
            raise ImageError(
                path, f"truncated at offset {pos}: entry of {length} bytes, {left} left"
            )
        raw = _read_exact(f, length)
        cls = kind.pick(raw) if kind.pick is not None else kind.entry_class(index)
        assert cls is not None  # raw kinds never reach here
        msg = _parse(path, cls, raw, index, pos)
        start = pos
        pos += 4 + length
        payload = b""
        if kind.tail is not None:
            want = kind.tail(msg)
            if want is None:
                want = size - pos
            if want > size - pos:
                raise ImageError(
                    path,
                    f"truncated at offset {pos}: {msg.DESCRIPTOR.name} announces "
                    f"{want} raw bytes, {size - pos} left",
                )
            if tails:
                payload = _read_exact(f, want)
            else:
                f.seek(want, os.SEEK_CUR)
            tail_at = pos
            pos += want
        else:
            tail_at, want = pos, 0
        yield Entry(msg, payload, start, tail_at, want)
        index += 1


def _iter_messages(path: str, f: BinaryIO, kind: ImageKind, size: int) -> Iterator[Message]:
    """_iter_open's messages alone, for a kind without raw tails: the rest
    of the file read in one call and cut in memory (a pagemap of 600
    entries is 1200 reads less), with the same checks."""
    pos = f.tell()
    data = _read_exact(f, size - pos)
    if len(data) != size - pos:
        raise ImageError(path, f"truncated at offset {pos + len(data)}: the file shrank "
                               "while read")
    off, index, end = 0, 0, len(data)
    pick = kind.pick
    while off < end:
        if end - off < 4:
            raise ImageError(path, f"truncated at offset {pos + off}: entry size needs 4 "
                                   f"bytes, {end - off} left")
        (length,) = _U32.unpack_from(data, off)
        if length > end - off - 4:
            raise ImageError(path, f"truncated at offset {pos + off}: entry of {length} bytes, "
                                   f"{end - off - 4} left")
        raw = data[off + 4:off + 4 + length]
        cls = pick(raw) if pick is not None else kind.entry_class(index)
        assert cls is not None  # raw kinds never reach here
        yield _parse(path, cls, raw, index, pos + off)
        off += 4 + length
        index += 1


def _open(path: str) -> tuple[BinaryIO, int]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ImageError(path, "no such image") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image") from None
    except OSError as e:
        raise ImageError(path, f"cannot open: {e.strerror or e}") from None
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        f.close()
        raise ImageError(path, f"cannot stat: {e.strerror or e}") from None
    return f, size


def iter_entries(path: str, kind: str | None = None, tails: bool = True) -> Iterator[Entry]:
    """Yield the entries of the framed image at path.

    The kind is told by the magic; when ``kind`` is given the magic must be
    that kind's.  Raw tails are returned in ``Entry.payload``; with
    ``tails=False`` they are left in the file (payload b""), for a caller
    that moves megabytes from the file itself (``tail_offset``, ``tail_len``).
    """
    expect = _kind(kind) if kind is not None else None
    if expect is not None and expect.header == "raw":
        raise ValueError(f"{path}: {expect.name} images are raw, they have no entries")
    f, size = _open(path)
    with f:
        try:
            found = read_header(path, f, size, expect)
            if found.header == "raw":  # pragma: no cover - raw kinds have no magic
                raise ImageError(path, "raw image has no entries")
            yield from _iter_open(path, f, found, size, tails)
        except OSError as e:
            raise ImageError(path, f"read failed: {e.strerror or e}") from None


def _read_messages(path: str, kind: str) -> list[Message]:
    """Every entry's message; the tails (if the kind has them) skipped."""
    expect = _kind(kind)
    if expect.header == "raw" or expect.tail is not None:
        return [e.msg for e in iter_entries(path, kind)]
    f, size = _open(path)
    with f:
        try:
            read_header(path, f, size, expect)
            return list(_iter_messages(path, f, expect, size))
        except OSError as e:
            raise ImageError(path, f"read failed: {e.strerror or e}") from None


def read_image(images_dir: str, kind: str, ident: int | None = None) -> list[Message]:
    """All entries of an image (for pagemap the pagemap_head comes first)."""
    return _read_messages(image_path(images_dir, kind, ident), kind)


def read_entries(images_dir: str, kind: str, ident: int | None = None,
                 tails: bool = True) -> list[Entry]:
    """Like read_image, keeping the raw tail of each entry (or, with
    ``tails=False``, only where it is: see iter_entries)."""
    return list(iter_entries(image_path(images_dir, kind, ident), kind, tails))


def read_one(images_dir: str, kind: str, ident: int | None = None) -> Message:
    """The single entry of an image that must hold exactly one."""
    path = image_path(images_dir, kind, ident)
    entries = _read_messages(path, kind)
    if len(entries) != 1:
        raise ImageError(path, f"expected exactly one entry, found {len(entries)}")
    return entries[0]


def sync_dir(images_dir: str) -> None:
    """Flush every image written to ``images_dir``'s filesystem to disk
    (syncfs(2)), and the directory entries that name them."""
    from procsnap.kernel.libc import libc

    fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc.syncfs(fd)
    except OSError as e:
        raise ImageError(images_dir, f"syncfs failed: {e.strerror}") from None
    finally:
        os.close(fd)
