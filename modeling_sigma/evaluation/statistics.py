"""Per-query ranks, paired bootstrap intervals and per-caption-type recall: the statistics behind every claim.

A comparison of two retrievers is only believable with the spread of the difference: both systems answer the
same queries, so the difference is bootstrapped *paired* (one resample of queries feeds both). Captions of one
image are correlated (same picture, same gallery neighbours), so the resampling unit is the image that owns the
caption (a cluster bootstrap), which gives wider and more honest intervals than resampling captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modeling_sigma.evaluation.metrics import DEFAULT_KS

TINY_SHAPES_CAPTION_TYPES = ("full", "partial", "relational", "coarse", "paraphrase")
_DRAWS_PER_CHUNK = 100


def relevant_ranks(rankings: Sequence[Sequence], relevant: Sequence) -> list[int]:
    """1-based rank of each query's relevant item in its ranking, 0 when it is not retrieved."""
    if len(rankings) != len(relevant):
        raise ValueError(f"Got {len(rankings)} rankings but {len(relevant)} relevant items.")
    ranks = []
    for ranking, wanted in zip(rankings, relevant):
        ranks.append(next((rank + 1 for rank, item in enumerate(ranking) if item == wanted), 0))
    return ranks


def hits_at_k(ranks: Sequence[int], k: int) -> np.ndarray:
    """1.0 where the relevant item is within the top k, else 0.0 (one value per query)."""
    ranks = np.asarray(ranks)
    return ((ranks >= 1) & (ranks <= k)).astype(np.float64)


def recall_from_ranks(ranks: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """`recall@{k}` from per-query ranks (the same figures `recall_at_k` gives from the rankings)."""
    if len(ranks) == 0:
        raise ValueError("need at least one query")
    return {f"recall@{k}": float(hits_at_k(ranks, k).mean()) for k in ks}


def paired_bootstrap(
    ranks_a: Sequence[int],
    ranks_b: Sequence[int],
    groups: Sequence | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Recall@k of system A minus system B on the same queries, with a paired bootstrap interval.

    Args:
        ranks_a, ranks_b: per-query ranks (`relevant_ranks`) of the two systems, query i the same in both.
        groups: per query, the unit resampled together (e.g. the image that owns the caption); default: queries.
        ks: the cut-offs. resamples: bootstrap draws. confidence: coverage of the percentile interval.
        seed: the draws are a pure function of it.

    Returns:
        `{"recall@k": {"difference", "low", "high", "a", "b"}}` in recall points (fractions, not %).
    """
    ranks_a, ranks_b = np.asarray(ranks_a), np.asarray(ranks_b)
    if ranks_a.shape != ranks_b.shape or ranks_a.ndim != 1 or len(ranks_a) == 0:
        raise ValueError(
            f"paired ranks must be two equal non-empty lists, got {ranks_a.shape} and {ranks_b.shape}"
        )
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence} and {resamples}")
    group_of = _group_indices(groups, len(ranks_a))
    num_groups = int(group_of.max()) + 1
    group_sizes = np.bincount(group_of, minlength=num_groups)
    group_hits = {k: np.bincount(group_of, weights=hits_at_k(ranks_a, k) - hits_at_k(ranks_b, k)) for k in ks}
    rng, differences = np.random.default_rng(seed), {k: [] for k in ks}
    for start in range(0, resamples, _DRAWS_PER_CHUNK):  # chunks bound the (draws, groups) index array
        draws = rng.integers(0, num_groups, size=(min(_DRAWS_PER_CHUNK, resamples - start), num_groups))
        drawn_queries = group_sizes[draws].sum(axis=1)  # (draws,)
        for k in ks:
            differences[k].append(group_hits[k][draws].sum(axis=1) / drawn_queries)
    tail = 100 * (1 - confidence) / 2
    result = {}
    for k in ks:
        a, b = hits_at_k(ranks_a, k), hits_at_k(ranks_b, k)
        low, high = np.percentile(np.concatenate(differences[k]), [tail, 100 - tail])
        result[f"recall@{k}"] = {
            "difference": float(a.mean() - b.mean()),
            "low": float(low),
            "high": float(high),
            "a": float(a.mean()),
            "b": float(b.mean()),
        }
    return result


def _group_indices(groups: Sequence | None, count: int) -> np.ndarray:
    if groups is None:
        return np.arange(count)
    if len(groups) != count:
        raise ValueError(f"{len(groups)} groups for {count} queries")
    _, indices = np.unique(np.asarray([str(group) for group in groups]), return_inverse=True)
    return indices


def recall_by_caption_type(
    ranks: Sequence[int], caption_types: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float]]:
    """`recall@{k}` (and the query count) per caption type, in first-seen order of the types."""
    if len(ranks) != len(caption_types):
        raise ValueError(f"{len(ranks)} ranks for {len(caption_types)} caption types")
    ranks = np.asarray(ranks)
    types = np.asarray(caption_types)
    table = {}
    for name in dict.fromkeys(caption_types):
        selected = ranks[types == name]
        table[name] = {**recall_from_ranks(selected, ks), "queries": int(len(selected))}
    return table


def caption_types_by_position(captions_per_image: Sequence[int], names: Sequence[str]) -> list[str]:
    """The type of each query when every image lists its captions in the order of `names` (TinyShapes)."""
    types = []
    for count in captions_per_image:
        if count > len(names):
            raise ValueError(f"an image has {count} captions but only {len(names)} caption types are named")
        types.extend(names[:count])
    return types


__all__ = [
    "TINY_SHAPES_CAPTION_TYPES",
    "caption_types_by_position",
    "hits_at_k",
    "paired_bootstrap",
    "recall_by_caption_type",
    "recall_from_ranks",
    "relevant_ranks",
]
