"""Image features computed elsewhere, read by stage 0 instead of running the encoder.

jina-embeddings-v4 (the paper's stage-0 encoder) runs through remote code that needs peft, torchvision and a
transformers older than this package's (it reads `_checkpoint_conversion_mapping`, gone in transformers 5.24).
The route: extract its features once in a separate pinned environment (`recipes/extract_features.py`, see
docs/REPRODUCE.md), then run stage 0 here with `--features_dir`. Only this module, `data/` and `encoders.py` are
imported there (torch, numpy, datasets, PIL, tqdm).

Layout of a features folder, one pair of files per corpus split:

- `{split}.npy`: float32 `(num_images, dim)`, one row per image;
- `{split}.json`: `{"encoder": name, "image_ids": [...]}`, the image id of each row (written last: a split
  whose JSON exists is complete). No pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from modeling_sigma.identifiers.encoders import l2_normalise
from modeling_sigma.modeling.file_utils import atomic_file

logger = logging.getLogger(__name__)


def _paths(features_dir: str | os.PathLike, split: str) -> tuple[str, str]:
    base = os.path.join(os.fspath(features_dir), split)
    return f"{base}.npy", f"{base}.json"


def save_split_features(
    features_dir: str | os.PathLike, split: str, features: np.ndarray, image_ids: Sequence[str], encoder: str
) -> None:
    """Writes one split's features and image ids atomically (the JSON last)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(image_ids):
        raise ValueError(f"features {features.shape} must be (len(image_ids)={len(image_ids)}, dim)")
    array_path, ids_path = _paths(features_dir, split)
    with atomic_file(array_path) as stream:
        np.save(stream, features)
    with atomic_file(ids_path, "w") as stream:
        json.dump({"encoder": encoder, "image_ids": [str(i) for i in image_ids]}, stream)


def load_split_features(
    features_dir: str | os.PathLike, split: str, image_ids: Sequence[str], encoder: str | None = None
) -> np.ndarray:
    """Features of `image_ids` (in that order) from a features folder, L2-normalised float32.

    Raises `FileNotFoundError` when the split was not extracted and `ValueError` naming the problem when the
    file does not cover every image, came from another encoder, or holds non-finite values.
    """
    array_path, ids_path = _paths(features_dir, split)
    if not os.path.isfile(ids_path) or not os.path.isfile(array_path):
        raise FileNotFoundError(
            f"No features for split {split!r} in {os.fspath(features_dir)!r} (expected {split}.npy and "
            f"{split}.json): run recipes/extract_features.py for this corpus first."
        )
    with open(ids_path) as stream:
        meta = json.load(stream)
    if encoder is not None and meta.get("encoder") != encoder:
        raise ValueError(f"{ids_path}: features come from {meta.get('encoder')!r}, not {encoder!r}.")
    features = np.load(array_path, allow_pickle=False)
    stored = [str(i) for i in meta["image_ids"]]
    if features.ndim != 2 or features.shape[0] != len(stored):
        raise ValueError(f"{array_path}: shape {features.shape} does not match {len(stored)} image ids.")
    row_of = {image_id: row for row, image_id in enumerate(stored)}
    missing = [str(i) for i in image_ids if str(i) not in row_of]
    if missing:
        raise ValueError(
            f"{array_path}: {len(missing)} of {len(image_ids)} images of split {split!r} have no features, "
            f"e.g. {missing[0]!r}; extract them again for this corpus."
        )
    selected = features[[row_of[str(i)] for i in image_ids]]
    if not np.isfinite(selected).all():
        raise ValueError(f"{array_path}: features hold NaN or infinite values.")
    logger.info("read %s features of %d images from %s", selected.shape, len(image_ids), array_path)
    return l2_normalise(selected)


def extract_split_features(encoder, dataset, features_dir, split: str, batch_size: int = 16) -> np.ndarray:
    """Encodes one split's images (decoded a batch at a time) and saves them in the features layout."""
    features = encoder.encode_images(dataset["image"], batch_size=batch_size, progress=True)
    save_split_features(features_dir, split, features, list(dataset["image_id"]), encoder.name)
    return features


__all__ = ["extract_split_features", "load_split_features", "save_split_features"]
