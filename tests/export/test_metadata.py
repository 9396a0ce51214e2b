"""Exported models say what they take and give (names, shapes, range, crop, version, recipe), and
export says when the fit's written image is an average that the model does not render."""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

import dip
import dip.models
import dip.physics
from dip import checkpoint as C
from dip import export as E
from dip.engine.tracking import AVERAGE_MIN_STEPS
from dip.export import metadata as M
from dip.fit import FitConfig, fit, generator_geometry


def _read_raw(fmt, path):
    """The record as a consumer without dip reads it."""
    if fmt == "onnx":
        import onnxruntime as ort

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        return {k[len("dip."):]: json.loads(v) for k, v in props.custom_metadata_map.items() if k.startswith("dip.")}
    files = {"dip.json": ""}
    if fmt == "torchscript":
        torch.jit.load(str(path), _extra_files=files)
    else:
        torch.export.load(str(path), extra_files=files)
    text = files["dip.json"]
    return json.loads(text.decode() if isinstance(text, bytes) else text)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_models_carry_their_metadata(exported, exported_input_z, fmt):
    item = exported["skip-bilinear-reflection"]
    record = _read_raw(fmt, item["paths"][fmt])
    assert record == M.read(item["paths"][fmt]) == item["report"].metadata
    assert record["kind"] == "generator" and record["dip_version"] == dip.__version__
    assert record["inputs"] == [] and record["input_z"] is False
    assert record["outputs"] == [{"name": "image", "shape": [1, 3, 29, 27], "dtype": "float32"}]
    assert record["value_range"] == [0.0, 1.0] and record["layout"] == "NCHW"
    assert record["crop"] == [1, 2, 29, 27] and record["z_shape"] == [1, 4, 32, 32]
    assert record["image_is_average"] is None and record["recipe"] is None

    with_z = _read_raw(fmt, exported_input_z["paths"][fmt])
    assert with_z["input_z"] is True and with_z["z_shape"] == list(exported_input_z["z"].shape)
    assert with_z["inputs"] == [{"name": "z", "shape": list(exported_input_z["z"].shape), "dtype": "float32"}]
    assert E.LoadedModel(exported_input_z["paths"][fmt]).input_shape == tuple(exported_input_z["z"].shape)


def test_onnx_metadata_are_json_text_and_names_match_the_graph(exported):
    import onnx

    path = exported["unet"]["paths"]["onnx"]
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["dip.dip_version"] == json.dumps(dip.__version__)
    assert [o.name for o in proto.graph.output] == [o["name"] for o in json.loads(props["dip.outputs"])]
    assert json.loads(props["dip.crop"]) == [0, 0, 30, 32]


def test_value_range_is_null_without_a_sigmoid(tmp_path):
    net = dip.models.build("skip", 2, 3, num_channels_down=[4], num_channels_up=[4], num_channels_skip=[2],
                           need_sigmoid=False)
    report = E.export(net, torch.rand(1, 2, 8, 8), torchscript=str(tmp_path / "m.pt"), recipe="sr")
    assert M.read(tmp_path / "m.pt")["value_range"] is None
    assert report.metadata["recipe"] == "sr"


def _tiny_fit(steps):
    torch.manual_seed(0)
    y = torch.rand(1, 3, 10, 10)
    physics = dip.physics.Identity()
    net = dip.models.build("skip", 4, 3, num_channels_down=[4], num_channels_up=[4], num_channels_skip=[2])
    _, z_hw = generator_geometry(net, (10, 10))
    z = torch.rand(1, 4, *z_hw) * 0.1
    config = FitConfig(steps=steps, lr=0.01, reg_noise_std=0.03, exp_weight=0.99, channels_last=False)
    return fit(y, physics, net, z, config), y, physics


def test_averaged_fit_export_says_the_model_renders_g_of_z(tmp_path):
    result, y, physics = _tiny_fit(AVERAGE_MIN_STEPS)
    assert not torch.equal(result.image, result.image_plain)  # the fit returned its average
    payload = C.payload_from_result(result, observation=y, physics=physics, recipe={"name": "denoise"})
    report = E.export_payload(payload, torchscript=str(tmp_path / "m.pt"))
    assert report.image_is_average is True and report.image_diff > 0
    expected = ("note: the fit returned the average of its outputs; the exported model renders the generator's "
                "own output G(z), which differs from the written image by up to ")
    assert any(line.startswith(expected) for line in report.lines()), report.lines()
    record = M.read(tmp_path / "m.pt")
    assert record["image_is_average"] is True and record["recipe"] == "denoise"


def test_short_averaging_fit_returns_g_of_z_and_export_reproduces_it(tmp_path):
    result, y, physics = _tiny_fit(3)
    assert result.image_avg is not None and torch.equal(result.image, result.image_plain)
    payload = C.payload_from_result(result, observation=y, physics=physics)
    report = E.export_payload(payload, torchscript=str(tmp_path / "m.pt"))
    assert report.image_is_average is False and report.image_diff <= E.TOLERANCE
    assert report.average_note() is None
    assert any("renders the fit's written image" in line for line in report.lines())


def test_returned_image_is_average_rules():
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert E.returned_image_is_average(None, a, a) is None
    assert E.returned_image_is_average(a, b, None) is False          # no averaging
    assert E.returned_image_is_average(a, a, b) is False             # short fit: the plain output
    assert E.returned_image_is_average(b, a, b) is True              # the average
    # automatic stopping held an earlier (averaged) image
    assert E.returned_image_is_average(a, a, b, returned_step=5, steps_run=9) is True


@pytest.mark.parametrize("package", ["onnx", "onnxscript", "onnxruntime"])
def test_a_missing_onnx_package_is_one_line_naming_it(package, monkeypatch, tmp_path, tiny, capsys, exported):
    net, z, box = tiny.fitted("resnet")
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(M.MissingDependencyError, match=f"pip install {package}"):
        E.export(net, z, onnx=str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()
    # TorchScript and .pt2 need none of them
    assert E.export(net, z, torchscript=str(tmp_path / "m.pt")).max_abs_diff["torchscript"] <= E.TOLERANCE
    args = argparse.Namespace(checkpoint=None, onnx=str(tmp_path / "m.onnx"), torchscript=None, pt2=None,
                              input_z=False, save_z=None, tolerance=E.TOLERANCE)
    payload = {"generator": {"config": dict(net.config), "state": net.state_dict()}, "z": z}
    path = C.save(tmp_path / "fit.ckpt", payload)
    args.checkpoint = str(path)
    assert E.run_export(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"install it with pip install {package}" in err
    assert "bug" not in err and "Traceback" not in err
    if package != "onnxscript":  # rendering needs onnx and onnxruntime
        render_args = argparse.Namespace(model=str(exported["unet"]["paths"]["onnx"]), output=str(tmp_path / "r.png"),
                                         z=None, bit_depth=8)
        assert E.run_render(render_args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"install it with pip install {package}" in err
        assert not (tmp_path / "r.png").exists()
