"""Stage 0: multi-granularity identifier construction (paper §3.1) and the codebook dataset.

An image feature v becomes ``[id1, id2, id3, id4 (× M), id5]``:

- id1: nearest MiniBatchKMeans centroid c (K1 clusters).
- id2: argmax of the non-negative coefficients of a per-cluster Semi-NMF basis (K2 components).
- id3: argmax of the coefficients of a second-order Semi-NMF fitted on the residual of the first (K3).
- id4: the residual r = v − c_id1 split evenly into M subspaces, nearest of the K4 residual centroids of
  each subspace (a global k-means per subspace: residual product quantisation).
- id5: instance suffix, 0 for the first image with a given (id1..id4) prefix, 1 for the next, ….

A cluster with fewer images than K2 (or K3) gets ``min(K, n_cluster)`` components, so some id2/id3 values
are unused there; an empty cluster gets none and its images take id2 = id3 = 0. Fewer images than K1 is an
error (pick a smaller ``k1``) rather than a silent reduction, so the layout always matches the config.

The identifiers of a corpus, with its image ids, form the stage-0 *codebook* (a dataset on the Hub,
`storage.py`); the fitted tensors (centroids, bases, residual centroids) are the *quantizer*.

Training codes are computed by the same functions as `assign`: after each Semi-NMF the coefficients are
re-solved with the final basis held fixed (`solve_coefficients`), so `assign` on training features
reproduces levels 1–4 exactly.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits

from modeling_sigma.identifiers.semi_nmf import nearest_centers, semi_nmf, solve_coefficients
from modeling_sigma.identifiers.statistics import coherence, identifier_statistics
from modeling_sigma.identifiers.storage import RESIDUAL_CENTROIDS, load_builder_folder, save_builder_folder
from modeling_sigma.identifiers.storage import load_codebook as load_codebook
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout

logger = logging.getLogger(__name__)

_RESIDUAL_CHUNK = 65536  # rows per residual product; bounds the (rows, d) float64 temporaries


@dataclass
class SigmaIdentifierBuilderConfig(SigmaIdentifierLayout):
    """Settings of `SigmaIdentifierBuilder` (defaults: the paper, appendix E): the identifier layout's sizes
    (inherited from `SigmaIdentifierLayout`, which validates them) plus the fitting settings.

    Args:
        k1, k2, k3, k4, num_subspaces, suffix_size: the identifier layout (see `SigmaIdentifierLayout`).
        seed (`int`): seeds k-means, Semi-NMF initialisation and the coherence sampling.
        semi_nmf_iterations (`int`): maximum Semi-NMF iterations per cluster.
        semi_nmf_tol (`float`): relative objective decrease that stops Semi-NMF early.
        semi_nmf_max_samples (`int`): a cluster's bases are fitted on at most this many seeded samples of it;
            the codes of every image still come from `solve_coefficients` with the fitted basis.
        coefficient_iterations (`int`): fixed multiplicative iterations of `solve_coefficients`.
        kmeans_batch_size (`int`): MiniBatchKMeans batch size for id1 and id4.
        kmeans_max_iter (`int`): MiniBatchKMeans epochs for id1 and id4.
        coherence_pairs (`int`): pairs sampled for the coherence statistic.
        num_workers (`int`, *optional*): threads for the per-cluster work (default: all CPUs); codes do not
            depend on it.
    """

    seed: int = 0
    semi_nmf_iterations: int = 30
    semi_nmf_tol: float = 1e-4
    semi_nmf_max_samples: int = 8192
    coefficient_iterations: int = 60
    kmeans_batch_size: int = 4096
    kmeans_max_iter: int = 10
    coherence_pairs: int = 20000
    num_workers: int | None = None

    @property
    def layout(self) -> SigmaIdentifierLayout:
        """The identifier layout these settings produce."""
        sizes = {field.name: getattr(self, field.name) for field in fields(SigmaIdentifierLayout)}
        return SigmaIdentifierLayout(**sizes)


def _single_threaded_blas(method: Callable) -> Callable:
    """Run `method` with single-threaded BLAS: stage 0 does many small products (k ≤ 64 columns), for which
    OpenBLAS threads cost more than they give (3× slower on a loaded 2-core machine); the per-cluster work
    is spread over threads instead, and scikit-learn's k-means keeps its own OpenMP threads."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


class SigmaIdentifierBuilder:
    """Builds, extends, saves and loads the stage-0 identifiers of an image corpus.

    Example:
        >>> builder = SigmaIdentifierBuilder(SigmaIdentifierBuilderConfig(k1=8, k2=4, k3=4, k4=8))
        >>> codes = builder.fit(features, image_ids)  # (n, L) int64
        >>> builder.save("outputs/stage0")
        >>> new_codes = SigmaIdentifierBuilder.load("outputs/stage0").assign(new_features, new_ids)
    """

    def __init__(self, config: SigmaIdentifierBuilderConfig | None = None) -> None:
        self.config = config or SigmaIdentifierBuilderConfig()
        self.layout = self.config.layout
        self.quantizer: dict[str, np.ndarray] = {}
        self.image_ids: list[str] = []
        self.codes = np.zeros((0, self.layout.length), dtype=np.int64)
        self.coherence: dict[str, float] = {}
        self._next_suffix: dict[tuple[int, ...], int] | None = None

    # ----- fitting -----------------------------------------------------------------------------------
    @_single_threaded_blas
    def fit(
        self, features: np.ndarray, image_ids: Sequence[str], attributes: Sequence[Any] | None = None
    ) -> np.ndarray:
        """Fit every level on `features (n, d)` and return the identifiers `(n, L)` (int64).

        `attributes` (optional, one set of strings per image) adds the shared-attribute rate to
        `statistics()`. Same config and seed → same codes.
        """
        data = _validate_features(features)
        ids = _validate_ids(image_ids, len(data))
        if len(data) < self.config.k1:
            raise ValueError(f"fit needs at least k1={self.config.k1} images, got {len(data)}; lower k1")
        if data.shape[1] % self.config.num_subspaces:
            raise ValueError(
                f"feature dim {data.shape[1]} is not divisible by num_subspaces={self.config.num_subspaces}; "
                "set stage0.num_subspaces to a divisor of it (1 always works)"
            )
        self.quantizer = {"centroids": self._fit_kmeans(data, self.config.k1, self.config.seed)}
        level1 = self._nearest_centroid(data)
        level2, level3 = self._fit_semi_nmf_levels(data, level1)
        self._fit_residual_centroids(data, level1)
        prefixes = np.column_stack([level1, level2, level3, self._residual_codes(data, level1)])
        self.codes = np.concatenate([prefixes, _suffix_ranks(prefixes)[:, None]], axis=1)
        self._check_suffix_capacity(self.codes)
        self.image_ids = ids
        self._next_suffix = None
        self.coherence = coherence(
            data, self.codes, attributes, self.config.coherence_pairs, self.config.seed
        )
        logger.info("stage 0 fitted %d identifiers: %s", len(ids), self.statistics())
        return self.codes.copy()

    def _fit_kmeans(self, data: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
        kmeans = MiniBatchKMeans(
            n_clusters=n_clusters, batch_size=self.config.kmeans_batch_size,
            max_iter=self.config.kmeans_max_iter, n_init=1, random_state=seed, compute_labels=False,
        )  # fmt: skip
        return kmeans.fit(data.astype(np.float32)).cluster_centers_.astype(np.float64)

    def _fit_semi_nmf_levels(self, data: np.ndarray, level1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit both Semi-NMF bases of every cluster; return id2 and id3 of the training rows."""
        config, dim = self.config, data.shape[1]
        self.quantizer.update(
            basis2=np.zeros((config.k1, config.k2, dim)), basis3=np.zeros((config.k1, config.k3, dim)),
            num_components2=np.zeros(config.k1, dtype=np.int64), num_components3=np.zeros(config.k1, dtype=np.int64),
        )  # fmt: skip
        level2 = np.zeros(len(data), dtype=np.int64)
        level3 = np.zeros(len(data), dtype=np.int64)

        def fit_cluster(cluster: int, rows: np.ndarray) -> None:
            members = data[rows].astype(np.float64)
            basis2 = self._fit_basis(members, config.k2, 2, cluster)
            coefficients2 = self._solve(members, basis2)
            self._fit_basis(members - coefficients2 @ basis2, config.k3, 3, cluster)
            level2[rows], level3[rows] = self._semantic_codes(members, cluster, coefficients2)

        self._map_clusters(fit_cluster, level1)
        return level2, level3

    def _map_clusters(self, function: Callable[[int, np.ndarray], None], level1: np.ndarray) -> None:
        """Run `function(cluster, rows)` for every non-empty cluster on `num_workers` threads.

        Clusters are independent and write disjoint slices, so results do not depend on the number of
        workers. Each thread keeps BLAS single-threaded: these (n_c, d) × (d, k) products run faster that
        way than with OpenBLAS threads competing for the same cores (see `_single_threaded_blas`).
        """
        order = np.argsort(level1, kind="stable")
        bounds = np.searchsorted(level1[order], np.arange(self.config.k1 + 1))
        jobs = [(cluster, order[bounds[cluster] : bounds[cluster + 1]]) for cluster in range(self.config.k1)]
        jobs = sorted((job for job in jobs if len(job[1])), key=lambda job: -len(job[1]))  # big first
        workers = self.config.num_workers or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(function, cluster, rows) for cluster, rows in jobs]:
                future.result()

    def _fit_basis(self, members: np.ndarray, n_components: int, level: int, cluster: int) -> np.ndarray:
        """Semi-NMF basis of one cluster (on a seeded sample), stored into the quantizer."""
        config = self.config
        seed = config.seed + 1 + cluster + (level - 2) * config.k1
        sample = members
        if len(members) > config.semi_nmf_max_samples:
            rng = np.random.default_rng(seed)
            sample = members[np.sort(rng.choice(len(members), config.semi_nmf_max_samples, replace=False))]
        n_components = min(n_components, len(members))
        result = semi_nmf(sample, n_components, config.semi_nmf_iterations, config.semi_nmf_tol, seed)
        self.quantizer[f"basis{level}"][cluster, :n_components] = result.basis
        self.quantizer[f"num_components{level}"][cluster] = n_components
        return result.basis

    def _fit_residual_centroids(self, data: np.ndarray, level1: np.ndarray) -> None:
        """Residual product quantiser (id4): K4 k-means centroids in each of the M subspaces of v − c_id1."""
        residual = (data - self.quantizer["centroids"][level1]).astype(np.float32)  # (n, d)
        parts = np.split(residual, self.config.num_subspaces, axis=1)
        subspace_centroids = [self._fit_kmeans(part, self.config.k4, self.config.seed + 7919 * (m + 1))
                              for m, part in enumerate(parts)]  # fmt: skip
        self.quantizer[RESIDUAL_CENTROIDS] = np.stack(subspace_centroids)  # (M, K4, d / M)

    # ----- encoding ----------------------------------------------------------------------------------
    @_single_threaded_blas
    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Levels 1–4 (every position but the suffix) of `features (n, d)` → `(n, L − 1)` int64."""
        self._require_fitted()
        data = _validate_features(features, self.quantizer["centroids"].shape[1])
        level1 = self._nearest_centroid(data)
        level2 = np.zeros(len(data), dtype=np.int64)
        level3 = np.zeros(len(data), dtype=np.int64)

        def encode_cluster(cluster: int, rows: np.ndarray) -> None:
            level2[rows], level3[rows] = self._semantic_codes(data[rows].astype(np.float64), cluster)

        self._map_clusters(encode_cluster, level1)
        level4 = self._residual_codes(data, level1)
        return np.column_stack([level1, level2, level3, level4]).astype(np.int64)

    def _semantic_codes(
        self, members: np.ndarray, cluster: int, coefficients: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """id2, id3 of float64 rows of one cluster (`coefficients`: their id2 solve, if already done)."""
        num2, num3 = self.quantizer["num_components2"][cluster], self.quantizer["num_components3"][cluster]
        if num2 == 0:
            zeros = np.zeros(len(members), dtype=np.int64)
            return zeros, zeros
        basis2 = self.quantizer["basis2"][cluster, :num2]
        if coefficients is None:
            coefficients = self._solve(members, basis2)
        residual = members - coefficients @ basis2
        basis3 = self.quantizer["basis3"][cluster, :num3]
        return coefficients.argmax(axis=1), self._solve(residual, basis3).argmax(axis=1)

    def _solve(self, members: np.ndarray, basis: np.ndarray) -> np.ndarray:
        return solve_coefficients(members, basis, max_iter=self.config.coefficient_iterations)

    def _nearest_centroid(self, data: np.ndarray) -> np.ndarray:
        return nearest_centers(data, self.quantizer["centroids"])

    def _residual_codes(self, data: np.ndarray, level1: np.ndarray) -> np.ndarray:
        residual_centroids = self.quantizer[RESIDUAL_CENTROIDS]  # (M, K4, d / M)
        step = data.shape[1] // len(residual_centroids)
        out = np.empty((len(data), len(residual_centroids)), dtype=np.int64)
        for start in range(0, len(data), _RESIDUAL_CHUNK):
            chunk = slice(start, start + _RESIDUAL_CHUNK)
            residual = data[chunk] - self.quantizer["centroids"][level1[chunk]]
            for m, subspace_centroids in enumerate(residual_centroids):
                out[chunk, m] = nearest_centers(residual[:, m * step : (m + 1) * step], subspace_centroids)
        return out

    def assign(self, features: np.ndarray, image_ids: Sequence[str]) -> np.ndarray:
        """Identifiers `(n, L)` for new images, added to the codebook with fresh, non-colliding suffixes.

        Levels 1–4 use the fitted quantizer (nothing is refitted). Raises `ValueError` on an image id
        already in the codebook or when a prefix would need more than `suffix_size` suffixes.
        """
        self._require_fitted()
        ids = _validate_ids(image_ids, len(features))
        known = set(self.image_ids).intersection(ids)
        if known:
            raise ValueError(f"image ids already in the codebook: {sorted(known)[:5]}")
        prefixes = self.quantize(features)
        next_suffix = self._suffix_counters()
        suffixes = _suffix_ranks(prefixes)
        offsets = np.array([next_suffix.get(tuple(row), 0) for row in prefixes.tolist()], dtype=np.int64)
        codes = np.concatenate([prefixes, (suffixes + offsets)[:, None]], axis=1)
        self._check_suffix_capacity(codes)
        for row in codes.tolist():
            next_suffix[tuple(row[:-1])] = max(next_suffix.get(tuple(row[:-1]), 0), row[-1] + 1)
        self.codes = np.concatenate([self.codes, codes])
        self.image_ids = self.image_ids + ids
        return codes

    def _suffix_counters(self) -> dict[tuple[int, ...], int]:
        if self._next_suffix is None:
            self._next_suffix = {}
            for row in self.codes.tolist():
                key = tuple(row[:-1])
                self._next_suffix[key] = max(self._next_suffix.get(key, 0), row[-1] + 1)
        return self._next_suffix

    def _check_suffix_capacity(self, codes: np.ndarray) -> None:
        overflow = codes[:, -1] >= self.layout.suffix_size
        if overflow.any():
            prefix = codes[np.argmax(overflow), :-1].tolist()
            raise ValueError(
                f"prefix {prefix} needs suffix {int(codes[:, -1].max())} but suffix_size="
                f"{self.layout.suffix_size}; raise suffix_size or the K of an earlier level"
            )

    def _require_fitted(self) -> None:
        if not self.quantizer:
            raise RuntimeError("SigmaIdentifierBuilder is not fitted: call fit() or load() first")

    # ----- codebook, statistics, persistence ----------------------------------------------------------
    def identifier_strings(self) -> list[str]:
        """Token string of every identifier in the codebook, in codebook order."""
        return [self.layout.codes_to_string(row) for row in self.codes.tolist()]

    def statistics(self) -> dict[str, Any]:
        """Occupancy per position, suffix use, capacity and coherence of the current codebook."""
        return {**identifier_statistics(self.codes, self.layout), **self.coherence}

    def save(self, folder: str) -> None:
        """Write `codebook/` (datasets), `quantizer.safetensors` and `stage0_config.json` atomically."""
        self._require_fitted()
        metadata = {
            "layout": self.layout.to_dict(),
            "builder_config": asdict(self.config),
            "statistics": self.statistics(),
            "coherence": self.coherence,
        }
        save_builder_folder(folder, self.image_ids, self.codes, self.identifier_strings(),
                            self.quantizer, metadata)  # fmt: skip

    @classmethod
    def load(cls, path_or_repo: str, revision: str | None = None) -> SigmaIdentifierBuilder:
        """Load a folder written by `save`, or a Hub repo id holding one (via `snapshot_download`)."""
        quantizer, metadata, dataset = load_builder_folder(path_or_repo, revision)
        builder = cls(SigmaIdentifierBuilderConfig.from_dict(metadata["builder_config"]))
        builder.quantizer = quantizer
        builder.image_ids = list(dataset["image_id"])
        builder.codes = np.asarray(dataset["codes"], dtype=np.int64).reshape(-1, builder.layout.length)
        builder.coherence = metadata.get("coherence", {})
        return builder

    def push_to_hub(self, repo_id: str, private: bool = True, token: str | None = None) -> str:
        """Upload as a Hub dataset repo (parquet codebook split, quantizer, config, dataset card) through
        `modeling_sigma.hub.push_codebook_to_hub`; returns the commit URL."""
        import tempfile

        from modeling_sigma.hub import push_codebook_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            self.save(f"{tmp}/stage0")
            return push_codebook_to_hub(f"{tmp}/stage0", repo_id, private=private, token=token)


def _suffix_ranks(prefixes: np.ndarray) -> np.ndarray:
    """Rank of every row among the rows with the same prefix, in input order (0, 1, …): the first free suffix
    of each new image (the open-set index allocates suffixes with the same function)."""
    import torch

    from modeling_sigma.modeling.index import rank_within_groups

    if len(prefixes) == 0:
        return np.zeros(0, dtype=np.int64)
    return rank_within_groups(torch.from_numpy(np.ascontiguousarray(prefixes, dtype=np.int64))).numpy()


def _validate_features(features: np.ndarray, dim: int | None = None) -> np.ndarray:
    data = np.asarray(features)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"features must be a numeric (n, d) array, got shape {data.shape} {data.dtype}")
    if dim is not None and data.shape[1] != dim:
        raise ValueError(f"features have dimension {data.shape[1]}, the quantizer was fitted on {dim}")
    if not np.isfinite(data).all():
        bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
        raise ValueError(f"features contain NaN or inf in {len(bad)} rows, e.g. rows {bad[:5].tolist()}")
    return data


def _validate_ids(image_ids: Sequence[str], n_rows: int) -> list[str]:
    ids = [str(image_id) for image_id in image_ids]
    if len(ids) != n_rows:
        raise ValueError(f"got {len(ids)} image ids for {n_rows} feature rows")
    if len(set(ids)) != len(ids):
        seen, duplicates = set(), []
        for image_id in ids:
            (duplicates.append if image_id in seen else seen.add)(image_id)
        raise ValueError(f"duplicate image ids: {sorted(set(duplicates))[:5]}")
    return ids


__all__ = ["SigmaIdentifierBuilder", "SigmaIdentifierBuilderConfig", "load_codebook"]
