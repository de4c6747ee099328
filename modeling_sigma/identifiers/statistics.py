# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Quality figures of a stage-0 codebook: occupancy of every identifier position, suffix use, capacity, and the
coherence of the semantic levels (do images sharing id1, or id1..id3, look alike more than random pairs?)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout


def identifier_statistics(codes: np.ndarray, layout: SigmaIdentifierLayout) -> dict[str, Any]:
    """Occupancy per position, suffix use and capacity of the identifiers `codes (n, L)`."""
    stats: dict[str, Any] = {"num_images": len(codes)}
    for index, (position, size) in enumerate(zip(layout.positions, layout.sizes)):
        counts = np.bincount(codes[:, index], minlength=size) if len(codes) else np.zeros(size)
        stats[f"occupancy_id{position}"] = float((counts > 0).sum() / size)
        stats[f"max_images_per_value_id{position}"] = int(counts.max()) if len(codes) else 0
    stats["share_suffix_gt0"] = float((codes[:, -1] > 0).mean()) if len(codes) else 0.0
    stats["longest_suffix"] = int(codes[:, -1].max()) if len(codes) else 0
    stats["distinct_prefixes"] = len(np.unique(codes[:, :-1], axis=0)) if len(codes) else 0
    stats["capacity"] = layout.capacity
    stats["prefix_capacity"] = layout.prefix_capacity
    return stats


def coherence(
    data: np.ndarray, codes: np.ndarray, attributes: Sequence[Any] | None, num_pairs: int, seed: int
) -> dict[str, float]:
    """Mean cosine (and shared-attribute rate) of `num_pairs` pairs sharing id1 / id1..id3 vs random pairs."""
    rng = np.random.default_rng(seed)
    unit = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    attribute_sets = None if attributes is None else [set(values) for values in attributes]
    out: dict[str, float] = {}
    groupings = {"random": np.zeros(len(data), np.int64), "same_id1": codes[:, 0],
                 "same_id1_id3": np.unique(codes[:, :3], axis=0, return_inverse=True)[1].reshape(-1)}  # fmt: skip
    for name, groups in groupings.items():
        left, right = _sample_pairs(groups, num_pairs, rng)
        if len(left) == 0:
            continue
        out[f"cosine_{name}"] = float(np.einsum("ij,ij->i", unit[left], unit[right]).mean())
        if attribute_sets is not None:
            shared = [bool(attribute_sets[i] & attribute_sets[j]) for i, j in zip(left, right)]
            out[f"shared_attribute_rate_{name}"] = float(np.mean(shared))
    return out


def _sample_pairs(
    groups: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n_pairs` random pairs (i ≠ j) of rows with the same group value."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    sizes = np.searchsorted(sorted_groups, sorted_groups, side="right") - starts
    eligible = np.flatnonzero(sizes > 1)
    if len(eligible) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    picks = rng.choice(eligible, n_pairs)
    partner = rng.integers(0, sizes[picks] - 1)  # skip the pick itself
    partner = starts[picks] + partner + (starts[picks] + partner >= picks)
    return order[picks], order[partner]


__all__ = ["coherence", "identifier_statistics"]
