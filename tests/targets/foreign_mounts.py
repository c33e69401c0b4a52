"""Not a target: what a target in a mount namespace of its own calls first.

A new mount namespace starts as a copy of the host's mount table, and with
it whatever other test runs at the same time have mounted at that moment:
a tmpfs, a FUSE server or a named cgroup hierarchy under a temporary dir,
an overlayfs of a container, a network namespace file under /run/netns.
Those come and go while the test runs, so a dump meets a mount it must
refuse by name (a FUSE server, an overlayfs) or a restore misses the
source of a bind, and the test fails for what another test did.
``drop()`` detaches them in the target's own namespace (made private
first, so the host does not see it): what is left is the host's stable
table (/, /proc, /sys and its cgroups, /dev ...) and what the target
mounts afterwards.
"""
import ctypes
import os
import tempfile

MNT_DETACH = 2
# where tests and containers mount for a while
TRANSIENT_UNDER = (tempfile.gettempdir(), "/tmp", "/var/tmp", "/run/netns",
                   "/var/lib/containers", "/run/containers", "/run/user")
TRANSIENT_TYPES = ("fuse", "overlay", "nsfs")


def _transient(mount_point: str, fstype: str) -> bool:
    return fstype.split(".")[0] in TRANSIENT_TYPES or any(
        mount_point.startswith(p.rstrip("/") + "/") for p in TRANSIENT_UNDER)


def drop() -> list[str]:
    """Detach every transient mount copied from the host (deepest first);
    returns their mount points."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/mountinfo") as f:
        mounts = [(ln.split(" ")[4].replace("\\040", " "), ln.split(" - ")[1].split()[0])
                  for ln in f]
    gone = []
    for mp, fstype in sorted(mounts, key=lambda m: -m[0].count("/")):
        if mp != "/" and _transient(mp, fstype):
            if libc.umount2(mp.encode(), MNT_DETACH) != 0 and ctypes.get_errno() != 22:
                raise OSError(ctypes.get_errno(), f"umount {mp}: "
                              f"{os.strerror(ctypes.get_errno())}")
            gone.append(mp)
    return gone
