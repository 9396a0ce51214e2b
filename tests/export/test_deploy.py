"""docs/render_onnx.py renders exported ONNX models with numpy, onnxruntime and Pillow alone: the same
image as dip, in this interpreter and in a fresh virtual environment that has no torch and no dip."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip import export as E
from dip.images import write_image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "render_onnx.py"
TOL = 1e-4


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cases(exported, exported_input_z):
    """(model, z.npy or None, eager reference (1, C, H, W)) for the default and the --input-z model."""
    item = exported["skip-bilinear-reflection"]
    z_item = exported_input_z
    z_ref = E.train_mode_output(z_item["net"], z_item["z"])
    top, left, h, w = z_item["box"]
    return [(item["paths"]["onnx"], None, item["reference"]),
            (z_item["paths"]["onnx"], z_item["z_file"], z_ref[:, :, top:top + h, left:left + w])]


def _render_with_script(python, model, z_file, folder: Path, tag: str):
    png, raw = folder / f"{tag}.png", folder / f"{tag}.npy"
    cmd = [str(python), str(SCRIPT), str(model), str(png), "--npy", str(raw), "--info"]
    if z_file is not None:
        cmd += ["--z", str(z_file)]
    proc = subprocess.run(cmd, cwd=folder, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {png}" in proc.stdout and "\ninput_z: " in proc.stdout
    return np.asarray(Image.open(png)), np.load(raw)


def _check_same_image(pixels, raw, model, z_file, reference, tmp_path, tag):
    assert raw.shape == tuple(reference.shape) and raw.dtype == np.float32
    assert float(np.abs(raw - reference.numpy()).max()) <= TOL
    z = torch.from_numpy(np.load(z_file)) if z_file is not None else None
    dip_png = write_image(tmp_path / f"{tag}-dip.png", E.render(model, z)[0].clamp(0, 1))
    assert np.array_equal(pixels, np.asarray(Image.open(dip_png)))


def _readme_snippet() -> str:
    """The README's torch-free snippet (the python block after "Deployment without torch")."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Deployment without torch or dip.**"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("\n```", start)]


def _render_with_readme(python, model, z_file, folder: Path):
    """Run the README snippet in ``folder`` on copies named model.onnx (and z.npy)."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(Path(model).read_bytes())
    if z_file is not None:
        (folder / "z.npy").write_bytes(Path(z_file).read_bytes())
    proc = subprocess.run([str(python), "-c", _readme_snippet()], cwd=folder, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.asarray(Image.open(folder / "restored.png"))


def _check_both(python, exported, exported_input_z, tmp_path, tag):
    for i, (model, z_file, reference) in enumerate(_cases(exported, exported_input_z)):
        pixels, raw = _render_with_script(python, model, z_file, tmp_path, f"{tag}{i}")
        _check_same_image(pixels, raw, model, z_file, reference, tmp_path, f"{tag}{i}")
        assert np.array_equal(_render_with_readme(python, model, z_file, tmp_path / f"{tag}{i}-readme"), pixels)


def test_script_and_readme_render_what_dip_renders(exported, exported_input_z, tmp_path):
    _check_both(sys.executable, exported, exported_input_z, tmp_path, "here")


def test_script_says_what_an_input_z_model_needs(exported_input_z, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(exported_input_z["paths"]["onnx"]),
                           str(tmp_path / "x.png")], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--z Z.npy" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_render_in_a_venv_without_torch(exported, exported_input_z, tmp_path):
    """A fresh venv with numpy, onnxruntime and Pillow only (pinned to this environment's versions,
    so pip takes them from its cache or the local wheels)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_env())
    python = venv / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "onnxruntime", "pillow")]
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('torch') is None and u.find_spec('dip') is None else 1)")
    assert subprocess.run([str(python), "-c", probe], env=_env(), cwd=tmp_path, timeout=60).returncode == 0, \
        "torch or dip is importable in the deployment venv"
    _check_both(python, exported, exported_input_z, tmp_path, "venv")
