import numpy as np
import pytest

from modeling_sigma.evaluation.metrics import recall_at_k


def test_hand_computed_recall():
    rankings = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"], ["x", "y", "z"]]
    relevant = ["a", "a", "a", {"z", "q"}]
    result = recall_at_k(rankings, relevant, ks=(1, 2, 3))
    assert result == pytest.approx({"recall@1": 0.25, "recall@2": 0.5, "recall@3": 1.0})


def test_keys_and_monotonic():
    rng = np.random.default_rng(0)
    rankings = [rng.permutation(50)[:10].tolist() for _ in range(100)]
    result = recall_at_k(rankings, rng.integers(0, 50, 100).tolist())
    assert list(result) == ["recall@1", "recall@5", "recall@10"]
    assert result["recall@1"] <= result["recall@5"] <= result["recall@10"]


def test_agrees_with_ranx_on_random_rankings():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(1)
    qrels, run, rankings, relevant = {}, {}, [], []
    for q in range(200):
        wanted = {f"d{d}" for d in rng.choice(40, size=rng.integers(1, 4), replace=False)}
        ranking = [f"d{d}" for d in rng.permutation(40)[:20]]
        qrels[f"q{q}"] = dict.fromkeys(wanted, 1)
        run[f"q{q}"] = {doc: float(20 - rank) for rank, doc in enumerate(ranking)}
        rankings.append(ranking)
        relevant.append(wanted)
    ours = recall_at_k(rankings, relevant, ks=(1, 5, 10))
    # "a hit if any relevant image is in the top K" is ranx's hit_rate@K.
    theirs = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), ["hit_rate@1", "hit_rate@5", "hit_rate@10"])
    for k in (1, 5, 10):
        assert ours[f"recall@{k}"] == pytest.approx(theirs[f"hit_rate@{k}"])


def test_bad_input():
    with pytest.raises(ValueError, match="2 rankings but 1"):
        recall_at_k([[1], [2]], [1])
    with pytest.raises(ValueError, match="at least one query"):
        recall_at_k([], [])
    with pytest.raises(ValueError, match="K must be >= 1"):
        recall_at_k([[1]], [1], ks=(0,))
