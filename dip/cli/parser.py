"""The ``dip`` argument parser: one subparser per command, from the command's own module."""
from __future__ import annotations

import argparse

from dip.cli import demo, fit_command, hooks, info, resume_command
from dip.cli.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse with two-line errors: what is wrong, and where to look."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")


def build_parser(hooked: str | None = None) -> argparse.ArgumentParser:
    """The ``dip`` argument parser. ``hooked`` names the one hooked subcommand (eval, export,
    render, batch) whose module is imported to define its arguments; the others get a placeholder."""
    from dip._version import __version__

    parser = Parser(prog="dip", description="Deep Image Prior: restore an image by fitting a "
                                            "randomly initialised network to it.")
    parser.add_argument("--version", action="version", version=f"dip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    fit_command.add_parsers(sub)
    resume_command.add_parser(sub)
    demo.add_parser(sub)
    info.add_parser(sub)
    hooks.add_parsers(sub, hooked)
    return parser
