"""Fixtures for the export tests: tiny fitted generators mirroring the paper's configurations,
and their exports (made once per session).

Helpers reach the tests through the ``tiny`` fixture (no imports between test modules)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dip.models
from dip import export as E

#: name -> (builder, code shape, crop (top, left, H, W) or None)
GENERATORS = {
    "skip-bilinear-reflection": (
        lambda: dip.models.skip(4, 3, [4, 8], [4, 8], [2, 2], pad="reflection", upsample_mode="bilinear"),
        (1, 4, 32, 32), (1, 2, 29, 27)),
    "skip-nearest-zero-lanczos": (
        lambda: dip.models.skip(4, 3, [4, 8], [4, 8], [0, 2], pad="zero", upsample_mode="nearest",
                                downsample_mode="lanczos2"),
        (1, 4, 32, 32), None),
    "unet": (lambda: dip.models.unet(3, 3, feature_scale=16, norm_layer="batch"), (1, 3, 32, 32), (0, 0, 30, 32)),
    "resnet": (lambda: dip.models.resnet(4, 3, num_blocks=2, num_channels=4), (1, 4, 24, 24), None),
    "decoder": (lambda: dip.models.decoder(4, 3, num_channels=4, n_upsamples=2), (1, 4, 8, 8), (3, 1, 28, 30)),
}


def crop_box(x: torch.Tensor, box) -> torch.Tensor:
    if box is None:
        return x
    top, left, h, w = box
    return x[:, :, top:top + h, left:left + w]


def fitted(name: str, seed: int = 0):
    """A generator after a few Adam steps (non-trivial weights and BatchNorm statistics) and its z."""
    build, shape, box = GENERATORS[name]
    torch.manual_seed(seed)
    net = build()
    z = torch.rand(shape) * 0.1
    target = torch.rand(1, 3, shape[2] * net.input_scale, shape[3] * net.input_scale)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(z), target).backward()
        opt.step()
    return net, z, box


def eager_train_output(net: torch.nn.Module, z: torch.Tensor, box) -> torch.Tensor:
    """Training-mode output, computed here independently of dip.export."""
    copy_ = copy.deepcopy(net).train()
    with torch.no_grad():
        return crop_box(copy_(z), box)


@pytest.fixture(scope="session")
def tiny():
    """The helpers: ``fitted(name, seed)``, ``eager_train_output(net, z, box)``, ``crop_box(x, box)``."""
    return SimpleNamespace(fitted=fitted, eager_train_output=eager_train_output, crop_box=crop_box,
                           generators=GENERATORS)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Every generator of GENERATORS exported to ONNX, TorchScript and .pt2 (z baked in).

    Returns name -> dict(paths, reference, report, net, z, box).
    """
    folder = tmp_path_factory.mktemp("exported")
    out = {}
    for name in GENERATORS:
        net, z, box = fitted(name)
        paths = {"onnx": folder / f"{name}.onnx", "torchscript": folder / f"{name}.pt",
                 "pt2": folder / f"{name}.pt2"}
        report = E.export(net, z, crop=box, **{k: str(v) for k, v in paths.items()})
        out[name] = dict(paths=paths, reference=eager_train_output(net, z, box), report=report,
                         net=net, z=z, box=box)
    return out


@pytest.fixture(scope="session")
def exported_input_z(tmp_path_factory):
    """"skip-bilinear-reflection" (seed 1, with its crop) exported with ``input_z=True`` to all
    three formats, plus its code saved as z.npy.  Returns dict(paths, report, net, z, box, z_file)."""
    folder = tmp_path_factory.mktemp("exported_z")
    net, z, box = fitted("skip-bilinear-reflection", seed=1)
    paths = {"onnx": folder / "m.onnx", "torchscript": folder / "m.pt", "pt2": folder / "m.pt2"}
    report = E.export(net, z, input_z=True, crop=box, **{k: str(v) for k, v in paths.items()})
    z_file = folder / "z.npy"
    np.save(z_file, z.numpy())
    return dict(paths=paths, report=report, net=net, z=z, box=box, z_file=z_file)
