"""`python -m gateway.simulate <backend>`: the simulators without the gateway's CLI."""

import sys

from gateway.simulate.cli import main

sys.exit(main())
