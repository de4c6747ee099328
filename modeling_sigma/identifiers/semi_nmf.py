"""Semi-NMF (Ding, Li & Jordan, 2008) used by stage 0 for id2 and id3.

Ding et al. write the data column-wise, X ≈ F Gᵀ with X (d, n), a mixed-sign basis F (d, k) and
non-negative coefficients G (n, k). Here the data is row-wise like every feature matrix in the project,
``features (n, d) ≈ coefficients (n, k) @ basis (k, d)``, i.e. ``basis = Fᵀ`` and ``coefficients = G``.
This matches the paper's ``V_local ≈ W H`` with ``W = coefficients`` and ``H = basis``.

Updates (Ding et al., eqs. 8–9), with A⁺ = (|A| + A) / 2 and A⁻ = (|A| − A) / 2:

    F = X G (GᵀG)⁻¹
    G ← G ∘ sqrt( ((XᵀF)⁺ + G (FᵀF)⁻) / ((XᵀF)⁻ + G (FᵀF)⁺) )

Both steps never increase ‖X − F Gᵀ‖², which `SemiNMFResult.objective` records per iteration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

_EPS = 1e-12
_KMEANS_INIT_SAMPLES_PER_COMPONENT = 64


@dataclass
class SemiNMFResult:
    """Output of `semi_nmf`: ``features ≈ coefficients @ basis``.

    Args:
        basis (`np.ndarray` of shape `(k, d)`): mixed-sign basis (Fᵀ in Ding et al.).
        coefficients (`np.ndarray` of shape `(n, k)`): non-negative coefficients (G).
        objective (`list[float]`): ‖X − F Gᵀ‖² after the initial F step, then after every iteration.
    """

    basis: np.ndarray
    coefficients: np.ndarray
    objective: list[float] = field(default_factory=list)


def semi_nmf(
    features: np.ndarray,
    n_components: int,
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    init_g_offset: float = 0.2,
) -> SemiNMFResult:
    """Factorise `features (n, d) ≈ coefficients (n, k) @ basis (k, d)` with non-negative coefficients.

    Initialisation follows Ding et al.: k-means cluster indicators plus `init_g_offset` (k-means runs on
    at most 64 seeded samples per component, then every row takes its nearest centre). Stops after `max_iter`
    iterations or when the relative objective decrease falls below `tol`. Computation is float64.
    """
    data = _as_float64_matrix(features)
    n_samples = data.shape[0]
    if not 1 <= n_components <= n_samples:
        raise ValueError(f"n_components must be in [1, n_samples={n_samples}], got {n_components}")
    squared_norm = float(np.einsum("ij,ij->", data, data))
    coefficients = _kmeans_indicator_init(data, n_components, seed) + init_g_offset
    basis = _update_basis(data, coefficients)
    objective: list[float] = []
    for iteration in range(max_iter + 1):
        cross, gram = data @ basis.T, basis @ basis.T  # XᵀF (n, k), FᵀF (k, k)
        objective.append(_objective_from_products(squared_norm, coefficients, cross, gram))
        if iteration == max_iter or _converged(objective, tol):
            break
        coefficients = _update_coefficients(_split_signs(cross), _stacked_gram(gram), coefficients)
        basis = _update_basis(data, coefficients)
    logger.debug("semi_nmf k=%d n=%d: %d iterations, objective %.4g", n_components, n_samples,
                 len(objective) - 1, objective[-1])  # fmt: skip
    return SemiNMFResult(basis=basis, coefficients=coefficients, objective=objective)


def solve_coefficients(
    features: np.ndarray, basis: np.ndarray, max_iter: int = 200, init: np.ndarray | None = None
) -> np.ndarray:
    """Non-negative coefficients `G (n, k) ≥ 0` minimising ‖features − G @ basis‖² for a fixed basis.

    Runs the Semi-NMF multiplicative G update with the basis held fixed. The update is row-separable
    and runs a fixed number of iterations (no data-dependent stopping), so a row gets the same
    coefficients whatever batch it is solved in. Default start: the uniform vector 1/k for every row.
    """
    data = _as_float64_matrix(features)
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[1] != data.shape[1]:
        raise ValueError(f"basis must have shape (k, {data.shape[1]}), got {basis.shape}")
    n_components = basis.shape[0]
    if init is None:
        coefficients = np.full((data.shape[0], n_components), 1.0 / max(n_components, 1))
    else:
        coefficients = np.array(init, dtype=np.float64)
    if n_components == 0 or data.shape[0] == 0:
        return coefficients
    cross = _split_signs(data @ basis.T)  # (n, k) positive and negative parts, fixed
    gram = _stacked_gram(basis @ basis.T)  # (k, 2k)
    for _ in range(max_iter):
        coefficients = _update_coefficients(cross, gram, coefficients)
    return coefficients


def reconstruction_error(features: np.ndarray, coefficients: np.ndarray, basis: np.ndarray) -> float:
    """‖features − coefficients @ basis‖² (the Semi-NMF objective)."""
    return _objective(_as_float64_matrix(features), coefficients, basis)


def _update_basis(data: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    # F = X G (GᵀG)⁻¹, written row-wise: basis = (GᵀG)⁻¹ Gᵀ data; pinv guards empty components.
    gram = coefficients.T @ coefficients  # (k, k)
    return np.linalg.pinv(gram) @ (coefficients.T @ data)  # (k, d)


def _update_coefficients(
    cross: tuple[np.ndarray, np.ndarray], gram: np.ndarray, coefficients: np.ndarray
) -> np.ndarray:
    # Ding et al. eq. (8): cross = ((XᵀF)⁺, (XᵀF)⁻), gram = [(FᵀF)⁻ | (FᵀF)⁺] so one matmul serves both.
    # In-place arithmetic: this runs hundreds of times on (n, k) arrays.
    n_components = coefficients.shape[1]
    products = coefficients @ gram  # (n, 2k)
    numerator, denominator = products[:, :n_components], products[:, n_components:]
    numerator += cross[0]
    denominator += cross[1]
    np.maximum(denominator, _EPS, out=denominator)
    np.divide(numerator, denominator, out=numerator)
    np.sqrt(numerator, out=numerator)
    return coefficients * numerator


def _split_signs(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    magnitude = np.abs(matrix)
    return (magnitude + matrix) / 2, (magnitude - matrix) / 2


def _stacked_gram(gram: np.ndarray) -> np.ndarray:
    positive, negative = _split_signs(gram)
    return np.concatenate([negative, positive], axis=1)  # (k, 2k)


def _objective(data: np.ndarray, coefficients: np.ndarray, basis: np.ndarray) -> float:
    residual = data - coefficients @ basis
    return float(np.einsum("ij,ij->", residual, residual))


def _objective_from_products(
    squared_norm: float, coefficients: np.ndarray, cross: np.ndarray, gram: np.ndarray
) -> float:
    # ‖X − G F‖² = ‖X‖² − 2 Σ G∘(XFᵀ) + Σ (GᵀG)∘(FFᵀ), reusing the products the update needs anyway.
    fit = float(np.einsum("ij,ij->", coefficients, cross))
    penalty = float(np.einsum("ij,ij->", coefficients.T @ coefficients, gram))
    return max(squared_norm - 2.0 * fit + penalty, 0.0)


def _converged(objective: list[float], tol: float) -> bool:
    return len(objective) > 1 and objective[-2] - objective[-1] <= tol * max(objective[-2], _EPS)


def _kmeans_indicator_init(
    data: np.ndarray, n_components: int, seed: int, iterations: int = 10
) -> np.ndarray:
    """Cluster indicators of a seeded Lloyd k-means (k-means++ start) on at most 64 rows per component.

    Plain numpy: scikit-learn's per-call thread start-up dominates for the hundreds of small clusters.
    """
    rng = np.random.default_rng(seed)
    sample, max_samples = data, _KMEANS_INIT_SAMPLES_PER_COMPONENT * n_components
    if data.shape[0] > max_samples:
        sample = data[np.sort(rng.choice(data.shape[0], max_samples, replace=False))]
    centers = _kmeans_plus_plus(sample, n_components, rng)
    for _ in range(iterations):
        labels = nearest_centers(sample, centers)
        counts = np.bincount(labels, minlength=n_components)
        sums = _one_hot(labels, n_components).T @ sample  # (k, d)
        # an emptied centre keeps its position, so it stays a valid (if unused) component
        centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
    return _one_hot(nearest_centers(data, centers), n_components)


def _one_hot(labels: np.ndarray, n_components: int) -> np.ndarray:
    indicator = np.zeros((len(labels), n_components))
    indicator[np.arange(len(labels)), labels] = 1.0
    return indicator


def _kmeans_plus_plus(sample: np.ndarray, n_components: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (D² sampling); falls back to uniform picks once every row is a centre."""
    chosen = [int(rng.integers(len(sample)))]
    distances = np.einsum("ij,ij->i", sample - sample[chosen[0]], sample - sample[chosen[0]])
    for _ in range(1, n_components):
        total = distances.sum()
        probabilities = distances / total if total > 0 else np.full(len(sample), 1.0 / len(sample))
        chosen.append(int(rng.choice(len(sample), p=probabilities)))
        difference = sample - sample[chosen[-1]]
        distances = np.minimum(distances, np.einsum("ij,ij->i", difference, difference))
    return sample[chosen].copy()


def nearest_centers(data: np.ndarray, centers: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """Index of the nearest row of `centers (k, d)` for every row of `data (n, d)` (float64, in chunks of rows):
    k-means assignment, used for the Semi-NMF initialisation, id1 and the residual centroids of id4."""
    center_norms = np.einsum("ij,ij->i", centers, centers)  # (k,)
    out = np.empty(len(data), dtype=np.int64)
    for start in range(0, len(data), chunk_size):
        chunk = np.asarray(data[start : start + chunk_size], dtype=np.float64)  # (chunk, d)
        out[start : start + len(chunk)] = np.argmin(center_norms - 2.0 * chunk @ centers.T, axis=1)
    return out


def _as_float64_matrix(features: np.ndarray) -> np.ndarray:
    data = np.asarray(features, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"features must be a 2-d array (n, d), got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("features contain NaN or inf")
    return data


__all__ = ["SemiNMFResult", "nearest_centers", "reconstruction_error", "semi_nmf", "solve_coefficients"]
