"""The whole job on a user's corpus (`recipes/run_embedded.py --corpus`): bad input stops it before any
training, and a tiny landscapes corpus goes through every stage into the table (smoke schedules, ~15 s)."""

import importlib.util
import json
import os
import sys

import pytest
from sigma_testing_utils import REPO_ROOT


def _load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def job_module():
    return _load("run_embedded", REPO_ROOT / "recipes" / "run_embedded.py")


@pytest.fixture(scope="module")
def landscapes():
    return _load("landscapes", REPO_ROOT / "examples" / "landscapes.py")


def test_bad_input_stops_the_job_before_any_training(job_module, landscapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = landscapes.generate_landscapes(tmp_path / "source", num_images=12, seed=0)
    lines = (source / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["captions"] = [row["captions"][0], 7]
    lines[3] = json.dumps(row)
    (source / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    args = job_module.parse_arguments(["--corpus", str(source), "--num-test", "3", "--num-unseen", "2"])
    with pytest.raises(ValueError, match=r"row 4.*int"):
        job_module.make_job(args)
    assert not (tmp_path / "outputs" / "source").exists()  # no config, no checkpoint folder
    corpora = tmp_path / "outputs" / "cache" / "corpora"
    assert not corpora.exists() or not [p for p in corpora.iterdir() if not p.name.startswith(".")]


def test_a_second_run_reuses_the_prepared_corpus_and_a_changed_one_does_not(
    job_module, landscapes, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    source = landscapes.generate_landscapes(tmp_path / "source", num_images=20, seed=0)
    options = ["--corpus", str(source), "--num-test", "4", "--num-unseen", "2"]
    first = job_module.make_job(job_module.parse_arguments([*options, "--output-dir", str(tmp_path / "run")]))
    again = job_module.make_job(job_module.parse_arguments([*options, "--output-dir", str(tmp_path / "run")]))
    assert again.corpus == first.corpus and again.config == first.config
    image = next((source / "images").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")  # one changed file
    changed = job_module.make_job(
        job_module.parse_arguments([*options, "--output-dir", str(tmp_path / "run")])
    )
    assert changed.corpus != first.corpus


def test_the_whole_job_runs_on_a_landscapes_corpus(job_module, landscapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = landscapes.generate_landscapes(tmp_path / "source", num_images=40, seed=0)
    report = job_module.main(
        ["--corpus", str(source), "--num-test", "8", "--num-unseen", "4", "--smoke", "--results", "r.json"]
    )
    rows = report["results"]
    assert rows[job_module.TWO_TOWER]["images"] == 8 and rows[job_module.SIGMA]["images"] == 8
    assert any("unseen images added" in name for name in rows)
    # a smoke run keeps its 3-step checkpoints apart from a real run's (outputs/source/stage3 is the Space's)
    assert os.path.isdir(tmp_path / "outputs" / "source-smoke" / "stage3" / "sigma_index")
    assert not os.path.exists(tmp_path / "outputs" / "source" / "stage3")
    assert os.path.isfile(tmp_path / "outputs" / "source" / "config.yaml")
