# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""`SigmaCollator`: prompt + answer per example, right-padded; only the answer is trained on (labels are -100 on
the prompt). Images are read and decoded here, one batch at a time (examples only name them), and each encoded
prompt is kept for the next epoch while it fits the collator's memory budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import datasets
import torch

from modeling_sigma.data.corpus import load_image
from modeling_sigma.modeling.modeling_sigma import IGNORE_INDEX


class SigmaCollator:
    """Tokenises prompt + answer per example, pads to the right, and masks the prompt out of the labels.

    Args:
        processor (`SigmaProcessor`): tokenizer + image processor of the model.
        config (`SigmaConfig`): gives the prompts of the three tasks.
        max_length (`int`): prompt + answer are cut to this many tokens.
        image_sources (`Sequence[datasets.Dataset]`, *optional*): the splits that stage-1 examples point into with
            `(image_source, image_row)`; their `image` column is read undecoded and decoded per batch.
        cache_bytes (`int`, *optional*, defaults to 512 MiB): memory for encoded prompts (token ids, and the
            pixel values of an image named by source and row), reused when the same prompt comes again, as each
            image's five captions do every epoch; least recently used first out. 0 turns it off.
    """

    def __init__(
        self,
        processor,
        config,
        max_length: int = 512,
        image_sources: Sequence[datasets.Dataset] = (),
        cache_bytes: int = 512 * 2**20,
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.max_length = max_length
        self.end_of_turn = "<|im_end|>"
        self.image_sources = [_undecoded_images(source) for source in image_sources]
        self.prompts = SigmaEncodingCache(cache_bytes)
        self.answers = SigmaEncodingCache(cache_bytes // 8)

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

    def _encoded_prompt(self, example: dict) -> dict:
        """`input_ids` (a list) of the prompt, with `pixel_values` and `image_grid_thw` when it shows an image."""
        key = _prompt_key(example)
        cached = self.prompts.get(key)
        if cached is not None:
            return cached
        text, images = self._prompt(example)
        if images:
            prompt = self.processor(text=[text], images=images, return_tensors="pt")
            encoded = {
                "input_ids": prompt["input_ids"][0].tolist(),
                "pixel_values": prompt["pixel_values"],
                "image_grid_thw": prompt["image_grid_thw"],
            }
        else:
            encoded = {"input_ids": self.tokenizer([text], return_tensors="pt")["input_ids"][0].tolist()}
        if key is not None:
            self.prompts.put(key, encoded, _size_of(encoded))
        return encoded

    def _encoded_answer(self, answer: str) -> list[int]:
        cached = self.answers.get(answer)
        if cached is None:
            cached = self.tokenizer(answer + self.end_of_turn, add_special_tokens=False)["input_ids"]
            self.answers.put(answer, cached, 8 * len(cached) + len(answer))
        return cached

    def _encode(self, example: dict) -> dict:
        prompt = self._encoded_prompt(example)
        answer = self._encoded_answer(example["answer"])
        prompt_ids = prompt["input_ids"]
        input_ids = (prompt_ids + answer)[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + answer)[: self.max_length]
        encoded = {"input_ids": input_ids, "labels": labels}
        if "pixel_values" in prompt:
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


class SigmaEncodingCache:
    """Least-recently-used values under a budget of bytes (each `put` states its value's size)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict = OrderedDict()  # key -> (value, size)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key):
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][0]

    def put(self, key, value, size: int) -> None:
        if size > self.max_bytes or key in self.entries:
            return
        self.entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped


def _prompt_key(example: dict):
    """What a prompt depends on; `None` (not cached) for an image given by value rather than by source and row."""
    task = example["task"]
    if task in ("memorize", "caption"):
        if example.get("source_image") is not None:
            return None
        return task, example.get("image_source"), example.get("image_row")
    return task, example.get("identifier") if task == "comprehend" else example.get("query")


def _size_of(encoded: dict) -> int:
    tensors = sum(value.nbytes for value in encoded.values() if isinstance(value, torch.Tensor))
    return tensors + 8 * len(encoded["input_ids"]) + 64


def _undecoded_images(split: datasets.Dataset) -> datasets.Dataset:
    """The split's `image` column alone, read as `{"bytes", "path"}` (Arrow keeps it on disk until a row is read)."""
    if "image" not in split.column_names:
        raise ValueError(f"an image source needs an 'image' column (has {split.column_names})")
    images = split.select_columns(["image"])
    if isinstance(images.features["image"], datasets.Image):
        images = images.cast_column("image", datasets.Image(decode=False))
    return images


__all__ = ["IGNORE_INDEX", "SigmaCollator", "SigmaEncodingCache"]
