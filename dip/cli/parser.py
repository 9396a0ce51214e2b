"""The ``dip`` argument parser: one subparser per command, from the command's own module."""
from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from dip.cli import demo, fit_command, hooks, info, resume_command
from dip.cli.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse with two-line errors: what is wrong, and where to look.

    ``hints`` maps an option the command does not have, but that a user of other tools is
    likely to give (``--sigma`` to a denoiser), to what to do instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hints: dict[str, str] = {}

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):  # type: ignore[override]
        """argparse's, except that what no parser took is reported by the command it was given
        to (``dip denoise: error: ...``, with that command's help), with the nearest option
        or command name when one is close (a typo)."""
        tokens = list(args) if args is not None else None
        commands = self._commands()
        first = next((t for t in tokens or [] if not t.startswith("-")), None)
        if commands is not None and first is not None and first not in commands.choices:
            self.error(f"unknown command {first!r}{_nearest(first, commands.choices)}; "
                       f"the commands: {', '.join(commands.choices)}")
        parsed, extras = self.parse_known_args(tokens, namespace)
        if extras:
            owner = self
            if commands is not None and getattr(parsed, "command", None) in commands.choices:
                owner = commands.choices[parsed.command]
            options = [o for o in owner._option_string_actions if o.startswith("--")]
            named = [t for t in extras if t.startswith("--")]
            hint = ""
            if named:
                name = named[0].split("=", 1)[0]
                hints = getattr(owner, "hints", {})
                hint = f" ({hints[name]})" if name in hints else _nearest(name, options)
            owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _commands(self) -> argparse._SubParsersAction | None:
        return next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)


def _nearest(word: str, names) -> str:
    """`` (did you mean 'X'?)`` for the name in ``names`` closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
