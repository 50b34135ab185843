"""The LM foundations: stdlib/text corpora, cached BPE, sequences, small LMs and their losses."""

import json

import numpy as np
import pytest
import torch

from prunus.errors import PrunusError
from prunus.text import tokenizer as tok_mod
from prunus.text.corpus import TextSplit, documents_of_file, load_stdlib, load_text
from prunus.text.lm import build_lm, document_losses, mean_token_loss, token_losses
from prunus.text.tokenizer import (
    document_sequences,
    pack_blocks,
    tokenizer_cache_path,
    train_tokenizer,
)

POOL = [
    "json",
    "csv",
    "heapq",
    "textwrap",
    "string",
    "bisect",
    "fnmatch",
    "glob",
    "shlex",
    "colorsys",
    "base64",
    "calendar",
    "difflib",
    "pprint",
    "getopt",
    "gettext",
]


@pytest.fixture(scope="module")
def small():
    return load_stdlib(
        modules=POOL, target=["email"], validation_fraction=0.2, test_fraction=0.2, seed=1
    )


@pytest.fixture(scope="module")
def bpe(small):
    return train_tokenizer(small, vocab_size=400)


def _all_groups(corpus, names):
    return {split: set(corpus[split].groups) for split in names}


# --------------------------------------------------------------------------- corpus


def test_ids_stable_and_split_by_module(small):
    again = load_stdlib(
        modules=POOL,
        target=["email"],
        validation_fraction=0.2,
        test_fraction=0.2,
        seed=1,
        cache=False,
    )
    assert again.fingerprint == small.fingerprint
    for name in small.splits:
        assert np.array_equal(again[name].ids, small[name].ids)
    all_ids = np.concatenate([s.ids for s in small.splits.values()])
    assert len(np.unique(all_ids)) == len(all_ids)
    groups = _all_groups(small, small.splits)
    for a in groups:
        for b in groups:
            if a < b:
                assert not groups[a] & groups[b], (a, b)
    assert all(len(small[s]) for s in small.splits)
    # a module's split and its ids do not depend on which other modules are loaded
    fewer = load_stdlib(modules=POOL[:4], validation_fraction=0.2, test_fraction=0.2, seed=1)
    split_of = {int(i): name for name, s in small.splits.items() for i in s.ids}
    for name in ("train", "validation", "test"):
        assert all(split_of[int(i)] == name for i in fewer[name].ids)


def test_target_is_disjoint_from_pool(small):
    pool = set().union(*(_all_groups(small, ["train", "validation", "test"]).values()))
    target = set(small["target"].groups) | set(small["target_test"].groups)
    assert all(g == "email" or g.startswith("email.") for g in target)
    assert not pool & target
    assert not set(small["target"].groups) & set(small["target_test"].groups)
    assert small.stats["target_split"] == "module"
    capped = load_stdlib(modules=POOL[:2], target=["email"], target_size=5)
    assert len(capped["target"]) == 5
    one = load_stdlib(modules=POOL[:2], target=["heapq"])
    assert one.stats["target_split"] == "document"
    assert len(one["target"]) and len(one["target_test"])


def test_bad_target_and_modules_name_the_option():
    with pytest.raises(PrunusError, match=r"target 'emial'.*email"):
        load_stdlib(modules=POOL[:1], target=["emial"])
    with pytest.raises(PrunusError, match="modules 'nosuchmodule'"):
        load_stdlib(modules=["nosuchmodule"])
    with pytest.raises(PrunusError, match="target_test_fraction"):
        load_stdlib(modules=POOL[:1], target_test_fraction=1.0)


def test_documents_are_top_level_defs_and_code_chunks(tmp_path):
    source = (
        '"""Module doc."""\nimport os\n\nX = 1\n\n\n@decorator\ndef f(a):\n    return a\n\n'
        "class C:\n    def m(self):\n        pass\n\n"
        + "".join(f"Y{i} = {i}\n" for i in range(40))
        + "\ndef f():\n    pass\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    docs = documents_of_file("mod", path, chunk_chars=100)
    kinds = [(d.kind, d.name, d.occurrence) for d in docs if d.kind != "code"]
    assert kinds == [("function", "f", 0), ("class", "C", 0), ("function", "f", 1)]
    assert docs[1].text.startswith("@decorator\ndef f(a):")
    code = [d for d in docs if d.kind == "code"]
    assert len(code) >= 3 and all(len(d.text) <= 101 for d in code)
    joined = "".join(d.text for d in docs)
    for line in source.splitlines():
        assert line in joined
    assert len({d.id for d in docs}) == len(docs)


def test_load_text_directory_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("hello world")
    (folder / "sub" / "b.md").write_text("# title\ntext")
    (folder / "empty.py").write_text("   \n")
    (folder / "skip.bin").write_text("not text")
    corpus = load_text(path=str(folder), validation_fraction=0.0, test_fraction=0.0)
    assert len(corpus["train"]) == 2 and corpus.stats["empty_dropped"] == 1
    assert load_text(path=str(folder)).fingerprint == load_text(path=str(folder)).fingerprint

    rows = [{"body": f"doc {i}", "src": f"s{i % 3}", "k": 10 + i} for i in range(30)]
    rows.append({"body": "", "src": "s0", "k": 99})
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(PrunusError, match=r"text_column 'text'.*body, k, src"):
        load_text(path=str(jsonl))
    corpus = load_text(path=str(jsonl), text_column="body", id_column="k", group_column="src")
    assert corpus.stats["empty_dropped"] == 1
    assert sorted(np.concatenate([s.ids for s in corpus.splits.values()])) == list(range(10, 40))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [r["body"] for r in rows]}), parquet)
    assert sum(map(len, load_text(path=str(parquet)).splits.values())) == 30
    with pytest.raises(PrunusError, match="path"):
        load_text(path=str(tmp_path / "missing.csv"))


def test_registry_loads_the_corpora():
    import prunus

    corpus = prunus.load("stdlib", modules="json,csv")
    assert set(corpus["train"].groups) | set(corpus["test"].groups) | set(
        corpus["validation"].groups
    ) <= {"json", "csv", "json.decoder", "json.encoder", "json.scanner", "json.tool"}
    with pytest.raises(PrunusError, match="option of dataset 'stdlib'"):
        prunus.load("stdlib", vocab=3)


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(small, bpe):
    assert len(bpe) == 400 and bpe.eos_token_id == 0 and bpe.pad_token_id == 1
    samples = small["test"].texts[:20] + ["naïve café — 日本語 \t\n  spaces  ", "x = {'a': 1}\r\n"]
    for text in samples:
        ids = bpe(text, add_special_tokens=False)["input_ids"]
        assert bpe.decode(ids) == text


def test_tokenizer_cache_key(small, bpe, monkeypatch):
    fp = small["train"].fingerprint
    assert tokenizer_cache_path(fp, 400).exists()
    assert tokenizer_cache_path(fp, 400) != tokenizer_cache_path(fp, 500)
    assert tokenizer_cache_path(fp, 400) != tokenizer_cache_path(small["test"].fingerprint, 400)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading from the cache")

    monkeypatch.setattr(tok_mod, "_train_bpe", no_training)
    again = train_tokenizer(small, vocab_size=400)
    assert again.init_kwargs["prunus_cache"] == "hit"
    assert again.get_vocab() == bpe.get_vocab()
    with pytest.raises(PrunusError, match="vocab_size"):
        train_tokenizer(small, vocab_size=100)


def test_document_sequences_and_packing(small, bpe):
    split = small["train"].take(range(6))
    lengths = [len(bpe(t, add_special_tokens=False)["input_ids"]) for t in split.texts]
    seqs = document_sequences(split, bpe, 32, max_windows=None)
    assert set(seqs.doc_ids.tolist()) == set(split.ids.tolist())
    for doc_id, n in zip(split.ids, lengths):
        rows = seqs.doc_ids == doc_id
        # every token after the leading <eos> is a target exactly once: n tokens + closing <eos>
        assert int(seqs.attention_mask[rows][:, 1:].sum()) == n + 1
    first = document_sequences(split, bpe, 32)
    assert len(first) == len(split) and first.truncated == sum(n + 2 > 32 for n in lengths)
    assert (first.input_ids[:, 0] == bpe.eos_token_id).all()

    blocks = pack_blocks(split, bpe, 32)
    assert blocks.input_ids.shape[1] == 32
    assert blocks.num_tokens == sum(lengths) + len(lengths) + 1
    owners = blocks.token_doc_ids[blocks.attention_mask.astype(bool)]
    assert [int(i) for i in dict.fromkeys(owners.tolist())] == split.ids.tolist()
    assert blocks.documents_of_block(0)[0] == split.ids[0]
    with pytest.raises(PrunusError, match="context_length"):
        pack_blocks(split, bpe, 1)


# --------------------------------------------------------------------------- models and losses


@pytest.mark.parametrize("name", ["gpt_tiny", "llama_tiny"])
def test_token_loss_matches_transformers(name, small, bpe):
    model = build_lm(name, vocab_size=len(bpe), context_length=32, seed=0)
    texts = ["x = 1\n", "def f(a):\n    return a + 1\n", small["train"].texts[0]]
    seqs = document_sequences(TextSplit(np.arange(3), texts, ["a", "b", "c"]), bpe, 32)
    ids = torch.as_tensor(seqs.input_ids)
    mask = torch.as_tensor(seqs.attention_mask)
    assert (mask == 0).any()  # padding is exercised
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = mean_token_loss(model, ids, mask)
        losses, real = token_losses(model, ids, mask)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    scores = document_losses(model, seqs, batch_size=2)
    assert np.array_equal(scores["id"], seqs.doc_ids)
    expected_docs = (losses.sum(1) / real.sum(1)).double().numpy()
    np.testing.assert_allclose(scores["loss"], expected_docs, rtol=1e-5)
    assert (scores["tokens"] == real.sum(1).numpy()).all()


def test_document_loss_aggregates_windows(small, bpe):
    model = build_lm("gpt_tiny", vocab_size=len(bpe), context_length=16, seed=0)
    seqs = document_sequences(small["validation"].take(range(3)), bpe, 16, max_windows=None)
    scores = document_losses(model, seqs, batch_size=4)
    with torch.no_grad():
        losses, real = token_losses(
            model, torch.as_tensor(seqs.input_ids), torch.as_tensor(seqs.attention_mask)
        )
    for doc_id, loss, tokens in zip(scores["id"], scores["loss"], scores["tokens"]):
        rows = torch.as_tensor(seqs.doc_ids == doc_id)
        assert tokens == int(real[rows].sum())
        assert loss == pytest.approx(float(losses[rows].sum() / real[rows].sum()), rel=1e-5)


def test_models_are_seeded_and_sized():
    a = build_lm("gpt_tiny", vocab_size=4096, context_length=256, seed=1)
    b = build_lm("gpt_tiny", vocab_size=4096, context_length=256, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert 0.15e6 < sum(p.numel() for p in a.parameters()) < 0.3e6
    from prunus.models import build_model

    c = build_model("gpt_tiny", input_shape=(256,), num_classes=4096, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_lm_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(PrunusError, match="language model must be one of"):
        build_lm("gpt_huge", vocab_size=300, context_length=16)
    model = build_lm("gpt_tiny", vocab_size=300, context_length=16, n_positions=16)
    model.save_pretrained(tmp_path / "m")
    loaded = build_lm(str(tmp_path / "m"), vocab_size=300, context_length=16)
    assert all(
        torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values())
    )
    with pytest.raises(PrunusError, match="vocab_size 400 is larger"):
        build_lm(str(tmp_path / "m"), vocab_size=400, context_length=16)
    with pytest.raises(PrunusError, match="context_length 32 is longer"):
        build_lm(str(tmp_path / "m"), vocab_size=300, context_length=32)
    with pytest.raises(PrunusError, match="n_layers"):
        build_lm("gpt_tiny", vocab_size=300, context_length=16, n_layers=3)
