import numpy as np
import pytest

from modeling_sigma.evaluation.two_tower import SigmaTwoTowerIndex, evaluate_two_tower


def test_exact_inner_product_search():
    images = np.eye(4, dtype=np.float32)
    index = SigmaTwoTowerIndex(images, ["a", "b", "c", "d"])
    queries = np.array([[0.1, 0.9, 0.3, 0.0]], dtype=np.float32)
    scores, ids = index.search(queries, k=3)
    assert ids == [["b", "c", "a"]]
    np.testing.assert_allclose(scores[0], [0.9, 0.3, 0.1], rtol=1e-6)
    assert len(index.search(queries, k=99)[1][0]) == 4  # k clamps to the corpus


def test_evaluate_two_tower_perfect_and_shuffled():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    ids = [str(i) for i in range(20)]
    assert evaluate_two_tower(images, ids, images, ids)["recall@1"] == 1.0
    result = evaluate_two_tower(images, ids, images, ids[1:] + ids[:1])
    assert result["recall@1"] == 0.0 and result["recall@10"] <= 1.0


def test_bad_features_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        SigmaTwoTowerIndex(np.array([[np.nan, 1.0]]), ["a"])
    with pytest.raises(ValueError, match="2 image ids for 1"):
        SigmaTwoTowerIndex(np.ones((1, 2)), ["a", "b"])
    index = SigmaTwoTowerIndex(np.ones((1, 2)), ["a"])
    with pytest.raises(ValueError, match="dimension 3"):
        index.search(np.ones((1, 3)))
