"""Checkpoint format: round trip, atomic writes, no code execution, versioning."""
from __future__ import annotations

import json
import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from dip import checkpoint as C


def _payload():
    torch.manual_seed(0)
    return {
        "kind": "fit",
        "weights": {"conv.weight": torch.randn(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7)},
        "z": torch.rand(1, 2, 8, 8),
        "mask": torch.tensor([[True, False]]),
        "half": torch.ones(3, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 5),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "icc": b"\x00\x01profile",
        "no_bytes": b"",
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}, 1: {}},
                      "param_groups": [{"lr": 0.01, "params": [0, 1], "betas": (0.9, 0.999)}]},
        "history": {"loss": [0.5, float("nan"), float("inf")], "step": [1, 2, 3]},
        "options": {"factor": 4, "name": "sr4", "flag": True, "none": None, "__weird": 1},
        "tuple": (1, "a", (2.5,)),
    }


def test_round_trip(tmp_path):
    path = C.save(tmp_path / "a.ckpt", _payload())
    back = C.load(path)
    ref = _payload()
    assert torch.equal(back["weights"]["conv.weight"], ref["weights"]["conv.weight"])
    assert back["weights"]["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(back["mask"], ref["mask"]) and back["mask"].dtype == torch.bool
    assert back["half"].dtype == torch.bfloat16
    assert back["empty"].shape == (0, 5)
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.int16
    assert np.array_equal(back["array"], ref["array"])
    assert back["icc"] == ref["icc"] and back["no_bytes"] == b""
    assert set(back["optimizer"]["state"]) == {0, 1}
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    loss = back["history"]["loss"]
    assert loss[0] == 0.5 and math.isnan(loss[1]) and loss[2] == math.inf
    assert back["options"] == ref["options"]
    assert back["tuple"] == (1, "a", (2.5,))
    assert C.read_header(path)["dip.version"] == str(C.FORMAT_VERSION)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a.ckpt"
    C.save(path, {"x": torch.ones(2)})
    with pytest.raises(TypeError, match=r"payload\.bad.*object"):
        C.save(path, {"x": torch.zeros(2), "bad": object()})
    assert torch.equal(C.load(path)["x"], torch.ones(2))  # the old file is intact
    assert os.listdir(tmp_path) == ["a.ckpt"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_crafted_pickle_does_not_run_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"z": _Evil(str(marker))}, protocol=4))
    else:
        torch.save({"z": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(C.CheckpointError, match="never unpickles"):
        C.load(path)
    assert not marker.exists()


def _rewrite_metadata(path, **changes):
    """Edit the JSON header of a safetensors file in place (keeps the tensor bytes)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_unknown_version_is_a_clear_error(tmp_path):
    path = C.save(tmp_path / "a.ckpt", {"x": torch.ones(2)})
    _rewrite_metadata(path, **{"dip.version": "99"})
    with pytest.raises(C.CheckpointError, match="unknown checkpoint format version 99"):
        C.load(path)
    with pytest.raises(C.CheckpointError, match="version 99"):
        C.read_header(path)


def test_not_a_checkpoint(tmp_path):
    import safetensors.torch

    other = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(other))
    with pytest.raises(C.CheckpointError, match="not a dip checkpoint"):
        C.load(other)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello world, not a checkpoint at all")
    with pytest.raises(C.CheckpointError, match="not a dip checkpoint"):
        C.load(junk)
    short = tmp_path / "short.ckpt"
    short.write_bytes(b"abc")
    with pytest.raises(C.CheckpointError, match="3 bytes"):
        C.load(short)
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "missing.ckpt")


def test_corrupt_payload_reference(tmp_path):
    path = C.save(tmp_path / "a.ckpt", {"x": torch.ones(2)})
    _rewrite_metadata(path, **{"dip.payload": json.dumps({"x": {"__tensor__": "t9"}})})
    with pytest.raises(C.CheckpointError, match="missing tensor"):
        C.load(path)


def test_require_names_the_missing_field():
    with pytest.raises(C.CheckpointError, match="'generator.config'"):
        C.require({"generator": {}}, "generator.config")
    C.require({"generator": {"config": {}}}, "generator.config")


def test_header_length_that_looks_like_a_pickle_opcode(tmp_path):
    """A safetensors header length whose first byte is 0x80 (the pickle PROTO opcode) loads."""
    path = tmp_path / "a.ckpt"
    for pad in range(256):
        C.save(path, {"x": torch.ones(2), "pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length starting with byte 0x80")
    assert C.load(path)["pad"] == "p" * pad


def test_equal_tensors_are_stored_once_and_read_back_as_separate_copies(tmp_path):
    w = torch.randn(64, 64)
    payload = {"final": {"w": w}, "returned": {"w": w.clone()}, "other": {"w": w + 1},
               "bf16": w.to(torch.bfloat16), "flags": torch.tensor([True, False])}
    path = C.save(tmp_path / "d.ckpt", payload)
    assert os.path.getsize(path) < 3.0 * w.numel() * 4  # w, w + 1 and w in bf16; w stored once, not twice
    back = C.load(path)
    assert torch.equal(back["final"]["w"], w) and torch.equal(back["returned"]["w"], w)
    assert torch.equal(back["other"]["w"], w + 1) and torch.equal(back["bf16"], w.to(torch.bfloat16))
    back["final"]["w"].zero_()  # the two values do not share storage
    assert torch.equal(back["returned"]["w"], w)


def test_a_fit_checkpoint_at_a_check_step_holds_each_state_once(tmp_path):
    """At a check step the recovery snapshot equals the current weights and Adam state, and the
    returned step is the last one: the file holds weights + Adam's moments about once."""
    from dip.fit import FitConfig, fit, generator_geometry
    from dip.models import build
    from dip.physics import Identity

    torch.manual_seed(0)
    net = build("skip", 4, 3, num_channels_down=[16, 16], num_channels_up=[16, 16], num_channels_skip=[4, 4])
    y = torch.rand(1, 3, 16, 16)
    z = torch.rand(1, 4, *generator_geometry(net, (16, 16))[1]) * 0.1
    result = fit(y, Identity(), net, z, FitConfig(steps=10, check_every=10, backtrack=True))
    weights = sum(v.numel() * v.element_size() for v in net.state_dict().values())
    path = C.save(tmp_path / "fit.ckpt", C.payload_from_result(result, observation=y, physics=Identity()))
    assert os.path.getsize(path) < 1.3 * 3 * weights  # without sharing: ~7 copies of the weights
