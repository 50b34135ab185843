"""LM data-selection benchmark: which pool documents to train a causal LM on, at equal tokens.

1. Selection (``--part selection``): a targeted-selection study on ``stdlib`` (pool: the
   packages of ``--modules``; target: ``--target``) through the study harness, every arm trained
   for the same ``--tokens``: random, perplexity filter (low), DSIR, CoLoR-Filter, embedding
   similarity, quality classifier at each ``--keeps`` share of the pool's tokens, Rho-1 with
   ``--token-keep`` of each batch's tokens, full pool (the reference, also the same compute),
   the target sample alone, and random tokens (Rho-1's random baseline); ``--seeds`` seeds.
   Prints target perplexity (mean, 95% t-interval), general held-out perplexity, the paired
   difference to random with its Holm-corrected verdict, and each arm's scoring cost as a
   fraction of one training run, charged in full.
2. Throughput (``--part throughput``): ``prunus.text.train_lm`` vs a bare ``transformers``
   loop (same model, blocks, batch order, AdamW, schedule, clipping) on one core, alternating,
   median over ``--repeats``: tokens per second and their ratio.
3. DSIR (``--part dsir``): scoring the whole ``stdlib`` pool (every module) with DSIR.

    python benchmarks/lm_selection.py --part all
    python benchmarks/lm_selection.py --part selection --model gpt_small --tokens 2000000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

POOL = "json,csv,logging,argparse,collections,asyncio,http,urllib,xml,unittest"
METHODS = ("perplexity", "dsir", "color-filter", "embedding-similarity", "quality-classifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("selection", "throughput", "dsir", "all"),
                        default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.1, 0.25])
    parser.add_argument("--modules", default=POOL)
    parser.add_argument("--target", default="email")
    parser.add_argument("--model", default="gpt_tiny")
    parser.add_argument("--width", type=int, default=64, help="n_embd of a registry model")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=150_000)
    parser.add_argument("--reference-tokens", type=int, default=100_000)
    parser.add_argument("--token-keep", type=float, default=0.6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="study directory (default: a temp dir)")
    args = parser.parse_args()
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("skipped: needs the lm extra (pip install 'prunus[lm,datasets]').")
        return
    if args.part in ("selection", "all"):
        selection(args)
    if args.part in ("throughput", "all"):
        throughput(args)
    if args.part in ("dsir", "all"):
        dsir_time()


def lm_settings(args) -> dict:
    options = {"n_embd": args.width} if args.model in ("gpt_tiny", "gpt_small") else {}
    return {
        "corpus": "stdlib", "corpus_options": {"modules": args.modules}, "target": args.target,
        "model": args.model, "model_options": options, "vocab_size": args.vocab_size,
        "context_length": args.context_length, "tokens": args.tokens,
        "reference_tokens": args.reference_tokens,
        "conditional_tokens": max(1, args.reference_tokens // 3), "evaluations": 3,
        "eval_documents": 80,
    }


def selection(args) -> None:
    from prunus.study import run_study
    from prunus.study.config import parse_config
    from prunus.study.report import load_rows
    from prunus.study.stats import summarize
    from prunus.study.store import StudyStore

    policies = [{"lm": m} for m in METHODS]
    policies.append({"lm": "rho1", "options": {"token_keep": args.token_keep}})
    values = {"name": "lm-selection", "seeds": args.seeds, "keep": args.keeps, "targets": [],
              "lm": lm_settings(args), "policies": policies,
              "execution": {"workers": args.workers}}
    out = Path(args.out or tempfile.mkdtemp(prefix="lm-selection-"))
    print(f"## selection: {args.model} (n_embd {args.width}), {args.tokens:,} tokens per run, "
          f"{args.seeds} seeds, keeps {args.keeps}, pool {args.modules} → target {args.target}")
    started = time.perf_counter()
    result = run_study(parse_config(values), out, resume=out.exists() and any(out.iterdir()),
                       progress=False)
    print(f"{result.runs} runs ({result.failed} failed) in {time.perf_counter() - started:.0f} s; "
          f"report: {result.report}")
    rows = load_rows(StudyStore(out))
    summaries = summarize(rows, [])
    full = next(s for s in summaries if s.is_full)
    finals = [r for r in rows if r["final"] and r["status"] == "ok"]
    train = statistics.mean(r["train_seconds"] for r in finals if r["policy"] == full.policy)
    print()
    print(f"{'arm':<34} {'target ppl [95% CI]':>24} {'general ppl':>12} "
          f"{'Δ vs random [95% CI]':>24} {'verdict':<13} {'scoring / run':>13}")
    for s in summaries:
        general = s.extra.get("general perplexity")
        c = s.comparison("random")
        scoring = statistics.mean(r["scoring_seconds"] for r in finals if r["policy"] == s.policy)
        delta = "" if c is None else f"{c.difference.mean:+.1f} [{c.difference.low:+.1f}, " \
                                     f"{c.difference.high:+.1f}]"
        print(f"{s.policy:<34} {s.accuracy.mean:>8.1f} [{s.accuracy.low:6.1f}, "
              f"{s.accuracy.high:6.1f}] {general.mean if general else math.nan:>12.1f} "
              f"{delta:>24} {c.verdict if c else '':<13} {scoring / train:>12.2f}×")
    print()
    print("\n".join(result.answers))
    beats = [s.policy for s in summaries if s.comparison("random")
             and s.comparison("random").verdict == "beats"]
    worse = [s.policy for s in summaries if s.comparison("random")
             and s.comparison("random").verdict == "worse"]
    print(f"beats random (Holm-corrected, ≥5 seeds): {', '.join(beats) or 'none'}")
    print(f"worse than random: {', '.join(worse) or 'none'}")
    print(f"the rest: inconclusive at {args.seeds} seeds")


def throughput(args) -> None:
    import numpy as np
    import torch

    from prunus.text import build_lm, load_stdlib, pack_blocks, train_lm, train_tokenizer

    torch.set_num_threads(1)
    corpus = load_stdlib(modules=args.modules, target=args.target)
    tokenizer = train_tokenizer(corpus, vocab_size=args.vocab_size)
    blocks = pack_blocks(corpus["train"], tokenizer, args.context_length)
    options = {"n_embd": args.width} if args.model in ("gpt_tiny", "gpt_small") else {}
    tokens, batch = 60_000, 16

    def model():
        return build_lm(args.model, vocab_size=len(tokenizer), context_length=args.context_length,
                        seed=0, **options)

    def prunus_run() -> float:
        m = model()
        start = time.perf_counter()
        train_lm(m, blocks, tokens=tokens, batch_size=batch, eval_sets={}, seed=0)
        return tokens / (time.perf_counter() - start)

    def bare_run() -> float:
        m = model()
        m.train()
        decay = [p for n, p in m.named_parameters() if p.ndim >= 2 and "wte" not in n
                 and "wpe" not in n]
        rest = [p for n, p in m.named_parameters() if not (p.ndim >= 2 and "wte" not in n
                                                           and "wpe" not in n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                       {"params": rest, "weight_decay": 0.0}],
                                      lr=3e-3, betas=(0.9, 0.95))
        steps = math.ceil(tokens / (batch * args.context_length))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        order = np.random.default_rng(0).permutation(len(blocks.input_ids))
        ids = torch.as_tensor(blocks.input_ids)
        mask = torch.as_tensor(blocks.attention_mask)
        start = time.perf_counter()
        for step in range(steps):
            rows = order[(step * batch) % len(order):][:batch]
            x, a = ids[rows], mask[rows]
            labels = x.masked_fill(a == 0, -100)
            loss = m(input_ids=x, attention_mask=a, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        return steps * batch * args.context_length / (time.perf_counter() - start)

    prunus_speeds, bare_speeds = [], []
    for _ in range(args.repeats):
        bare_speeds.append(bare_run())
        prunus_speeds.append(prunus_run())
    p, b = statistics.median(prunus_speeds), statistics.median(bare_speeds)
    ratios = [x / y for x, y in zip(prunus_speeds, bare_speeds)]
    print(f"\n## throughput ({args.model}, n_embd {args.width}, context {args.context_length}, "
          f"batch {batch}, 1 thread, {args.repeats} alternating repeats)")
    print(f"prunus train_lm: {p:,.0f} tokens/s; bare transformers loop: {b:,.0f} tokens/s; "
          f"ratio {p / b:.2f}× (median of per-pair ratios {statistics.median(ratios):.2f}×, "
          f"range {min(ratios):.2f}–{max(ratios):.2f})")


def dsir_time() -> None:
    from prunus.text import dsir_scores, load_stdlib

    corpus = load_stdlib(target="email")
    pool, target = corpus["train"], corpus["target"]
    start = time.perf_counter()
    table = dsir_scores(pool, target)
    seconds = time.perf_counter() - start
    megabytes = pool.num_bytes / 1e6
    print(f"\n## DSIR over the whole stdlib pool: {len(table):,} documents, {megabytes:.1f} MB, "
          f"{seconds:.1f} s ({megabytes / seconds:.1f} MB/s), target {len(target)} documents")
    print(json.dumps({"documents": len(table), "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
