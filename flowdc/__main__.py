"""`python -m flowdc`."""

import sys

from flowdc.cli import main

sys.exit(main())
