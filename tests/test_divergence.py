"""A diverging loss sends the run back to its last calm state at half the learning rate, and
stops it after MAX_RECOVERIES; a run whose loss never diverges is not touched."""

import math

import pytest
import torch

from unet_fast import divergence
from unet_fast.checkpoint import TrainConfig
from unet_fast.divergence import DivergenceGuard, TrainingDiverged
from unet_fast.training import train


def _guarded():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, DivergenceGuard(model, optimizer, [])


def _feed(guard, model, losses, start=0):
    """Checks each loss in turn, changing the weights after each step that goes on; returns
    what check() said, and the weights before each step."""
    said, weights = [], []
    for step, loss in enumerate(losses, start=start):
        weights.append(model.weight.detach().clone())
        said.append(guard.check(loss, step))
        if said[-1]:
            with torch.no_grad():
                model.weight.add_(1.0)
    return said, weights


def test_a_calm_run_is_not_touched():
    model, _, guard = _guarded()
    losses = [1.0, 0.8] + [0.01] * 60 + [5.0, 0.02]  # a dense tile among sparse ones: 5x the first loss
    said, weights = _feed(guard, model, losses)
    assert all(said) and guard.recoveries == [] and guard.lr_scale == 1.0
    torch.testing.assert_close(model.weight.detach(), weights[0] + len(losses))


def test_an_exploding_loss_goes_back_to_the_last_calm_state_at_half_the_rate():
    model, optimizer, guard = _guarded()
    said, weights = _feed(guard, model, [1.0] * 30 + [11.0])  # over 10x the usual 1.0
    assert said == [True] * 30 + [False]
    assert torch.equal(model.weight, weights[25])  # the snapshot of step 25
    assert guard.recoveries == [{"step": 31, "reason": "the loss rose to 11, over 10 times its usual 1",
                                 "restored_step": 25}]
    assert guard.lr_scale == 0.5 and "halved the learning rate (now 0.5" in guard.message()


def test_no_snapshot_of_a_restless_state():
    model, _, guard = _guarded()
    # climbing past half the limit between steps 25 and 50: the state of step 50 is not kept
    said, weights = _feed(guard, model, [1.0] * 30 + [6.0, 7.0] + [1.0] * 20 + [float("nan")])
    assert said[-1] is False and guard.recoveries[0]["restored_step"] == 25
    assert guard.recoveries[0]["reason"] == "the loss became nan"
    assert torch.equal(model.weight, weights[25])


def test_the_run_stops_after_max_recoveries():
    model, _, guard = _guarded()
    for attempt in range(divergence.MAX_RECOVERIES):
        assert guard.check(1.0, 2 * attempt) and not guard.check(math.inf, 2 * attempt + 1)
    assert guard.check(1.0, 10)
    with pytest.raises(TrainingDiverged, match=r"the loss became inf at step 12, after 3 recoveries"):
        guard.check(math.inf, 11)


def test_training_recovers_from_one_blown_up_step(tmp_path, monkeypatch):
    from unet_fast import training

    calls = []
    original = training.WeightedSoftmaxCrossEntropyLoss.forward

    def blown_up_at_the_fifth_step(self, *args):
        calls.append(None)
        loss = original(self, *args)
        return loss * 1e6 if len(calls) == 5 else loss

    monkeypatch.setattr(training.WeightedSoftmaxCrossEntropyLoss, "forward", blown_up_at_the_fifth_step)
    config = TrainConfig(widths=(4, 8, 16), tile=60, synthetic_images=1, synthetic_size=64, val_every=0,
                         checkpoint_every=0, steps=8)
    history = train(config, tmp_path)
    assert [r["step"] for r in history["recoveries"]] == [5] and history["recoveries"][0]["restored_step"] == 0
    assert len(history["loss"]) == 7 and all(math.isfinite(loss) for loss in history["loss"])
