"""What the command says besides errors: notes on converted inputs, the padding warning, the
prefixes of its messages, eval's options and footnote, and dip info's recipes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dip import cli
from dip.cli import space


def _stop_before_the_fit(monkeypatch):
    """Every check passes until the free-space one, which refuses: the run ends before fitting."""
    monkeypatch.setattr(space, "free_bytes", lambda folder: 0)


def _write(kind: str, path) -> None:
    rng = np.random.default_rng(0)
    if kind == "cmyk":
        Image.fromarray(rng.integers(0, 255, (12, 14, 4), dtype=np.uint8), "CMYK").save(path)
    elif kind == "gif":
        frames = [Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        im = Image.fromarray(rng.integers(0, 4, (12, 14), dtype=np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
        im.save(path, transparency=0)


@pytest.mark.parametrize("kind,name,needle", [
    ("cmyk", "in.jpg", "a CMYK image, converted to RGB"),
    ("gif", "in.gif", "an animation of 3 frames: only the first frame is restored"),
    ("palette", "in.png", "a palette image with a transparent colour"),
])
def test_converted_inputs_get_a_note(tmp_path, capsys, monkeypatch, kind, name, needle):
    _write(kind, tmp_path / name)
    _stop_before_the_fit(monkeypatch)
    cli.main(["denoise", str(tmp_path / name), "-o", str(tmp_path / "out.png"), "-q"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dip: note:")]
    assert len(notes) == 1 and needle in notes[0], notes


def test_a_still_rgb_input_gets_no_note(tmp_path, capsys, monkeypatch, image_maker):
    image_maker(tmp_path / "in.png", 12, 14)
    _stop_before_the_fit(monkeypatch)
    cli.main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "-q"])
    assert "note" not in capsys.readouterr().err


def test_a_long_thin_image_warns_of_its_padded_size(tmp_path, capsys, monkeypatch, image_maker):
    image_maker(tmp_path / "line.png", 1, 5000)
    _stop_before_the_fit(monkeypatch)
    cli.main(["denoise", str(tmp_path / "line.png"), "-o", str(tmp_path / "out.png"), "-q"])
    err = capsys.readouterr().err
    assert "dip: warning: the network renders the 5000x1 image at its padded size 5024x64" in err, err
    assert "GiB of memory" in err


def test_logged_messages_use_the_commands_prefix():
    from dip.cli.entry import log_prefix

    assert log_prefix("denoise") == "dip: " and log_prefix("resume") == "dip: "
    assert log_prefix("batch") == "dip batch: " and log_prefix("export") == "dip export: "


def test_eval_takes_threads_and_force():
    args = cli.build_parser(hooked="eval").parse_args(["eval", "--threads", "1", "--force", "--csv", "r.csv"])
    assert args.threads == 1 and args.force


def test_eval_table_says_how_to_get_the_denoising_baseline():
    from dip import evaluate

    row = {k: math.nan for k in evaluate.CSV_FIELDS}
    row.update(case="denoise25", image="x", seed=0, peak_step=1, fixed_steps=1, auto_steps=1,
               auto_return_step=1, fixed_seconds=0.0, auto_seconds=0.0, peak_psnr=20.0)
    table = evaluate.format_table([row])
    assert "pip install 'dip[bm3d]'" in table
    row.update(baseline_psnr=25.0, baseline_ssim=0.5)
    assert "bm3d" not in evaluate.format_table([row])


def test_info_shows_each_recipes_settings(capsys):
    from dip import recipes

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    denoise = recipes.get("denoise")
    line = next(line for line in out.splitlines() if line.strip().startswith("denoise "))
    assert f"{denoise.fit.steps} steps" in line and f"lr {denoise.fit.lr:g}" in line and "skip net" in line
    assert cli.info_dict()["recipe_settings"]["sr4"]["steps"] == recipes.get("sr4").fit.steps
