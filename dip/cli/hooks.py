"""Commands implemented in other modules: ``dip eval``, ``dip export``, ``dip render``, ``dip batch``.

Each is a module with an argument-adding function and a run function, imported only when its
command is the one being run (they import torch, onnx, ray, ...): ``dip --help`` lists them
without importing any. ``dip.cli.guards`` gives those that write files ``--force`` and checks
their outputs (and ``render --z``) before they run.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from dip.cli import guards
from dip.cli.errors import UsageError

#: command -> (module, add-arguments function, run function, help)
HOOKS = {
    "eval": ("dip.cli.eval_command", "add_arguments", "run",
             "evaluate DIP against baselines on built-in or your own ground-truth images"),
    "export": ("dip.export", "add_export_arguments", "run_export",
               "export a fitted generator from a checkpoint to ONNX / TorchScript / torch.export"),
    "render": ("dip.export", "add_render_arguments", "run_render",
               "render the image of an exported model (.onnx, .pt, .pt2)"),
    "batch": ("dip.batch", "add_arguments", "run",
              "restore many images (files, folders, globs) locally or on a Ray cluster"),
}


def hook_function(command: str, attr: str) -> Callable:
    """``attr`` of the module that implements ``command``; UsageError when it cannot be imported."""
    module_name = HOOKS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"'dip {command}' is not available: {module_name} cannot be imported ({exc})",
                         "reinstall dip (pip install .) so that its dependencies are complete") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise UsageError(f"'dip {command}' is not available: {module_name} has no {attr}()",
                         "this installation of dip is incomplete; reinstall it")
    return fn


def add_parsers(sub, hooked: str | None) -> None:
    """A subparser per hooked command; only ``hooked`` (the command being run) gets its real
    arguments, the others a placeholder that takes anything."""
    for name, (_module, add_name, _run, help_text) in HOOKS.items():
        p = sub.add_parser(name, help=help_text, add_help=name == hooked)
        if name == hooked:
            hook_function(name, add_name)(p)
            guards.add_options(name, p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(command: str, args) -> int:
    """Run hooked ``command`` with parsed ``args``, after ``dip.cli.guards.check``."""
    guards.check(command, args)
    return int(hook_function(command, HOOKS[command][2])(args) or 0)
