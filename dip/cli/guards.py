"""The checks the hooked commands (``dip export``, ``dip render``, ``dip eval``) get before they run:
the one rule for files every command writes, and ``dip render --z``'s code.

The rule: an existing file is kept unless ``--force``; an output that is one of the command's
inputs is refused even with ``--force`` (writing it would destroy the input). ``add_options``
gives a hooked command its ``--force`` (and ``dip eval`` its ``--threads``); ``check(command,
args)`` raises ``UsageError``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dip.cli.checks import check_not_input
from dip.cli.errors import UsageError

#: command -> (the options naming files it writes, the options naming files it reads)
WRITES = {
    "export": (("output", "onnx", "torchscript", "pt2", "save_z"), ("checkpoint",)),
    "render": (("output",), ("model", "z")),
    "eval": (("csv", "curves"), ()),
}


#: hooked commands that fit and so take --threads
FITS = ("eval",)


def add_options(command: str, parser: argparse.ArgumentParser) -> None:
    """``--force`` for a hooked command that writes files, ``--threads`` for one that fits
    (unless its module gave it them)."""
    from dip.cli.argtypes import threads_count

    if command in WRITES and "--force" not in parser._option_string_actions:
        parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    if command in FITS and "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", type=threads_count, help="CPU threads (default: torch's)")


def _written(command: str, args) -> list[tuple[str, Path]]:
    """(option, path) of every file ``command`` will write; an option may name several (``-o``)."""
    outputs, _inputs = WRITES[command]
    found = []
    for name in outputs:
        value = getattr(args, name, None) or []
        found += [(name, Path(path)) for path in (value if isinstance(value, list) else [value])]
    if command == "export":  # ONNX may keep its weights beside the model
        found += [(name, path.with_name(path.name + ".data")) for name, path in list(found)
                  if path.suffix.lower() == ".onnx" and path.with_name(path.name + ".data").exists()]
    return found


def check_outputs(command: str, args) -> None:
    """Existing outputs need --force; an output that is an input is refused."""
    inputs = {name: getattr(args, name) for name in WRITES[command][1] if getattr(args, name, None)}
    for name, path in _written(command, args):
        flag = "--" + name.replace("_", "-") if name != "output" else "-o"
        check_not_input(path, inputs, flag)
        if path.exists() and not getattr(args, "force", False):
            raise UsageError(f"{flag} {path} already exists", "use --force to overwrite it or choose another name")


def check_code(path: str) -> None:
    """``dip render --z Z.npy``: a NumPy .npy array of finite floats."""
    import numpy as np

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"--z {path}: no such file", "give the .npy file 'dip export --save-z' wrote")
    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UsageError(f"--z {path} is not a NumPy .npy array",
                         "give the file 'dip export --save-z Z.npy' wrote (or one saved with numpy.save)") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        kind = getattr(array, "dtype", type(array).__name__)
        raise UsageError(f"--z {path}: expected an array of floats, got {kind}", "save the code as float32")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise UsageError(f"--z {path}: {bad} of its {array.size} values are NaN or infinite",
                         "give the code 'dip export --save-z' wrote")


def check(command: str, args) -> None:
    """Every check of ``command`` (a hooked command) before it runs; raises UsageError."""
    if command in WRITES:
        check_outputs(command, args)
    if command == "render" and getattr(args, "z", None):
        check_code(args.z)
    if command in FITS and getattr(args, "threads", None) is not None:
        from dip.cli.checks import apply_threads

        apply_threads(args.threads)
