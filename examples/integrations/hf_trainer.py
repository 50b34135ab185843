"""prunus policies in your own Hugging Face ``Trainer`` script: a tiny causal LM on the
standard library's ``json`` package, trained under Selective Backprop and gradual magnitude
pruning, evaluated by perplexity.

Run: ``python examples/integrations/hf_trainer.py`` (offline, a few seconds on a CPU).
Needs ``pip install 'prunus[lm,hf]'``.
"""

from __future__ import annotations

import math
import tempfile

import datasets
from transformers import TrainingArguments, default_data_collator

from prunus.data.online import get_online
from prunus.integrations.hf import PrunusTrainer
from prunus.text import build_lm, load_stdlib, pack_blocks, train_tokenizer
from prunus.weights import get_sparsifier

CONTEXT = 64


def blocks_dataset(split, tokenizer) -> datasets.Dataset:
    """Packed token blocks of one corpus split as a ``datasets.Dataset`` for the Trainer."""
    blocks = pack_blocks(split, tokenizer, CONTEXT)
    labels = blocks.input_ids.copy()
    labels[blocks.attention_mask == 0] = -100
    return datasets.Dataset.from_dict({
        "input_ids": blocks.input_ids, "attention_mask": blocks.attention_mask, "labels": labels,
    })


def main() -> None:
    corpus = load_stdlib(modules="json", validation_fraction=0.3, test_fraction=0.0)
    tokenizer = train_tokenizer(corpus, vocab_size=512)
    train = blocks_dataset(corpus.train, tokenizer)
    validation = blocks_dataset(corpus["validation"], tokenizer)
    model = build_lm("llama_tiny", vocab_size=len(tokenizer), context_length=CONTEXT)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, report_to=[], save_strategy="no", logging_strategy="no",
            per_device_train_batch_size=16, num_train_epochs=4, learning_rate=3e-3,
            use_cpu=True, disable_tqdm=True, seed=0,
        )
        trainer = PrunusTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=validation,
            data_collator=default_data_collator,
            policies=[
                get_online("selective_backprop", keep=0.5),  # backprop about half the blocks
                # 50% sparse linear layers (the head shares the embedding: left dense)
                get_sparsifier("gmp", sparsity=0.5, include_last=False),
            ],
        )
        trainer.train()
        loss = trainer.evaluate()["eval_loss"]
    state = trainer.prunus_state
    print(f"validation perplexity {math.exp(loss):.1f}")
    print(f"examples backpropagated {state.meter.examples_backpropagated} of "
          f"{4 * len(train)} seen; sparsity {state.extra['sparsity']:.3f}")


if __name__ == "__main__":
    main()
