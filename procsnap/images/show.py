"""Turn image files into JSON-able data, in the shape crit prints.

``decode_file(path)`` gives ``{"magic": "CORE", "entries": [{...}, ...]}``.
The kind is told by the magic inside the file, never by its name; the one
exception is raw images, which have no magic at all: page data (pages-N.img,
summarised by size and page count), CRIU's ip and firewall dumps of a
network namespace (size; the firewall rules as text) and tmpfs tarballs
(the names of the files in them).  Raw tails that follow
some entries (pipe data, queued packets, ghost file contents) are given,
like crit does, base64-encoded under ``"extra"``.
"""
from __future__ import annotations

import base64
import mmap
import os
import tarfile
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from google.protobuf.json_format import MessageToDict

from procsnap.errors import ImageError
from procsnap.images.framing import _open, iter_entries, read_header
from procsnap.images.magic import KINDS, kind as _kind, kind_by_file_name

PAGE_SIZE = mmap.PAGESIZE


# Raw images with a readable body: firewall rules are the text
# iptables-save / nft wrote; a tmpfs image is a gzipped tar of its files.
_TEXT_KINDS = ("IPTABLES", "IP6TABLES", "NFTABLES")


def _raw_summary(path: str, magic_name: str) -> dict[str, Any]:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError(path, "no such image") from None
    except OSError as e:
        raise ImageError(path, f"cannot stat: {e.strerror or e}") from None
    out: dict[str, Any] = {"magic": magic_name, "size": size}
    if magic_name == "PAGES":
        out.update(pages=size // PAGE_SIZE, page_size=PAGE_SIZE)
    elif magic_name in _TEXT_KINDS:
        with open(path, "rb") as f:
            out["text"] = f.read().decode("utf-8", "replace")
    elif magic_name == "TMPFS_DEV":
        try:
            with tarfile.open(path, "r:gz") as t:
                out["files"] = [m.name for m in t.getmembers()]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageError(path, f"not a gzipped tar: {e}") from None
    out["entries"] = []
    return out


def decode_file(path: str) -> dict[str, Any]:
    """Decode one image file; ImageError if it is not an image we know."""
    raw_kind = kind_by_file_name(os.path.basename(path))
    f, size = _open(path)
    with f:
        try:
            found = read_header(path, f, size, None)
        except ImageError:
            # Raw images (page data, CRIU's ip/iptables dumps, tmpfs
            # tarballs) have no header; only there does the name decide.
            if raw_kind is not None and raw_kind.header == "raw":
                return _raw_summary(path, raw_kind.magic_name)
            raise
    entries: list[dict[str, Any]] = []
    for e in iter_entries(path, found.name):
        d = MessageToDict(e.msg, preserving_proto_field_name=True)
        if found.tail is not None:
            d["extra"] = base64.b64encode(e.payload).decode("ascii")
        entries.append(d)
    return {"magic": found.magic_name, "entries": entries}


def _looks_like_image(name: str) -> bool:
    return any(k.match_name(name) is not False for k in KINDS)


def decode_dir(images_dir: str) -> dict[str, dict[str, Any]]:
    """Decode every image in images_dir, keyed by file name.

    Files whose names are not CRIU image names (logs, our own temporary
    ``.*.part`` files) are left out.
    """
    try:
        names = sorted(os.listdir(images_dir))
    except FileNotFoundError:
        raise ImageError(images_dir, "no such image directory") from None
    except NotADirectoryError:
        raise ImageError(images_dir, "not a directory") from None
    except OSError as e:
        raise ImageError(images_dir, f"cannot list: {e.strerror or e}") from None
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        full = os.path.join(images_dir, name)
        if _looks_like_image(name) and os.path.isfile(full):
            out[name] = decode_file(full)
    return out
