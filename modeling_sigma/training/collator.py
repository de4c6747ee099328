# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""`SigmaCollator`: prompt + answer per example, right-padded; only the answer is trained on (labels are -100 on
the prompt). Images are read and decoded here, one batch at a time (examples only name them)."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import torch

from modeling_sigma.data.corpus import load_image

IGNORE_INDEX = -100


class SigmaCollator:
    """Tokenises prompt + answer per example, pads to the right, and masks the prompt out of the labels.

    Args:
        processor (`SigmaProcessor`): tokenizer + image processor of the model.
        config (`SigmaConfig`): gives the prompts of the three tasks.
        max_length (`int`): prompt + answer are cut to this many tokens.
        image_sources (`Sequence[datasets.Dataset]`, *optional*): the splits that stage-1 examples point into with
            `(image_source, image_row)`; their `image` column is read undecoded and decoded per batch.
    """

    def __init__(
        self, processor, config, max_length: int = 512, image_sources: Sequence[datasets.Dataset] = ()
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.max_length = max_length
        self.end_of_turn = "<|im_end|>"
        self.image_sources = [_undecoded_images(source) for source in image_sources]

    def _image(self, example: dict):
        if example.get("source_image") is not None:  # an image value given directly (PIL, path, bytes dict)
            return load_image(example["source_image"])
        source, row = example.get("image_source"), example.get("image_row")
        if source is None or row is None or not 0 <= source < len(self.image_sources):
            raise ValueError(
                f"{example['task']} example names image source {source!r} row {row!r}, but the collator holds "
                f"{len(self.image_sources)} image source(s): pass the splits as SigmaCollator(image_sources=...)"
            )
        return load_image(self.image_sources[source][int(row)]["image"])

    def _prompt(self, example: dict) -> tuple[str, list]:
        task = example["task"]
        if task in ("memorize", "caption"):
            prompt = self.config.memorization_prompt if task == "memorize" else self.config.captioning_prompt
            content = [{"type": "image"}, {"type": "text", "text": prompt}]
            images = [self.processor.prepare_image(self._image(example))]
        elif task == "comprehend":
            content = self.config.comprehension_prompt.format(identifier=example["identifier"])
            images = []
        elif task == "align":
            content = self.config.retrieval_prompt.format(query=example["query"])
            images = []
        else:
            raise ValueError(f"Unknown task {task!r}; expected memorize, comprehend, align or caption.")
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, images

    def _encode(self, example: dict) -> dict:
        text, images = self._prompt(example)
        if images:
            prompt = self.processor(text=[text], images=images, return_tensors="pt")
        else:
            prompt = self.tokenizer([text], return_tensors="pt")
        answer = self.tokenizer(example["answer"] + self.end_of_turn, add_special_tokens=False)["input_ids"]
        prompt_ids = prompt["input_ids"][0].tolist()
        input_ids = (prompt_ids + answer)[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + answer)[: self.max_length]
        encoded = {"input_ids": input_ids, "labels": labels}
        if images:
            encoded["pixel_values"], encoded["image_grid_thw"] = (
                prompt["pixel_values"],
                prompt["image_grid_thw"],
            )
        return encoded

    def __call__(self, examples: list[dict]) -> dict:
        encoded = [self._encode(example) for example in examples]
        width = max(len(e["input_ids"]) for e in encoded)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor(
                [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in encoded]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in encoded]
            ),
            "labels": torch.tensor(
                [e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in encoded]
            ),
        }
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        if any(example.get("soft_label") is not None for example in examples):
            labels = [example.get("soft_label") for example in examples]
            labels = [float("nan") if label is None else label for label in labels]
            batch["similarity_labels"] = torch.tensor(labels, dtype=torch.float32)
        return batch


def _undecoded_images(split: datasets.Dataset) -> datasets.Dataset:
    """The split's `image` column alone, read as `{"bytes", "path"}` (Arrow keeps it on disk until a row is read)."""
    if "image" not in split.column_names:
        raise ValueError(f"an image source needs an 'image' column (has {split.column_names})")
    images = split.select_columns(["image"])
    if isinstance(images.features["image"], datasets.Image):
        images = images.cast_column("image", datasets.Image(decode=False))
    return images


__all__ = ["IGNORE_INDEX", "SigmaCollator"]
