"""`diagnose_stages.py compare`: the paired difference of two results files, by hand figures."""

import json

import diagnose_stages  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import pytest

from modeling_sigma.data.corpus import TinyShapesConfig, caption_pairs, generate_tiny_shapes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "tiny"
    generate_tiny_shapes(TinyShapesConfig(num_train=8, num_test=4, num_unseen=2, seed=3)).save_to_disk(
        str(folder)
    )
    return str(folder)


def write(path, ranks_by_system):
    path.write_text(
        json.dumps({"results": {name: {"ranks": ranks} for name, ranks in ranks_by_system.items()}})
    )
    return str(path)


def test_compare_reports_a_minus_b_for_the_shared_systems(corpus, tmp_path):
    from datasets import load_from_disk

    _, owners = caption_pairs(load_from_disk(corpus)["test"])
    count = len(owners)
    better = [1] * count  # every caption found first
    worse = [1 if i % 2 == 0 else 0 for i in range(count)]  # half found, half missed
    a = write(tmp_path / "a.json", {"sigma": better, "two-tower": worse, "only-in-a": better})
    b = write(tmp_path / "b.json", {"sigma": worse, "two-tower": worse})
    rows = {row["a"]: row for row in diagnose_stages.compare(a, b, corpus, str(tmp_path / "cache"))}
    assert set(rows) == {"sigma (A)", "two-tower (A)"}
    expected = 100 * (sum(better) - sum(worse)) / count
    assert rows["sigma (A)"]["R@1"]["difference"] == pytest.approx(round(expected, 1))
    assert rows["sigma (A)"]["R@1"]["low"] > 0
    assert rows["two-tower (A)"]["R@10"] == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_compare_names_a_run_made_on_another_corpus(corpus, tmp_path):
    a = write(tmp_path / "a.json", {"sigma": [1, 2, 3]})
    with pytest.raises(ValueError, match="ranks 3 queries.*--corpus"):
        diagnose_stages.compare(a, a, corpus, str(tmp_path / "cache"))
