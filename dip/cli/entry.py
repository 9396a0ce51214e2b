"""``main``: parse the command line, dispatch to the command, turn errors into exit codes."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from dip.cli import demo, fit_command, hooks, info, resume_command
from dip.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, err
from dip.cli.parser import build_parser
from dip.switches import bad_switches


def _first_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def _dispatch(args) -> int:
    command = args.command
    if command in fit_command.TASKS:
        return fit_command.run(command, args)
    runners = {"resume": resume_command.run, "demo": demo.run, "info": info.run}
    if command in runners:
        return runners[command](args)
    if command in hooks.HOOKS:
        return hooks.run(command, args)
    raise UsageError(f"unknown command {command!r}", "run 'dip --help' for the commands")


def log_prefix(command: str | None) -> str:
    """What every logged message starts with: ``dip: `` or, for a hooked command, ``dip COMMAND: ``
    (the form of the command's own messages, whichever module logs)."""
    return f"dip {command}: " if command in hooks.HOOKS else "dip: "


def _user_error_types() -> tuple:
    """Errors about the user's files, answered with exit code 2: ImageError, CheckpointError."""
    from dip import images

    types: tuple = (images.ImageError,)
    try:
        from dip.checkpoint import CheckpointError
    except Exception:
        return types
    return types + (CheckpointError,)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Ctrl-C at any moment outside a fit (which saves and stops on its own, see ``dip.cli``)
    answers one line and exit code 130, never a traceback. See ``_main``.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed by the reader (`dip info | head`): end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE


INTERRUPTED = "dip: interrupted; no output was written for the unfinished command\n"
EXIT_BROKEN_PIPE = 141  # as a shell reports SIGPIPE (128 + 13)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (tests capture stdout)
        pass


def _main(argv: Sequence[str] | None) -> int:
    """Run the ``dip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Run as the process's command line (``argv`` None), fit commands first raise glibc's mmap
    threshold (``dip.runtime.configure_allocator``: large activations are reused instead of
    page-faulted afresh every step; process-wide and permanent). Called with an explicit
    ``argv`` (from Python) they leave the process's allocator alone.
    """
    process_wide = argv is None  # a real command line: process-wide speed settings are ours to make
    argv = list(sys.argv[1:] if argv is None else argv)
    first = _first_command(argv)
    try:
        parser = build_parser(hooked=first if first in hooks.HOOKS else None)
    except UsageError as exc:
        err(exc.message, exc.hint)
        return EXIT_FAILURE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = argv
    args.process_wide = process_wide
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.WARNING, format=log_prefix(args.command) + "%(message)s")
    if debug:
        logging.getLogger("dip").setLevel(logging.DEBUG)
    if args.command != "info":  # dip info reports a bad switch beside the choice it forces
        bad = bad_switches()
        if bad:
            err(bad[0])
            return EXIT_USAGE
    return guarded(lambda: _dispatch(args), debug)


def guarded(call, debug: bool = False) -> int:
    """``call()``'s exit code, with errors as exit codes: UsageError and errors about the user's
    files 2 (one or two lines on stderr), OSError 1 (which file), anything else 1 ("a bug";
    with ``debug`` the traceback). Used by every command and by a batch's pack
    (``dip.batch._pack``)."""
    try:
        return call()
    except UsageError as exc:
        err(exc.message, exc.hint)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # main ends quietly
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            err(str(exc))
            return EXIT_USAGE
        if debug:
            raise
        if isinstance(exc, OSError):  # the machine's files, not dip: say which, not "a bug"
            err(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                "check that file or folder (space, permissions); --debug shows where it happened")
            return EXIT_FAILURE
        err(f"{type(exc).__name__}: {exc}", "this is a bug or an environment problem; "
                                            "run again with --debug for the traceback")
        return EXIT_FAILURE
