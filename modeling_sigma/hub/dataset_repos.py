# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The dataset repos: a stage-0 codebook (parquet codebook split, quantizer tensors, stage-0 config) and a corpus
(parquet shards per split with the images embedded), each with its dataset card.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from modeling_sigma.hub.cards import SplitFiles, codebook_card, corpus_card
from modeling_sigma.hub.repo_folder import check_target, staged_repo_folder
from modeling_sigma.identifiers.storage import (
    CODEBOOK_SPLIT,
    CONFIG_FILE,
    QUANTIZER_FILE,
    load_builder_folder,
)

logger = logging.getLogger(__name__)

MAX_SHARD_BYTES = 500 * 1024 * 1024


def export_codebook_repo(
    stage0_dir: str | os.PathLike,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset repo of a stage-0 folder (either layout) into `folder`: the codebook as parquet,
    `quantizer.safetensors` and `stage0_config.json` byte for byte, and the dataset card.

    `license` is the card's; set the source corpus's license when the image ids name a licensed corpus.
    """
    source = Path(stage0_dir)
    if not source.is_dir():
        raise FileNotFoundError(
            f"stage-0 folder {str(stage0_dir)!r} does not exist (build it with recipes/stage0.py)"
        )
    quantizer, stage0_config, codebook = load_builder_folder(source)  # checks completeness and format
    shapes = {name: (tuple(tensor.shape), str(tensor.dtype)) for name, tensor in quantizer.items()}
    with staged_repo_folder(folder, overwrite, sources=[source]) as staging:
        split = _write_split(codebook, staging, CODEBOOK_SPLIT)
        for name in (QUANTIZER_FILE, CONFIG_FILE):
            shutil.copy2(source / name, staging / name)
        card = codebook_card(repo_id, codebook.features, split, stage0_config, shapes, license, pretty_name)
        card.save(staging / "README.md")
    logger.info("exported codebook repo %s (%d identifiers)", folder, len(codebook))
    return Path(folder)


def export_corpus_repo(
    corpus: Any,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    tiny_shapes: Any | None = None,
    description: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    overwrite: bool = False,
    **load_kwargs: Any,
) -> Path:
    """Write the dataset repo of a corpus in the SIGMA schema into `folder`: parquet shards per split, images
    embedded as bytes, and the dataset card.

    Args:
        corpus: a `DatasetDict`, `"tiny-shapes"` (generated with `tiny_shapes`), a folder written by
            `save_corpus`, or a Hub corpus id `load_corpus` adapts (`load_kwargs` go to `load_corpus`).
        tiny_shapes (`TinyShapesConfig`, *optional*): the generator settings; the card then describes
            TinyShapes. Default for `"tiny-shapes"`: `TinyShapesConfig()`.
        description: markdown about any other corpus (origin, license, how it was made).
        license: the card's license; default `apache-2.0` for TinyShapes, else `other`.
        max_shard_bytes: a split larger than this (in Arrow bytes) is written as several shards.
    """
    sources = [corpus] if isinstance(corpus, str | os.PathLike) and os.path.isdir(corpus) else []
    check_target(folder, overwrite, sources)  # before loading or generating the corpus
    dataset_dict, tiny_shapes = _resolve_corpus(corpus, tiny_shapes, load_kwargs)
    with staged_repo_folder(folder, overwrite, sources=sources) as staging:
        splits = [_write_split(data, staging, name, max_shard_bytes) for name, data in dataset_dict.items()]
        captions = {name: sum(len(c) for c in data["captions"]) for name, data in dataset_dict.items()}
        features = next(iter(dataset_dict.values())).features
        card = corpus_card(
            repo_id, features, splits, captions, tiny_shapes, description, license, pretty_name
        )
        card.save(staging / "README.md")
    logger.info("exported corpus repo %s (%s)", folder, {split.name: split.num_examples for split in splits})
    return Path(folder)


def _resolve_corpus(corpus: Any, tiny_shapes: Any | None, load_kwargs: dict[str, Any]):
    """`(DatasetDict in the SIGMA schema, TinyShapesConfig or None)`."""
    import datasets

    from modeling_sigma.data.adapters import ADAPTERS
    from modeling_sigma.data.corpus import (
        EMBEDDED_CORPUS_NAME,
        TinyShapesConfig,
        load_corpus,
        validate_corpus,
    )

    if isinstance(corpus, str | os.PathLike):
        name = os.fspath(corpus)
        if name == EMBEDDED_CORPUS_NAME:
            tiny_shapes = tiny_shapes or TinyShapesConfig()
            load_kwargs = {**load_kwargs, "tiny_shapes": tiny_shapes}
        elif name not in ADAPTERS and not os.path.isdir(name):
            raise FileNotFoundError(
                f"corpus {name!r} is neither {EMBEDDED_CORPUS_NAME!r}, a folder written by save_corpus, "
                f"nor one of {sorted(ADAPTERS)}"
            )
        corpus = load_corpus(name, **load_kwargs)
    if isinstance(corpus, datasets.Dataset):
        corpus = datasets.DatasetDict({"test": corpus})
    if not isinstance(corpus, datasets.DatasetDict):
        raise ValueError(f"corpus must be a DatasetDict, a name or a folder, got {type(corpus).__name__}")
    validate_corpus(corpus)
    return corpus, tiny_shapes


def _write_split(
    dataset: Any, folder: Path, split: str, max_shard_bytes: int = MAX_SHARD_BYTES
) -> SplitFiles:
    """Write `data/<split>-<i>-of-<n>.parquet` with image files embedded as bytes, as `push_to_hub` does."""
    from datasets.features.features import require_storage_embed
    from datasets.table import embed_table_storage

    (folder / "data").mkdir(exist_ok=True)
    # What push_to_hub records as the split size: Arrow bytes plus the image files still referenced by path.
    estimate = getattr(dataset, "_estimate_nbytes", None)
    num_bytes = estimate() if estimate is not None else dataset.data.nbytes
    num_shards = max(1, math.ceil(num_bytes / max_shard_bytes))
    files = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        if require_storage_embed(shard.features):
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        name = f"data/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.with_format(None).to_parquet(str(folder / name))
        files.append(name)
    download = sum((folder / name).stat().st_size for name in files)
    return SplitFiles(split, files, len(dataset), num_bytes, download)


__all__ = ["MAX_SHARD_BYTES", "export_codebook_repo", "export_corpus_repo"]
