"""`python -m softclip.cli ...` (and `torchrun ... -m softclip.cli ...`) runs the `softclip` command."""

import sys

from softclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
