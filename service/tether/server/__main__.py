"""`python -m tether.server` is the `tether` command."""

import sys

from tether.server.cli import main

sys.exit(main())
