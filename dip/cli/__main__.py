"""``python -m dip.cli``: the ``dip`` command."""
import sys

from dip.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
