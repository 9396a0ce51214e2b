"""Every bad input: exit code 2, a message saying what is wrong, no traceback, no output file.

Most cases call ``dip.cli.main`` in this process (fast); one runs the real command in a
subprocess to check the process-level behaviour.
"""
from __future__ import annotations

import pytest
import torch

from dip import cli, images


@pytest.fixture
def files(tmp_path, image_maker, mask_maker):
    image_maker(tmp_path / "img.png", 20, 24, "RGB")
    mask_maker(tmp_path / "mask.png", 20, 24)
    mask_maker(tmp_path / "mask_small.png", 19, 24)
    (tmp_path / "text.png").write_text("not an image at all\n")
    (tmp_path / "empty.png").write_bytes(b"")
    data = (tmp_path / "img.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "adir").mkdir()
    images.write_image(tmp_path / "zeros.png", torch.zeros(1, 20, 24))
    return tmp_path


CASES = [
    # (name, argv with {d} for the folder, substring of the message)
    ("missing input", "denoise {d}/nope.png -o {d}/out.png", "no such file"),
    ("directory input", "denoise {d}/adir -o {d}/out.png", "directory"),
    ("not an image", "denoise {d}/text.png -o {d}/out.png", "not an image"),
    ("truncated image", "denoise {d}/cut.png -o {d}/out.png", "truncated"),
    ("empty file", "denoise {d}/empty.png -o {d}/out.png", "empty"),
    ("mask size differs", "inpaint {d}/img.png --mask {d}/mask_small.png -o {d}/out.png", "mask is 24x19"),
    ("mask all zero", "restore {d}/img.png --mask {d}/zeros.png -o {d}/out.png", "no pixel as known"),
    ("mask missing", "inpaint {d}/img.png --mask {d}/nope.png -o {d}/out.png", "no such file"),
    ("sr factor 1", "sr {d}/img.png --factor 1 -o {d}/out.png", "at least 2"),
    ("sr factor not integer", "sr {d}/img.png --factor 2.5 -o {d}/out.png", "whole number"),
    ("sr factor text", "sr {d}/img.png --factor two -o {d}/out.png", "whole number"),
    ("steps zero", "denoise {d}/img.png --steps 0 -o {d}/out.png", "at least 1"),
    ("steps negative", "denoise {d}/img.png --steps -5 -o {d}/out.png", "at least 1"),
    ("steps not a number", "denoise {d}/img.png --steps many -o {d}/out.png", "whole number"),
    ("unknown recipe", "denoise {d}/img.png --recipe nosuch -o {d}/out.png", "unknown recipe 'nosuch'"),
    ("recipe of another task", "denoise {d}/img.png --recipe sr4 -o {d}/out.png", "not denoise"),
    ("unknown net", "denoise {d}/img.png --net nosuch -o {d}/out.png", "unknown net 'nosuch'"),
    ("output folder missing", "denoise {d}/img.png -o {d}/no/such/out.png", "does not exist"),
    ("output format unknown", "denoise {d}/img.png -o {d}/out.gif", "unsupported format"),
    ("output missing", "denoise {d}/img.png", "required: -o"),
    ("gt size differs", "sr {d}/img.png --factor 2 --gt {d}/img.png -o {d}/out.png", "ground truth is 24x20"),
    ("too many megapixels", "sr {d}/img.png --factor 8 --max-megapixels 0.01 -o {d}/out.png", "megapixels"),
    ("frames without save-every", "denoise {d}/img.png --frames {d}/fr -o {d}/out.png", "--save-every"),
    ("report folder missing", "denoise {d}/img.png --report {d}/no/r.json -o {d}/out.png", "does not exist"),
    ("negative lr", "denoise {d}/img.png --lr -1 -o {d}/out.png", "positive"),
    ("16 bits in a JPEG", "denoise {d}/img.png --bit-depth 16 -o {d}/out.jpg", "8 bits per sample"),
    ("plot not png", "denoise {d}/img.png --plot {d}/p.pdf -o {d}/out.png", "PNG"),
]


def _check(capsys, code, needle):
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert needle in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert 1 <= len([line for line in captured.err.splitlines() if line.strip()]) <= 2, captured.err


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2(files, capsys, name, argv, needle):
    code = cli.main(argv.format(d=files).split())
    _check(capsys, code, needle)
    assert not (files / "out.png").exists() and not (files / "out.jpg").exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_existing_output_needs_force(files, capsys):
    out = files / "out.png"
    out.write_bytes(b"keep me")
    code = cli.main(["denoise", str(files / "img.png"), "-o", str(out), "--steps", "1"])
    _check(capsys, code, "already exists")
    assert out.read_bytes() == b"keep me"


def test_existing_report_needs_force(files, capsys):
    report = files / "r.json"
    report.write_text("{}")
    code = cli.main(["denoise", str(files / "img.png"), "-o", str(files / "out.png"), "--report", str(report)])
    _check(capsys, code, "already exists")
    assert report.read_text() == "{}" and not (files / "out.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(files, capsys):
    code = cli.main(["denoise", str(files / "img.png"), "-o", str(files / "out.png"), "--device", "cuda"])
    _check(capsys, code, "CUDA is not available")
    assert not (files / "out.png").exists()


def test_image_too_large_for_memory(files, capsys, monkeypatch):
    """The estimate is compared with the available memory before fitting."""
    monkeypatch.setattr(cli.memory, "available_memory", lambda device: 1 << 20)
    code = cli.main(["denoise", str(files / "img.png"), "-o", str(files / "out.png")])
    _check(capsys, code, "too large for this machine")
    assert not (files / "out.png").exists()


def test_memory_estimate_grows_with_size():
    from dip import recipes

    small = cli.estimate_fit_memory(recipes.get("denoise"), (256, 256), 3)
    large = cli.estimate_fit_memory(recipes.get("denoise"), (512, 512), 3)
    assert 3.5 < large / small < 4.0  # activations dominate and scale with pixels
    assert 0.5e9 < small < 2e9  # ~1 GiB for the standard skip net at 256x256
    # automatic stopping's window of W outputs (fp32, 1.25 slack) is counted too
    fixed = cli.estimate_fit_memory(recipes.get("denoise", stop="steps"), (256, 256), 3)
    window = recipes.get("denoise").fit.stop_window
    assert abs((small - fixed) - 1.25 * 4 * window * 3 * 256 * 256) <= 4  # int() rounding


def test_subprocess_bad_input(tmp_path, dip_run, image_maker):
    image_maker(tmp_path / "img.png", 20, 24)
    proc = dip_run("inpaint", tmp_path / "img.png", "--mask", tmp_path / "missing.png", "-o", tmp_path / "o.png")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.fixture
def checkpoint(files):
    """A finished 1-step fit of img.png with its checkpoint, as (folder, ckpt path)."""
    out = files / "fit.png"
    assert cli.main(["denoise", str(files / "img.png"), "-o", str(out), "--steps", "1", "--stop", "steps",
                     "--checkpoint", str(files / "fit.ckpt"), "-q"]) == 0
    return files / "fit.ckpt"


RESUME_CASES = [
    # the fit commands' checks and messages, word for word
    ("frames without save-every", "--frames {d}/fr", "--frames needs --save-every N"),
    ("save-every without frames", "--save-every 1", "--save-every needs --frames DIR"),
    ("plot not png", "--plot {d}/p.pdf", "the plot is written as PNG"),
    ("16 bits in a JPEG", "--bit-depth 16 -o {d}/r.jpg", "8 bits per sample"),
    ("report folder missing", "--report {d}/no/r.json", "does not exist"),
    ("gt size differs", "--gt {d}/mask_small.png", "ground truth is 24x19"),
    ("two outputs one file", "-o {d}/r.png --report {d}/r.png --force", "name the same file"),
]


@pytest.mark.parametrize("name,tail,needle", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_checks_outputs_like_a_fit(files, checkpoint, capsys, name, tail, needle):
    before = checkpoint.read_bytes()
    code = cli.main(["resume", str(checkpoint), "--steps", "2", *tail.format(d=files).split()])
    _check(capsys, code, needle)
    assert checkpoint.read_bytes() == before and not (files / "r.png").exists()


def test_resume_takes_every_output_option_of_a_fit():
    """One declaration of the output options serves both: same flags, same destinations."""
    import argparse

    def output_options(argv):
        parser = cli.build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        group = next(g for g in sub.choices[argv]._action_groups if g.title == "output")
        return {(tuple(a.option_strings), a.dest) for a in group._group_actions}

    assert output_options("resume") == output_options("denoise")


def test_steps_and_seed_limits_agree_with_the_fit_config():
    from dip.cli import argtypes
    from dip.engine import config

    assert (argtypes.MAX_STEPS, argtypes.MAX_SEED) == (config.MAX_STEPS, config.MAX_SEED)


@pytest.mark.parametrize("argv,needle", [
    ("denoise {d}/img.png --steps 1000000000000 -o {d}/out.png", "at most 10,000,000"),
    ("denoise {d}/img.png --seed 1180591620717411303424 -o {d}/out.png", "at most 9,223,372,036,854,775,806"),
    ("denoise {d}/img.png --seed -1 -o {d}/out.png", "at least 0"),
    ("batch denoise {d}/img.png -o {d}/b --steps 1000000000000", "at most 10,000,000"),
    ("batch denoise {d}/img.png -o /proc/newdir", "cannot create it in /proc"),
], ids=["steps 10**12", "seed 2**70", "seed negative", "batch steps", "batch uncreatable outdir"])
def test_out_of_range_options_are_usage_errors(files, capsys, argv, needle):
    code = cli.main(argv.format(d=files).split())
    captured = capsys.readouterr()
    assert code == 2 and needle in captured.err, captured.err
    assert "Traceback" not in captured.err and "bug" not in captured.err


@pytest.mark.parametrize("argv,first_line,help_line", [
    ("denoise {d}/img.png -o {d}/out.png --seeed 3",
     "dip denoise: error: unrecognized arguments: --seeed 3 (did you mean '--seed'?)", "dip denoise --help"),
    ("sr {d}/img.png -o {d}/out.png --factr=2",
     "dip sr: error: unrecognized arguments: --factr=2 (did you mean '--factor'?)", "dip sr --help"),
    ("denoise {d}/img.png -o {d}/out.png --blah 25",
     "dip denoise: error: unrecognized arguments: --blah 25", "dip denoise --help"),
    ("denoise {d}/img.png -o {d}/out.png --sigma 25",
     "dip denoise: error: unrecognized arguments: --sigma 25 (the fit needs no noise level", "dip denoise --help"),
    ("jpeg {d}/img.png -o {d}/out.png --quality=10",
     "dip jpeg: error: unrecognized arguments: --quality=10 (the fit needs no JPEG quality", "dip jpeg --help"),
    ("batch denoise {d}/img.png -o {d}/b --stepz 3",
     "dip batch: error: unrecognized arguments: --stepz 3 (did you mean '--steps'?)", "dip batch --help"),
    ("denoize {d}/img.png -o {d}/out.png", "dip: error: unknown command 'denoize' (did you mean 'denoise'?)",
     "dip --help"),
], ids=["option typo", "typo with =", "no such option", "a denoiser's noise level", "a JPEG quality",
        "batch option typo", "command typo"])
def test_an_unknown_option_or_command_is_reported_by_its_command_with_the_nearest_name(
        files, capsys, argv, first_line, help_line):
    code = cli.main(argv.format(d=files).split())
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines[0].startswith(first_line), lines
    assert lines[1] == f"Run '{help_line}' for the options.", lines
    assert not (files / "out.png").exists() and not (files / "b").exists()


def test_ctrl_c_during_start_up_is_one_line_and_130(files, capsys, monkeypatch):
    from dip.cli import entry

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "build_parser", interrupted)
    assert cli.main(["denoise", str(files / "img.png"), "-o", str(files / "out.png")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dip: interrupted") and "Traceback" not in err


@pytest.mark.parametrize("content,needle", [
    ("nan", "values are NaN or infinite"),
    ("text", "is not a NumPy .npy array"),
    ("ints", "expected an array of floats"),
])
def test_render_refuses_a_bad_code(files, capsys, content, needle):
    import numpy as np

    z = files / "z.npy"
    if content == "nan":
        np.save(z, np.array([[1.0, np.nan, np.inf]], dtype=np.float32))
    elif content == "ints":
        np.save(z, np.arange(3))
    else:
        z.write_text("0.1 0.2 0.3\n")
    code = cli.main(["render", str(files / "m.onnx"), "-o", str(files / "out.png"), "--z", str(z)])
    captured = capsys.readouterr()
    assert code == 2 and needle in captured.err, captured.err
    assert "allow_pickle" not in captured.err and not (files / "out.png").exists()


def test_more_threads_than_cpus_is_refused(files, capsys):
    from dip.cli.argtypes import available_cpus

    code = cli.main(["denoise", str(files / "img.png"), "-o", str(files / "out.png"),
                     "--threads", str(available_cpus() + 1)])
    captured = capsys.readouterr()
    assert code == 2 and f"must be at most {available_cpus()}" in captured.err, captured.err


def test_resume_reuses_the_fits_thread_count(files, capsys):
    """The checkpoint records the fit's threads; dip resume uses them unless --threads is given."""
    from dip import checkpoint as ckpt

    before = torch.get_num_threads()
    try:
        assert cli.main(["denoise", str(files / "img.png"), "-o", str(files / "fit.png"), "--steps", "1",
                         "--stop", "steps", "--threads", "1", "--checkpoint", str(files / "fit.ckpt"), "-q"]) == 0
        assert ckpt.load(files / "fit.ckpt")["options"]["threads"] == 1
        torch.set_num_threads(2)
        assert cli.main(["resume", str(files / "fit.ckpt"), "--steps", "2", "-q"]) == 0
        assert torch.get_num_threads() == 1
        assert ckpt.load(files / "fit.ckpt")["options"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("switch", ["DIP_BF16_NATIVE", "DIP_CHANNELS_LAST", "DIP_BRANCH_FREE"])
def test_a_bad_switch_value_is_a_one_line_usage_error(tmp_path, image_maker, capsys, monkeypatch, switch):
    image_maker(tmp_path / "in.png", 12, 12)
    monkeypatch.setenv(switch, "maybe")
    assert cli.main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{switch} must be 0, 1 or auto, got 'maybe'" in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()
    assert cli.main(["info"]) == 0  # dip info still answers (and --full says which switch is bad)
