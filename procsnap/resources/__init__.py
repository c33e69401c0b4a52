"""The registry of resource kinds.

Each module handles one kind of process state and has both halves:
``dump(ctx, task)`` records it under the freeze, ``restore(rctx, rt)``
rebuilds it inside the puppet.  A new kind is one module plus one line in
each list below.  (Kinds of fd are one level down: see files.FD_KINDS.)
"""
from __future__ import annotations

from . import cgroup, core, creds, files, fs, memory, seccomp, signals, sysvipc, taskattrs

# Dump order: identity and registers first (the registers must be read
# before any injection could disturb them), then cheap checks that may
# refuse the dump (fds, fs), and memory last, so a refusal copies nothing.
DUMP_ORDER = [core, signals, taskattrs, creds, seccomp, cgroup, fs, files, memory, sysvipc]

# Restore order, and why:
#  files    - opened first, while paths resolve as in the restorer's root
#             and the puppet still has every privilege;
#  memory   - then the address space is replaced (needs the pages file);
#  cgroup   - each task and thread joins its cgroups (threads exist now);
#  fs       - cwd/root/umask; chroot after every path was opened;
#  signals  - handlers point into the restored memory; pending signals are
#             queued with everything blocked;
#  taskattrs- rlimits, timers, robust list, tid address, rseq (its area
#             must be mapped with its contents);
#  seccomp  - filters and strict mode, with the puppet's seccomp suspended
#             for our calls; before creds: needs CAP_SYS_ADMIN without
#             no_new_privs;
#  creds    - last of all the injected work: dropping uid/caps would
#             forbid what comes before;
#  core     - registers/FPU/mask via ptrace (core.final), done by the
#             driver after the trampoline page is unmapped.
#  sysvipc  - the tree's System V shm segments of the host ipc namespace,
#             made once before memory attaches them;
RESTORE_ORDER = [files, sysvipc, memory, cgroup, fs, signals, taskattrs, seccomp, creds, core]
