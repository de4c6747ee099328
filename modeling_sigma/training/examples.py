# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Training examples of the three SIGMA stages (paper section 3.2); each is a prompt and an answer.

- stage 1, memorise:   image + "Generate the identifier for this image." → identifier
- stage 2, comprehend: "Describe the image represented by the identifier <ID>" → caption (+ replayed stage 1)
- stage 3, align:      caption → identifier, with the caption's soft label for the similarity head
"""

from __future__ import annotations

import math
import random

import datasets


def memorization_examples(splits: list[datasets.Dataset], identifiers: dict[str, str]) -> list[dict]:
    """Stage 1: one example per image of every split to be indexed."""
    examples = []
    for split in splits:
        for image_id, image in zip(split["image_id"], split["image"]):
            examples.append({"task": "memorize", "source_image": image, "answer": identifiers[image_id]})
    return examples


def comprehension_examples(
    split: datasets.Dataset,
    identifiers: dict[str, str],
    replay: list[dict],
    replay_fraction: float,
    seed: int,
) -> list[dict]:
    """Stage 2: identifier → caption for every caption, plus a replayed share of stage-1 examples."""
    examples = [
        {"task": "comprehend", "identifier": identifiers[image_id], "answer": caption}
        for image_id, captions in zip(split["image_id"], split["captions"])
        for caption in captions
    ]
    count = min(len(replay), math.ceil(replay_fraction * len(examples)))
    examples += random.Random(seed).sample(replay, count)
    return examples


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


__all__ = ["alignment_examples", "comprehension_examples", "memorization_examples", "to_dataset"]
