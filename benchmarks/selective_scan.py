"""Time the selective-scan back ends against `ref`: a thin caller of `visbench scan-bench` (--help)."""

import sys

from visbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["scan-bench", *sys.argv[1:]]))
