"""``python -m dip``: the ``dip`` command (see dip.cli)."""
import sys

if __name__ == "__main__":
    try:
        from dip.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the command is still loading
        sys.stderr.write("dip: interrupted; nothing was done\n")
        sys.exit(130)
    sys.exit(main())
