"""CRIU-compatible image files: schemas, the kind table, framing, decoding.

procsnap writes the same files CRIU writes (names, magic numbers, framing,
protobuf field numbers), so ``crit decode`` reads our images and we read
CRIU's.  The pieces:

* ``magic``   -- KINDS, the one table of image kinds;
* ``framing`` -- ImageWriter and the readers;
* ``show``    -- decode_file / decode_dir for ``procsnap show``;
* ``pb``      -- modules generated from ``proto/`` by scripts/gen-protos.
"""
from __future__ import annotations

from procsnap.images.framing import (
    Entry,
    ImageWriter,
    image_path,
    iter_entries,
    open_pages_writer,
    read_entries,
    read_image,
    read_one,
    sync_dir,
    write_image,
    write_one,
)
from procsnap.images.magic import (
    CRTOOLS_IMAGES_V1_1,
    IMG_COMMON_MAGIC,
    IMG_SERVICE_MAGIC,
    KINDS,
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    ImageKind,
    kind,
    kind_by_file_name,
    kind_by_magic,
)


def decode_file(path: str) -> dict:
    """See show.decode_file (imported on use: json_format is slow to load)."""
    from procsnap.images.show import decode_file as _decode_file
    return _decode_file(path)


def decode_dir(images_dir: str) -> dict:
    """See show.decode_dir."""
    from procsnap.images.show import decode_dir as _decode_dir
    return _decode_dir(images_dir)


__all__ = [
    "sync_dir",
    "CRTOOLS_IMAGES_V1_1",
    "Entry",
    "IMG_COMMON_MAGIC",
    "IMG_SERVICE_MAGIC",
    "ImageKind",
    "ImageWriter",
    "KINDS",
    "PE_LAZY",
    "PE_PARENT",
    "PE_PRESENT",
    "decode_dir",
    "decode_file",
    "image_path",
    "iter_entries",
    "kind",
    "kind_by_file_name",
    "kind_by_magic",
    "open_pages_writer",
    "read_entries",
    "read_image",
    "read_one",
    "write_image",
    "write_one",
]
