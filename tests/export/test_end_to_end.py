"""`dip sr --checkpoint`, `dip export`, `dip render`: the deployed model renders the fit's image."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dip.cli


def _dip(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def sr_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((12, 14, 3)) * 255).astype(np.uint8)).save(folder / "lr.png")
    proc = _dip("sr", "lr.png", "--factor", "2", "-o", "out.png", "--steps", "3", "--checkpoint", "fit.ckpt",
                "--device", "cpu", "--quiet", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.mark.slow
def test_sr_export_render_same_image(sr_checkpoint):
    folder = sr_checkpoint
    proc = _dip("export", "fit.ckpt", "--onnx", "model.onnx", "--save-z", "z.npy", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "onnx: model.onnx" in proc.stdout
    assert not (folder / "model.onnx.data").exists()
    proc = _dip("render", "model.onnx", "-o", "rendered.png", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    fitted = np.asarray(Image.open(folder / "out.png")).astype(int)
    rendered = np.asarray(Image.open(folder / "rendered.png")).astype(int)
    assert rendered.shape == fitted.shape == (24, 28, 3)
    assert np.abs(rendered - fitted).max() <= 1
    assert np.load(folder / "z.npy").ndim == 4


def test_export_usage_errors(sr_checkpoint, tmp_path, capsys):
    folder = sr_checkpoint
    assert dip.cli.main(["export", str(folder / "fit.ckpt")]) == 2
    assert "at least one" in capsys.readouterr().err

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps(Evil()))
    assert dip.cli.main(["export", str(evil), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "never unpickles" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()

    assert dip.cli.main(["export", str(folder / "fit.ckpt"), "--onnx", str(tmp_path / "m.pt")]) == 2
    assert ".onnx" in capsys.readouterr().err


def test_export_takes_the_format_from_the_name_given_to_o_like_every_other_command(sr_checkpoint, tmp_path,
                                                                                  capsys):
    ckpt = str(sr_checkpoint / "fit.ckpt")
    model, program = tmp_path / "g.pt", tmp_path / "g.pt2"
    assert dip.cli.main(["export", ckpt, "-o", str(model), "--output", str(program)]) == 0
    out = capsys.readouterr().out
    assert model.stat().st_size > 0 and program.stat().st_size > 0
    assert "torchscript" in out.lower() and "g.pt2" in out
    assert dip.cli.main(["export", ckpt, "-o", str(model)]) == 2  # the same rule as every output
    assert f"-o {model} already exists" in capsys.readouterr().err
    assert dip.cli.main(["export", ckpt, "-o", str(model), "--force"]) == 0
    capsys.readouterr()

    wrong = [(["-o", str(tmp_path / "g.txt")], "use .onnx (ONNX), .pt (TorchScript) or .pt2 (torch.export)"),
             (["-o", str(tmp_path / "a.pt"), "--torchscript", str(tmp_path / "b.pt")], "2 torchscript outputs"),
             (["-o", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.ONNX")], "2 onnx outputs")]
    for options, message in wrong:
        assert dip.cli.main(["export", ckpt, *options]) == 2, options
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not any(tmp_path.glob("[ab].*")) and not (tmp_path / "g.txt").exists()


def test_render_usage_errors(tmp_path, capsys, sr_checkpoint):
    ckpt = str(sr_checkpoint / "fit.ckpt")
    assert dip.cli.main(["render", ckpt, "-o", str(tmp_path / "r.png")]) == 2
    assert f"is a fit's checkpoint, not a model: export it first (dip export {ckpt} -o" in capsys.readouterr().err
    assert dip.cli.main(["render", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "r.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert dip.cli.main(["render", str(junk), "-o", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot run" in err and "Traceback" not in err
    assert not (tmp_path / "r.png").exists()
