"""`python -m fluxperf` == the fluxperf command."""

import sys

from fluxperf.cli import main

sys.exit(main())
