"""What ``dip deblur``'s command-line tests (known and blind kernel) share: a fit resumed from
its checkpoint beside the uninterrupted fit, the one-line usage error, and the arguments
``dip batch deblur`` hands each image's fit. The blurred input is the ``blurred`` fixture
(tests/cli/conftest.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dip import cli
from dip import images as io


def fit_and_resume(base: list[str], tmp_path: Path, steps: int = 6, part: int = 3,
                   report: Path | None = None) -> tuple[Path, Path, Path]:
    """Run ``dip`` ``base`` (a deblur command without -o/--steps) for ``steps`` steps to a.png,
    and for ``part`` steps to b.png with a checkpoint, then ``dip resume`` b's checkpoint to
    ``steps`` (``report``: the resumed run's --report); asserts that both runs give the same
    bits. Returns (a.png, b.png, b's checkpoint)."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert cli.main(base + ["-o", str(a), "--steps", str(steps)]) == 0
    assert cli.main(base + ["-o", str(b), "--steps", str(part), "--checkpoint-every", "2"]) == 0
    ckpt = tmp_path / "b.png.ckpt"
    more = ["--report", str(report)] if report is not None else []
    assert cli.main(["resume", str(ckpt), "--steps", str(steps), "-q"] + more) == 0
    assert torch.equal(io.read_image(a)[0], io.read_image(b)[0])
    return a, b, ckpt


def assert_one_line_usage_error(code: int, err: str, needle: str) -> None:
    """Exit 2 and one line on stderr that contains ``needle``, without a traceback."""
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def batch_argv(image: Path, out: Path, fit_args: list[str]) -> list[str]:
    """The command line ``dip batch deblur IMAGE -o OUT FIT_ARGS`` gives the image's fit (a
    stand-in runner writes the files instead of fitting)."""
    from dip.batch import run_batch
    from tests.test_batch import StandInRunner

    result = run_batch("deblur", [image], out, runner=StandInRunner(), fit_args=fit_args, steps=2,
                       handle_signals=False)
    assert result.exit_code == 0
    return json.loads((out / f"{image.stem}.json").read_text())["argv"]
