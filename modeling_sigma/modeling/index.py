# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The searchable set of identifiers: which image each identifier names, per-image metadata, and the trie that
constrains decoding (paper appendix B). `SigmaForRetrieval` holds one as `model.index`; the open-set tools
(`modeling_sigma.open_set`) add and remove images through its public methods.

One folder format, written atomically (`file_utils.atomic_folder`), inside a checkpoint as `sigma_index/`:

    folder/
      index.safetensors   identifier codes (num_images, L), int64
      index.json          format version, model fingerprint, image ids, metadata, snapshot id

Both files carry the same snapshot id, so a reader can tell that it read one complete save. Folders of the
previous open-set format (format_version 1, the same file names plus the trie keys) load unchanged. This module
travels with checkpoints as remote code: standard library, torch, safetensors and siblings only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .file_utils import atomic_folder, restore_interrupted_folder
from .identifier_layout import SigmaIdentifierLayout
from .trie import SigmaIdentifierTrie

logger = logging.getLogger(__name__)

INDEX_FOLDER_NAME = "sigma_index"  # the index's folder inside a checkpoint
TENSORS_FILE = "index.safetensors"
METADATA_FILE = "index.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: the open-set folders of releases before the one index type (trie keys too)
# config keys that do not change which identifiers a model can write (paths, versions, inference settings)
_UNHASHED_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype",
    "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "num_beams", "max_query_length",
    "lambda_ssp", "output_attentions", "output_hidden_states", "return_dict",
}  # fmt: skip


class SigmaIndexSnapshotError(OSError):
    """The two files of an index folder belong to different saves (a writer replaced the folder mid-read)."""


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


class SigmaIndex:
    """Identifier codes, image ids, per-image metadata and the trie of a set of searchable images.

    Args:
        fingerprint (`dict`): `model_fingerprint(model)` of the model whose identifiers these are.

    Rows are kept in insertion order; `add` and `remove` validate everything before they change anything and
    then replace the state at once, so a failed call leaves the index as it was.

    Example:
        >>> index = SigmaIndex.from_model(model, codes, image_ids)  # or model.index
        >>> index.lookup(codes[:2])  # tensor([0, 1])
        >>> index.save("outputs/index"); SigmaIndex.load("outputs/index", model=model)
    """

    def __init__(self, fingerprint: dict[str, Any]):
        self._fingerprint = json.loads(json.dumps(fingerprint))
        self.layout = SigmaIdentifierLayout.from_dict(self._fingerprint["identifier_layout"])
        self._set_state(torch.zeros(0, self.layout.length, dtype=torch.long), (), ())

    @classmethod
    def from_model(cls, model_or_config, codes=None, image_ids=None, metadata=None) -> SigmaIndex:
        """An index for `model_or_config`, holding `codes` `(num_images, L)` (image ids default to row numbers)."""
        index = cls(model_fingerprint(model_or_config))
        if codes is not None:
            codes = torch.as_tensor(codes, dtype=torch.long)
            ids = (
                [str(i) for i in range(codes.shape[0] if codes.dim() else 0)]
                if image_ids is None
                else image_ids
            )
            index.add(codes, ids, metadata)
        return index

    # --------------------------------------------------------------------------------------- queries
    @property
    def fingerprint(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._fingerprint))

    @property
    def codes(self) -> torch.Tensor:
        """Identifier codes `(num_images, L)`, row `i` belonging to `image_ids[i]` (do not modify in place)."""
        return self._codes

    @property
    def image_ids(self) -> tuple[str, ...]:
        return self._image_ids

    @property
    def trie(self) -> SigmaIdentifierTrie:
        """The trie of the indexed identifiers (what `SigmaTrieLogitsProcessor` decodes under)."""
        return self._trie

    def __len__(self) -> int:
        return len(self._image_ids)

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._rows

    def row(self, image_id: str) -> int:
        """Row of an indexed image; `KeyError` naming it otherwise."""
        try:
            return self._rows[str(image_id)]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in the index ({len(self)} images)") from None

    def identifier(self, image_id: str) -> str:
        """Identifier string of an indexed image; `KeyError` if it is not indexed."""
        return self.layout.codes_to_string(self._codes[self.row(image_id)].tolist())

    def identifiers(self) -> dict[str, str]:
        """Image id → identifier string of every indexed image, in row order."""
        strings = map(self.layout.codes_to_string, self._codes.tolist())
        return dict(zip(self._image_ids, strings))

    def metadata(self, image_id: str) -> dict:
        """A copy of the metadata dict of an indexed image; `KeyError` if it is not indexed."""
        return json.loads(json.dumps(self._metadata[self.row(image_id)]))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Row `(N,)` of each identifier row of `codes` `(N, L)`, `-1` where it is not indexed (or out of range)."""
        codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1, self.layout.length)
        if len(self) == 0:
            return torch.full((codes.shape[0],), -1, dtype=torch.long)
        found = self._trie.contains(codes)  # (N,)
        keys = self._trie.identifier_keys(torch.where(found[:, None], codes, torch.zeros_like(codes)))
        position = torch.searchsorted(self._sorted_keys, keys).clamp(max=len(self._sorted_keys) - 1)
        return torch.where(found, self._key_order[position], torch.full_like(position, -1))

    def image_id_of(self, identifier: str) -> str:
        """Image id of an identifier string such as `<id1_3><id2_0>…`; `ValueError` when it is malformed,
        `KeyError` when it is well formed but not indexed."""
        codes = self.layout.string_to_codes(identifier)  # ValueError when malformed
        row = int(self.lookup(torch.tensor([codes]))[0])
        if row < 0:
            raise KeyError(f"identifier {identifier!r} is not in the index ({len(self)} images)")
        return self._image_ids[row]

    def fresh_suffixes(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Smallest unused suffix `(n,)` for each prefix row `(n, L - 1)`; rows sharing a prefix take the next free
        ones in row order. `ValueError` when a prefix has no free suffix left."""
        prefixes = torch.as_tensor(prefixes, dtype=torch.long).reshape(-1, self.layout.length - 1)
        _check_code_rows(prefixes, self.layout.sizes[:-1])
        used = self._trie.allowed_mask(prefixes)[:, : self.layout.suffix_size]  # (n, suffix_size)
        free = ~used
        rank = rank_within_groups(prefixes)  # (n,) 0 for the first row of a prefix in this batch
        exhausted = free.sum(dim=1) <= rank
        if exhausted.any():
            row = int(torch.nonzero(exhausted)[0])
            raise ValueError(
                f"prefix {prefixes[row].tolist()} has no free suffix left (suffix_size="
                f"{self.layout.suffix_size}); remove images or use a layout with a larger suffix_size"
            )
        return (free.cumsum(dim=1) <= rank[:, None]).sum(dim=1)  # index of the (rank + 1)-th free value

    def check_compatible(self, model_or_config) -> None:
        """`ValueError` unless the model writes the identifiers of this index (same fingerprint)."""
        theirs = model_fingerprint(model_or_config)
        different = [key for key in self._fingerprint if self._fingerprint[key] != theirs.get(key)]
        if different:
            raise ValueError(
                f"this index was built for an incompatible model: {', '.join(different)} differ "
                f"(index {[self._fingerprint[k] for k in different]} vs model {[theirs.get(k) for k in different]})"
            )

    def adopt(self, model_or_config) -> None:
        """Take `model_or_config`'s fingerprint, after checking that its layout and token offsets are this
        index's (used for the index saved inside a checkpoint, which belongs to that checkpoint's config)."""
        theirs = model_fingerprint(model_or_config)
        for key in ("identifier_layout", "identifier_token_offsets"):
            if self._fingerprint[key] != theirs[key]:
                raise ValueError(
                    f"the index's {key} {self._fingerprint[key]} differs from the model's {theirs[key]}"
                )
        self._fingerprint = theirs

    def copy(self) -> SigmaIndex:
        """An independent index with the same images (later changes to either do not reach the other)."""
        other = SigmaIndex(self._fingerprint)
        # the state is replaced, never modified in place, so the copy can share it until either changes
        other._codes, other._image_ids, other._metadata, other._trie = (
            self._codes,
            self._image_ids,
            self._metadata,
            self._trie,
        )
        other._sorted_keys, other._key_order, other._rows = (
            self._sorted_keys,
            self._key_order,
            dict(self._rows),
        )
        return other

    def subset(self, image_ids: Sequence[str]) -> SigmaIndex:
        """A new index holding only `image_ids` (in that order); `KeyError` names the first unknown id."""
        ids = list(dict.fromkeys(str(image_id) for image_id in image_ids))
        rows = torch.tensor([self.row(image_id) for image_id in ids], dtype=torch.long)
        other = SigmaIndex(self._fingerprint)
        other._set_state(self._codes[rows], tuple(ids), tuple(self._metadata[int(r)] for r in rows))
        return other

    # ------------------------------------------------------------------------------------- mutation
    def add(
        self, codes: torch.Tensor, image_ids: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> None:
        """Index new images: identifier codes `(n, L)`, one new unique id and an optional JSON dict each.

        Every input is checked before anything changes: on a `ValueError` the index is untouched.
        """
        codes = torch.as_tensor(codes, dtype=torch.long)
        codes = codes.reshape(0, self.layout.length) if codes.numel() == 0 else codes
        _check_code_rows(codes, self.layout.sizes)
        if isinstance(image_ids, str) or len(image_ids) != codes.shape[0]:
            raise ValueError(
                f"got {codes.shape[0]} identifiers for {len(image_ids)} image ids (pass a list of ids)"
            )
        ids = tuple(str(image_id) for image_id in image_ids)
        if any(not image_id.strip() for image_id in ids):
            raise ValueError("image ids must be non-empty strings")
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1 or i in self._rows)
        if repeated:
            raise ValueError(f"image ids must be unique: already in the index or repeated: {repeated[:5]}")
        # internal records are never modified (`metadata()` returns copies), so one empty dict can be shared
        records = ({},) * len(ids) if metadata is None else tuple(_json_record(record) for record in metadata)
        if len(records) != len(ids):
            raise ValueError(f"got {len(records)} metadata dicts for {len(ids)} images")
        self._set_state(torch.cat([self._codes, codes]), self._image_ids + ids, self._metadata + records)

    def remove(self, image_ids: Sequence[str]) -> None:
        """Drop images; an id that is not indexed is a `ValueError` and nothing changes."""
        ids = {str(image_id) for image_id in ([image_ids] if isinstance(image_ids, str) else image_ids)}
        unknown = sorted(image_id for image_id in ids if image_id not in self._rows)
        if unknown:
            raise ValueError(f"image ids not in the index: {unknown[:5]}")
        keep = [row for row, image_id in enumerate(self._image_ids) if image_id not in ids]
        rows = torch.tensor(keep, dtype=torch.long)
        self._set_state(
            self._codes[rows], tuple(self._image_ids[r] for r in keep), tuple(self._metadata[r] for r in keep)
        )

    def _set_state(self, codes: torch.Tensor, image_ids: tuple, metadata: tuple) -> None:
        """Build the trie and the key order of the new state, then replace the whole state at once."""
        trie = SigmaIdentifierTrie.from_codes(codes, self.layout.sizes)
        if len(trie) != codes.shape[0]:
            raise ValueError("two images share one identifier; identifiers must be unique (check the suffix)")
        sorted_keys, key_order = torch.sort(trie.identifier_keys(codes))
        state = (codes, tuple(image_ids), tuple(metadata), trie, sorted_keys, key_order)
        self._codes, self._image_ids, self._metadata, self._trie, self._sorted_keys, self._key_order = state
        self._rows = {image_id: row for row, image_id in enumerate(self._image_ids)}

    # ----------------------------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> None:
        """Write the index folder atomically (a complete folder beside `folder`, then a rename)."""
        from safetensors.torch import save_file

        snapshot = uuid.uuid4().hex
        payload = {
            "format_version": FORMAT_VERSION,
            "snapshot": snapshot,
            "fingerprint": self._fingerprint,
            "image_ids": list(self._image_ids),
            "metadata": list(self._metadata),
        }
        with atomic_folder(folder) as staging:
            save_file(
                {"codes": self._codes.contiguous()}, str(staging / TENSORS_FILE), {"snapshot": snapshot}
            )
            _write_json(staging / METADATA_FILE, payload)
        logger.info("saved index of %d images to %s", len(self), folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, model=None, restore_interrupted: bool = True) -> SigmaIndex:
        """Read a folder written by `save` (or by the format-1 open-set index); with `model` (or its config),
        check that it is compatible. `restore_interrupted` puts back the previous folder of a save that died
        between its two renames; leave it off while another process may be writing (`open_set.storage`)."""
        from safetensors import safe_open

        folder = Path(folder)
        if restore_interrupted:
            restore_interrupted_folder(folder)
        missing = [name for name in (TENSORS_FILE, METADATA_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a SIGMA index folder: missing {missing}")
        payload = json.loads((folder / METADATA_FILE).read_text())
        with safe_open(str(folder / TENSORS_FILE), framework="pt") as tensors:
            snapshot, codes = (tensors.metadata() or {}).get("snapshot"), tensors.get_tensor("codes")
        version = payload.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{folder}: unsupported index format_version {version} (this code reads {READABLE_VERSIONS})"
            )
        if version >= 2 and snapshot != payload.get("snapshot"):
            raise SigmaIndexSnapshotError(f"{folder} was replaced while it was read; read it again")
        index = cls(payload["fingerprint"])
        codes = codes.to(torch.long)
        if codes.shape != (len(payload["image_ids"]), index.layout.length):
            raise ValueError(f"{folder}: codes {tuple(codes.shape)} do not match the image ids and layout")
        index._set_state(codes, tuple(payload["image_ids"]), tuple(payload["metadata"]))
        if model is not None:
            index.check_compatible(model)
        return index

    @classmethod
    def from_legacy_checkpoint(cls, tensors_file: str, metadata_file: str, model_or_config) -> SigmaIndex:
        """The index of a checkpoint saved before the one index type (`sigma_index.pt` + `sigma_index.json`)."""
        tensors = torch.load(tensors_file, weights_only=True)
        with open(metadata_file) as handle:
            metadata = json.load(handle)
        config = getattr(model_or_config, "config", model_or_config)
        if metadata.get("identifier_layout", config.identifier_layout) != config.layout.to_dict():
            raise ValueError(f"{metadata_file}: identifier_layout differs from the model's")
        return cls.from_model(config, tensors["codebook.codes"], metadata["image_ids"])

    def __repr__(self) -> str:
        return f"SigmaIndex(images={len(self)}, layout={self.layout.sizes})"


def rank_within_groups(rows: torch.Tensor) -> torch.Tensor:
    """For each row, how many earlier rows are equal to it (0, 1, …)."""
    if len(rows) == 0:
        return torch.zeros(0, dtype=torch.long)
    _, groups = torch.unique(rows, dim=0, return_inverse=True)
    order = torch.argsort(groups * len(rows) + torch.arange(len(rows)))  # by group, then input order
    sorted_groups = groups[order]
    is_start = torch.ones(len(rows), dtype=torch.bool)
    is_start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    starts = torch.cummax(torch.where(is_start, torch.arange(len(rows)), 0), dim=0).values
    rank = torch.empty(len(rows), dtype=torch.long)
    rank[order] = torch.arange(len(rows)) - starts
    return rank


def _check_code_rows(codes: torch.Tensor, sizes: Sequence[int]) -> None:
    """`ValueError` unless `codes` is `(n, len(sizes))` with every value in `[0, size)`."""
    if codes.dim() != 2 or codes.shape[1] != len(sizes):
        raise ValueError(f"codes must have shape (n, {len(sizes)}), got {tuple(codes.shape)}")
    if codes.numel() and ((codes < 0).any() or (codes >= torch.tensor(list(sizes))).any()):
        raise ValueError(f"codes out of range for position sizes {list(sizes)}")


def _json_record(record: dict | None) -> dict:
    """A JSON-serialisable copy of one image's metadata dict."""
    if record is not None and not isinstance(record, dict):
        raise ValueError(f"metadata must be a dict per image, got {type(record).__name__}")
    try:
        return json.loads(json.dumps(dict(record or {})))
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle)


__all__ = ["SigmaIndex", "SigmaIndexSnapshotError", "model_fingerprint", "rank_within_groups"]
