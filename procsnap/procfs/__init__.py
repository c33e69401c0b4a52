"""Reading /proc: pure parsers (``parse``), per-process access with errno
translation (``reader``) and pagemap decoding (``pagemap``)."""
from __future__ import annotations

from procsnap.procfs.parse import (
    FdInfo,
    MapEntry,
    MountInfo,
    PosixTimer,
    Stat,
    Status,
)
from procsnap.procfs.reader import PF_KTHREAD, ProcReader, is_kernel_thread

__all__ = [
    "FdInfo", "MapEntry", "MountInfo", "PosixTimer", "Stat", "Status",
    "PF_KTHREAD", "ProcReader", "is_kernel_thread",
]
