"""The benchmark suite's own logic (benchmarks/run_suite.py): crossover fit, marked-block rewriting, and that a
report renders into JSON, Markdown and the three plots. The measurements themselves are benchmarks, not tests."""

import json

import run_suite  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
from sigma_testing_utils import REPO_ROOT

ROOT = str(REPO_ROOT)

SIZES = [1_000, 10_000, 100_000, 1_000_000]


def fake_report() -> dict:
    flat = {"1": [0.1 + 2e-5 * n for n in SIZES], "32": [3.0 + 6e-4 * n for n in SIZES]}
    return {
        "command": "make bench",
        "machine": "test",
        "quality": {
            "rows": [
                {
                    "system": "two-tower (tiny CLIP + faiss)",
                    "queries_on": "test",
                    "gallery": "test (500)",
                    "reranked": False,
                    "R@1": 16.7,
                    "R@5": 43.6,
                    "R@10": 54.8,
                },
                {
                    "system": "SIGMA-tiny",
                    "queries_on": "test",
                    "gallery": "test (500)",
                    "reranked": False,
                    "R@1": 15.1,
                    "R@5": 37.2,
                    "R@10": 46.5,
                },
                {
                    "system": "SIGMA-tiny",
                    "queries_on": "test",
                    "gallery": "test (500)",
                    "reranked": True,
                    "R@1": 15.3,
                    "R@5": 37.0,
                    "R@10": 46.5,
                },
            ]
        },  # fmt: skip
        "efficiency": {
            "insert": {"images": 768, "seconds": 2.0, "images_per_second": 384.0, "threads": 1},
            "constraint": {
                "identifiers": 1_000_000,
                "steps": 6,
                "model_ms_per_step": {"1": {"with_trie": 2.0, "without_trie": 1.5, "overhead": 0.5}},
                "processor_ms_per_step": {
                    "151665": {"SigmaTrieLogitsProcessor": 12.0, "PrefixConstrained + dict trie": 40.0}
                },
                "trie": {"bytes_per_identifier": 7.7},
            },  # fmt: skip
            "latency": {
                "sizes": SIZES,
                "generative_ms": {"1": [20.0] * 4, "32": [400.0] * 4},
                "faiss_flat_ms": {"64": flat},
                "crossover": {
                    "64": {b: run_suite.crossover(SIZES, flat[b], 20.0 if b == "1" else 400.0) for b in flat}
                },
            },  # fmt: skip
            "stage0": {"sizes": [10_000, 100_000], "dim": 512, "seconds": [3.0, 25.0]},
        },
    }


def engine_rows() -> dict:
    """What the decoding-engine runs add to a report (suite_engine.py): per-step table, faiss ANN baselines."""
    per_step = {
        "engine expand_beams": 0.2,
        "PrefixConstrained + dict": 5.0,
        "LM head, level slice (restricted)": 0.05,
    }
    at = {str(size): {"1": 0.5, "32": 2.0} for size in SIZES}
    return {
        "steps": {
            "identifiers": 1_000_000,
            "beams": 320,
            "ms_per_step": {"1208": per_step, "151665": {**per_step, "PrefixConstrained + dict": 400.0}},
        },
        "ann": {
            "sizes": SIZES,
            "dim": 128,
            "ms": {"flat": at, "hnsw": at},
            "recall@10": {kind: {str(size): 0.9 for size in SIZES} for kind in ("flat", "hnsw")},
            "bytes_per_image": {kind: {str(size): 600.0 for size in SIZES} for kind in ("flat", "hnsw")},
            "crossover": {kind: {"1": {"corpus_size": None, "measured": False}} for kind in ("flat", "hnsw")},
        },
    }


def test_crossover_of_a_linear_curve():
    times = [1.0 + 1e-4 * n for n in SIZES]  # 1 ms + 0.1 ms per 1,000 images
    inside = run_suite.crossover(SIZES, times, 51.0)
    assert abs(inside["corpus_size"] - 500_000) <= 1 and inside["measured"] is True
    beyond = run_suite.crossover(SIZES, times, 1001.0)
    assert abs(beyond["corpus_size"] - 10_000_000) <= 1 and not beyond["measured"]
    assert run_suite.crossover(SIZES, [5.0] * 4, 10.0) == {"corpus_size": None, "measured": False}


def test_replace_marked_keeps_everything_outside_the_markers(tmp_path):
    document = tmp_path / "doc.md"
    start, end = run_suite.MARKERS
    document.write_text(f"# Title\n\nbefore\n{start}\nold table\n{end}\nafter\n")
    assert run_suite.replace_marked(str(document), "new table\n")
    assert document.read_text() == f"# Title\n\nbefore\n{start}\nnew table\n{end}\nafter\n"
    unmarked = tmp_path / "plain.md"
    unmarked.write_text("no markers\n")
    assert not run_suite.replace_marked(str(unmarked), "new table\n")
    assert unmarked.read_text() == "no markers\n"


def test_report_renders_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(run_suite, "RESULTS", str(tmp_path))
    report = json.loads(json.dumps(fake_report()))  # as read back from benchmarks.json (string keys)
    run_suite.write_outputs(report)
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == report
    for plot in ("quality.png", "latency.png", "efficiency.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| SIGMA-tiny | test | test (500) | yes | 15.3 | 37.0 | 46.5 |" in markdown
    assert "| 1,000,000 | 20.0 | 400.0 |" in markdown
    size = report["efficiency"]["latency"]["crossover"]["64"]["1"]["corpus_size"]
    assert abs(size - 995_000) <= 1  # 0.1 ms + 0.02 ms per 1,000 images reaches 20 ms at 995,000
    assert (
        f"crossover, faiss flat 64-d vs SIGMA-tiny, batch 1: N ≈ {size:,}, within the measured range"
        in markdown
    )


def test_efficiency_table_shows_the_generate_path_next_to_the_engine():
    report = json.loads(json.dumps(fake_report()))
    latency = report["efficiency"]["latency"]
    latency["generate_path_ms"] = {"1": [80.0] * 4, "32": [1600.0] * 4}
    table = run_suite.efficiency_tables(report["efficiency"])
    assert "| corpus size | SIGMA-tiny, b1 (ms) | SIGMA-tiny, b32 (ms) | SIGMA-tiny via generate, b1" in table
    assert "| 1,000,000 | 20.0 | 400.0 | 80.0 | 1600.0 |" in table


def test_efficiency_tables_carry_the_engine_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(run_suite, "RESULTS", str(tmp_path))
    report = fake_report()
    report["efficiency"].update(engine_rows())
    report["efficiency"]["latency"]["restricted_ms"] = {"1": [10.0] * 4, "32": [200.0] * 4}
    report = json.loads(json.dumps(report))
    run_suite.write_outputs(report)
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| engine expand_beams | 0.200 | 0.200 | 1.00× | 25× | 2000× |" in markdown
    assert "| LM head, level slice (restricted) | 0.050 | 0.050 | 1.00× | – | – |" in markdown
    assert "| hnsw | 0.500 / 2.00, R 0.900 |" in markdown
    assert (
        "SIGMA-tiny restricted, b1 (ms)" in markdown
        and "| 1,000,000 | 20.0 | 400.0 | 10.0 | 200.0 |" in markdown
    )
    assert "crossover, faiss hnsw (search only) vs SIGMA-tiny engine, batch 1: none" in markdown


def test_the_suite_registers_run_embedded_so_its_steps_can_go_to_worker_processes():
    """`run_embedded.py --jobs 2` sends its functions to spawned workers by reference: pickling one needs the
    module importable under its name, which an unregistered `spec_from_file_location` import is not."""
    import pickle
    import sys

    module = run_suite._load_recipe("run_embedded")
    assert sys.modules["run_embedded"] is module and run_suite._load_recipe("run_embedded") is module
    assert pickle.loads(pickle.dumps(module.prepare_sigma)) is module.prepare_sigma


def test_part_times_take_the_quality_wall_time_not_the_sum_of_overlapping_steps():
    quality = {"seconds": {"stages 0–2": 600.0, "stage 3": 900.0}, "wall_time_s": 720.0}
    assert (
        "quality 12 min, efficiency 10 min"
        in run_suite._part_times({"quality": quality, "efficiency": {"seconds": 600.0}})[1]
    )
    del quality["wall_time_s"]  # a report written before the wall time was kept: the sum
    assert "quality 25 min" in run_suite._part_times({"quality": quality})[1]
