"""`python -m fluxperf` == the fluxperf command."""

import sys

from .cli import main

sys.exit(main())
