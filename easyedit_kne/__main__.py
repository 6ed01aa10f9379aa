"""`python -m easyedit_kne ...` works like the `easyedit-kne` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
