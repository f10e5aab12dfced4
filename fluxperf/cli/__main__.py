import sys

from fluxperf.cli import main

sys.exit(main())
