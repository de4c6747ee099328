# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Open-set indexing (paper section 5): add images to a `SigmaIndex` after training, remove them, search it.

A new image gets levels 1..L-1 of its identifier either from the model itself (stage-1 memorisation ability:
image + memorisation prompt → levels 1..L-1 under a layout-wide constraint) or from the stage-0 quantiser,
and always a fresh suffix (`SigmaIndex.fresh_suffixes`). Pass `model.index` to change what `model.retrieve`
searches by default, or any other index to `search` / `model.retrieve(index=...)`. Folders shared by several
processes are changed through `modeling_sigma.open_set.storage.update_index_folder` (a lock, then a re-read).

    >>> add_images(model.index, model, ["cat.jpg"], ["cat"])
    >>> search(model.index, model, ["a cat on a sofa"], k=5, rerank=True)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_sigma.data.corpus import load_image
from modeling_sigma.modeling.index import SigmaIndex

logger = logging.getLogger(__name__)

ADD_MODES = ("generate", "quantizer")


class SigmaLayoutLogitsProcessor(LogitsProcessor):
    """Allows, at identifier position `p`, exactly the tokens of that position (any value in range).

    Unlike the trie constraint it does not restrict generation to indexed identifiers, so a new image can get
    a prefix nobody has yet. Used for levels 1..L-1; the suffix is allocated afterwards.

    Args:
        token_offsets (`list[int]`): token id of code 0 at every identifier position.
        sizes (`list[int]`): number of values of every position.
        prompt_length (`int`): length of the left-padded prompt.
    """

    def __init__(self, token_offsets: Sequence[int], sizes: Sequence[int], prompt_length: int):
        self.token_offsets, self.sizes = list(token_offsets), list(sizes)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        depth = min(input_ids.shape[1] - self.prompt_length, len(self.sizes) - 1)
        start = self.token_offsets[depth]
        mask = torch.full_like(scores, -math.inf)  # (batch, vocab)
        mask[:, start : start + self.sizes[depth]] = 0.0
        return scores + mask


# ------------------------------------------------------------------------------------------- adding
def add_images(
    index: SigmaIndex,
    model,
    images: Sequence,
    image_ids: Sequence[str],
    metadata: Sequence[dict] | None = None,
    mode: str = "generate",
    quantizer=None,
    encoder=None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Index new images in `index` and return their identifiers `(n, L)`.

    Args:
        index (`SigmaIndex`): the index to extend (e.g. `model.index`: `model.retrieve` finds them at once).
        model (`SigmaForRetrieval`): the model the index belongs to (checked with `index.check_compatible`).
        images: PIL images, paths, or corpus values (`{"bytes"/"path"}` dicts). A path is recorded as the
            `"path"` of the image's metadata unless the metadata already has one.
        image_ids: one new, unique id per image.
        metadata: optional JSON-serialisable dict per image.
        mode: `"generate"` (the model writes levels 1..L-1 from the image) or `"quantizer"` (stage-0
            `SigmaIdentifierBuilder.quantize` of `encoder.encode_images`).
        quantizer (`SigmaIdentifierBuilder`): fitted stage-0 builder (mode `"quantizer"`).
        encoder (`SigmaEncoder`): the frozen stage-0 encoder (mode `"quantizer"`).
        batch_size: images per `generate` / encoder call.

    Every input is validated before anything changes: on a `ValueError` the index is untouched.
    """
    ids, records = check_new_images(index, model, images, image_ids, metadata, mode)
    prefixes = image_prefixes(model, images, mode, quantizer, encoder, batch_size, layout=index.layout)
    return commit_images(index, prefixes, ids, records)


def check_new_images(index, model, images, image_ids, metadata=None, mode="generate") -> tuple[list, list]:
    """`(image ids, metadata records)` of images to add, after the checks that need no model call."""
    if mode not in ADD_MODES:
        raise ValueError(f"mode must be one of {ADD_MODES}, got {mode!r}")
    if model is None:
        raise ValueError("adding images needs the model the index belongs to (model=...)")
    index.check_compatible(model)
    if isinstance(image_ids, str) or len(images) != len(image_ids):
        raise ValueError(f"got {len(images)} images for {len(image_ids)} image ids (pass a list of ids)")
    ids = [str(image_id) for image_id in image_ids]
    if any(not image_id.strip() for image_id in ids):
        raise ValueError("image ids must be non-empty strings")
    duplicates = sorted(
        image_id for image_id, count in Counter(ids).items() if count > 1 or image_id in index
    )
    if duplicates:
        raise ValueError(f"image ids already in the index or repeated: {duplicates[:5]}")
    metadata = metadata if metadata is not None else [{} for _ in ids]
    if len(metadata) != len(ids):
        raise ValueError(f"got {len(metadata)} metadata dicts for {len(ids)} images")
    return ids, [_image_record(image, record) for image, record in zip(images, metadata)]


def image_prefixes(model, images, mode="generate", quantizer=None, encoder=None, batch_size=64, layout=None):
    """Levels 1..L-1 `(n, L - 1)` of new images' identifiers: written by the model, or by the quantiser."""
    if mode == "quantizer" and (quantizer is None or encoder is None):
        raise ValueError("mode='quantizer' needs quantizer= (a fitted SigmaIdentifierBuilder) and encoder=")
    layout = layout or model.config.layout
    if mode == "quantizer" and quantizer.layout.to_dict() != layout.to_dict():
        raise ValueError(f"quantizer layout {quantizer.layout} differs from the index layout {layout}")
    pil_images = [load_image(image) for image in images]  # ValueError names an unreadable image
    if not pil_images:
        return torch.zeros(0, layout.length - 1, dtype=torch.long)
    if mode == "generate":
        return generate_prefixes(model, pil_images, batch_size)
    features = encoder.encode_images(pil_images, batch_size=batch_size)  # (n, d)
    return torch.as_tensor(quantizer.quantize(features), dtype=torch.long)  # (n, L - 1)


def commit_images(index: SigmaIndex, prefixes: torch.Tensor, image_ids, metadata) -> torch.Tensor:
    """Give each prefix a fresh suffix and add the images to `index`; returns their codes `(n, L)`."""
    codes = torch.cat([prefixes, index.fresh_suffixes(prefixes)[:, None]], dim=1)  # (n, L)
    index.add(codes, image_ids, metadata)
    logger.info("indexed %d images; the index holds %d", len(image_ids), len(index))
    return codes


def remove_images(index: SigmaIndex, image_ids: Sequence[str], model=None) -> None:
    """Drop images from `index` (checked against `model` when given); unknown ids are a `ValueError`."""
    if model is not None:
        index.check_compatible(model)
    index.remove(image_ids)
    logger.info("removed images; the index holds %d", len(index))


# ------------------------------------------------------------------------------------------ search
def search(
    index: SigmaIndex,
    model,
    queries: list[str],
    k: int = 10,
    rerank: bool = False,
    rerank_weight: float = 1.0,
    num_beams: int | None = None,
    **retrieve_kwargs,
) -> list[list[dict]]:
    """`model.retrieve` on `index`; hits carry their `metadata`.

    With `rerank=True`, `max(k, num_beams)` beams are rescored by
    `fused_score = score + rerank_weight * log(similarity)` (beam log-probability plus the similarity head)
    and the best `k` are kept, sorted by `fused_score`.
    """
    if len(index) == 0:
        raise ValueError("the index is empty: add images first")
    index.check_compatible(model)
    candidates = rerank_candidates(model, k, num_beams, len(index)) if rerank else k
    beams = max(num_beams or 0, candidates) if num_beams or rerank else None
    results = model.retrieve(queries, k=candidates, num_beams=beams, index=index, **retrieve_kwargs)
    for hits in results:
        for hit in hits:
            hit["metadata"] = index.metadata(hit["image_id"])
    return rerank_hits(results, k, rerank_weight) if rerank else results


def rerank_hits(results: list[list[dict]], k: int, weight: float = 1.0) -> list[list[dict]]:
    """Similarity-head re-ranking: `fused_score = score + weight * log(similarity)` on every hit, best `k` kept.

    `results` are `model.retrieve` hits (beam log-probability `score`, head `similarity` in (0, 1)); the hits
    gain a `fused_score` and each list is re-sorted by it.
    """
    for hits in results:
        for hit in hits:
            hit["fused_score"] = hit["score"] + weight * math.log(max(hit["similarity"], 1e-12))
    return [sorted(hits, key=lambda hit: -hit["fused_score"])[:k] for hits in results]


def rerank_candidates(model, k: int, num_beams: int | None, size: int) -> int:
    """Beams to rescore when re-ranking: at least `k` and the beam width, at most the index size."""
    return min(max(k, num_beams or model.config.num_beams), size)


@torch.no_grad()
def generate_prefixes(model, images: list, batch_size: int = 64) -> torch.Tensor:
    """Levels 1..L-1 that the model writes for each image after the memorisation prompt (greedy)."""
    processor = model.processor
    if processor is None:
        raise ValueError("mode='generate' needs model.processor (load a checkpoint that has one)")
    length = model.config.layout.length
    offsets = torch.tensor(model.config.identifier_token_offsets[:-1])
    chunks = []
    for start in range(0, len(images), batch_size):
        inputs = processor.process_images(
            images[start : start + batch_size], prompt=model.config.memorization_prompt
        )
        inputs = {name: value.to(model.device) for name, value in inputs.items()}
        prompt_length = inputs["input_ids"].shape[1]
        constraint = SigmaLayoutLogitsProcessor(
            model.config.identifier_token_offsets, model.config.layout.sizes, prompt_length
        )
        sequences = model.generate(
            **inputs,
            use_trie=False,
            logits_processor=LogitsProcessorList([constraint]),
            max_new_tokens=length - 1,
            min_new_tokens=length - 1,
            num_beams=1,
        )
        chunks.append(
            sequences[:, prompt_length : prompt_length + length - 1].cpu() - offsets
        )  # (batch, L-1)
    return torch.cat(chunks)


def _image_record(image, metadata: dict | None) -> dict:
    """The metadata dict stored for one image: a JSON-serialisable copy, with the path of a path input."""
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict per image, got {type(metadata).__name__}")
    record = dict(metadata or {})
    if isinstance(image, (str, os.PathLike)):
        record.setdefault("path", os.fspath(image))
    try:
        json.dumps(record)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error
    return record


__all__ = [
    "SigmaLayoutLogitsProcessor",
    "add_images",
    "check_new_images",
    "commit_images",
    "generate_prefixes",
    "image_prefixes",
    "remove_images",
    "rerank_candidates",
    "rerank_hits",
    "search",
]
