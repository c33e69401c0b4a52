"""procsnap in place of criu: criu's command line over procsnap's API.

Reached as ``criu ARGS...`` (a symlink named ``criu`` to the ``procsnap``
entry point: cli.main looks at argv[0]), as ``procsnap criu ARGS...`` and as
``python3 -m procsnap.criu ARGS...``.  It speaks the criu that LXC and
zdtm.py run: ``--version`` (criu's "Version: X.Y" line), ``check``
(``--feature NAME``, ``--all``), ``dump``, ``restore``.

criu's habits kept:
- options from config files and argv (options.py), each done, accepted as
  procsnap's behaviour, or refused by name with exit 1 before anything is
  frozen (options.TABLE; ``criu --help`` lists all three kinds);
- the log (-o FILE relative to -W, default the images directory; -v/-vN;
  --log-pid), "Error" lines on failure (log.py);
- exit status 0 or 1; after a refusing post-dump script, its status;
- --pidfile (relative to the work directory), --status-fd;
- stats-dump / stats-restore images in the images directory (stats.py);
- action scripts with criu's environment (scripts.py).
"""
from __future__ import annotations

import gc
import os
import sys
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any


def _no_config() -> bool:
    """No config file criu would read: none can change what --version does."""
    from .basics import GLOBAL_CONFIG, USER_CONFIG
    home = os.environ.get("HOME")
    return not os.environ.get("CRIU_CONFIG_FILE") and not os.path.exists(GLOBAL_CONFIG) \
        and not (home and os.path.exists(os.path.join(home, USER_CONFIG)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--version"], ["-V"]) and _no_config():
        # LXC runs "criu --version" before every checkpoint and restore: the
        # answer needs none of the option tables, logging or dataclasses
        # (two thirds of the instructions of a Python start-up here)
        from .basics import CRIU_VERSION
        print(f"Version: {CRIU_VERSION}")
        return 0
    # As procsnap's own command line (cli.main): the modules a dump or a
    # restore loads are loaded with the cyclic GC off, then frozen, and
    # without protobuf's well-known types (no criu command makes one; the
    # RPC server, which serves for long, is left as it is).
    serving = argv[:1] in (["swrk"], ["service"])
    gc.disable()
    try:
        if not serving:
            from ..images.pb import _runtime
            _runtime.skip_well_known_types()
        from .command import main as run
        for name in {_DRIVERS[a] for a in argv if a in _DRIVERS}:
            __import__(name)
        gc.freeze()
    finally:
        gc.enable()
        if not serving:
            _runtime.end_skip_well_known_types()
    return run(argv)


# What a command's run imports first (an option's value that happens to read
# "dump" only imports it early).
_DRIVERS = {"dump": "procsnap.dumper", "pre-dump": "procsnap.dumper",
            "restore": "procsnap.restorer"}


_SUBMODULES = {"basics", "command", "features", "log", "options", "rpc", "scripts", "stats",
               "swrk"}


def __getattr__(name: str) -> Any:
    """The rest of the package's names (execute, CRIU_VERSION...) from
    command.py, imported at their first use (a submodule's name is left to
    the import system)."""
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import command
    return getattr(command, name)
