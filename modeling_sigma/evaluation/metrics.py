"""Recall@K, the one retrieval metric every stage of SIGMA reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)


def recall_at_k(
    rankings: Sequence[Sequence] | np.ndarray,
    relevant: Sequence[Iterable] | Sequence,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Share of queries with at least one relevant item among their top-K results.

    Args:
        rankings: per query, the retrieved item ids best first (lists may be shorter than K).
        relevant: per query, one relevant id or a collection of relevant ids.
        ks: the cut-offs; keys of the result are `recall@{k}`.

    Returns:
        `{"recall@1": ..., "recall@5": ..., "recall@10": ...}` as fractions in [0, 1].
    """
    if len(rankings) != len(relevant):
        raise ValueError(f"Got {len(rankings)} rankings but {len(relevant)} relevance sets.")
    if len(rankings) == 0:
        raise ValueError("recall_at_k needs at least one query.")
    if any(k < 1 for k in ks):
        raise ValueError(f"Every K must be >= 1, got {list(ks)}.")
    hits = np.zeros(len(ks))
    for ranking, wanted in zip(rankings, relevant):
        wanted = set(wanted) if _is_collection(wanted) else {wanted}
        first_hit = next((rank for rank, item in enumerate(ranking) if item in wanted), None)
        if first_hit is not None:
            hits += [first_hit < k for k in ks]
    return {f"recall@{k}": float(h / len(rankings)) for k, h in zip(ks, hits)}


def _is_collection(value) -> bool:
    return isinstance(value, set | frozenset | list | tuple | np.ndarray)


__all__ = ["DEFAULT_KS", "recall_at_k"]
