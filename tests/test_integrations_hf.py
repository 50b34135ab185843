"""prunus policies in a real ``transformers.Trainer`` (tiny causal LMs, CPU, a few steps)."""

import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunus.counts import fraction_count
from prunus.data.online import get_online, rs2_epoch_indices
from prunus.errors import MissingExtraError, PrunusError
from prunus.integrations.hf import (
    PrunusCallback,
    PrunusTrainer,
    keep_rows,
    per_example_loss,
    selection_sampler,
)
from prunus.text.lm import build_lm, token_losses
from prunus.text.rho1 import Rho1
from prunus.weights import get_sparsifier, masks_of, prunable_weights

ROOT = Path(__file__).resolve().parents[1]
VOCAB, LENGTH, N, BATCH = 64, 16, 48, 8


class Sequences(torch.utils.data.Dataset):
    """Random token sequences (the last few rows padded); records the rows read."""

    def __init__(self, n=N):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
        self.mask = torch.ones(n, LENGTH, dtype=torch.long)
        self.mask[-4:, LENGTH // 2 :] = 0
        self.read: list[int] = []

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        self.read.append(int(i))
        labels = self.ids[i].masked_fill(self.mask[i] == 0, -100)
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": labels}


def arguments(tmp_path, **options):
    return transformers.TrainingArguments(**{
        "output_dir": str(tmp_path), "report_to": [], "save_strategy": "no",
        "logging_strategy": "no", "per_device_train_batch_size": BATCH, "num_train_epochs": 2,
        "learning_rate": 1e-3, "use_cpu": True, "disable_tqdm": True, "seed": 0, **options,
    })


def lm(name="gpt_tiny", **options):
    return build_lm(name, vocab_size=VOCAB, context_length=LENGTH, **options)


def adam_steps(trainer) -> int:
    optimizer = trainer.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    return int(optimizer.state[param]["step"])


# --------------------------------------------------------------------------- losses


def test_per_example_loss_is_each_sequence_mean_token_loss():
    model, data = lm(), Sequences()
    batch = {k: torch.stack([data[i][k] for i in range(len(data) - 6, len(data))]) for k in data[0]}
    losses = per_example_loss(model, batch)
    tokens, real = token_losses(model, batch["input_ids"], batch["attention_mask"])
    for row in range(len(losses)):
        expected = tokens[row][real[row]].mean()
        assert torch.allclose(losses[row], expected, atol=1e-6)
    # the batch's token mean is what transformers reports: same tokens, other weighting
    reported = model(**batch).loss
    assert torch.allclose((tokens * real).sum() / real.sum(), reported, atol=1e-5)


# --------------------------------------------------------------------------- data policies


def test_selective_backprop_backpropagates_about_keep(tmp_path):
    trainer = PrunusTrainer(
        model=lm(), args=arguments(tmp_path, num_train_epochs=4), train_dataset=Sequences(),
        policies=[get_online("selective_backprop", keep=0.5, seed=0)],
    )
    trained = []
    original = trainer.compute_loss

    def counting(model, inputs, *args, **kwargs):
        trained.append(len(inputs["input_ids"]))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = counting
    trainer.train()
    meter = trainer.prunus_state.meter
    assert meter.examples_backpropagated == sum(trained)
    assert 0.3 < sum(trained) / (4 * N) < 0.7
    assert meter.examples_forwarded == 4 * N + sum(trained)  # every row scored once, no grad
    assert all(size == BATCH for size in trained[:-1])
    assert adam_steps(trainer) == len(trained) < trainer.state.global_step  # skipped: no update


def test_rs2_trains_on_its_subsets_with_a_shorter_schedule(tmp_path):
    data = Sequences()
    trainer = PrunusTrainer(
        model=lm(), args=arguments(tmp_path, num_train_epochs=3), train_dataset=data,
        policies=[get_online("rs2", keep=0.25, seed=2)],
    )
    trainer.train()
    expected = np.concatenate([rs2_epoch_indices(N, 0.25, e, seed=2) for e in range(3)])
    assert data.read == expected.tolist()
    assert trainer.state.global_step == 3 * math.ceil(fraction_count(0.25, N) / BATCH)
    assert trainer.state.max_steps == trainer.state.global_step  # the LR schedule fits the run


def test_infobatch_and_reweight_build_the_loss(tmp_path):
    policy = get_online("infobatch", keep=0.5, final_full=0.25, seed=0)
    trainer = PrunusTrainer(model=lm(), args=arguments(tmp_path, num_train_epochs=4),
                            train_dataset=Sequences(), policies=[policy])
    trainer.train()
    assert trainer.prunus_state.meter.examples_backpropagated < 4 * N
    assert not np.isnan(policy.sampler.losses).any()  # every row's loss was recorded
    trainer = PrunusTrainer(model=lm(), args=arguments(tmp_path, num_train_epochs=1),
                            train_dataset=Sequences(), policies=[get_online("reweight")])
    trainer.train()
    state = trainer.prunus_state
    assert not torch.allclose(state.loss, state.per_example_loss.mean())


def test_rho1_keeps_the_top_tokens_of_each_batch(tmp_path):
    rho1 = Rho1(lm(seed=1), keep_fraction=0.6)
    data = Sequences()
    trainer = PrunusTrainer(model=lm(), args=arguments(tmp_path), train_dataset=data,
                            token_policies=[rho1])
    trainer.train()
    real = (data.mask[:, 1:] == 1).sum(1)  # real targets of each row
    expected = 0
    for start in range(0, 2 * N, BATCH):
        rows = [data.read[k] for k in range(start, start + BATCH)]
        expected += fraction_count(0.6, int(real[rows].sum()))
    assert rho1.kept == expected == trainer.token_state.meter.tokens_with_grad
    assert rho1.seen == 2 * int(real.sum())
    # the token policies saw the loop's one State type, with the last batch's example ids
    from prunus.train import State

    state = trainer.token_state
    assert isinstance(state, State) and state.batch.ids.tolist() == rows


# --------------------------------------------------------------------------- weight policies


@pytest.mark.parametrize(("method", "settings"), [("gmp", {"every": 2}), ("rigl", {"every": 2}),
                                                   ("imp", {"rounds": 2})])
def test_weight_policy_in_a_plain_trainer_gives_an_exact_mask(tmp_path, method, settings):
    model = lm("llama_tiny")
    policy = get_sparsifier(method, sparsity=0.8, include_last=False, **settings)
    callback = PrunusCallback(policy)
    trainer = transformers.Trainer(model=model, args=arguments(tmp_path), train_dataset=Sequences(),
                                   callbacks=[callback])
    trainer.train()
    masks = masks_of(model)
    targets = prunable_weights(model, include_last=False)
    pruned = sum(int((~masks[t.name]).sum()) for t in targets)
    assert pruned == fraction_count(0.8, sum(t.numel for t in targets))
    assert all(bool((t.weight[~masks[t.name]] == 0).all()) for t in targets)
    if method == "rigl":
        assert policy.updates > 0


def test_data_and_weight_policies_in_one_trainer(tmp_path):
    model = lm("llama_tiny")
    trainer = PrunusTrainer(
        model=model, args=arguments(tmp_path), train_dataset=Sequences(),
        policies=[get_online("rs2", keep=0.5), get_sparsifier("magnitude", sparsity=0.5,
                                                                include_last=False)],
    )
    trainer.train()
    assert trainer.prunus_state.extra["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert trainer.prunus_state.meter.examples_backpropagated == 2 * (N // 2)


# --------------------------------------------------------------------------- static selections


def test_keep_rows_and_selection_sampler_follow_the_id_column():
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"id": [10, 20, 30, 40, 50], "text": list("abcde")})
    kept = keep_rows(table, [50, 20])
    assert kept["id"] == [20, 50] and kept["text"] == ["b", "e"]
    assert sorted(selection_sampler(table, [50, 20])) == [1, 4]
    with pytest.raises(PrunusError, match="not an id"):
        keep_rows(table, [60])


# --------------------------------------------------------------------------- errors


def test_bad_combinations_are_refused(tmp_path):
    with pytest.raises(PrunusError, match="gradient_accumulation_steps"):
        PrunusTrainer(model=lm(), args=arguments(tmp_path, gradient_accumulation_steps=2),
                      train_dataset=Sequences(), policies=[get_online("rs2")])
    trainer = transformers.Trainer(model=lm(), args=arguments(tmp_path), train_dataset=Sequences(),
                                   callbacks=[PrunusCallback(get_online("rs2"))])
    with pytest.raises(PrunusError, match="PrunusTrainer"):
        trainer.train()


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "prunus.integrations.hf", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'prunus\[lm\]'"):
        import prunus.integrations.hf  # noqa: F401


def test_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "integrations" / "hf_trainer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "examples backpropagated" in out
