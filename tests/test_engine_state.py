"""dip.engine.state: one schema for the engine's state, read back as written, for 1 or K members."""
from __future__ import annotations

import pytest
import torch

from dip.engine import FitConfig, FitState, MemberState, Snapshot, fit, generator_geometry
from dip.inputs import make_input
from dip.models import skip
from dip.physics import Identity


def _small_fit(steps=4):
    torch.manual_seed(0)
    net = skip(4, 3, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 3, 20, 18, generator=g)
    z = make_input("noise", 4, generator_geometry(net, (20, 18))[1], generator=g)
    return fit(y, Identity(), net, z, FitConfig(steps=steps, exp_weight=0.9, backtrack=True, check_every=2,
                                                 stop="auto", stop_window=3, stop_patience=100))


def test_a_result_state_round_trips_through_its_dict():
    result = _small_fit()
    d = result.resume_state()
    assert {"step", "optimizer_state", "rng_state", "image_avg", "stopper_state", "backtrack_state",
            "history", "returned_state", "returned_step", "backtracks", "recoveries", "seconds"} <= set(d)
    back = FitState.from_dict(d)
    assert back.step == result.steps_run == 4
    member = back.member
    assert torch.equal(member.image_avg, result.image_avg)
    assert torch.equal(member.rng_state, result.rng_state)
    assert member.snapshot.psnr == result.state.member.snapshot.psnr is not None  # checked at steps 2, 4
    assert member.history["loss"] == result.history["loss"]
    assert back.to_dict().keys() == d.keys()


def test_a_packed_state_keeps_each_member_apart():
    a = MemberState(image_avg=torch.zeros(1, 3, 2, 2), backtracks=1, recoveries=2,
                    snapshot=Snapshot({"w": torch.ones(1)}, {"state": {}, "param_groups": []}, psnr=30.0))
    b = MemberState(image_avg=torch.ones(1, 3, 2, 2))
    d = FitState(step=7, seconds=1.5, members=[a, b]).to_dict()
    assert set(d) == {"step", "seconds", "optimizer_state", "members"} and len(d["members"]) == 2
    back = FitState.from_dict(d)
    assert [m.backtracks for m in back.members] == [1, 0] and [m.recoveries for m in back.members] == [2, 0]
    assert back.members[0].snapshot.psnr == 30.0 and back.members[1].snapshot is None
    assert torch.equal(back.members[1].image_avg, b.image_avg)
    with pytest.raises(ValueError, match="holds 2 members"):
        _ = back.member


def test_recoveries_default_to_backtracks_for_older_states():
    assert FitState.from_dict({"step": 3, "backtracks": 2}).member.recoveries == 2


@pytest.mark.parametrize("bad, match", [({"steps": 3}, "dict with 'step'"), ({"step": -1}, "integer >= 0"),
                                        ({"step": 2.5}, "integer >= 0")])
def test_a_malformed_resume_state_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        FitState.from_dict(bad)
