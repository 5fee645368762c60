"""`python -m loadtests.chaos --help` (from the repository root)."""

import sys

from loadtests.chaos.cli import main

sys.exit(main())
