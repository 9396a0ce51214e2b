"""``dip deblur --kernel-size K`` (blind): the estimated kernel written beside the output or to
--kernel-out and listed in the report, resumed to the same bits, the fitted image generator
exported, every bad --kernel-size and every wrong mix of --kernel / --kernel-size / --kernel-out
answered with exit 2 and one line, and ``dip batch deblur --kernel-size``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dip import checkpoint, cli
from dip import images as io
from dip.physics import parse_kernel


@pytest.fixture
def blurred(tmp_path, image_maker):
    path = tmp_path / "in.png"
    image_maker(path, 24, 24, "RGB")
    return path


def test_the_kernel_goes_beside_the_output_and_into_the_report(blurred, tmp_path):
    out, report = tmp_path / "out.png", tmp_path / "r.json"
    assert cli.main(["deblur", str(blurred), "--kernel-size", "5", "-o", str(out), "--steps", "3",
                     "--report", str(report), "-q"]) == 0
    data = json.loads(report.read_text())
    assert data["recipe"] == "deblur-blind" and data["kernel"]["size"] == [5, 5]
    rows = np.array(data["kernel"]["rows"])
    assert rows.shape == (5, 5) and (rows >= 0).all() and rows.sum() == pytest.approx(1.0, abs=1e-4)
    written = tmp_path / "out.png.kernel.png"
    assert data["kernel"]["file"] == str(written)
    assert np.abs(parse_kernel(str(written)) - rows).max() < 1e-4  # 16-bit PNG, read back normalised


def test_kernel_out_npy_holds_the_values(blurred, tmp_path):
    out, k = tmp_path / "out.png", tmp_path / "k.npy"
    assert cli.main(["deblur", str(blurred), "--kernel-size", "4", "--kernel-out", str(k), "-o", str(out),
                     "--steps", "2", "-q"]) == 0
    a = np.load(k)
    assert a.shape == (4, 4) and a.sum() == pytest.approx(1.0) and not (tmp_path / "out.png.kernel.png").exists()


def test_a_blind_fit_resumes_to_the_same_bits_and_exports(blurred, tmp_path, capsys):
    a, b, ts = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "g.pt"
    base = ["deblur", str(blurred), "--kernel-size", "5", "-q"]
    assert cli.main(base + ["-o", str(a), "--steps", "6"]) == 0
    assert cli.main(base + ["-o", str(b), "--steps", "3", "--checkpoint-every", "2"]) == 0
    ckpt = tmp_path / "b.png.ckpt"
    assert checkpoint.load(ckpt)["physics"]["name"] == "blind_blur"
    assert cli.main(["resume", str(ckpt), "--steps", "6", "-q"]) == 0
    assert torch.equal(io.read_image(a)[0], io.read_image(b)[0])
    assert (tmp_path / "a.png.kernel.png").read_bytes() == (tmp_path / "b.png.kernel.png").read_bytes()
    assert cli.main(["export", str(ckpt), "--torchscript", str(ts)]) == 0, capsys.readouterr().err
    rendered = torch.jit.load(str(ts))().detach()
    assert rendered.shape == (1, 3, 24, 24)
    assert float((rendered[0] - io.read_image(b)[0]).abs().max()) <= 1 / 255 + 1e-6


BAD = [
    (["--kernel-size", "x"], "--kernel-size x: not a whole number"),
    (["--kernel-size", "2"], "must be from 3 to 129"),
    (["--kernel-size", "7.5"], "not a whole number"),
    (["--kernel-size", "130"], "must be from 3 to 129"),
    (["--kernel-size", "13"], "larger than half the image's smaller side"),
    ([], "give exactly one of --kernel SPEC"),
    (["--kernel", "box:3", "--kernel-size", "3"], "got --kernel and --kernel-size"),
    (["--kernel", "box:3", "--kernel-out", "k.png"], "--kernel-out: only a blind fit"),
    (["--kernel-size", "3", "--kernel-out", "k.jpg"], "written as .png or .npy"),
    (["--kernel-size", "3", "--recipe", "deblur"], "it needs --kernel SPEC"),
    (["--kernel", "box:3", "--recipe", "deblur-blind"], "it needs --kernel-size K"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) or "neither" for b in BAD])
def test_bad_kernel_options_are_exit_2_with_one_line(blurred, tmp_path, capsys, extra, needle):
    out = tmp_path / "out.png"
    code = cli.main(["deblur", str(blurred), "-o", str(out), "--steps", "1"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not out.exists()


def test_batch_deblur_blind(tmp_path, blurred, capsys):
    from dip.batch import run_batch
    from tests.test_batch import StandInRunner

    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "1"])
    assert code == 2 and "must be from 3 to 129" in capsys.readouterr().err
    code = cli.main(["batch", "denoise", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "5"])
    assert code == 2 and "only the deblur task" in capsys.readouterr().err
    out = tmp_path / "out"
    result = run_batch("deblur", [blurred], out, runner=StandInRunner(), fit_args=["--kernel-size", "5"],
                       steps=2, handle_signals=False)
    assert result.exit_code == 0
    argv = json.loads((out / "in.json").read_text())["argv"]
    assert argv[argv.index("--kernel-size") + 1] == "5"
