"""``python -m pgpoolkit``: the command line, which lives in :mod:`pgpoolkit.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
