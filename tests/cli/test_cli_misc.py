"""dip demo, dip info, the hooked subcommands (eval, export, render), help and version."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from dip import cli, images


def test_demo(tmp_path, dip_run):
    proc = dip_run("demo", "--steps", 2, "--outdir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gain" in proc.stdout and "PSNR" in proc.stdout
    for name in ("clean", "noisy", "restored"):
        image, info = images.read_image(tmp_path / f"dip-demo-{name}.png")
        assert image.shape == (3, 64, 64) and info.mode == "RGB"


def test_demo_missing_outdir(tmp_path, capsys):
    assert cli.main(["demo", "--outdir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bundled_image_and_licence():
    path = cli.example_image_path()
    image, info = images.read_image(path)
    assert image.shape == (3, 96, 96) and path.stat().st_size < 60_000
    assert "public domain" in (path.parent / "README.md").read_text().lower()


def test_info_full(dip_run, capsys):
    proc = dip_run("info", "--full")
    assert proc.returncode == 0, proc.stderr
    for needle in ("dip ", "torch", "native ops:", "threads: 1 ", "CUDA"):
        assert needle in proc.stdout
    assert cli.main(["info", "--full", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"dip", "torch", "native_ops", "native_status", "threads", "cuda_available"} <= set(data)
    assert isinstance(data["native_ops"], bool) and data["recipes"] and "skip" in data["nets"]
    assert all(data["packages"][name] for name in ("onnx", "onnxscript", "onnxruntime"))  # dependencies


def test_info_answers_without_torch(dip_run):
    # the default dip info reads what it shows from files and metadata: torch is not imported
    code = ("import sys, json, contextlib, io\n"
            "from dip.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    assert main(['info', '--json']) == 0\n"
            "data = json.loads(out.getvalue())\n"
            "print('torch' in sys.modules, data['torch'] is not None, bool(data['recipes']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"]
    shown = dip_run("info")
    assert shown.returncode == 0, shown.stderr
    assert "native library:" in shown.stdout and "dip info --full" in shown.stdout
    assert "denoise " in shown.stdout and "packages: " in shown.stdout


def test_info_shows_the_hardware_choices_and_what_forced_them(monkeypatch, capsys):
    monkeypatch.setenv("DIP_CHANNELS_LAST", "0")
    monkeypatch.setenv("DIP_BF16_NATIVE", "1")
    assert cli.main(["info", "--full"]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("cpu: "))
    assert "bf16 native" in line and "fp32 layout NCHW" in line
    assert "forced: DIP_CHANNELS_LAST=0, DIP_BF16_NATIVE=1" in line


def test_help_and_version(capsys):
    assert cli.main(["--version"]) == 0
    assert "dip " in capsys.readouterr().out
    assert cli.main(["sr", "--help"]) == 0
    assert "--factor" in capsys.readouterr().out
    assert cli.main([]) == 2


@pytest.mark.parametrize("command,module,add,run", [
    ("eval", "dip.cli.eval_command", "add_arguments", "run"),
    ("export", "dip.export", "add_export_arguments", "run_export"),
    ("render", "dip.export", "add_render_arguments", "run_render"),
])
def test_hooked_commands_are_wired(monkeypatch, capsys, command, module, add, run):
    seen = {}

    def add_arguments(parser):
        parser.add_argument("thing")
        parser.add_argument("--flag", type=int, default=0)

    def run_command(args):
        seen["args"] = (args.thing, args.flag)
        return 0

    fake = types.ModuleType(module)
    setattr(fake, add, add_arguments)
    setattr(fake, run, run_command)
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "x.ckpt", "--flag", "3"]) == 0
    assert seen["args"] == ("x.ckpt", 3)


def test_hooked_command_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dip.cli.eval_command", None)  # import fails
    assert cli.main(["eval", "--size", "32"]) == 1
    err = capsys.readouterr().err
    assert "'dip eval' is not available" in err and "Traceback" not in err


def test_a_short_fit_with_ground_truth_records_a_dense_psnr_curve(tmp_path, image_maker):
    noisy = tmp_path / "n.png"
    image_maker(noisy, 20, 20, "RGB")
    report = tmp_path / "r.json"
    assert cli.main(["denoise", str(noisy), "-o", str(tmp_path / "c.png"), "--gt", str(noisy), "--steps", "30",
                     "--stop", "steps", "--report", str(report), "-q"]) == 0
    curve = json.loads(report.read_text())["psnr_curve"]
    assert curve["step"] == list(range(1, 31))  # the recipe's every-50-steps would give one point


def test_a_closed_stdout_ends_quietly(child_env):
    # `dip info | head -1`: the reader has gone; no "error" line, the shell's SIGPIPE status
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "dip", "info"], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=child_env, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""
