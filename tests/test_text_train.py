"""train_lm: the loss is transformers' loss, runs are deterministic, the token budget is exact,
and a tiny GPT learns."""

import numpy as np
import pytest
import torch

from prunus.errors import PrunusError
from prunus.text.corpus import load_stdlib
from prunus.text.lm import build_lm
from prunus.text.tokenizer import document_sequences, pack_blocks, train_tokenizer
from prunus.text.train import evaluate_lm, lm_loss, non_embedding_parameters, train_lm
from prunus.train.events import Callback

POOL = ["json", "csv", "heapq", "textwrap", "string", "bisect", "fnmatch", "glob", "shlex",
        "colorsys", "base64", "calendar"]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def data():
    corpus = load_stdlib(modules=POOL, validation_fraction=0.25, test_fraction=0.1, seed=3)
    tok = train_tokenizer(corpus, vocab_size=400)
    blocks = pack_blocks(corpus.train, tok, 32)
    val = document_sequences(corpus["validation"], tok, 32, max_windows=2)
    return corpus, tok, blocks, val


def _model(tok, seed=0, **options):
    return build_lm("gpt_tiny", vocab_size=len(tok), context_length=32, seed=seed, **options)


def test_loss_equals_transformers_loss(data):
    _, tok, blocks, _ = data
    model = _model(tok, **NO_DROPOUT)
    ids = torch.as_tensor(blocks.input_ids[:4])
    mask = torch.as_tensor(blocks.attention_mask[:4]).clone()
    mask[-1, 20:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours, _losses, target = lm_loss(model, ids, mask)
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert target.sum() == mask[:, 1:].sum()
    # the first step's objective of train_lm is that same loss (one batch holding every block)
    few = type(blocks)(blocks.input_ids[:4], blocks.attention_mask[:4], blocks.token_doc_ids[:4])
    full = model(input_ids=torch.as_tensor(few.input_ids), labels=torch.as_tensor(few.input_ids)).loss
    result = train_lm(model, few, epochs=1, batch_size=4, lr=1e-3, seed=0)
    assert result.train_loss[0] == pytest.approx(full.item(), abs=1e-5)


def test_same_seed_same_perplexity_and_exact_budget(data):
    _, tok, blocks, val = data
    runs = [
        train_lm(_model(tok), blocks, tokens=1234, batch_size=8, lr=3e-3, seed=s,
                 eval_sets={"val": val})
        for s in (0, 0, 1)
    ]
    assert runs[0].perplexity["val"] == runs[1].perplexity["val"]
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].perplexity["val"] != runs[2].perplexity["val"]
    for r in runs:
        assert r.tokens == 1234 and r.meter.tokens_forwarded["train"] == 1234
        n = non_embedding_parameters(r.model)
        assert r.meter.flops["train"] == 6 * n * 1234
        assert r.meter.flops["eval"] == 2 * n * 2 * val.num_tokens  # start and end
        assert r.meter.tokens_with_grad == r.meter.targets < 1234
        assert r.meter.seconds["train"] > 0 and r.meter.seconds["eval"] > 0
    # a budget larger than the data cycles through it again, still exact
    few = type(blocks)(blocks.input_ids[-10:], blocks.attention_mask[-10:],
                       blocks.token_doc_ids[-10:])  # the last block is padded
    big = few.num_tokens + 77
    again = train_lm(_model(tok), few, tokens=big, batch_size=4, lr=1e-3, seed=0)
    assert again.tokens == big and again.steps == 4
    one = train_lm(_model(tok), few, epochs=2, batch_size=4, lr=1e-3, seed=0)
    assert one.tokens == 2 * few.num_tokens and one.steps == 6
    with pytest.raises(PrunusError, match="tokens"):
        train_lm(_model(tok), blocks, tokens=10, epochs=1)
    with pytest.raises(PrunusError, match="schedule"):
        train_lm(_model(tok), blocks, tokens=10, schedule="linear")


def test_token_weights_and_zero_weight_carry_no_gradient(data):
    _, tok, blocks, _ = data
    few = type(blocks)(blocks.input_ids[:4], blocks.attention_mask[:4], blocks.token_doc_ids[:4])
    weights = np.ones(few.input_ids.shape)
    weights[:, :16] = 0.0
    r = train_lm(_model(tok), few, epochs=1, batch_size=4, seed=0, token_weights=weights)
    assert r.meter.tokens_with_grad == 4 * 16  # targets at positions 16..31
    with pytest.raises(PrunusError, match="shaped"):
        train_lm(_model(tok), few, epochs=1, token_weights=np.ones(3))


def test_gpt_tiny_learns(data):
    _, tok, blocks, val = data
    model = _model(tok)
    before, _, _ = evaluate_lm(model, val)
    result = train_lm(model, blocks, tokens=16_000, batch_size=16, lr=1e-2, seed=0,
                      eval_sets={"val": val}, schedule="onecycle")
    assert result.history[0]["val"] == pytest.approx(before)
    assert result.perplexity["val"] < 0.5 * before
    assert result.train_loss[-1] < result.train_loss[0]


# --------------------------------------------------------------------------- Rho-1


def test_rho1_mask_is_top_k_by_hand():
    from prunus.text.rho1 import rho1_loss, rho1_mask

    losses = torch.tensor([[2.0, 5.0, 1.0, 4.0], [3.0, 0.5, 6.0, 9.0]])
    reference = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    # excess: [[1, 4, 0, 3], [2, -0.5, 5, (pad)]]; 7 real targets, keep ⌊0.6·7⌋ = 4
    keep = rho1_mask(losses - reference, mask, 0.6)
    expected = torch.tensor([[False, True, False, True], [True, False, True, False]])
    assert torch.equal(keep, expected)
    loss, keep2 = rho1_loss(losses, reference, mask, 0.6)
    assert torch.equal(keep2, expected)
    assert loss.item() == pytest.approx((5.0 + 4.0 + 3.0 + 6.0) / 4)
    for fraction in (0.1, 0.29, 0.5, 1.0):
        n = 1000
        excess = torch.arange(n, dtype=torch.float32).flip(0).reshape(10, 100)
        m = rho1_mask(excess, torch.ones(10, 100, dtype=torch.bool), fraction)
        k = int(m.sum())
        assert k == round(fraction * n)  # exact (0.29·1000 = 290)
        assert torch.equal(m.reshape(-1), torch.arange(n) < k)
    ties = rho1_mask(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert ties.reshape(-1).tolist() == [True, True, True, False, False, False]
    with pytest.raises(PrunusError, match="keep_fraction"):
        rho1_mask(losses, mask, 0.0)


def test_rho1_in_train_lm_meters_tokens_with_gradient(data):
    from prunus.counts import fraction_count
    from prunus.text.rho1 import Rho1

    _, tok, blocks, _ = data
    reference = _model(tok, seed=5)
    callback = Rho1(reference, keep_fraction=0.6)
    seen: list[int] = []

    class Record(Callback):
        def on_after_forward(self, state):
            seen.append(int(state.target_mask.sum()))

    result = train_lm(_model(tok), blocks, tokens=2000, batch_size=8, seed=0,
                      callbacks=[Record(), callback])
    meter = result.meter
    assert meter.tokens_with_grad == sum(fraction_count(0.6, n) for n in seen) == callback.kept
    assert meter.targets == sum(seen) == callback.seen
    assert meter.tokens_forwarded["reference"] == meter.tokens_forwarded["train"] == 2000
    assert meter.flops["reference"] == 2 * non_embedding_parameters(reference) * 2000
    assert meter.seconds["scoring"] > 0
    assert 0.59 < meter.tokens_with_grad / meter.targets <= 0.6
