# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Open-set image index: add and remove images after training, search, and persist the index in one folder.

A `SigmaImageIndex` maps identifiers to image ids (plus an optional metadata dict per image) and keeps the
identifier trie. New images get their identifier either from the model itself (stage-1 memorisation ability:
image + memorisation prompt → levels 1..L-1 under a layout-wide constraint) or from the stage-0 quantiser, and
always a fresh suffix. Changes reach the model's index at once, so `model.retrieve` finds new images and never
returns removed ones.

    folder/
      index.safetensors   codebook codes (num_images, L) and the trie keys
      index.json          format version, model fingerprint, image ids, metadata (written last)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_sigma.data.corpus import load_image
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.trie import SigmaIdentifierTrie
from modeling_sigma.open_set.storage import read_index_folder, write_index_folder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ADD_MODES = ("generate", "quantizer")
# config keys that do not change which identifiers a model can write (paths, versions, inference settings)
_UNHASHED_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype",
    "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "num_beams", "max_query_length",
    "lambda_ssp", "output_attentions", "output_hidden_states", "return_dict",
}  # fmt: skip


def model_fingerprint(model_or_config) -> dict[str, Any]:
    """Layout, identifier token offsets and a hash of the config: what an index must share with its model."""
    config = getattr(model_or_config, "config", model_or_config)
    hashed = json.dumps(_strip_keys(config.to_dict()), sort_keys=True, default=str)
    return {
        "identifier_layout": config.layout.to_dict(),
        "identifier_token_offsets": list(config.identifier_token_offsets),
        "config_sha256": hashlib.sha256(hashed.encode()).hexdigest(),
    }


def _strip_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_keys(v) for k, v in value.items() if k not in _UNHASHED_CONFIG_KEYS}
    return value


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


class SigmaImageIndex:
    """Identifier ↔ image id map, metadata and trie of an open set of images, saved as one folder.

    Args:
        fingerprint (`dict`): `model_fingerprint(model)` of the model the identifiers belong to.

    Example:
        >>> index = SigmaImageIndex.from_model(model)  # starts from the model's own codebook, if any
        >>> index.add(["cat.jpg"], ["cat"], model=model)
        >>> index.search(model, ["a cat on a sofa"], k=5, rerank=True)
        >>> index.save("outputs/index")
    """

    def __init__(self, fingerprint: dict[str, Any]):
        self.fingerprint = dict(fingerprint)
        self.layout = SigmaIdentifierLayout.from_dict(self.fingerprint["identifier_layout"])
        self.codes = torch.zeros(0, self.layout.length, dtype=torch.long)
        self.image_ids: list[str] = []
        self.metadata: list[dict] = []
        self.trie = SigmaIdentifierTrie(self.layout.sizes)
        self._rows: dict[str, int] = {}

    @classmethod
    def from_model(cls, model) -> SigmaImageIndex:
        """An index for `model`, holding the model's installed codebook (empty if it has none)."""
        index = cls(model_fingerprint(model))
        if model.codebook_codes is not None:
            index._commit(model.codebook_codes.clone(), list(model.image_ids), [{} for _ in model.image_ids])
        return index

    # --------------------------------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: str) -> bool:
        return str(image_id) in self._rows

    def identifier(self, image_id: str) -> str:
        """Identifier string of an indexed image; `KeyError` if it is not indexed."""
        return self.layout.codes_to_string(self.codes[self._rows[str(image_id)]].tolist())

    def check_compatible(self, model_or_config) -> None:
        """Raise `ValueError` unless the model writes the identifiers of this index (same fingerprint)."""
        theirs = model_fingerprint(model_or_config)
        different = [key for key in self.fingerprint if self.fingerprint[key] != theirs.get(key)]
        if different:
            raise ValueError(
                f"this index was built for an incompatible model: {', '.join(different)} differ "
                f"(index {[self.fingerprint[k] for k in different]} vs model {[theirs.get(k) for k in different]})"
            )

    # ------------------------------------------------------------------------------------- mutation
    def add(
        self,
        images: Sequence,
        image_ids: Sequence[str],
        metadata: Sequence[dict] | None = None,
        mode: str = "generate",
        model=None,
        quantizer=None,
        encoder=None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Index new images and return their identifiers `(n, L)`; the model finds them at once.

        Args:
            images: PIL images, paths, or corpus values (`{"bytes"/"path"}` dicts). A path is recorded as the
                `"path"` of the image's metadata unless the metadata already has one.
            image_ids: one new, unique id per image.
            metadata: optional JSON-serialisable dict per image.
            mode: `"generate"` (the model writes levels 1..L-1 from the image) or `"quantizer"` (stage-0
                `SigmaIdentifierBuilder.quantize` of `encoder.encode_images`).
            model (`SigmaForRetrieval`): the model this index belongs to; its installed index is updated.
            quantizer (`SigmaIdentifierBuilder`): fitted stage-0 builder (mode `"quantizer"`).
            encoder (`SigmaEncoder`): the frozen stage-0 encoder (mode `"quantizer"`).
            batch_size: images per `generate` / encoder call.

        Every input is validated before anything changes: on a `ValueError` the index is untouched.
        """
        ids, records = self._validate_new(images, image_ids, metadata, mode, model)
        pil_images = [load_image(image) for image in images]  # ValueError names an unreadable image
        if not ids:
            return torch.zeros(0, self.layout.length, dtype=torch.long)
        if mode == "generate":
            prefixes = generate_prefixes(model, pil_images, batch_size)
        else:
            prefixes = self._quantize(pil_images, quantizer, encoder, batch_size)
        codes = torch.cat([prefixes, self._fresh_suffixes(prefixes)[:, None]], dim=1)  # (n, L)
        self._commit(torch.cat([self.codes, codes]), self.image_ids + ids, self.metadata + records)
        self.attach(model)
        logger.info("indexed %d images (%s mode); index holds %d", len(ids), mode, len(self))
        return codes

    def _validate_new(self, images, image_ids, metadata, mode, model) -> tuple[list[str], list[dict]]:
        if mode not in ADD_MODES:
            raise ValueError(f"mode must be one of {ADD_MODES}, got {mode!r}")
        if model is None:
            raise ValueError("add needs the model the index belongs to (model=...)")
        self.check_compatible(model)
        if isinstance(image_ids, str) or len(images) != len(image_ids):
            raise ValueError(f"got {len(images)} images for {len(image_ids)} image ids (pass a list of ids)")
        ids = [str(image_id) for image_id in image_ids]
        if any(not image_id.strip() for image_id in ids):
            raise ValueError("image ids must be non-empty strings")
        counts = Counter(ids)
        duplicates = sorted(image_id for image_id, count in counts.items() if count > 1 or image_id in self)
        if duplicates:
            raise ValueError(f"image ids already in the index or repeated: {duplicates[:5]}")
        metadata = metadata if metadata is not None else [{} for _ in ids]
        if len(metadata) != len(ids):
            raise ValueError(f"got {len(metadata)} metadata dicts for {len(ids)} images")
        return ids, [_image_record(image, record) for image, record in zip(images, metadata)]

    def _quantize(self, images, quantizer, encoder, batch_size) -> torch.Tensor:
        if quantizer is None or encoder is None:
            raise ValueError(
                "mode='quantizer' needs quantizer= (a fitted SigmaIdentifierBuilder) and encoder="
            )
        if quantizer.layout.to_dict() != self.layout.to_dict():
            raise ValueError(
                f"quantizer layout {quantizer.layout} differs from the index layout {self.layout}"
            )
        features = encoder.encode_images(images, batch_size=batch_size)  # (n, d)
        return torch.as_tensor(quantizer.quantize(features), dtype=torch.long)  # (n, L - 1)

    def _fresh_suffixes(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Smallest unused suffix per prefix (rows sharing a prefix take the next free ones, in order)."""
        used = self.trie.allowed_mask(prefixes)[:, : self.layout.suffix_size]  # (n, suffix_size)
        free = ~used
        rank = _rank_within_groups(prefixes)  # (n,) 0 for the first row of a prefix in this batch
        exhausted = free.sum(dim=1) <= rank
        if exhausted.any():
            row = int(torch.nonzero(exhausted)[0])
            raise ValueError(
                f"prefix {prefixes[row].tolist()} has no free suffix left (suffix_size="
                f"{self.layout.suffix_size}); remove images or use a layout with a larger suffix_size"
            )
        return (free.cumsum(dim=1) <= rank[:, None]).sum(dim=1)  # index of the (rank + 1)-th free value

    def remove(self, image_ids: Sequence[str], model=None) -> None:
        """Drop images from the index (and from `model`'s installed index); unknown ids are a `ValueError`."""
        ids = {str(image_id) for image_id in ([image_ids] if isinstance(image_ids, str) else image_ids)}
        unknown = sorted(image_id for image_id in ids if image_id not in self)
        if unknown:
            raise ValueError(f"image ids not in the index: {unknown[:5]}")
        if model is not None:
            self.check_compatible(model)
        keep = torch.tensor([image_id not in ids for image_id in self.image_ids], dtype=torch.bool)
        rows = keep.nonzero().flatten().tolist()
        self._commit(self.codes[keep], [self.image_ids[i] for i in rows], [self.metadata[i] for i in rows])
        if model is not None:
            self.attach(model)
        logger.info("removed %d images; index holds %d", len(ids), len(self))

    def _commit(self, codes: torch.Tensor, image_ids: list[str], metadata: list[dict]) -> None:
        """Replace the whole state at once (a new tensor, so `attach` can tell the model is out of date)."""
        trie = SigmaIdentifierTrie.from_codes(codes, self.layout.sizes)
        if len(trie) != len(image_ids):
            raise ValueError("two images share one identifier")
        self.codes, self.image_ids, self.metadata, self.trie = codes, image_ids, metadata, trie
        self._rows = {image_id: row for row, image_id in enumerate(image_ids)}

    def attach(self, model) -> None:
        """Install this index as the model's index (a no-op when it already is)."""
        if model.codebook_codes is self.codes:
            return
        self.check_compatible(model)
        model.set_index(self.codes, self.image_ids)

    # --------------------------------------------------------------------------------------- search
    def search(
        self,
        model,
        queries: list[str],
        k: int = 10,
        rerank: bool = False,
        rerank_weight: float = 1.0,
        num_beams: int | None = None,
        **retrieve_kwargs,
    ) -> list[list[dict]]:
        """`model.retrieve` on this index; hits carry their `metadata`.

        With `rerank=True`, `max(k, num_beams)` beams are rescored by
        `fused_score = score + rerank_weight * log(similarity)` (beam log-probability plus the similarity head)
        and the best `k` are kept, sorted by `fused_score`.
        """
        if len(self) == 0:
            raise ValueError("the index is empty: add images first")
        self.attach(model)
        candidates = rerank_candidates(model, k, num_beams, len(self)) if rerank else k
        beams = max(num_beams or 0, candidates) if num_beams or rerank else None
        results = model.retrieve(queries, k=candidates, num_beams=beams, **retrieve_kwargs)
        for hits in results:
            for hit in hits:
                hit["metadata"] = self.metadata[self._rows[hit["image_id"]]]
        return rerank_hits(results, k, rerank_weight) if rerank else results

    # ----------------------------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> None:
        """Write the index folder atomically: a temp folder beside the target, then a rename."""
        tensors = {"codes": self.codes.contiguous()}
        tensors.update({f"trie.{name}": value for name, value in self.trie.state_dict().items()})
        payload = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "image_ids": self.image_ids,
            "metadata": self.metadata,
        }
        write_index_folder(folder, tensors, payload)
        logger.info("saved index of %d images to %s", len(self), folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None) -> SigmaImageIndex:
        """Read a folder written by `save`; with `model` (or its config), check that it is compatible."""
        tensors, payload = read_index_folder(folder)
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: unsupported index format_version {payload.get('format_version')}")
        index = cls(payload["fingerprint"])
        codes = tensors["codes"].to(torch.long)
        if codes.shape != (len(payload["image_ids"]), index.layout.length):
            raise ValueError(f"{folder}: codes {tuple(codes.shape)} do not match the image ids and layout")
        index._commit(codes, list(payload["image_ids"]), list(payload["metadata"]))
        if model is not None:
            index.check_compatible(model)
        return index

    def __repr__(self) -> str:
        return f"SigmaImageIndex(images={len(self)}, layout={self.layout.sizes})"


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


def _rank_within_groups(rows: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows are equal to it (0, 1, …)."""
    _, groups = torch.unique(rows, dim=0, return_inverse=True)
    order = torch.argsort(groups * len(rows) + torch.arange(len(rows)))  # by group, then input order
    sorted_groups = groups[order]
    is_start = torch.ones(len(rows), dtype=torch.bool)
    is_start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    starts = torch.cummax(torch.where(is_start, torch.arange(len(rows)), 0), dim=0).values
    rank = torch.empty(len(rows), dtype=torch.long)
    rank[order] = torch.arange(len(rows)) - starts
    return rank


def _image_record(image, metadata: dict | None) -> dict:
    """The metadata dict stored for one image: a JSON-serialisable copy, with the path of a path input."""
    record = dict(metadata or {})
    if isinstance(image, (str, os.PathLike)):
        record.setdefault("path", os.fspath(image))
    try:
        json.dumps(record)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error
    return record


__all__ = [
    "SigmaImageIndex",
    "SigmaLayoutLogitsProcessor",
    "generate_prefixes",
    "model_fingerprint",
    "rerank_candidates",
    "rerank_hits",
]
