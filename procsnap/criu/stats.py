"""criu's stats-dump / stats-restore images (images/stats.proto), which crit
decodes and zdtm.py reads (it checks that pages_written + shpages_written
is the number of pages in the pages-*.img files).

Times are microseconds, as criu's: freezing_time is the freeze,
frozen_time the whole time the tree was held (end of the freeze to its
release or kill, as criu times it),
memdump_time the memory module's work, memwrite_time the image writing.
Page counts come from the images themselves: every page procsnap reads it
writes (it scans only present pages), so scanned == written.
"""
from __future__ import annotations

import os
import re

from .. import images, pagexfer
from ..images.pb import stats_pb2

PAGE = 4096


def _us(seconds: float) -> int:
    return max(0, min(int(seconds * 1e6), 0xFFFFFFFF))


def page_counts(images_dir: str) -> tuple[int, int]:
    """(private pages, shared-memory pages) in the images' pages-*.img."""
    sizes: dict[int, int] = {}
    for name in os.listdir(images_dir):
        m = re.fullmatch(r"pages-(\d+)\.img", name)
        if m:
            sizes[int(m.group(1))] = os.path.getsize(os.path.join(images_dir, name)) // PAGE
    shared_ids: set[int] = set()
    for name in os.listdir(images_dir):
        m = re.fullmatch(r"pagemap-shmem-(\d+)\.img", name)
        if m:
            entries = images.read_entries(images_dir, "shmem-pagemap", int(m.group(1)))
            if entries:
                shared_ids.add(entries[0].msg.pages_id)
    shared = sum(n for i, n in sizes.items() if i in shared_ids)
    return sum(sizes.values()) - shared, shared


def parent_pages(images_dir: str) -> int:
    """Pages a dump over a pre-dump left in the parent images (PE_PARENT)."""
    n = 0
    for name in os.listdir(images_dir):
        m = re.fullmatch(r"pagemap-(\d+)\.img", name)
        if m:
            n += sum(e.msg.nr_pages for e in images.read_entries(images_dir, "pagemap",
                                                                 int(m.group(1)))[1:]
                     if e.msg.HasField("flags") and e.msg.flags & images.PE_PARENT)
    return n


def write_dump_stats(images_dir: str, stats: dict[str, float],
                     work_dir: str | None = None) -> stats_pb2.stats_entry:
    """stats-dump, in the work directory as criu writes it (its cwd; Podman
    reads it there, beside the images directory it tars)."""
    sent = pagexfer.sent_counts(images_dir)
    if sent is not None:
        # the pages went to a page server (maybe into another dir): what was sent
        private, shared, skipped = sent["pagemap"], sent["shmem-pagemap"], sent["parent"]
    else:
        private, shared = page_counts(images_dir)
        skipped = parent_pages(images_dir)
    freeze = stats.get("freeze", 0.0)
    d = stats_pb2.dump_stats_entry(
        freezing_time=_us(freeze),
        frozen_time=_us(stats.get("frozen", 0.0)),
        memdump_time=_us(stats.get("memory", 0.0)),
        memwrite_time=_us(stats.get("write", 0.0)),
        pages_scanned=private + skipped, pages_skipped_parent=skipped, pages_written=private,
        irmap_resolve=0, pages_lazy=0, page_pipes=0, page_pipe_bufs=0,
        shpages_scanned=shared, shpages_skipped_parent=0, shpages_written=shared)
    entry = stats_pb2.stats_entry(dump=d)
    images.write_one(work_dir or images_dir, "stats", entry)
    return entry


def write_restore_stats(images_dir: str, stats: dict[str, float],
                        work_dir: str | None = None) -> stats_pb2.stats_entry:
    private, shared = page_counts(images_dir)
    create = stats.get("create", 0.0)
    r = stats_pb2.restore_stats_entry(
        pages_compared=0, pages_skipped_cow=0,
        forking_time=_us(create), restore_time=_us(stats.get("total", 0.0) - create),
        pages_restored=private + shared)
    entry = stats_pb2.stats_entry(restore=r)
    images.write_one(work_dir or images_dir, "stats-restore", entry)
    return entry


def display(entry: stats_pb2.stats_entry) -> str:
    """--display-stats, in criu's layout."""
    out = []
    if entry.HasField("dump"):
        d = entry.dump
        out += ["Displaying dump stats:",
                f"Freezing time: {d.freezing_time} us", f"Frozen time: {d.frozen_time} us",
                f"Memory dump time: {d.memdump_time} us",
                f"Memory write time: {d.memwrite_time} us",
                f"Memory pages scanned: {d.pages_scanned} (0x{d.pages_scanned:x})",
                f"Memory pages skipped from parent: {d.pages_skipped_parent} "
                f"(0x{d.pages_skipped_parent:x})",
                f"Memory pages written: {d.pages_written} (0x{d.pages_written:x})",
                f"Lazy memory pages: {d.pages_lazy} (0x{d.pages_lazy:x})"]
    if entry.HasField("restore"):
        r = entry.restore
        out += ["Displaying restore stats:",
                f"Pages compared: {r.pages_compared} (0x{r.pages_compared:x})",
                f"Pages skipped COW: {r.pages_skipped_cow} (0x{r.pages_skipped_cow:x})",
                f"Pages restored: {r.pages_restored} (0x{r.pages_restored:x})",
                f"Restore time: {r.restore_time} us", f"Forking time: {r.forking_time} us"]
    return "\n".join(out) + "\n"
