import functools
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from prunus.config import TrainConfig
from prunus.errors import PrunusError
from prunus.models import build_model
from prunus.train import Callback, Trainer, measure_flops
from prunus.train.trainer import lr_factor


def fit(dataset, seed=0, callbacks=(), **settings):
    model = build_model("mlp", dataset.input_shape, dataset.num_classes, seed=seed, hidden=(16,))
    settings = {"epochs": 2, "batch_size": 32, "seed": seed, **settings}
    return Trainer(model, dataset, callbacks=list(callbacks), **settings).fit()


def test_same_seed_gives_identical_metrics(blobs):
    first = fit(blobs, seed=3)
    second = fit(blobs, seed=3)
    keys = ("accuracy", "loss", "examples_forwarded", "flops", "lr")
    assert [[r[k] for k in keys] for r in first.history] == [[r[k] for k in keys] for r in second.history]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    third = fit(blobs, seed=4)
    assert first.history[-1]["loss"] != third.history[-1]["loss"]


class Recorder(Callback):
    """Records every event by overriding all handlers explicitly."""

    def __init__(self):
        self.events = []

    def record(self, event, state):
        self.events.append(event)


for _event in (
    "fit_start", "epoch_start", "batch_start", "after_forward", "after_loss", "after_backward",
    "after_step", "batch_end", "epoch_end", "evaluation", "fit_end",
):
    setattr(Recorder, f"on_{_event}", functools.partialmethod(Recorder.record, _event))


def test_callback_order(blobs):
    recorder = Recorder()
    small = blobs.subset(blobs.ids[:64])
    fit(small, callbacks=[recorder], epochs=1, batch_size=32)
    step = ["batch_start", "after_forward", "after_loss", "after_backward", "after_step", "batch_end"]
    expected = ["fit_start", "epoch_start", *step, *step, "evaluation", "epoch_end", "fit_end"]
    assert recorder.events == expected


def test_epoch_ids_and_weights_from_a_callback_are_used(blobs):
    chosen = blobs.ids[::4][:50]

    class KeepQuarter(Callback):
        seen: ClassVar[list] = []

        def on_epoch_start(self, state):
            state.epoch_ids = chosen
            state.epoch_weights = np.full(len(chosen), 2.0)

        def on_batch_start(self, state):
            self.seen.extend(state.batch.ids.tolist())
            assert torch.all(state.batch.weights == 2.0)

    result = fit(blobs, callbacks=[KeepQuarter()], epochs=2, batch_size=16)
    assert KeepQuarter.seen == chosen.tolist() * 2
    assert result.meter.examples_forwarded == 100 == result.meter.examples_backpropagated


def test_batch_replacement_counts_backprop_separately(blobs):
    class HalfBatch(Callback):
        def on_batch_start(self, state):
            batch = state.batch
            state.meter.count(state.model, batch.x, forwarded=len(batch), backpropagated=0)
            state.batch = batch.select(torch.arange(len(batch)) % 2 == 0)

    result = fit(blobs, callbacks=[HalfBatch()], epochs=1, batch_size=40)
    assert result.meter.examples_backpropagated == 120
    assert result.meter.examples_forwarded == 240 + 120


def test_flop_meter_counts_two_in_out_per_linear():
    model = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
    forward, backward = measure_flops(model, torch.randn(8, 10))
    assert forward == 2 * 10 * 7 + 2 * 7 * 3
    # backward: grads of inputs and weights for the second layer, weights only for the first
    assert backward == 2 * (2 * 7 * 3) + 2 * 10 * 7


def test_flops_are_accumulated_per_example(blobs):
    result = fit(blobs, epochs=1, batch_size=32)
    fwd, bwd = result.meter.flops_per_example(result.model, torch.zeros(1, 8))
    assert fwd == 2 * 8 * 16 + 2 * 16 * 3
    assert result.meter.flops == pytest.approx(240 * (fwd + bwd))


def _first_kept(shape, kept):
    mask = torch.zeros(shape, dtype=torch.bool).flatten()
    mask[:kept] = True
    return mask.view(shape)


def test_theoretical_flops_are_per_layer_weight_density():
    from prunus.train.meter import ComputeMeter
    from prunus.weights import masks as M

    model = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 4))
    # layer 0: 16 of 400 weights kept (96% sparse); layer 2: 80 of 160 kept (50% sparse)
    M.apply(model, {"0.weight": _first_kept((40, 10), 16), "2.weight": _first_kept((4, 40), 80)})
    meter = ComputeMeter(density=96 / 560, layer_density=M.layer_densities(model))
    assert meter.layer_density == {"0": 0.04, "2": 0.5}
    meter.count(model, torch.randn(8, 10), forwarded=8, backpropagated=8)
    # by hand, per example: forward 2·in·out per Linear; backward 2·in·out for the weight
    # gradient of both layers plus 2·in·out for the input gradient of the second one
    fwd = 0.04 * 2 * 10 * 40 + 0.5 * 2 * 40 * 4
    bwd = 0.04 * 2 * 10 * 40 + 0.5 * 2 * (2 * 40 * 4)
    assert meter.flops == pytest.approx(8 * (fwd + bwd))
    # the old rule (dense × overall density) undercounts this model by about a fifth
    dense_fwd, dense_bwd = meter.flops_per_example(model, torch.randn(8, 10))
    assert dense_fwd == 2 * 10 * 40 + 2 * 40 * 4
    assert 96 / 560 * 8 * (dense_fwd + dense_bwd) < 0.85 * meter.flops


def test_sparsifier_publishes_layer_densities_to_the_meter(blobs):
    from prunus.weights import masks as M
    from prunus.weights.schedules import Sparsifier

    class Fixed(Sparsifier):
        def on_fit_start(self, state):
            super().on_fit_start(state)
            M.apply(state.model, {"1.weight": _first_kept((16, 8), 4), "3.weight": _first_kept((3, 16), 40)})
            self.report(state)

    result = fit(blobs, callbacks=[Fixed(0.5)], epochs=1, batch_size=32)
    assert result.meter.layer_density == {"1": 4 / 128, "3": 40 / 48}
    assert result.meter.density == pytest.approx(44 / 176)
    fwd = 4 / 128 * 2 * 8 * 16 + 40 / 48 * 2 * 16 * 3
    bwd = 4 / 128 * 2 * 8 * 16 + 40 / 48 * 2 * (2 * 16 * 3)
    assert result.meter.flops == pytest.approx(240 * (fwd + bwd))


def test_nan_loss_is_a_clear_error(blobs):
    class Poison(Callback):
        def on_after_loss(self, state):
            state.loss = state.loss * float("nan")

    with pytest.raises(PrunusError, match="loss became nan"):
        fit(blobs, callbacks=[Poison()], epochs=1)


def test_bad_setting_names_the_field(blobs):
    with pytest.raises(PrunusError, match="train.optimizer"):
        fit(blobs, optimizer="adagrad")
    with pytest.raises(PrunusError, match="train.epochs"):
        fit(blobs, epochs=0)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "onecycle"])
def test_lr_schedules(schedule):
    cfg = TrainConfig(schedule=schedule, warmup=0.1, step_size=0.5, gamma=0.1)
    total = 100
    factors = [lr_factor(s, total, cfg) for s in range(total)]
    assert max(factors) == pytest.approx(1.0)
    if schedule == "cosine":
        assert factors[10] == pytest.approx(1.0)
        assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    if schedule == "step":
        assert factors[49] == 1.0 and factors[50] == pytest.approx(0.1)
    if schedule == "onecycle":
        assert factors[0] == pytest.approx(1 / 25) and factors[-1] < 0.01


def test_total_steps_can_be_shortened_at_fit_start(blobs):
    class Shorten(Callback):
        def on_fit_start(self, state):
            state.total_steps = 4

    result = fit(blobs, callbacks=[Shorten()], epochs=1, batch_size=32, schedule="cosine", warmup=0)
    assert result.history[-1]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi)), abs=1e-12)


def test_eval_every_adds_intermediate_evaluations(blobs):
    result = fit(blobs, epochs=1, batch_size=30, eval_every=4)
    # the end of the epoch falls on an evaluation step: one row, marked as the epoch's end
    assert [r["step"] for r in result.history] == [4, 8]
    assert [r["end_of_epoch"] for r in result.history] == [False, True]


def test_examples_budget_cuts_the_last_epoch_and_sizes_the_schedule(blobs):
    n = len(blobs)
    budget = 2 * n + 70  # two full passes and 70 examples of a third
    result = fit(blobs, epochs=10, batch_size=32, examples=budget)
    assert result.meter.examples_backpropagated == budget
    assert result.history[-1]["epoch"] == 3
    # the one-cycle schedule was sized to the steps taken, so it ended at its floor
    steps = 2 * math.ceil(n / 32) + math.ceil(70 / 32)
    assert result.history[-1]["step"] == steps
    assert result.history[-1]["lr"] < 1e-3 * 3e-3


def test_evaluation_cadence_by_examples_backpropagated(blobs):
    n = len(blobs)
    cadence = n // 2
    result = fit(blobs, epochs=3, batch_size=32, eval_every_examples=cadence)
    counts = [r["examples_backpropagated"] for r in result.history]
    # one evaluation at the first step at or past each multiple of the cadence; the last
    # multiple is the end of training, which is also the final (end-of-epoch) evaluation
    marks = [k * cadence for k in range(1, 3 * n // cadence + 1)]
    assert len(counts) == len(marks) + (marks[-1] != 3 * n)
    assert all(0 <= c - m < 32 for c, m in zip(counts, marks))
    assert counts[-1] == 3 * n and result.history[-1]["end_of_epoch"]
    assert sum(r["end_of_epoch"] for r in result.history) == 1  # no per-epoch evaluations


def test_learns_blobs(blobs):
    result = fit(blobs, epochs=5)
    assert result.history[-1]["accuracy"] > 0.9
