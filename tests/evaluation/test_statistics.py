import numpy as np
import pytest

from modeling_sigma.evaluation.metrics import recall_at_k
from modeling_sigma.evaluation.statistics import (
    caption_types_by_position,
    paired_bootstrap,
    recall_by_caption_type,
    recall_from_ranks,
    relevant_ranks,
)


def test_relevant_ranks_are_one_based_and_zero_when_missing():
    rankings = [["a", "b", "c"], ["c", "a"], ["b"]]
    assert relevant_ranks(rankings, ["a", "a", "z"]) == [1, 2, 0]


def test_recall_from_ranks_matches_recall_at_k():
    rng = np.random.default_rng(0)
    rankings = [list(rng.permutation(20)[:10]) for _ in range(200)]
    relevant = list(rng.integers(0, 20, size=200))
    ranks = relevant_ranks(rankings, relevant)
    assert recall_from_ranks(ranks) == pytest.approx(recall_at_k(rankings, relevant))


def test_paired_bootstrap_difference_and_interval_by_hand():
    # A finds every query at rank 1; B finds half: the difference at k=1 is exactly 0.5
    ranks_a = [1] * 100
    ranks_b = [1, 0] * 50
    result = paired_bootstrap(ranks_a, ranks_b, resamples=500)["recall@1"]
    assert result["difference"] == pytest.approx(0.5)
    assert result["a"] == 1.0 and result["b"] == 0.5
    assert 0.35 < result["low"] < 0.5 < result["high"] < 0.65


def test_identical_systems_have_a_zero_width_interval():
    ranks = [1, 0, 3, 7, 2] * 20
    result = paired_bootstrap(ranks, ranks, resamples=200)
    for figures in result.values():
        assert figures["difference"] == figures["low"] == figures["high"] == 0.0


def test_grouped_resampling_widens_the_interval_of_correlated_queries():
    # five captions per image, all hit or all miss together: resampling captions understates the spread
    rng = np.random.default_rng(1)
    image_hits = rng.integers(0, 2, size=60)
    ranks_a = list(np.repeat(image_hits, 5))
    ranks_b = [0] * len(ranks_a)
    groups = list(np.repeat(np.arange(60), 5))
    by_query = paired_bootstrap(ranks_a, ranks_b, ks=(1,), seed=3)["recall@1"]
    by_image = paired_bootstrap(ranks_a, ranks_b, groups=groups, ks=(1,), seed=3)["recall@1"]
    assert (by_image["high"] - by_image["low"]) > 1.5 * (by_query["high"] - by_query["low"])
    assert by_image["difference"] == by_query["difference"]


def test_bootstrap_is_seeded_and_checks_its_input():
    a, b = [1, 0, 2, 0, 5], [0, 0, 1, 3, 0]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError, match="groups"):
        paired_bootstrap(a, b, groups=[0, 1])


def test_recall_by_caption_type():
    types = caption_types_by_position([3, 2], ["full", "partial", "coarse"])
    assert types == ["full", "partial", "coarse", "full", "partial"]
    table = recall_by_caption_type([1, 0, 4, 0, 1], types)
    assert list(table) == ["full", "partial", "coarse"]
    assert table["full"]["recall@1"] == 0.5 and table["full"]["queries"] == 2
    assert table["partial"]["recall@10"] == 0.5
    assert table["coarse"]["recall@1"] == 0.0 and table["coarse"]["recall@5"] == 1.0
    with pytest.raises(ValueError, match="caption types"):
        caption_types_by_position([4], ["full"])


def test_pooled_comparison_averages_the_seeds_and_resamples_an_image_across_them():
    from modeling_sigma.evaluation.tables import comparison_rows, pooled_comparison_rows

    groups = ["a", "a", "b", "b", "c", "c"]
    results = {
        "base": {"ranks": [2, 2, 2, 2, 2, 2]},  # trained once: repeated for every seed
        "sys (seed 0)": {"ranks": [1, 1, 1, 1, 2, 2]},
        "sys (seed 1)": {"ranks": [1, 1, 2, 2, 2, 2]},
        "other (seed 0)": {"ranks": [1, 1, 1, 1, 1, 1]},  # no seed 1: its pair is skipped
    }
    tags = [" (seed 0)", " (seed 1)"]
    rows = pooled_comparison_rows(results, [("sys", "base"), ("other", "base")], groups, tags)
    assert [(row["a"], row["b"]) for row in rows] == [("sys (seeds pooled: 2)", "base")]
    per_seed = comparison_rows(results, [("sys (seed 0)", "base"), ("sys (seed 1)", "base")], groups)
    mean = (per_seed[0]["R@1"]["difference"] + per_seed[1]["R@1"]["difference"]) / 2
    assert rows[0]["R@1"]["difference"] == pytest.approx(mean, abs=0.06)  # 50.0 = (66.7 + 33.3) / 2
    assert rows[0]["R@1"]["low"] <= rows[0]["R@1"]["difference"] <= rows[0]["R@1"]["high"]
    assert rows[0]["R@5"] == {"difference": 0.0, "low": 0.0, "high": 0.0}
    # an image's queries of both seeds move together: a draw of image "c" alone (never a hit) gives 0, of "a" 100
    assert rows[0]["R@1"]["low"] == 0.0 and rows[0]["R@1"]["high"] == 100.0
    truncated = {name: {"ranks": run["ranks"][:4]} for name, run in results.items()}  # a smoke run
    short = pooled_comparison_rows(truncated, [("sys", "base")], groups, tags)
    assert short[0]["R@1"]["difference"] == pytest.approx(75.0)  # (4 + 2) hits of 8 queries
