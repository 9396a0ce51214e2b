"""``python -m dip.batch._child ARGS``: the ``dip`` command with SIGINT and SIGTERM restored.

A batch starts each fit through this module rather than ``python -m dip``: a process inherits
its parent's blocked signals and ignored signals across ``exec``, and Ray worker processes block
and ignore SIGINT, so a fit started from a Ray task would never see the SIGINT that asks it to
save its checkpoint. Here both signals are unblocked and reset to Python's defaults before the
command installs its own handlers.

``python -m dip.batch._child --pack JSON`` runs a pack of images instead (``dip.batch._pack``).
"""
import signal
import sys


def _restore_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    _restore_signals()
    if sys.argv[1:2] == ["--pack"]:
        from dip.batch import _pack

        sys.exit(_pack.main(sys.argv[2:]))
    from dip.cli import main

    sys.exit(main())
