"""``dip deblur``: the fit, its checkpoint resumed to the same bits, export of the fitted
generator, every bad --kernel (exit 2, one line), and ``dip batch deblur``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dip import checkpoint, cli
from dip import images as io
from tests.cli.deblur_helpers import assert_one_line_usage_error, batch_argv, fit_and_resume


def test_deblur_resumes_to_the_same_bits_and_records_the_operator(blurred, tmp_path):
    report = tmp_path / "b.json"
    _, b, ckpt = fit_and_resume(["deblur", str(blurred), "--kernel", "motion:5,30", "-q"], tmp_path, report=report)
    physics = checkpoint.load(ckpt)["physics"]
    assert physics["name"] == "blur" and physics["padding"] == "valid"
    assert abs(float(physics["kernel"].sum()) - 1) < 1e-6
    assert io.read_image(b)[0].shape == (3, 24, 24)
    data = json.loads(report.read_text())
    assert data["steps_run"] == 6 and data["stop_reason"] == "steps"


def test_padding_option_is_the_operators(blurred, tmp_path):
    out, ckpt = tmp_path / "out.png", tmp_path / "fit.ckpt"
    assert cli.main(["deblur", str(blurred), "--kernel", "box:3", "--padding", "replicate", "-o", str(out),
                     "--steps", "2", "--checkpoint", str(ckpt), "-q"]) == 0
    assert checkpoint.load(ckpt)["physics"]["padding"] == "replicate"


def test_the_memory_estimate_of_a_valid_fit_counts_its_margin(tmp_path, image_maker):
    """A 60² image blurred by an 11² box: the valid fit renders 70², padded to 96², 2.25 times the
    pixels of a fit that pads the border (60², padded to 64²)."""
    image_maker(tmp_path / "in.png", 60, 60, "RGB")
    estimates = {}
    for padding in ("valid", "replicate"):
        report = tmp_path / f"{padding}.json"
        assert cli.main(["deblur", str(tmp_path / "in.png"), "--kernel", "box:11", "--padding", padding, "--steps",
                         "1", "-o", str(tmp_path / f"{padding}.png"), "--report", str(report), "-q"]) == 0
        estimates[padding] = json.loads(report.read_text())["memory_estimate_bytes"]
    assert estimates["valid"] > 1.6 * estimates["replicate"]


def test_the_valid_fit_exports_the_observations_pixels(blurred, tmp_path, capsys):
    out, ckpt, ts = tmp_path / "out.png", tmp_path / "fit.ckpt", tmp_path / "g.pt"
    assert cli.main(["deblur", str(blurred), "--kernel", "gaussian:1", "-o", str(out), "--steps", "3",
                     "--checkpoint", str(ckpt), "-q"]) == 0
    assert cli.main(["export", str(ckpt), "--torchscript", str(ts)]) == 0, capsys.readouterr().err
    rendered = torch.jit.load(str(ts))().detach()
    assert rendered.shape == (1, 3, 24, 24)  # without the 3-pixel margin the fit renders
    written = io.read_image(out)[0]
    assert float((rendered[0] - written).abs().max()) <= 1 / 255 + 1e-6  # 3 steps: the plain output


@pytest.fixture
def bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    np.save(tmp_path / "neg.npy", np.array([[1.0, -1.0]]))
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    return tmp_path


BAD = [
    ("gaussian:0", "SIGMA must be > 0"),
    ("gaussian:x", "not a number"),
    ("box:2.5", "SIZE must be a whole number"),
    ("motion:9", "expected 2 numbers"),
    ("motion:0,10", "LENGTH must be from 1"),
    ("{d}/none.npy", "no such file"),
    ("{d}/nan.npy", "non-finite"),
    ("{d}/neg.npy", "negative"),
    ("{d}/zero.npy", "all zero"),
    ("{d}/junk.png", "cannot read it as an image"),
    ("box:25", "larger than the image (24x24)"),
]


@pytest.mark.parametrize("spec,needle", BAD, ids=[b[0].replace("{d}/", "") for b in BAD])
def test_every_bad_kernel_is_exit_2_with_one_line(blurred, bad_files, tmp_path, capsys, spec, needle):
    out = tmp_path / "out.png"
    code = cli.main(["deblur", str(blurred), "--kernel", spec.format(d=bad_files), "-o", str(out), "--steps", "1"])
    err = capsys.readouterr().err
    assert_one_line_usage_error(code, err, needle)
    assert err.startswith("dip: error: --kernel") and not out.exists()


def test_deblur_needs_a_kernel(blurred, tmp_path, capsys):
    assert cli.main(["deblur", str(blurred), "-o", str(tmp_path / "o.png")]) == 2
    assert "--kernel" in capsys.readouterr().err


def test_batch_deblur_checks_the_kernel_before_any_fit(tmp_path, blurred, capsys):
    folder = blurred.parent
    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "out"), "--kernel", "box:0"])
    assert code == 2 and "SIZE must be a whole number" in capsys.readouterr().err
    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "out")])
    assert code == 2 and "--kernel" in capsys.readouterr().err
    code = cli.main(["batch", "denoise", str(folder), "-o", str(tmp_path / "out"), "--kernel", "box:3"])
    assert code == 2 and "only the deblur task" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_deblur_passes_the_kernel_to_every_fit(tmp_path, blurred):
    argv = batch_argv(blurred, tmp_path / "out", ["--kernel", "gaussian:1.6"])
    assert argv[:2] == ["deblur", str(blurred)] and argv[argv.index("--kernel") + 1] == "gaussian:1.6"
