"""`python -m flowdc`."""

import sys

from flowdc.cli import console_main

if __name__ == "__main__":  # a process started with multiprocessing's spawn imports this module again
    sys.exit(console_main())
