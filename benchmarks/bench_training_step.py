"""Seconds per training step of the three kinds of `make e2e` step, before and after three changes, in one run.

    python benchmarks/bench_training_step.py --images 200 --epochs 2

Each row adds one change to the row above it, from `reference` (the 0.1 path) to `sigma` (the shipped one):
- `reference`: the embedded tokenizer trained on captions alone, every prompt encoded again each time
  (`SigmaCollator(cache_bytes=0)`: decode the image, run the processor, render the chat template) and the LM
  head applied to every position;
- `+ encoding cache`: prompts encoded once per collator (`SigmaEncodingCache`);
- `+ logits at labels`: the LM head only where a label is predicted (`logits_at_labels=True`, as
  `SigmaTrainer` calls the model);
- `sigma`: the tokenizer also trained on the prompts' fixed text (`backbone.PROMPT_TEXTS`), so their words are
  whole tokens (a stage-3 example: 93 tokens → 52).
Every variant builds the embedded model of `make e2e` from the same seed (8-pixel patches) and trains it with
AdamW on one thread (as each of the job's two workers) over the same shuffled examples of `--images` train
images with random identifiers:
- `caption`: image → caption, the pseudo-query captioner's step (five captions per image);
- `memorize`: image → identifier, stage 1 (one example per image and epoch);
- `align`: caption → identifier, stage 3 (text only).
It prints, per kind and variant, the mean tokens per example, the collate and model (forward, backward,
optimiser) seconds per step, and the speed-up of `sigma` over `reference`. No `make e2e` run is needed.
"""

import argparse
import functools
import os
import random
import sys
import time

import torch
from transformers import set_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from modeling_sigma.data.corpus import get_split, load_corpus  # noqa: E402
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout  # noqa: E402
from modeling_sigma.training import backbone  # noqa: E402
from modeling_sigma.training.collator import SigmaCollator  # noqa: E402
from modeling_sigma.training.examples import alignment_examples, memorization_examples  # noqa: E402
from modeling_sigma.training.pseudo_queries import captioning_examples  # noqa: E402

VARIANTS = {
    "reference": {"cache_bytes": 0, "at_labels": False, "prompts": []},
    "+ encoding cache": {"at_labels": False, "prompts": []},
    "+ logits at labels": {"at_labels": True, "prompts": []},
    "sigma": {"at_labels": True},
}


def examples_of(kind: str, train, identifiers) -> list[dict]:
    if kind == "caption":
        return captioning_examples(train)
    if kind == "memorize":
        return memorization_examples([train], identifiers)
    return alignment_examples(train, identifiers, None)


def random_identifiers(image_ids: list[str], seed: int = 0) -> dict[str, str]:
    layout, rng = SigmaIdentifierLayout(), random.Random(seed)
    return {
        image_id: layout.codes_to_string([rng.randrange(n) for n in layout.sizes]) for image_id in image_ids
    }


def build_model(captions: list[str], variant: dict):
    """The `make e2e` embedded model; with `prompts` in `variant`, its tokenizer is trained on those prompts."""
    set_seed(0)
    shipped = backbone.build_tokenizer
    if "prompts" in variant:
        backbone.build_tokenizer = functools.partial(shipped, prompts=variant["prompts"])
    try:
        return backbone.build_sigma_model("embedded", captions=captions, patch_size=8)
    finally:
        backbone.build_tokenizer = shipped


def time_training(model, processor, examples, train, variant: dict, epochs: int, batch_size: int) -> dict:
    """Collate and model seconds per step over `epochs` shuffled passes, and tokens per example."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cache = {"cache_bytes": variant["cache_bytes"]} if "cache_bytes" in variant else {}
    collator = SigmaCollator(processor, model.config, image_sources=[train], **cache)
    collate_s = model_s = 0.0
    steps, tokens = 0, 0
    for epoch in range(epochs):
        order = random.Random(epoch).sample(examples, len(examples))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            began = time.perf_counter()
            batch = collator(order[start : start + batch_size])
            collated = time.perf_counter()
            outputs = model(**batch, use_cache=False, logits_at_labels=variant["at_labels"])
            logits = outputs.label_logits if variant["at_labels"] else outputs.logits
            logits.argmax(-1)  # SigmaTrainer's token accuracy
            outputs.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model_s += time.perf_counter() - collated
            collate_s += collated - began
            steps += 1
            tokens += int(batch["attention_mask"].sum())
    return {"collate": collate_s / steps, "model": model_s / steps, "steps": steps, "tokens": tokens / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the embedded corpus is cached")
    parser.add_argument("--images", type=int, default=200, help="train images used (of 2,000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--kinds", nargs="+", default=["caption", "memorize", "align"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = get_split(load_corpus("tiny-shapes", cache_dir=args.cache_dir), "train")
    captions = [caption for image_captions in train["captions"] for caption in image_captions]
    train = train.select(range(args.images))
    identifiers = random_identifiers(train["image_id"])
    print(f"{args.images} train images, {args.epochs} epochs, batch {args.batch_size}, one thread")
    print("| step | variant | steps | tokens / example | collate s/step | model s/step | total s/step |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        examples, totals = examples_of(kind, train, identifiers), {}
        for name, variant in VARIANTS.items():
            model, processor = build_model(captions, variant)
            timing = time_training(model, processor, examples, train, variant, args.epochs, args.batch_size)
            totals[name] = timing["collate"] + timing["model"]
            print(
                f"| {kind} | {name} | {timing['steps']} | {timing['tokens'] / args.batch_size:.1f} | "
                f"{timing['collate']:.4f} | {timing['model']:.4f} | {totals[name]:.4f} |"
            )
        print(f"| {kind} | speed-up | | | | | {totals['reference'] / totals['sigma']:.2f}x |")


if __name__ == "__main__":
    main()
