"""``python -m fg2u_zo.cli``: the ``fg2u-zo`` command."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
