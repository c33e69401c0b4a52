"""criu's version and config file names, with no import: what
``criu --version`` needs (procsnap.criu answers it before importing the
option tables, logging and dataclasses: LXC runs it before every
checkpoint and restore)."""

CRIU_VERSION = "4.2"  # the criu whose command line this follows (LXC wants >= 2.0)

GLOBAL_CONFIG = "/etc/criu/default.conf"
USER_CONFIG = ".criu/default.conf"   # under $HOME
