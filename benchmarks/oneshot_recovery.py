"""Recovery after one-shot pruning: random vs loss-increase recovery data, norm+bias vs LoRA.

A small GPT-2 (``gpt_small`` shape, narrowed by default so that one seed takes about four
minutes on two idle CPU cores, seven on busy ones) is trained briefly on the ``stdlib`` corpus and cached by its
settings and the corpus fingerprint: that is the "pretrained" model. For every seed it is
pruned one-shot by Wanda (:func:`prunus.weights.oneshot`) on calibration blocks drawn with
that seed, and then
recovered with :func:`prunus.weights.recovery.recover` at **the same training budget** in every
arm:

- ``params``: ``norm+bias`` (PERP) and ``lora`` (peft; the delta masked in the forward pass
  and merged through the masks), plus ``lora, dense delta`` (peft's own dense side path,
  masked only at the merge) on random data, to show what that merge throws away;
- recovery data, all of the same size (``--fraction`` of a fixed candidate pool of training
  documents): ``random`` (seeded), ``loss_increase`` (pruned minus dense per-document loss,
  highest kept; PASER-style) and, as a reference, ``full`` (the whole pool, same tokens);
- ``dense + …``: the same fine-tune applied to the *unpruned* model, since a briefly trained
  model also improves from more training: a recovery's real effect is how much of the gap to
  this arm it closes, not how far it drops below the dense model.

Learning rates (``--lr-norm`` 1e-2, ``--lr-lora`` 3e-3) were picked on the validation split
(seed 0, sparsity 0.7) among {1e-3, 3e-3, 1e-2} and {1e-3, 3e-3}; the table reports the test
split.

Quality is held-out perplexity on the test split's documents (lower is better). The table prints
the mean and 95% t-interval over seeds of every arm and of the paired per-seed differences
that matter (loss_increase − random, lora − norm+bias, recovered − pruned). Compute columns:
tokens forwarded to score the pool (both models, charged to the loss-increase arms) and to
train. Verdicts need at least 5 paired seeds (DESIGN: statistics); with fewer they read
"inconclusive".

    python benchmarks/oneshot_recovery.py                      # 5 seeds, sparsity 0.7
    python benchmarks/oneshot_recovery.py --seeds 3 --sparsity 0.5 --budget 40000
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

ARCH = {"n_layer": 4, "n_embd": 128, "n_head": 4}
PARAMS = ("norm+bias", "lora")
POLICIES = ("random", "loss_increase", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds (calibration, recovery set, order)")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--lr-norm", type=float, default=1e-2, help="norm+bias peak learning rate")
    parser.add_argument("--lr-lora", type=float, default=3e-3, help="LoRA peak learning rate")
    parser.add_argument("--budget", type=int, default=24_000, help="recovery training tokens per arm")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the pool in the recovery set")
    parser.add_argument("--pool", type=int, default=1000, help="candidate training documents")
    parser.add_argument("--test-docs", type=int, default=300, help="held-out documents evaluated")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--pretrain-tokens", type=int, default=400_000)
    parser.add_argument("--calibration", type=int, default=128, help="calibration blocks")
    parser.add_argument("--width", type=int, default=ARCH["n_embd"], help="n_embd (gpt_small: 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the per-seed results (JSON)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    setup = prepare(args)
    print(f"dense model: {setup['info']}", flush=True)
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(args, setup, seed))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=1))
    report(args, setup, runs, time.perf_counter() - start)


# -- setup -------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> dict:
    """Corpus, tokenizer, the cached dense model, the candidate pool and the held-out set."""
    import numpy as np

    from prunus.text.corpus import load_stdlib
    from prunus.text.tokenizer import document_sequences, pack_blocks, train_tokenizer
    from prunus.text.train import evaluate_lm

    corpus = load_stdlib()
    tok = train_tokenizer(corpus, vocab_size=args.vocab)
    blocks = pack_blocks(corpus.train, tok, args.context, drop_last=True)
    dense, info = pretrained(args, corpus, tok, blocks)
    rng = np.random.default_rng(0)
    pool_ids = np.sort(rng.choice(corpus.train.ids, size=min(args.pool, len(corpus.train)), replace=False))
    pool = document_sequences(corpus.train.subset(pool_ids), tok, args.context, max_windows=1)
    test = corpus["test"].take(range(min(args.test_docs, len(corpus["test"]))))
    held_out = document_sequences(test, tok, args.context, max_windows=1)
    dense_ppl = evaluate_lm(dense, held_out)[0]
    return {"dense": dense, "info": info, "blocks": blocks, "pool": pool, "test": held_out,
            "dense_ppl": dense_ppl}


def pretrained(args: argparse.Namespace, corpus, tok, blocks):
    """The briefly trained dense GPT-2, cached by (corpus, tokenizer, shape, tokens)."""
    import torch

    from prunus.datasets.mnist1d import cache_dir
    from prunus.text.lm import build_lm
    from prunus.text.train import non_embedding_parameters, train_lm

    arch = {**ARCH, "n_embd": args.width}
    recipe = json.dumps([corpus.train.fingerprint, len(tok), args.context, arch,
                         args.pretrain_tokens, 1], sort_keys=True)
    key = hashlib.blake2b(recipe.encode(), digest_size=8).hexdigest()
    path = cache_dir() / "benchmarks" / f"oneshot-recovery-lm-{key}"
    if (path / "config.json").exists():
        model = build_lm(str(path), vocab_size=len(tok), context_length=args.context)
        how = "cached"
    else:
        model = build_lm("gpt_small", vocab_size=len(tok), context_length=args.context, seed=0, **arch)
        t0 = time.perf_counter()
        train_lm(model, blocks, tokens=args.pretrain_tokens, batch_size=32, lr=3e-3, seed=0,
                 eval_at_start=False)
        how = f"trained now in {time.perf_counter() - t0:.0f} s"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(path))
    model.eval()
    torch.manual_seed(0)
    info = (f"GPT-2 {arch['n_layer']} layers, width {arch['n_embd']}, "
            f"{non_embedding_parameters(model) / 1e6:.2f}M non-embedding params, vocab {len(tok)}, "
            f"context {args.context}, {args.pretrain_tokens} stdlib tokens ({how})")
    return model, info


# -- one seed ----------------------------------------------------------------------------------


def run_seed(args: argparse.Namespace, setup: dict, seed: int) -> dict:
    """Prune with this seed's calibration, score the pool once, recover in every arm."""
    import numpy as np
    import torch

    from prunus.text.train import evaluate_lm
    from prunus.weights import oneshot
    from prunus.weights.recovery import loss_increase_scores

    dense, pool, test = setup["dense"], setup["pool"], setup["test"]
    rng = np.random.default_rng(1000 + seed)
    rows = rng.choice(len(setup["blocks"]), size=args.calibration, replace=False)
    calibration = torch.as_tensor(setup["blocks"].input_ids[np.sort(rows)])
    pruned = copy.deepcopy(dense)
    t0 = time.perf_counter()
    oneshot(pruned, calibration, sparsity=args.sparsity, method="wanda", seed=seed)
    method = "wanda (prunus.weights.oneshot)"
    out = {"seed": seed, "method": method, "prune_seconds": time.perf_counter() - t0,
           "ppl": {"dense": setup["dense_ppl"], "pruned": evaluate_lm(pruned, test)[0]}, "cost": {}}
    t0 = time.perf_counter()
    table = loss_increase_scores(pruned, dense, pool)
    scoring = {"tokens": int(table.metadata["cost"]["tokens"]), "seconds": time.perf_counter() - t0}
    for params in PARAMS:
        for policy in POLICIES:
            recover_arm(args, out, f"{params} / {policy}", pruned, params, policy, table, scoring,
                        seed, setup)
    # peft's dense side path, masked only at the merge: what the merge throws away
    recover_arm(args, out, "lora, dense delta / random", pruned, "lora", "random", table,
                scoring, seed, setup, lora_delta="dense")
    # the same fine-tune of the unpruned model: how much of a "recovery" is just more training
    for params in PARAMS:
        recover_arm(args, out, f"dense + {params} / random", dense, params, "random", table,
                    scoring, seed, setup)
    return out


def recover_arm(args, out, arm, start, params, policy, table, scoring, seed, setup,
                lora_delta="masked") -> None:
    """One recovery run from a copy of ``start``; its test perplexity and costs go in ``out``."""
    from prunus.text.train import evaluate_lm
    from prunus.weights.recovery import recover

    test = setup["test"]
    model = copy.deepcopy(start)
    t0 = time.perf_counter()
    dense_delta = lora_delta == "dense"
    result = recover(
        model, setup["pool"], args.budget, params,
        policy=table if policy == "loss_increase" else "random",
        fraction=1.0 if policy == "full" else args.fraction, seed=seed,
        lr=args.lr_norm if params == "norm+bias" else args.lr_lora, lora_delta=lora_delta,
        eval_sets={"test": test} if dense_delta else None, eval_at_start=False,
    )
    seconds = time.perf_counter() - t0
    out["ppl"][arm] = result.perplexity["test"] if dense_delta else evaluate_lm(model, test)[0]
    if dense_delta:
        out["ppl"][f"{arm} (before merge)"] = result.train.perplexity["test"]
    charged = policy == "loss_increase"
    out["cost"][arm] = {
        "trainable": result.n_trainable,
        "train_tokens": result.compute["training_tokens"],
        "scoring_tokens": scoring["tokens"] if charged else 0,
        "seconds": seconds + (scoring["seconds"] if charged else 0.0),
        "documents": len(result.ids),
    }


# -- report ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, setup: dict, runs: list[dict], seconds: float) -> None:
    """Print every arm's perplexity and the paired comparisons, mean [95% t-interval]."""
    from prunus.study.stats import MIN_SEEDS, mean_ci, paired_difference

    def by_seed(arm: str) -> dict[int, float]:
        return {r["seed"]: r["ppl"][arm] for r in runs}

    def fmt(e) -> str:
        if not e.has_interval:
            return f"{e.mean:8.2f}"
        return f"{e.mean:8.2f} [{e.low:7.2f}, {e.high:7.2f}]"

    print()
    print(f"prune: {runs[0]['method']}, sparsity {args.sparsity}, {args.calibration} calibration "
          f"blocks of {args.context} tokens; {setup['info']}")
    print(f"recovery: lr {args.lr_norm:g} (norm+bias), {args.lr_lora:g} (lora); "
          f"{args.budget} training tokens per arm, recovery set {args.fraction:.0%} of a "
          f"pool of {len(set(setup['pool'].doc_ids.tolist()))} training documents "
          f"('full' = the whole pool); held-out: {len(setup['test'])} test documents, "
          f"{len(runs)} seeds")
    print()
    head = f"{'arm':42} {'test ppl, mean [95% CI]':>28} {'Δ vs pruned [95% CI]':>28} " \
           f"{'trained':>8} {'docs':>5} {'train tok':>9} {'score tok':>9} {'sec':>6}"
    print(head)
    print("-" * len(head))
    arms = ["dense", "pruned"] + [k for k in runs[0]["ppl"] if k not in ("dense", "pruned")]
    for arm in arms:
        values = by_seed(arm)
        delta = paired_difference(values, by_seed("pruned")) if arm != "pruned" else None
        cost = runs[0]["cost"].get(arm.replace(" (before merge)", ""))
        extra = ""
        if cost is not None and "before merge" not in arm:
            sec = sum(r["cost"][arm]["seconds"] for r in runs) / len(runs)
            extra = (f"{cost['trainable']:>8} {cost['documents']:>5} {cost['train_tokens']:>9} "
                     f"{cost['scoring_tokens']:>9} {sec:>6.1f}")
        print(f"{arm:42} {fmt(mean_ci(values.values())):>28} "
              f"{fmt(delta) if delta is not None else '':>28} {extra}")
    print()
    print("paired differences of test perplexity (negative = the first arm is better):")
    pairs = [(f"{p} / loss_increase", f"{p} / random") for p in PARAMS]
    pairs += [(f"{p} / full", f"{p} / random") for p in PARAMS]
    pairs += [(f"lora / {q}", f"norm+bias / {q}") for q in POLICIES]
    pairs += [("lora / random", "lora, dense delta / random"),
              ("lora, dense delta / random", "lora, dense delta / random (before merge)")]
    pairs += [(f"{p} / random", f"dense + {p} / random") for p in PARAMS]
    pairs += [("pruned", "dense")]
    for a, b in pairs:
        d = paired_difference(by_seed(a), by_seed(b))
        if d.n < MIN_SEEDS:
            verdict = f"inconclusive with {d.n} seeds"
        elif d.low > 0 or d.high < 0:
            verdict = "first is better" if d.high < 0 else "first is worse"
        else:
            verdict = "no difference shown"
        print(f"  {a:28} − {b:43} {fmt(d):>28}   {verdict}")
    print(f"\ntotal {seconds:.0f} s; FLOPs and speed: unstructured masks save no time on CPU.")


if __name__ == "__main__":
    sys.exit(main())
