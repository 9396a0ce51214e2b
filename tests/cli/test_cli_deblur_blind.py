"""``dip deblur --kernel-size K`` (blind): the estimated kernel (square or Kh x Kw) written beside
the output or to --kernel-out and listed in the report with the kernel generator's rate and
warm-up (--kernel-lr, --kernel-warmup), resumed to the same bits with those settings, the
fitted image generator exported, every bad --kernel-size / --kernel-lr / --kernel-warmup and
every wrong mix of them with --kernel / --kernel-out answered with exit 2 and one line, and
``dip batch deblur --kernel-size``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dip import checkpoint, cli
from dip import images as io
from dip.physics import parse_kernel
from tests.cli.deblur_helpers import assert_one_line_usage_error, batch_argv, fit_and_resume


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


def test_a_rectangular_kernel_and_its_rate_and_warm_up_go_into_the_report(blurred, tmp_path):
    out, report, k = tmp_path / "out.png", tmp_path / "r.json", tmp_path / "k.npy"
    assert cli.main(["deblur", str(blurred), "--kernel-size", "3x5", "--kernel-lr", "1e-3", "--kernel-warmup", "1",
                     "--kernel-steps", "1", "--kernel-out", str(k), "-o", str(out), "--steps", "2", "--report",
                     str(report), "-q"]) == 0
    kernel = json.loads(report.read_text())["kernel"]
    assert kernel["size"] == [3, 5] and np.array(kernel["rows"]).shape == (3, 5)  # rows, columns
    assert kernel["lr"] == 1e-3 and kernel["warmup_steps"] == 1 and kernel["fit_steps"] == 1
    assert np.load(k).shape == (3, 5)


def test_the_report_states_the_recipes_kernel_rate_and_warm_up(blurred, tmp_path, capsys):
    out, report = tmp_path / "out.png", tmp_path / "r.json"
    assert cli.main(["deblur", str(blurred), "--kernel-size", "3", "-o", str(out), "--steps", "1",
                     "--report", str(report), "-q"]) == 0
    kernel = json.loads(report.read_text())["kernel"]
    assert kernel["lr"] == 1e-5 and kernel["warmup_steps"] == 500 and kernel["fit_steps"] is None  # the recipe's
    assert "warning" not in capsys.readouterr().err  # the recipe's own warm-up is not warned about


def test_a_warm_up_as_long_as_the_fit_is_warned_about(blurred, tmp_path, capsys):
    assert cli.main(["deblur", str(blurred), "--kernel-size", "3", "--kernel-warmup", "2", "-o",
                     str(tmp_path / "out.png"), "--steps", "2", "-q"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "--kernel-warmup 2 is not fewer than the fit's 2 steps" in warning[0]


@pytest.mark.parametrize("options", [[], ["--kernel-lr", "1e-3", "--kernel-warmup", "4"]],
                         ids=["recipe", "kernel-lr-and-warmup"])
def test_a_blind_fit_resumes_to_the_same_bits_and_exports(blurred, tmp_path, capsys, options):
    ts, report = tmp_path / "g.pt", tmp_path / "resumed.json"
    base = ["deblur", str(blurred), "--kernel-size", "5", "-q"] + options
    _, b, ckpt = fit_and_resume(base, tmp_path, report=report)  # with the options: across the warm-up's end
    assert checkpoint.load(ckpt)["physics"]["name"] == "blind_blur"
    assert (tmp_path / "a.png.kernel.png").read_bytes() == (tmp_path / "b.png.kernel.png").read_bytes()
    if options:  # dip resume keeps the rate and the warm-up the fit was started with
        config = checkpoint.load(ckpt)["fit"]["config"]
        assert config["physics_lr"] == 1e-3 and config["physics_warmup_steps"] == 4
        kernel = json.loads(report.read_text())["kernel"]
        assert kernel["lr"] == 1e-3 and kernel["warmup_steps"] == 4
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
    (["--kernel-size", "9x"], "--kernel-size 9x: not a whole number K or KhxKw"),
    (["--kernel-size", "3x130"], "each side must be from 3 to 129"),
    (["--kernel-size", "3x13"], "13 columns, more than half the image's 24"),
    (["--kernel-size", "13x3"], "13 rows, more than half the image's 24"),
    (["--kernel-size", "3", "--kernel-lr", "0"], "--kernel-lr 0: not a positive number"),
    (["--kernel-size", "3", "--kernel-lr", "fast"], "--kernel-lr fast: not a positive number"),
    (["--kernel-size", "3", "--kernel-warmup", "-1"], "--kernel-warmup -1: not a whole number of steps"),
    (["--kernel", "box:3", "--kernel-lr", "1e-4"], "--kernel-lr 1e-4: only a blind fit"),
    (["--kernel", "box:3", "--kernel-warmup", "10"], "--kernel-warmup 10: only a blind fit"),
    (["--kernel-size", "3", "--kernel-steps", "0"], "--kernel-steps 0: not a whole number of steps from 1"),
    (["--kernel-size", "3", "--kernel-steps", "some"], "--kernel-steps some: not a whole number of steps"),
    (["--kernel", "box:3", "--kernel-steps", "all"], "--kernel-steps all: only a blind fit"),
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
    assert_one_line_usage_error(code, capsys.readouterr().err, needle)
    assert not out.exists()


def test_batch_deblur_blind(tmp_path, blurred, capsys):
    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "1"])
    assert code == 2 and "must be from 3 to 129" in capsys.readouterr().err
    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "5x200"])
    assert code == 2 and "each side must be from 3 to 129" in capsys.readouterr().err
    code = cli.main(["batch", "deblur", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "5",
                     "--kernel-lr", "-1"])
    assert code == 2 and "--kernel-lr -1: not a positive number" in capsys.readouterr().err
    code = cli.main(["batch", "denoise", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-size", "5"])
    assert code == 2 and "only the deblur task" in capsys.readouterr().err
    code = cli.main(["batch", "denoise", str(blurred), "-o", str(tmp_path / "bad"), "--kernel-warmup", "5"])
    assert code == 2 and "only the deblur task" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    argv = batch_argv(blurred, tmp_path / "out", ["--kernel-size", "5x7", "--kernel-lr", "1e-4",
                                                  "--kernel-warmup", "1", "--kernel-steps", "all"])
    assert argv[argv.index("--kernel-size") + 1] == "5x7" and argv[argv.index("--kernel-steps") + 1] == "all"
    assert argv[argv.index("--kernel-lr") + 1] == "1e-4" and argv[argv.index("--kernel-warmup") + 1] == "1"


def test_the_command_line_kernel_size_bounds_are_the_operators():
    """kernel_options mirrors the operator's bounds so that parsing imports no torch."""
    from dip.cli import kernel_options
    from dip.physics import blind_blur, blur_kernels

    assert (kernel_options.BLIND_MIN_SIZE, kernel_options.BLIND_MAX_SIZE) == (blind_blur.MIN_SIZE,
                                                                              blur_kernels.MAX_SIZE)
