"""Time the selective-scan back ends against `ref`: same as `visbench scan-bench` (see its --help)."""

import sys

from visbench.scan_bench import main

if __name__ == "__main__":
    sys.exit(main())
