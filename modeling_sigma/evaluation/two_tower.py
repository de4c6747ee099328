"""The two-tower (CLIP-style) baseline SIGMA has to beat: dense text→image retrieval with faiss."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from modeling_sigma.evaluation.metrics import DEFAULT_KS, recall_at_k

logger = logging.getLogger(__name__)


class SigmaTwoTowerIndex:
    """Exact inner-product index over L2-normalised image features (cosine similarity)."""

    def __init__(self, image_features: np.ndarray, image_ids: list[str]):
        image_features = _check_features(image_features, "image_features")
        if len(image_ids) != len(image_features):
            raise ValueError(f"{len(image_ids)} image ids for {len(image_features)} feature rows.")
        self.image_ids = list(image_ids)
        self.index = faiss.IndexFlatIP(image_features.shape[1])
        self.index.add(image_features)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, text_features: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[list[str]]]:
        """Returns (scores (queries, k), image ids per query), best first."""
        text_features = _check_features(text_features, "text_features")
        if text_features.shape[1] != self.index.d:
            raise ValueError(
                f"text_features have dimension {text_features.shape[1]}, the index {self.index.d}."
            )
        k = min(k, len(self))
        scores, rows = self.index.search(text_features, k)
        return scores, [[self.image_ids[r] for r in row] for row in rows]


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {features.shape}.")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinite values.")
    return features


def expand_with_captions(image_features: np.ndarray, caption_features: list[np.ndarray]) -> np.ndarray:
    """Document expansion of a dense index: each image vector becomes the normalised sum of its own (normalised)
    vector and the mean of its captions' normalised text vectors (an image with no caption keeps its vector).

    This is how the two-tower baseline gets the same pseudo-queries SIGMA trains on: equal information.
    """
    image_features = _check_features(image_features, "image_features")
    if len(caption_features) != len(image_features):
        raise ValueError(f"{len(caption_features)} caption sets for {len(image_features)} images")
    expanded = _normalised(image_features)
    for row, captions in enumerate(caption_features):
        if len(captions):
            expanded[row] += _normalised(_check_features(captions, "caption_features")).mean(axis=0)
    return _normalised(expanded)


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def two_tower_rankings(
    image_features: np.ndarray, image_ids: list[str], query_features: np.ndarray, k: int = 10
) -> list[list[str]]:
    """The top-`k` image ids of every query, best first."""
    return SigmaTwoTowerIndex(image_features, image_ids).search(query_features, k=k)[1]


def evaluate_two_tower(
    image_features: np.ndarray,
    image_ids: list[str],
    query_features: np.ndarray,
    query_image_ids: list[str],
    ks=DEFAULT_KS,
) -> dict[str, float]:
    """Recall@K of dense retrieval: each query's relevant image is `query_image_ids[i]`."""
    retrieved = two_tower_rankings(image_features, image_ids, query_features, k=max(ks))
    return recall_at_k(retrieved, query_image_ids, ks)


__all__ = ["SigmaTwoTowerIndex", "evaluate_two_tower", "expand_with_captions", "two_tower_rankings"]
