"""procsnap benchmarks: ``python3 -m bench [-n RUNS] [--only CASE ...]``.

Every row puts a procsnap number next to a baseline measured in the same
run on the same data, and prints the median over RUNS rounds (default 3)
with the ratio and the target of issue #5.  See bench/README.md.
"""
from __future__ import annotations

import sys

from .runner import main

sys.exit(main(sys.argv[1:]))
