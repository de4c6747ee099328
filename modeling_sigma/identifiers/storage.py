"""Stage 0 folder format: the codebook dataset, the quantizer tensors and the JSON config.

    folder/
      codebook/                 datasets.Dataset.save_to_disk: image_id (str), identifier (str), codes (list[int])
      quantizer.safetensors     centroids, per-cluster Semi-NMF bases, residual_centroids (float64)
      stage0_config.json        layout, builder config, statistics

The Hub layout (`modeling_sigma.hub.export_codebook_repo`) holds the same codebook as parquet shards,
`data/codebook-00000-of-00001.parquet`, beside the same two files and a README dataset card, so that
`datasets.load_dataset(repo)` reads it too. Readers accept either layout.

Writes go through `modeling_sigma.modeling.file_utils.atomic_folder`: a folder staged beside the target
replaces it by rename once complete, and the previous folder is kept until then, so a reader sees either the
old or the new folder, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from modeling_sigma.modeling.file_utils import atomic_folder, restore_interrupted_folder

logger = logging.getLogger(__name__)

CODEBOOK_DIR = "codebook"
QUANTIZER_FILE = "quantizer.safetensors"
CONFIG_FILE = "stage0_config.json"
RESIDUAL_CENTROIDS = "residual_centroids"  # (M, K4, d / M): the residual product quantiser of id4
LEGACY_TENSOR_NAMES = {
    "residual_codebooks": RESIDUAL_CENTROIDS
}  # tensor names of folders saved before the rename
PARQUET_DIR = "data"
CODEBOOK_SPLIT = "codebook"
FORMAT_VERSION = 1
_REQUIRED = (CONFIG_FILE, QUANTIZER_FILE)
_SAVED_CODEBOOK = (f"{CODEBOOK_DIR}/dataset_info.json", f"{CODEBOOK_DIR}/state.json")


def save_builder_folder(
    folder: str | os.PathLike,
    image_ids: list[str],
    codes: np.ndarray,
    identifiers: list[str],
    quantizer: dict[str, np.ndarray],
    metadata: dict[str, Any],
) -> None:
    """Write the three parts of a stage-0 folder atomically (replacing an existing folder)."""
    from datasets import Dataset, Features, Sequence, Value
    from safetensors.numpy import save_file

    with atomic_folder(folder) as staging:
        features = Features({"image_id": Value("string"), "identifier": Value("string"),
                             "codes": Sequence(Value("int32"))})  # fmt: skip
        columns = {"image_id": image_ids, "identifier": identifiers, "codes": codes.tolist()}
        Dataset.from_dict(columns, features=features).save_to_disk(str(staging / CODEBOOK_DIR))
        tensors = {name: np.ascontiguousarray(value) for name, value in quantizer.items()}
        save_file(tensors, str(staging / QUANTIZER_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        payload = {"format_version": FORMAT_VERSION, **metadata}
        (staging / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    logger.info("saved stage-0 folder %s (%d identifiers)", folder, len(image_ids))


def resolve_folder(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; anything else is a Hub dataset repo id fetched with `snapshot_download`."""
    path = Path(path_or_repo)
    restore_interrupted_folder(path)
    if path.exists():
        return path
    if str(path_or_repo).startswith((".", "/")) or str(path_or_repo).count("/") != 1:
        raise FileNotFoundError(f"stage-0 folder {str(path_or_repo)!r} does not exist")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_repo), repo_type="dataset", revision=revision))


def codebook_parquet_files(folder: str | os.PathLike) -> list[Path]:
    """The parquet shards of the codebook in the Hub layout, in row order (empty in the save_to_disk one).

    Shards are `data/<split>-<index>-of-<count>.parquet`; the `codebook` split is read, or the only split
    when the folder was pushed under another name (`Dataset.push_to_hub` writes `train`).
    """
    shards = sorted(Path(folder, PARQUET_DIR).glob("*.parquet"))
    splits = sorted({shard.name.split("-", 1)[0] for shard in shards})
    if len(splits) > 1 and CODEBOOK_SPLIT not in splits:
        raise ValueError(f"{folder}/{PARQUET_DIR} holds the splits {splits}; expected {CODEBOOK_SPLIT!r}")
    split = CODEBOOK_SPLIT if CODEBOOK_SPLIT in splits else (splits[0] if splits else None)
    return [shard for shard in shards if shard.name.split("-", 1)[0] == split]


def _has_saved_codebook(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _SAVED_CODEBOOK)


def check_folder(folder: Path) -> None:
    """Raise `FileNotFoundError` naming every missing part of a stage-0 folder (either codebook layout)."""
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if not _has_saved_codebook(folder) and not codebook_parquet_files(folder):
        if (folder / CODEBOOK_DIR).is_dir():
            missing += [name for name in _SAVED_CODEBOOK if not (folder / name).is_file()]
        else:
            missing.append(f"{CODEBOOK_DIR}/ (save_to_disk) or {PARQUET_DIR}/*.parquet")
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete stage-0 folder: missing {missing}; rebuild it with recipes/stage0.py"
        )


def load_builder_folder(
    path_or_repo: str | os.PathLike, revision: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
    """Read `(quantizer tensors, config JSON, codebook Dataset)` from a stage-0 folder or Hub repo."""
    from safetensors.numpy import load_file

    folder = resolve_folder(path_or_repo, revision)
    check_folder(folder)
    metadata = json.loads((folder / CONFIG_FILE).read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: unsupported stage-0 format_version {metadata.get('format_version')}")
    quantizer = {
        LEGACY_TENSOR_NAMES.get(name, name): value
        for name, value in load_file(str(folder / QUANTIZER_FILE)).items()
    }
    return quantizer, metadata, load_codebook(folder)


def load_codebook(path_or_repo: str | os.PathLike, revision: str | None = None) -> Any:
    """The codebook `datasets.Dataset` (image_id, identifier, codes) of a stage-0 folder or Hub repo."""
    from datasets import Dataset, load_from_disk

    folder = resolve_folder(path_or_repo, revision)
    check_folder(folder)
    if _has_saved_codebook(folder):
        return load_from_disk(str(folder / CODEBOOK_DIR))
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Read in memory rather than through load_dataset, which would copy the shards into the datasets cache;
    # the features (int32 codes) come back from the schema metadata that to_parquet wrote.
    shards = [pq.read_table(shard) for shard in codebook_parquet_files(folder)]
    return Dataset(pa.concat_tables(shards))


__all__ = [
    "check_folder",
    "codebook_parquet_files",
    "load_builder_folder",
    "load_codebook",
    "resolve_folder",
    "save_builder_folder",
]
