"""`python -m visbench` (used by torchrun: `torchrun --nproc_per_node N -m visbench train ...`)."""

import sys

from visbench.cli import main

sys.exit(main())
