import numpy as np
import pytest

from modeling_sigma.identifiers.semi_nmf import reconstruction_error, semi_nmf, solve_coefficients


def planted(n=240, d=20, k=4, seed=0):
    """Non-negative, cluster-structured coefficients times a mixed-sign basis (exactly rank k)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    coefficients = 0.05 * rng.random((n, k))
    coefficients[np.arange(n), labels] += 1.0 + rng.random(n)
    basis = rng.standard_normal((k, d))
    return coefficients @ basis, coefficients, basis, labels


def test_objective_non_increasing_and_coefficients_non_negative():
    data = np.random.default_rng(1).standard_normal((150, 12))
    result = semi_nmf(data, 5, max_iter=60, tol=0.0, seed=3)
    objective = np.array(result.objective)
    assert len(objective) == 61
    assert np.all(np.diff(objective) <= 1e-9 * objective[0])
    assert (result.coefficients >= 0).all()
    assert result.objective[-1] == pytest.approx(
        reconstruction_error(data, result.coefficients, result.basis)
    )


def test_exact_recovery_of_planted_low_rank_data():
    data, _, basis, labels = planted()
    result = semi_nmf(data, 4, max_iter=500, tol=1e-14, seed=0)
    assert result.objective[-1] / np.sum(data**2) < 1e-8
    # the learned basis spans the planted row space
    projection = basis @ np.linalg.pinv(result.basis) @ result.basis
    np.testing.assert_allclose(projection, basis, atol=1e-5)
    # dominant component = planted cluster, up to a permutation
    found = result.coefficients.argmax(axis=1)
    assert all(len(set(found[labels == cluster])) == 1 for cluster in range(4))
    assert len(set(found)) == 4


def test_reconstruction_far_better_than_random_basis():
    data, *_ = planted(seed=2)
    result = semi_nmf(data, 4, max_iter=200, seed=0)
    random_basis = np.random.default_rng(0).standard_normal((4, data.shape[1]))
    random_error = reconstruction_error(data, solve_coefficients(data, random_basis), random_basis)
    assert result.objective[-1] < 1e-3 * random_error


def test_solve_coefficients_is_nonnegative_least_squares():
    data, coefficients, basis, _ = planted(n=50, seed=4)
    solved = solve_coefficients(data, basis, max_iter=2000)
    assert (solved >= 0).all()
    np.testing.assert_allclose(solved, coefficients, atol=1e-3)
    # a point outside the cone: NNLS must beat the ReLU of the unconstrained solution
    rng = np.random.default_rng(5)
    basis = rng.standard_normal((3, 6))
    point = np.array([[-1.0, 0.5, 0.0]]) @ basis + 0.1 * rng.standard_normal((1, 6))
    relu = np.maximum(point @ np.linalg.pinv(basis), 0)
    nnls = solve_coefficients(point, basis, max_iter=2000)
    assert reconstruction_error(point, nnls, basis) < reconstruction_error(point, relu, basis) - 1e-6


def test_solve_coefficients_rows_are_independent_of_batch():
    data, _, basis, _ = planted(n=64, seed=6)
    whole = solve_coefficients(data, basis)
    np.testing.assert_allclose(solve_coefficients(data[10:20], basis), whole[10:20], rtol=1e-12, atol=1e-12)


def test_seeded_and_validated():
    data, *_ = planted(seed=7)
    first, second = semi_nmf(data, 3, seed=1), semi_nmf(data, 3, seed=1)
    np.testing.assert_array_equal(first.coefficients, second.coefficients)
    with pytest.raises(ValueError, match="NaN or inf"):
        semi_nmf(np.array([[np.nan, 1.0], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="n_components"):
        semi_nmf(data[:2], 3)
    with pytest.raises(ValueError, match="basis must have shape"):
        solve_coefficients(data, np.ones((2, 3)))
