"""Exported generators reproduce the eager training-mode image, with standard operators only."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dip.ops
import dip.physics
from dip import export as E
from dip.export import write as export_write

TOL = 1e-4

# Runs in a fresh interpreter that never imports dip; prints the outputs' file names as JSON.
_LOADER = {
    "onnx": """
        import onnxruntime as ort
        def run(path):
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            assert not s.get_inputs(), "model has inputs"
            return s.run(None, {})[0]
    """,
    "torchscript": """
        import torch
        def run(path):
            return torch.jit.load(path)().numpy()
    """,
    "pt2": """
        import torch
        def run(path):
            return torch.export.load(path).module()().numpy()
    """,
}
_MAIN = """
    import json, sys
    import numpy as np
    jobs = json.loads(sys.argv[1])
    for path, out in jobs:
        np.save(out, run(path))
    assert not any(m == "dip" or m.startswith("dip.") for m in sys.modules), "dip was imported"
"""


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_artefacts_run_in_a_process_without_dip(exported, fmt, tmp_path):
    jobs = [(str(item["paths"][fmt]), str(tmp_path / f"{name}.npy")) for name, item in exported.items()]
    script = textwrap.dedent(_LOADER[fmt]) + textwrap.dedent(_MAIN)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, item in exported.items():
        out = torch.from_numpy(np.load(tmp_path / f"{name}.npy"))
        ref = item["reference"]
        assert out.shape == ref.shape, name
        assert float((out - ref).abs().max()) <= TOL, name


def test_report_and_output_size(exported):
    for name, item in exported.items():
        report = item["report"]
        assert set(report.paths) == {"onnx", "torchscript", "pt2"}
        assert all(0 <= d <= TOL for d in report.max_abs_diff.values()), (name, report.max_abs_diff)
        box = item["box"]
        expected_hw = tuple(box[2:]) if box is not None else tuple(item["reference"].shape[-2:])
        assert report.output_shape == (1, 3) + expected_hw
        assert report.image_diff is None
        assert any("onnx" in line for line in report.lines())


def test_onnx_is_one_valid_standard_file(exported):
    import onnx

    for name, item in exported.items():
        path = item["paths"]["onnx"]
        assert not path.with_name(path.name + ".data").exists()
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name
        assert not model.functions
        assert len(model.graph.input) == 0
        assert E.nonstandard_ops(model) == []


def test_torch_graphs_have_standard_ops_only(exported):
    for name, item in exported.items():
        assert E.nonstandard_ops(torch.jit.load(str(item["paths"]["torchscript"]))) == [], name
    ep = torch.export.load(str(exported["skip-nearest-zero-lanczos"]["paths"]["pt2"]))
    assert E.nonstandard_ops(ep) == []
    assert any("convolution" in str(n.target) or "conv2d" in str(n.target) for n in ep.graph.nodes)


def test_batchnorm_statistics_are_frozen_from_z(exported, tiny):
    """Plain eval mode (running statistics) renders another image; the export does not."""
    item = exported["skip-bilinear-reflection"]
    net = copy.deepcopy(item["net"]).eval()
    with torch.no_grad():
        eval_out = tiny.crop_box(net(item["z"]), item["box"])
    assert float((eval_out - item["reference"]).abs().max()) > 1e-3
    out = E.render(item["paths"]["onnx"])
    assert float((out - item["reference"]).abs().max()) <= TOL


def test_input_z_renders_other_codes(exported_input_z, tiny):
    item = exported_input_z
    net, z, box, paths, report = item["net"], item["z"], item["box"], item["paths"], item["report"]
    assert report.input_z and all(d <= TOL for d in report.max_abs_diff.values())
    z2 = torch.rand(z.shape, generator=torch.Generator().manual_seed(5)) * 0.1
    expected = tiny.eager_train_output(net, z2, box)
    assert float((expected - tiny.eager_train_output(net, z, box)).abs().max()) > 1e-3
    for fmt, path in paths.items():
        out = E.render(path, z2)
        assert float((out - expected).abs().max()) <= TOL, fmt
        with pytest.raises(ValueError, match="takes the code z"):
            E.render(path)
    import onnx

    model = onnx.load(str(paths["onnx"]))
    assert [i.name for i in model.graph.input] == ["z"]
    onnx.checker.check_model(model, full_check=True)


def test_returned_image_difference_is_reported_and_large_onnx_uses_external_data(tmp_path, monkeypatch, tiny):
    net, z, box = tiny.fitted("resnet")
    ref = tiny.eager_train_output(net, z, box)
    averaged = (ref + 0.01).clamp(0, 1)
    monkeypatch.setattr(export_write, "ONNX_SINGLE_FILE_LIMIT", 1000)  # bytes: this model counts as "too large"
    report = E.export(net, z, onnx=str(tmp_path / "m.onnx"), image=averaged, image_is_average=True)
    assert report.image_diff == pytest.approx(float((ref - averaged).abs().max()), abs=1e-6)
    assert report.image_diff > TOL
    assert report.image_is_average is True
    assert any("the fit returned the average of its outputs; the exported model renders the generator's own "
               "output G(z), which differs from the written image by up to" in line for line in report.lines())
    assert report.extra_files["onnx"] == [tmp_path / "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size > 1000
    assert report.max_abs_diff["onnx"] <= TOL


class _Dropout(nn.Module):
    """A generator whose training-mode output cannot be reproduced by an inference graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return torch.sigmoid(self.drop(self.conv(x)))


def test_verification_failure_raises_and_keeps_nothing(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "m.pt2"
    with pytest.raises(E.ExportError, match="differs from the eager output"):
        E.export(_Dropout(), torch.rand(1, 2, 8, 8), pt2=str(target))
    assert not target.exists()


@torch.library.custom_op("diptest_export::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class _CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return torch.sigmoid(_twice(self.conv(x)))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_nonstandard_ops_are_refused(tmp_path, fmt):
    target = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    with pytest.raises(E.ExportError, match="non-standard operators.*diptest_export"):
        E.export(_CustomOpNet(), torch.rand(1, 2, 8, 8), **{fmt: str(target)})
    assert not target.exists()


def test_bad_arguments(tmp_path, tiny):
    net, z, _ = tiny.fitted("resnet")
    with pytest.raises(ValueError, match="at least one"):
        E.export(net, z)
    with pytest.raises(ValueError, match="does not fit"):
        E.export(net, z, onnx=str(tmp_path / "a.onnx"), crop=(0, 0, 100, 10))
    with pytest.raises(ValueError, match="does not exist"):
        E.export(net, z, onnx=str(tmp_path / "missing" / "a.onnx"))
    with pytest.raises(ValueError, match="shape"):
        E.export(net, z[0], onnx=str(tmp_path / "a.onnx"))
    with pytest.raises(ValueError, match="unknown model format"):
        E.render(tmp_path / "model.bin")


@pytest.mark.skipif(not dip.ops.has_native(), reason="needs the native library dip._C")
def test_native_ops_are_replaced_by_standard_ones(tmp_path, tiny):
    net, z, box = tiny.fitted("skip-bilinear-reflection")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(copy.deepcopy(net).train(), (z,), check_trace=False)
    assert any(op.startswith("dip::") for op in E.nonstandard_ops(traced))  # the eager net runs native ops
    report = E.export(net, z, crop=box, torchscript=str(tmp_path / "m.pt"), pt2=str(tmp_path / "m.pt2"))
    assert all(d <= TOL for d in report.max_abs_diff.values())
    assert E.nonstandard_ops(torch.jit.load(str(tmp_path / "m.pt"))) == []
    assert E.nonstandard_ops(torch.export.load(str(tmp_path / "m.pt2"))) == []


@pytest.mark.parametrize("factor", [2, 3])
def test_downsample_exports_to_onnx(tmp_path, factor):
    import onnx

    op = dip.physics.Downsample(factor=factor, kernel="lanczos2")
    x = torch.rand(1, 3, 10 * factor, 12 * factor)
    report = E.export_operator(op, x, onnx=str(tmp_path / "down.onnx"))
    assert report.max_abs_diff["onnx"] <= TOL and report.output_shape == (1, 3, 10, 12)
    model = onnx.load(str(tmp_path / "down.onnx"))
    onnx.checker.check_model(model, full_check=True)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(any(a.name == "group" and a.i == 3 for a in n.attribute) for n in convs)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "down.onnx"), providers=["CPUExecutionProvider"])
    x2 = torch.rand(1, 3, 10 * factor, 12 * factor)
    with torch.no_grad():
        expected = op(x2)
    out = sess.run(None, {"x": x2.numpy()})[0]
    assert np.abs(out - expected.numpy()).max() <= 1e-5


@pytest.mark.parametrize("padding", ["reflect", "valid"])
def test_blur_exports_as_a_grouped_conv_even_where_it_fits_by_fft(tmp_path, padding):
    import onnx

    op = dip.physics.Blur(torch.rand(11, 11, generator=torch.Generator().manual_seed(0)), padding, normalize=True)
    assert op.fft  # an 11-pixel kernel convolves by FFT in the fit
    x = torch.rand(1, 3, 20, 24)
    report = E.export_operator(op, x, onnx=str(tmp_path / "blur.onnx"), torchscript=str(tmp_path / "blur.pt"))
    assert max(report.max_abs_diff.values()) <= TOL and report.output_shape == op(x).shape
    model = onnx.load(str(tmp_path / "blur.onnx"))
    assert any(n.op_type == "Conv" for n in model.graph.node)
