"""The contrastive retrieval task on the one Trainer: loss and gradient against a hand
computation, callbacks, data methods and the compute meter on a contrastive run."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunus.config import TrainConfig
from prunus.negatives.train import Contrastive, TrainingPairs, fine_tune
from prunus.train import Callback, Trainer
from prunus.train.trainer import lr_factor


class CharEncoder(nn.Module):
    """A sentence-transformers-shaped toy: mean-pooled character embeddings, then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = nn.Embedding(128, 8)
        self.proj = nn.Linear(8, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def tokenize(self, texts):
        length = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, : len(text)] = torch.tensor([ord(c) % 128 for c in text])
            mask[i, : len(text)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, features):
        mask = features["attention_mask"][..., None].float()
        pooled = (self.table(features["input_ids"]) * mask).sum(1) / mask.sum(1)
        return {"sentence_embedding": self.proj(pooled)}


CORPUS = ["def join(a, b)", "def split(p)", "def quote(s)", "def basename(p)", "def glob(x)",
          "def copy(src, dst)", "def rmtree(path)", "def escape(s)"]
QUERIES = ["Join two paths.", "Split a path.", "Quote a word.", "Quote a shell word.", "Base name."]
# rows 2 and 3 share their positive; row 1's second negative is that same document
POSITIVES = [0, 1, 2, 2, 3]
NEGATIVES = [[4, -1], [5, 2], [-1, -1], [6, 0], [7, 1]]


def pairs() -> TrainingPairs:
    return TrainingPairs(QUERIES, POSITIVES, NEGATIVES, CORPUS)


def hand_loss(model, data, rows, scale, guide, margin):
    """Mean over the batch of −log softmax(scale·cos)[own positive], written out per query:
    candidates = the rows' positives then their present negatives; an anchor skips every other
    copy of its positive and every candidate the guide scores above positive − margin."""
    candidates = [data.positive_rows[i] for i in rows]
    candidates += [n for i in rows for n in data.negative_rows[i] if n >= 0]

    def embed(texts):
        return F.normalize(model(model.tokenize(texts))["sentence_embedding"], dim=-1)

    q = embed([data.queries[i] for i in rows])
    c = embed([data.corpus[r] for r in candidates])
    gq, gc = guide
    losses = []
    for a, i in enumerate(rows):
        positive = data.positive_rows[i]
        threshold = float(gq[i] @ gc[positive]) - margin
        logits = []
        for j, r in enumerate(candidates):
            if j != a and (r == positive or float(gq[i] @ gc[r]) > threshold):
                continue
            logits.append(scale * (q[a] @ c[j]))
        losses.append(torch.logsumexp(torch.stack(logits), 0) - scale * (q[a] @ c[a]))
    return torch.stack(losses).mean()


class FirstStep(Callback):
    """The first step's rows, objective and gradients (before the optimizer steps)."""

    def __init__(self) -> None:
        self.ids = self.loss = self.grads = None

    def on_after_backward(self, state) -> None:
        if self.grads is None:
            self.ids = state.batch.ids.tolist()
            self.loss = float(state.loss.detach())
            self.grads = {n: p.grad.clone() for n, p in state.model.named_parameters()}


def test_contrastive_loss_and_gradient_equal_a_hand_computation():
    model = CharEncoder()
    initial = copy.deepcopy(model)
    data = pairs()
    rng = np.random.default_rng(3)
    guide = tuple(x / np.linalg.norm(x, axis=1, keepdims=True)
                  for x in (rng.normal(size=(5, 4)), rng.normal(size=(8, 4))))
    guide = (guide[0].astype(np.float32), guide[1].astype(np.float32))
    task = Contrastive(model, data, train_layers=None, guide=guide, guide_margin=0.1, scale=7.0)
    first = FirstStep()
    Trainer(model, data, [first], task=task, epochs=1, batch_size=5, lr=1e-2, device="cpu",
            schedule="linear", warmup=0.0).fit()
    expected = hand_loss(initial, data, first.ids, 7.0, guide, 0.1)
    expected.backward()
    assert first.loss == pytest.approx(float(expected), rel=1e-5)
    for name, p in initial.named_parameters():
        torch.testing.assert_close(first.grads[name], p.grad, rtol=1e-4, atol=1e-6)
    # same-document copies: row 2 and 3 each drop the other's positive column, plus row 1's
    # negative 2; the guide drops more, so more than those 4 candidates are masked in all
    assert task.masked_per_anchor[0] * 5 > 4


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.evaluations: list[dict] = []

    def _seen(self, name):
        self.events[name] = self.events.get(name, 0) + 1

    def on_fit_start(self, state):
        self._seen("fit_start")

    def on_batch_start(self, state):
        self._seen("batch_start")

    def on_after_loss(self, state):
        self._seen("after_loss")
        assert state.per_example_loss.shape == (len(state.batch),)

    def on_evaluation(self, state):
        self.evaluations.append(dict(state.last_eval))

    def on_fit_end(self, state):
        self._seen("fit_end")


def test_fine_tune_runs_on_the_trainer_with_callbacks_meter_and_evaluation():
    model = CharEncoder()
    seen_modes = []

    def evaluation(m):
        seen_modes.append(m.training)
        return {"ndcg@10": 0.5, "mrr@10": 0.25}

    recorder = Recorder()
    out = fine_tune(model, pairs(), train_layers=None, epochs=2, batch_size=2, lr=1e-2,
                    evaluation=evaluation, callbacks=[recorder])
    # 5 rows in batches of 2, 2, 1: the single-row batch (no in-batch negative) is skipped
    assert recorder.events == {"fit_start": 1, "batch_start": 6, "after_loss": 4, "fit_end": 1}
    assert out["steps"] == 4 and out["examples"] == 8
    meter = out["meter"]
    assert meter.examples_forwarded == meter.examples_backpropagated == 8
    assert out["seconds"] == meter.seconds["train"] > 0
    assert seen_modes == [False] and not model.training
    assert out["metrics"] == {"ndcg@10": 0.5, "mrr@10": 0.25}
    (row,) = recorder.evaluations
    assert row["ndcg@10"] == 0.5 and row["examples_backpropagated"] == 8
    again = fine_tune(CharEncoder(), pairs(), train_layers=None, epochs=2, batch_size=2, lr=1e-2)
    assert again["loss_last"] == out["loss_last"] and again["metrics"] == {}


def test_a_data_method_runs_on_the_contrastive_task():
    from prunus.data.online import get_online

    data = TrainingPairs(QUERIES * 4, POSITIVES * 4, NEGATIVES * 4, CORPUS)
    out = fine_tune(CharEncoder(), data, train_layers=None, epochs=2, batch_size=4, lr=1e-2,
                    callbacks=[get_online("selective_backprop", keep=0.5, seed=0)])
    meter = out["meter"]
    # every row is forwarded once to be chosen, only the chosen ones again with gradient
    assert meter.examples_backpropagated < meter.examples_forwarded
    assert meter.examples_forwarded >= 40 and np.isfinite(out["loss_last"])


def test_linear_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(schedule="linear", warmup=0.2)
    factors = [lr_factor(s, 10, cfg) for s in range(11)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:] == pytest.approx([1 - (s - 2) / 8 for s in range(2, 11)])
