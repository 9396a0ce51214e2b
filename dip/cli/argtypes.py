"""argparse ``type`` functions: each turns a bad value into a message that says why."""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

#: the limits ``dip.engine.config.FitConfig`` sets (mirrored so that parsing imports no torch;
#: tests/cli checks that they agree): at most ten million steps, a seed from 0 to 2**63 - 2
MAX_STEPS = 10_000_000
MAX_SEED = 2**63 - 2


def whole_number(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (and <= ``maximum``, ``why`` saying why
    there is a limit); a bad value gets a message saying why."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}{why}, got {value:,}")
        return value

    parse.__name__ = f"whole number >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    return parse


positive_int = whole_number(1)
#: --steps: 1 .. MAX_STEPS
steps_count = whole_number(1, MAX_STEPS, " (longer fits take days; every step's loss is kept)")
#: --seed: 0 .. MAX_SEED
seed_value = whole_number(0, MAX_SEED, " (2**63 - 2, the largest seed a fit's generators take)")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_count(text: str) -> int:
    """--threads N: 1 .. the CPUs this process may use (more threads than CPUs only slow a fit down)."""
    value = positive_int(text)
    cpus = available_cpus()
    if value > cpus:
        raise argparse.ArgumentTypeError(f"must be at most {cpus}, the CPUs this process may use, got {value} "
                                         "(more threads than CPUs make every step far slower)")
    return value


def factor(text: str) -> int:
    """A super-resolution factor: a whole number >= 2 ("4" and "4.0" both give 4)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2 (e.g. 2, 4, 8), got {text}")
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {text}")
    return int(value)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value
