"""`python -m vitprune COMMAND ...`: runs `vitprune.cli.main` (the commands live in vitprune/cli/)."""

import sys

from vitprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
