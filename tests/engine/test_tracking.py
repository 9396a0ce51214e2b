"""The tracker reads the device only where the stopping rule syncs (the accelerators' path,
forced on CPU)."""
import torch

from dip.engine.config import FitConfig
from dip.engine.tracking import Tracker
from dip.stopping import WindowedVarianceStopper


def test_observing_reads_the_stopping_rule_only_every_sync_every_steps(monkeypatch):
    monkeypatch.setenv("DIP_BRANCH_FREE", "1")
    reads = []

    class Counting(WindowedVarianceStopper):
        def finalize(self):  # what returned_step / best_step read
            reads.append("finalize")
            super().finalize()

        def _check(self, step):  # the rule's one read
            reads.append(step)
            return super()._check(step)

    track = Tracker(FitConfig(steps=80, stop="auto", exp_weight=None), None, torch.device("cpu"))
    track.stopper = Counting(window=5, patience=1000, sync_every=25)
    generator = torch.nn.Linear(3, 2)
    start = generator.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    for step in range(1, 81):
        with torch.no_grad():
            generator.weight.add_(0.01)  # the weight tells the step
        spread = 0.01 + abs(step - 40) / 80  # the outputs settle most around step 40
        track.observe(step, 0.5 + spread * torch.rand(1, 3, 4, 4, generator=g), generator.state_dict)
    assert reads == [5, 30, 55, 80]
    returned = track.stopper.returned_step
    assert 30 < returned < 50
    torch.testing.assert_close(track.best_state["weight"], start + 0.01 * returned, rtol=0, atol=1e-5)
