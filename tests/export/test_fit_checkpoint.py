"""A fit's checkpoint holds what export needs; export uses the returned step's parameters."""
from __future__ import annotations

import pytest
import torch

import dip.models
import dip.physics
from dip import checkpoint as C
from dip import export as E
from dip.fit import FitConfig, fit, generator_geometry


@pytest.fixture(scope="module")
def sr_fit():
    torch.manual_seed(0)
    y = torch.rand(1, 3, 11, 13)
    physics = dip.physics.Downsample(factor=2)
    net = dip.models.build("skip", 4, 3, num_channels_down=[4, 8], num_channels_up=[4, 8],
                           num_channels_skip=[2, 2], upsample_mode="bilinear", pad="reflection")
    _, z_hw = generator_geometry(net, physics.x_size((11, 13)))
    z = torch.rand(1, 4, *z_hw) * 0.1
    config = FitConfig(steps=4, lr=0.01, reg_noise_std=0.03, exp_weight=0.9, channels_last=False)
    return fit(y, physics, net, z, config), y, physics


def test_payload_contents(sr_fit, tmp_path):
    result, y, physics = sr_fit
    payload = C.payload_from_result(result, observation=y, physics=physics,
                                    image_info={"mode": "RGB", "bit_depth": 8, "alpha": None},
                                    options={"factor": 2})
    back = C.load(C.save(tmp_path / "fit.ckpt", payload))
    assert back["generator"]["config"] == dict(result.generator.config)
    assert torch.equal(back["z"], result.z.cpu())
    assert back["crop"] == list(result.crop)
    assert torch.equal(back["observation"], y)
    assert back["physics"] == {"name": "downsample", "factor": 2, "kernel": "lanczos2", "phase": 0.5,
                               "preserve_size": True, "padding": "replicate"}
    rebuilt = dip.physics.from_config({k: v for k, v in back["physics"].items()})
    assert torch.allclose(rebuilt(result.image), physics(result.image))
    assert back["image_info"]["bit_depth"] == 8 and back["options"] == {"factor": 2}
    assert back["fit"]["steps_run"] == 4 and back["fit"]["config"]["steps"] == 4
    assert len(back["fit"]["history"]["loss"]) == 4
    assert back["fit"]["optimizer_state"]["state"][0]["exp_avg"].shape == \
        next(result.generator.parameters()).shape
    for key, value in result.returned_state.items():
        assert torch.equal(back["returned"]["state"][key], value.cpu()), key
    assert torch.equal(back["returned"]["image"], result.image)


def test_export_checkpoint_uses_returned_parameters(sr_fit, tmp_path):
    result, y, physics = sr_fit
    payload = C.payload_from_result(result, observation=y, physics=physics)
    # final weights different from the returned step's: export must ignore them
    payload["generator"]["state"] = {k: torch.zeros_like(v) if v.is_floating_point() else v
                                     for k, v in payload["generator"]["state"].items()}
    path = C.save(tmp_path / "fit.ckpt", payload)
    report = E.export_checkpoint(path, torchscript=str(tmp_path / "m.pt"))
    assert report.output_shape == (1, 3, 22, 26)
    assert all(d <= 1e-4 for d in report.max_abs_diff.values())
    # averaging was on, but a 4-step fit returns its plain image: the export reproduces it
    assert report.image_diff is not None and report.image_diff <= 1e-4
    rendered = E.render(tmp_path / "m.pt")
    assert float((rendered - result.image_plain).abs().max()) <= 1e-4


def test_export_checkpoint_errors(tmp_path):
    path = C.save(tmp_path / "x.ckpt", {"kind": "fit"})
    with pytest.raises(C.CheckpointError, match="'generator.config'"):
        E.export_checkpoint(path, onnx=str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="at least one"):
        E.export_checkpoint(path)
