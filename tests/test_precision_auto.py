"""--precision auto: bf16 where the hardware does bf16 natively and the task is proven, else fp32.

``DIP_BF16_NATIVE`` forces the hardware's answer, so both branches run on any CPU."""
from __future__ import annotations

import json

import pytest
import torch

from dip import runtime
from dip.engine import FitConfig, fit, generator_geometry
from dip.models import build
from dip.physics import Identity


@pytest.mark.parametrize("native, task, expected", [
    ("1", "denoise", "bf16"), ("1", "sr", "bf16"), ("1", None, "bf16"),
    ("1", "restore", "fp32"), ("1", "jpeg", "fp32"),
    ("0", "denoise", "fp32"), ("0", None, "fp32"),
])
def test_auto_follows_the_hardware_and_the_proven_tasks(monkeypatch, native, task, expected):
    monkeypatch.setenv("DIP_BF16_NATIVE", native)
    monkeypatch.setattr(runtime, "BF16_PROVEN_TASKS", frozenset({"denoise", "sr"}))
    monkeypatch.setattr(runtime, "BF16_FAILED_TASKS", {})
    precision, why = runtime.choose_precision("auto", "cpu", task)
    assert precision == expected and why.startswith("auto: ")
    if native == "1" and task in ("restore", "jpeg"):
        assert task in why and "not proven" in why
    if native == "0":
        assert "no native bf16" in why


def test_auto_says_what_the_check_measured_for_a_task_where_bf16_failed(monkeypatch):
    monkeypatch.setenv("DIP_BF16_NATIVE", "1")
    monkeypatch.setattr(runtime, "BF16_FAILED_TASKS", {"sr": "bf16 missed fp32's quality for sr (worst 0.40 dB)"})
    precision, why = runtime.choose_precision("auto", "cpu", "sr")
    assert precision == "fp32" and why == "auto: bf16 missed fp32's quality for sr (worst 0.40 dB)"
    assert runtime.choose_precision("bf16", "cpu", "sr") == ("bf16", "asked for")  # asking still works


def test_no_task_is_both_proven_and_failed():
    assert not runtime.BF16_PROVEN_TASKS & set(runtime.BF16_FAILED_TASKS)


def test_auto_picks_fp32_for_every_unproven_task(monkeypatch):
    monkeypatch.setenv("DIP_BF16_NATIVE", "1")
    for task in ("denoise", "jpeg", "sr", "inpaint", "restore", "flash", "deblur"):
        expected = "bf16" if task in runtime.BF16_PROVEN_TASKS else "fp32"
        assert runtime.choose_precision("auto", "cpu", task)[0] == expected


def test_an_explicit_precision_is_kept_and_a_bad_one_refused(monkeypatch):
    monkeypatch.setenv("DIP_BF16_NATIVE", "0")
    assert runtime.choose_precision("bf16", "cpu", "denoise") == ("bf16", "asked for")
    assert runtime.choose_precision("fp32", "cpu") == ("fp32", "asked for")
    with pytest.raises(ValueError, match="'fp16'"):
        runtime.choose_precision("fp16")
    with pytest.raises(ValueError, match="precision"):
        FitConfig(precision="fp16")


@pytest.mark.parametrize("native, expected", [("0", "fp32"), ("1", "bf16")])
def test_a_fit_records_the_precision_auto_chose(monkeypatch, native, expected):
    monkeypatch.setenv("DIP_BF16_NATIVE", native)
    torch.manual_seed(0)
    g = build("skip", 3, 3, num_channels_down=[4, 4], num_channels_up=[4, 4], num_channels_skip=[2, 2])
    y = torch.rand(1, 3, 8, 8)
    z = torch.rand(1, 3, *generator_geometry(g, (8, 8))[1])
    result = fit(y, Identity(), g, z, FitConfig(steps=2, precision="auto"))
    assert result.config.precision == expected  # what a checkpoint records, so resume runs the same


@pytest.mark.parametrize("native, task, expected", [("1", "denoise", "bf16"), ("0", "denoise", "fp32"),
                                                    ("1", "restore", "fp32")])
def test_the_command_reports_the_choice_and_why(tmp_path, image_maker, mask_maker, monkeypatch,
                                                native, task, expected):
    monkeypatch.setenv("DIP_BF16_NATIVE", native)
    monkeypatch.setattr(runtime, "BF16_PROVEN_TASKS", frozenset({"denoise"}))
    extra = []
    if task == "restore":
        mask_maker(tmp_path / "m.png", 12, 12)
        extra = ["--mask", str(tmp_path / "m.png")]
    payload = _report_of_command(tmp_path, image_maker, task, [*extra, "--precision", "auto"])
    assert payload["precision"] == expected and payload["precision_reason"].startswith("auto: ")


def _report_of_command(tmp_path, image_maker, task: str, options: list[str]) -> dict:
    """The --report of ``dip TASK`` on a 12x12 image for 2 steps with ``options``."""
    from dip.cli import main

    src, out, report = tmp_path / "in.png", tmp_path / "out.png", tmp_path / "run.json"
    image_maker(src, 12, 12)
    assert main([task, str(src), *options, "-o", str(out), "--steps", "2", "-q", "--report", str(report)]) == 0
    return json.loads(report.read_text())


def test_every_recipe_asks_for_auto():
    from dip import recipes

    assert {recipes.get(name).fit.precision for name in recipes.names()} == {"auto"}


@pytest.mark.parametrize("native, task, expected", [("1", "denoise", "bf16"), ("0", "denoise", "fp32"),
                                                    ("1", "sr", "fp32")])
def test_the_commands_and_the_api_default_to_auto(tmp_path, image_maker, monkeypatch, native, task, expected):
    """No --precision: the task's own choice on this (forced) hardware, in the report and in the
    result of the Python API alike."""
    import dip

    monkeypatch.setenv("DIP_BF16_NATIVE", native)
    payload = _report_of_command(tmp_path, image_maker, task, ["--factor", "2"] if task == "sr" else [])
    assert payload["precision"] == expected and payload["precision_reason"].startswith("auto: ")
    if task == "denoise":
        result = dip.denoise(torch.rand(3, 12, 12), steps=2)
        assert result.config.precision == expected
