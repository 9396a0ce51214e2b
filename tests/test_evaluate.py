"""Tests of the evaluation harness (dip eval): degradations, baselines, and a tiny end-to-end run."""
import argparse
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import tune_stopping
from dip import evaluate as ev
from dip import metrics, recipes
from dip.cli import eval_command


@pytest.fixture(scope="module")
def crop32():
    return ev.builtin_images(32, ["astronaut"])[0][1]


def test_builtin_images_are_seeded_crops_of_skimage_photographs():
    from skimage import data

    imgs = ev.builtin_images(40)
    assert [n for n, _ in imgs] == list(ev.BUILTIN_IMAGES)
    for _, img in imgs:
        assert img.shape == (3, 40, 40) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # the crop is a window of the photograph at native resolution, around its centre point
    full = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    cy, cx = ev.BUILTIN_IMAGES["astronaut"]
    top, left = int(cy * 512) - 20, int(cx * 512) - 20
    assert torch.equal(imgs[0][1], full[:, top:top + 40, left:left + 40])
    with pytest.raises(ValueError, match="unknown built-in image"):
        ev.builtin_images(32, ["lena"])


def test_denoise_case_adds_seeded_gaussian_noise(crop32):
    c = ev.make_case("denoise50", "astronaut", crop32, seed=3)
    d = (c.observation - crop32)[(crop32 > 0.25) & (crop32 < 0.75)]  # away from clipping
    assert float(d.std()) == pytest.approx(50 / 255, rel=0.15)
    assert torch.equal(c.observation, ev.make_case("denoise50", "astronaut", crop32, seed=3).observation)
    assert not torch.equal(c.observation, ev.make_case("denoise50", "astronaut", crop32, seed=4).observation)
    assert c.recipe == "denoise-50" and c.mask is None


def test_sr_case_uses_pil_lanczos_and_bicubic_baseline(crop32):
    c = ev.make_case("sr4", "astronaut", crop32[:, :31, :30], seed=0)
    assert c.gt.shape == (3, 28, 28) and c.observation.shape == (3, 7, 7) and c.degraded.shape == (3, 28, 28)
    u8 = (c.gt.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = np.asarray(Image.fromarray(u8).resize((7, 7), Image.LANCZOS), dtype=np.float32) / 255
    np.testing.assert_allclose(c.observation.permute(1, 2, 0).numpy(), pil, atol=1.5 / 255)
    b = ev.baseline(c)
    assert b.shape == (3, 28, 28)
    assert metrics.psnr(b, c.gt) > metrics.psnr(c.degraded, c.gt)  # bicubic beats pixel replication


@pytest.mark.parametrize("kind", ["restore50", "inpaint-text"])
def test_mask_cases_and_nearest_fill_baseline(kind, crop32):
    c = ev.make_case(kind, "astronaut", crop32, seed=0)
    m = c.mask
    assert m.shape == (1, 32, 32) and set(torch.unique(m).tolist()) == {0.0, 1.0}
    missing = 1 - float(m.mean())
    if kind == "restore50":
        assert missing == pytest.approx(0.5, abs=0.08)
    else:
        assert 0.03 < missing < 0.5  # strokes of text, not a block
    assert torch.equal(c.observation, crop32 * m)
    b = ev.baseline(c)
    known = m[0] > 0
    assert torch.equal(b[:, known], crop32[:, known])
    assert float(b[:, ~known].min()) > 0 or float(crop32[:, ~known].min()) == 0  # holes filled
    assert metrics.psnr(b, crop32) > metrics.psnr(c.observation, crop32) + 5


def test_denoise_baseline_is_bm3d_when_installed_else_skipped(crop32):
    case = ev.make_case("denoise25", "astronaut", crop32, 0)
    b = ev.baseline(case)
    try:
        import bm3d  # noqa: F401
    except ImportError:
        assert b is None
    else:
        assert b.shape == crop32.shape
        assert metrics.psnr(b, crop32) > metrics.psnr(case.observation, crop32) + 3


def test_the_jpeg_case_is_a_quality_10_jpeg_of_the_crop_and_a_short_fit_runs_on_it(crop32):
    case = ev.make_case("jpeg10", "astronaut", crop32, seed=0)
    assert case.recipe == "jpeg" and ev.baseline(case) is None
    assert case.observation.shape == crop32.shape and case.observation.dtype == torch.float32
    levels = case.observation * 255.0
    assert torch.equal(levels, levels.round())  # an 8-bit file's values
    assert 18.0 < metrics.psnr(case.observation, crop32) < 35.0  # artefacts, not noise-free
    higher = ev.jpeg_round_trip(crop32, 90)
    assert metrics.psnr(higher, crop32) > metrics.psnr(case.observation, crop32) + 5
    assert torch.equal(ev.make_case("jpeg10", "astronaut", crop32, seed=3).observation, case.observation)
    (row,) = ev.evaluate(["jpeg10"], [("astronaut", crop32)], steps=4)
    assert row["case"] == "jpeg10" and row["recipe"] == "jpeg" and row["fixed_steps"] == 4
    assert math.isfinite(row["fixed_psnr"]) and math.isnan(row["baseline_psnr"])  # no baseline


def test_y_metric_uses_luma_and_the_sr_border(crop32):
    sr = ev.make_case("sr4", "astronaut", crop32, 0)
    dn = ev.make_case("denoise25", "astronaut", crop32, 0)
    assert ev._metric_kwargs(sr, "y") == {"y_channel": True, "border": 4}
    assert ev._metric_kwargs(dn, "y") == {"y_channel": True, "border": 0}
    assert ev._metric_kwargs(sr, "rgb") == {}


def test_load_images_reads_a_directory(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    imgs = ev.load_images(tmp_path, size=32)
    assert [n for n, _ in imgs] == ["a", "b"]
    assert imgs[0][1].shape == (1, 20, 20) and imgs[1][1].shape == (3, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ev.load_images(tmp_path / "empty")


def test_dip_eval_command_writes_table_csv_and_plot(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    args = parser.parse_args(["--size", "32", "--steps", "3", "--cases", "denoise25",
                              "--builtin", "astronaut", "--csv", str(tmp_path / "r.csv"),
                              "--plots", str(tmp_path / "plots")])
    assert eval_command.run(args) == 0
    table = capsys.readouterr().out
    assert "denoise25" in table and "astronaut" in table
    with open(tmp_path / "r.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    row = rows[0]
    assert row["case"] == "denoise25" and row["fixed_steps"] == "3" and row["auto_steps"] == "3"
    for key in ("input_psnr", "fixed_psnr", "auto_psnr", "peak_psnr", "fixed_ssim", "auto_ssim"):
        assert math.isfinite(float(row[key]))
    assert (tmp_path / "plots" / "denoise25_astronaut_seed0.png").stat().st_size > 1000


NARROW = {"num_channels_down": [16] * 5, "num_channels_up": [16] * 5}


def test_recorded_auto_stop_equals_a_real_auto_run(crop32):
    """The auto-stop result recorded from the fixed run equals a real stop="auto" fit (same stop
    step, returned step and image)."""
    (row,) = ev.evaluate(["denoise25"], [("astronaut", crop32)], steps=20, stop_window=2,
                         stop_patience=2, net_options=NARROW)
    case = ev.make_case("denoise25", "astronaut", crop32, 0)
    real = recipes.run(recipes.get("denoise", steps=20, stop="auto", stop_window=2, stop_patience=2,
                                   seed=0, net_options=NARROW), case.observation, gt=case.gt)
    assert real.stop_reason == "auto"  # the rule fired
    assert row["auto_steps"] == real.steps_run
    assert row["auto_return_step"] == real.returned_step
    assert row["auto_psnr"] == pytest.approx(real.psnr, abs=1e-9)
    assert row["fixed_steps"] == 20 and row["auto_steps"] < row["fixed_steps"]  # the recorded stop is earlier
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("auto_seconds", "fixed_seconds"))  # both reported
    assert row["input_psnr"] == pytest.approx(metrics.psnr(case.observation, case.gt), abs=1e-9)
    assert len(row["curve"]["step"]) == 20


def test_run_reports_bad_arguments(capsys):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    assert eval_command.run(parser.parse_args(["--size", "4"])) == 2
    assert "--size must be at least 8" in capsys.readouterr().err
    for steps, needle in (("0", "must be at least 1"), ("100000000", "must be at most 10,000,000")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--steps", steps])
        assert needle in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown case"):
        ev.evaluate(["denoise7"], [("x", torch.zeros(3, 8, 8))])


def test_observer_records_window_variance_and_window_mean_psnr():
    """With curve windows the curve holds, per window W and step, the ES-WMV variance of the
    last W plain outputs and the PSNR of their mean (NaN before the window is full)."""
    from types import SimpleNamespace

    from dip.stopping import windowed_variance

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 8, 8, generator=g)
    outs = [(gt + 0.05 * (1 + t % 3) * torch.randn(1, 3, 8, 8, generator=g)).clamp(0, 1)
            for t in range(9)]
    cfg = recipes.get("denoise", stop_window=3, stop_patience=50).fit
    obs = ev._Observer(cfg, gt, {}, 1, [2, 3])
    for t, x in enumerate(outs, start=1):
        obs(SimpleNamespace(step=t, steps=9, output=x, output_avg=x))
    c = obs.curve
    assert c["step"] == list(range(1, 10)) and set(c["var"]) == {2, 3}
    for w in (2, 3):
        assert all(math.isnan(v) for v in c["var"][w][:w - 1] + c["psnr_wmean"][w][:w - 1])
        for i in range(w - 1, 9):
            win = torch.stack(outs[i - w + 1:i + 1])
            assert c["var"][w][i] == pytest.approx(windowed_variance(win), rel=1e-9)
            assert c["psnr_wmean"][w][i] == pytest.approx(metrics.psnr(win.mean(0), gt), abs=1e-4)


def test_curves_file_replays_the_recorded_auto_stop(tmp_path):
    """`evaluate(curve_windows=...)` + `write_curves`: compact JSON whose series replay (with
    benchmarks/tune_stopping.py) to the auto-stop result the run itself recorded."""
    import json

    STEPS = 60  # room for the rule to fire: where it does depends on the exact trajectory
    rows = ev.evaluate(["denoise25"], [("astronaut", ev.builtin_images(32, ["astronaut"])[0][1])],
                       steps=STEPS, stop_window=3, stop_patience=4, curve_windows=[2],
                       net_options=NARROW)
    (row,) = rows
    assert row["auto_steps"] < STEPS  # the rule fired (at step 25 when this was written)
    path = tmp_path / "c.json"
    ev.write_curves(rows, path)
    doc = json.loads(path.read_text())
    assert doc["format"] == ev.CURVES_FORMAT
    (run,) = doc["runs"]
    s = run["series"]
    assert s["step"] == list(range(1, STEPS + 1)) and sorted(s["var"]) == ["2", "3"]
    assert len(s["psnr"]) == len(s["psnr_avg"]) == len(s["var"]["3"]) == len(s["psnr_wmean"]["2"]) == STEPS
    assert s["var"]["3"][:2] == [None, None] and s["var"]["3"][2] > 0
    assert all(round(p, 4) == p for p in s["psnr"])
    assert (run["stop_window"], run["stop_patience"], run["exp_weight"]) == (3, 4, 0.99)

    (loaded,) = tune_stopping.load([str(path)])
    current = next(r for r, mark in tune_stopping.reference_rules(3, 4).items() if mark == "*")
    psnr, steps, returned = tune_stopping.replay(loaded, current, {})
    assert (steps, returned) == (row["auto_steps"], row["auto_return_step"])
    assert psnr == pytest.approx(row["auto_psnr"], abs=2e-4)
    assert tune_stopping.main([str(path), "--tune-seeds", "0", "--test-seeds", "1", "--top", "3",
                      "--patience", "4", "--delays", "0,2"]) == 0


def test_dip_eval_curves_option(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    args = parser.parse_args(["--size", "32", "--steps", "4", "--cases", "denoise25", "--builtin",
                              "astronaut", "--stop-window", "3", "--curves", str(tmp_path / "c.json"),
                              "--curve-windows", "2"])
    assert eval_command.run(args) == 0
    import json

    (run,) = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert run["image"] == "astronaut" and sorted(run["series"]["var"]) == ["2", "3"]
    assert eval_command.run(parser.parse_args(["--size", "32", "--steps", "4", "--curves", "x.json",
                                     "--curve-windows", "1"])) == 2
    assert "curve windows must be integers >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["deblur-gauss", "deblur-motion9"])
def test_deblur_cases_blur_real_scene_pixels_and_tuned_baselines_beat_the_input(kind, crop32):
    from dip import evaluate_deblur
    from dip.physics import Blur

    c = ev.make_case(kind, "astronaut", crop32, seed=0)
    kh, kw = c.kernel.shape
    assert c.gt.shape == (3, 33 - kh, 33 - kw) and c.observation.shape == c.gt.shape and c.recipe == "deblur"
    op = Blur(torch.from_numpy(c.kernel), "valid")
    noise = c.observation - op(crop32[None])[0]
    assert float(noise.std()) == pytest.approx(0.01, rel=0.25)
    found = evaluate_deblur.tuned_baselines(c.observation, c.kernel, c.gt)
    assert found["wiener"][1] in evaluate_deblur.WIENER_BALANCES and found["rl"][1] in evaluate_deblur.RL_ITERATIONS
    for _, _, score in found.values():
        assert score > metrics.psnr(c.degraded, c.gt)
    assert torch.equal(ev.baseline(c), evaluate_deblur.best(found))
    row = ev.run_case(c, steps=2, net_options={"num_channels_down": [8] * 5, "num_channels_up": [8] * 5})
    assert row["baseline_psnr"] == pytest.approx(max(row["wiener_psnr"], row["rl_psnr"]))
    assert math.isfinite(row["fixed_psnr"])


def test_blind_cases_write_kernel_l1_and_rl_guess_psnr_to_the_csv_and_curves(tmp_path):
    """The smallest blind cases (24² crop, 1 step, a small net): the Gaussian one has both
    columns, the motion one kernel_l1 only, the non-blind one neither (empty / null)."""
    small = {"num_channels_down": [8] * 2, "num_channels_up": [8] * 2, "num_channels_skip": [2] * 2}
    images = ev.builtin_images(24, ["astronaut"])
    rows = ev.evaluate(["deblur-gauss", "deblur-blind-gauss", "deblur-blind-motion9"], images, steps=1,
                       net_options=small)
    ev.write_csv(rows, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        read = {r["case"]: r for r in csv.DictReader(f)}
    assert read["deblur-gauss"]["kernel_l1"] == "" and read["deblur-gauss"]["rl_guess_psnr"] == ""
    blind = read["deblur-blind-gauss"]
    assert 0 <= float(blind["kernel_l1"]) <= 2 and float(blind["rl_guess_psnr"]) > 10
    row = next(r for r in rows if r["case"] == "deblur-blind-gauss")
    assert float(blind["rl_guess_psnr"]) == pytest.approx(row["rl_guess_psnr"])  # RL with the wrong-width Gaussian
    assert float(read["deblur-blind-motion9"]["kernel_l1"]) > 0 and read["deblur-blind-motion9"]["rl_guess_psnr"] == ""
    known = next(r for r in rows if r["case"] == "deblur-gauss")  # both tuned baselines and their parameters
    for key in ("wiener_psnr", "wiener_balance", "rl_psnr", "rl_iterations"):
        assert float(read["deblur-gauss"][key]) == pytest.approx(known[key])
    runs = {r["case"]: r for r in ev.curves_document(rows)["runs"]}
    assert runs["deblur-gauss"]["kernel_l1"] is None and runs["deblur-blind-motion9"]["rl_guess_psnr"] is None
    assert runs["deblur-blind-gauss"]["kernel_l1"] == pytest.approx(float(blind["kernel_l1"]), abs=1e-4)
