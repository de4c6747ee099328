"""The reliability suite (benchmarks/bench_reliability.py) at CI size: every check runs once on a tiny model, and
the properties the full run reports are asserted here on fewer inputs."""

import os
import sys

import pytest
from sigma_testing_utils import REPO_ROOT

sys.path.insert(0, os.path.join(str(REPO_ROOT), "benchmarks"))

import bench_reliability  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    return bench_reliability.run_checks(
        dict(bench_reliability.CI), None, tmp_path_factory.mktemp("reliability")
    )


def test_fuzzed_queries_never_crash_or_leak_control_tokens(report):
    fuzz = report["fuzz"]
    assert fuzz["queries"] == bench_reliability.CI["queries"]
    assert fuzz["crashes"] == fuzz["invalid_identifiers"] == fuzz["user_control_tokens"] == 0
    assert fuzz["answered"] + fuzz["refused"] == fuzz["queries"] and fuzz["answered"] > fuzz["refused"]
    assert fuzz["truncated"] > 0  # the fuzzer does send over-long queries


def test_malformed_images_never_crash_nor_change_the_index(report):
    images = report["images"]
    assert images["kinds"] == 27 and images["crashes"] == 0 and images["index_changed_after"] == []
    outcomes = images["outcomes"]
    assert outcomes["numpy uint8 HWC"] == "added" and outcomes["mode CMYK"] == "added"
    assert outcomes["30000x30000 PNG bomb"].startswith("refused") and outcomes["None"].startswith("refused")


def test_kill_nine_loses_nothing(report):
    kill = report["kill"]
    assert kill["failed_loads"] == 0 and kill["lost"] == 0 and kill["acknowledged"] >= 1


def test_concurrent_writers_harness(report):
    writers = report["writers"]
    assert writers["acknowledged"] + writers["refused"] == writers["writers"] * writers["rounds"]
    assert not writers["final_load_failed"] and 0 <= writers["lost"] <= writers["acknowledged"]


def test_concurrent_writers_lose_nothing(report):
    assert report["writers"]["lost"] == 0


def test_space_under_load_answers_everything(report):
    space = report["space"]
    assert space["errors"] == 0 and space["index_unchanged"]
    assert space["answered"] + space["busy"] == space["clients"] * space["requests_per_client"]
    assert space["p50_s"] is not None and space["p95_s"] >= space["p50_s"]


def test_two_runs_are_identical(report):
    same = report["determinism"]
    assert same["identical_identifiers"] and same["identical_results"] and same["identical_added_identifiers"]


def test_table_has_a_row_per_check(report):
    text = bench_reliability.table(report)
    for row in [
        "fuzzed queries",
        "malformed images",
        "kill -9",
        "concurrent writers",
        "Space load",
        "determinism",
    ]:
        assert f"| {row}" in text
