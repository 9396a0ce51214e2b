"""``python -m dip``: the ``dip`` command (see dip.cli)."""
import sys

from dip.cli import main

if __name__ == "__main__":
    sys.exit(main())
