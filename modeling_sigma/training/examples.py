# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Training examples of the three SIGMA stages (paper section 3.2); each is a prompt and an answer.

- stage 1, memorise:   image + "Generate the identifier for this image." → identifier
- stage 2, comprehend: "Describe the image represented by the identifier <ID>" → caption (+ replayed stage 1)
- stage 3, align:      caption → identifier, with the caption's soft label for the similarity head

Examples never hold decoded images: a stage-1 example names its image by `(image_source, image_row)`, a row of
one of the corpus splits, and `SigmaCollator` reads and decodes that one image when it builds a batch. A list of
decoded Flickr30K images would hold ~16 GB per rank (COCO ~110 GB).
"""

from __future__ import annotations

import random

import datasets


def memorization_examples(splits: list[datasets.Dataset], identifiers: dict[str, str]) -> list[dict]:
    """Stage 1: one example per image of every split to be indexed; `image_source` is the split's position in
    `splits` (pass the same list to `SigmaCollator(image_sources=...)`), `image_row` its row there."""
    return [
        {"task": "memorize", "image_source": source, "image_row": row, "answer": identifiers[image_id]}
        for source, split in enumerate(splits)
        for row, image_id in enumerate(split["image_id"])
    ]


def replay_examples(replay: list[dict], fraction: float, count_of: int, seed: int) -> list[dict]:
    """`round(fraction × count_of)` stage-1 examples drawn without replacement (at most all of them), so a
    later stage keeps the image → identifier ability open-set indexing relies on. Stages 2 and 3 both use it."""
    if fraction < 0:
        raise ValueError(f"replay_fraction must be >= 0, got {fraction}")
    count = min(len(replay), round(fraction * count_of))
    return random.Random(seed).sample(replay, count)


def comprehension_examples(
    split: datasets.Dataset,
    identifiers: dict[str, str],
    replay: list[dict] = (),
    replay_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Stage 2: identifier → caption for every caption, plus a replayed share of stage-1 examples."""
    examples = [
        {"task": "comprehend", "identifier": identifiers[image_id], "answer": caption}
        for image_id, captions in zip(split["image_id"], split["captions"])
        for caption in captions
    ]
    return examples + replay_examples(list(replay), replay_fraction, len(examples), seed)


def alignment_examples(split: datasets.Dataset, identifiers: dict[str, str], soft_labels_column: str | None):
    """Stage 3: caption → identifier, carrying the caption's soft label (NaN when there is none)."""
    soft = split[soft_labels_column] if soft_labels_column else [None] * len(split)
    examples = []
    for image_id, captions, scores in zip(split["image_id"], split["captions"], soft):
        for index, caption in enumerate(captions):
            label = float("nan") if scores is None else float(scores[index])
            examples.append(
                {"task": "align", "query": caption, "answer": identifiers[image_id], "soft_label": label}
            )
    return examples


def to_dataset(examples: list[dict]) -> datasets.Dataset:
    """A `datasets.Dataset` over example dicts of mixed tasks (absent fields become None)."""
    keys = sorted({key for example in examples for key in example})
    return datasets.Dataset.from_list([{key: example.get(key) for key in keys} for example in examples])


__all__ = [
    "alignment_examples",
    "comprehension_examples",
    "memorization_examples",
    "replay_examples",
    "to_dataset",
]
