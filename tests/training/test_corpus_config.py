"""The config of a run on a user's corpus (training/corpus_config.py) and the progress lines of long stages."""

import argparse
import os
from types import SimpleNamespace

import pytest
import yaml
from sigma_testing_utils import REPO_ROOT

from modeling_sigma.training.corpus_config import (
    add_corpus_arguments,
    corpus_config,
    corpus_name,
    corpus_options,
    describe_settings,
    scaled_settings,
    write_corpus_config,
)
from modeling_sigma.training.trainer import SigmaProgressCallback, format_duration

EMBEDDED_CONFIG = os.path.join(REPO_ROOT, "recipes", "configs", "tiny-shapes.yaml")


@pytest.fixture(scope="module")
def base():
    with open(EMBEDDED_CONFIG) as stream:
        return yaml.safe_load(stream)


def test_the_embedded_corpus_size_gives_the_embedded_settings(base):
    chosen = scaled_settings(2_500, base)
    stage0 = base["stage0"]
    assert chosen["layout"] == {key: stage0[key] for key in ("k1", "k2", "k3", "k4", "suffix_size")}
    assert chosen["epochs"] == {
        stage: base[stage]["num_train_epochs"] for stage in ("stage1", "stage2", "stage3")
    }
    assert chosen["per_device_train_batch_size"] == base["stage1"]["per_device_train_batch_size"]


def test_a_smaller_corpus_gets_fewer_clusters_and_more_epochs(base):
    small, large = scaled_settings(600, base), scaled_settings(50_000, base)
    assert small["layout"]["k1"] == round(600 / 39) < base["stage0"]["k1"]
    assert small["epochs"]["stage1"] > base["stage1"]["num_train_epochs"]
    assert large["layout"]["k1"] == base["stage0"]["k1"]  # capped at the paper's K1
    assert large["epochs"]["stage1"] == 2  # the lower bound, not 0
    tiny = scaled_settings(40, base)
    assert tiny["layout"]["k1"] >= 2 and tiny["per_device_train_batch_size"] == 4
    for level in ("k2", "k3", "k4"):
        assert 2 <= tiny["layout"][level] <= 40 // tiny["layout"]["k1"]


def test_too_small_a_corpus_is_refused(base):
    with pytest.raises(ValueError, match="at least 8 indexed images"):
        scaled_settings(5, base)


def test_the_config_points_every_stage_at_the_corpus_and_the_run_folder(base, tmp_path):
    sizes = {"train": 900, "test": 150, "unseen": 90}
    config = corpus_config(base, "/data/prepared", sizes, str(tmp_path / "run"), "tiny-clip")
    assert {config[stage]["corpus"] for stage in config} == {"/data/prepared"}
    assert config["stage0"]["k1"] == round(1_050 / 39)
    assert config["stage2"]["model_name_or_path"] == str(tmp_path / "run" / "stage1")
    assert config["stage3"]["model_name_or_path"] == str(tmp_path / "run" / "stage2")
    assert config["evaluation"]["model_name_or_path"] == str(tmp_path / "run" / "stage3")
    assert config["stage1"]["model_name_or_path"] == "embedded"
    assert base["stage0"]["corpus"] == "tiny-shapes"  # the base is not modified
    other = corpus_config(
        base, "/data/prepared", sizes, str(tmp_path / "run"), "openai/clip-vit-base-patch32"
    )
    assert other["stage3"]["teacher"] == "openai/clip-vit-base-patch32"
    path = write_corpus_config(config, str(tmp_path / "run" / "config.yaml"))
    with open(path) as stream:
        assert yaml.safe_load(stream) == config
    assert "K1..K4 27/32/16/32" in describe_settings(config)
    config["stage0"]["num_subspaces"] = 4
    assert "K1..K4 27/32/16/32 (id4 in 4 subspaces), suffix" in describe_settings(config)


def test_corpus_options_and_names():
    parser = argparse.ArgumentParser()
    add_corpus_arguments(parser)
    args = parser.parse_args(["--corpus", "x", "--num-test", "300", "--num-unseen", "0.1"])
    options = corpus_options(args)
    assert options["num_test"] == 300 and isinstance(options["num_test"], int)
    assert options["num_unseen"] == 0.1
    assert corpus_name("someone/my-dataset") == "someone--my-dataset"
    assert corpus_name(str(REPO_ROOT / "recipes") + "/") == "recipes"


def test_format_duration():
    assert format_duration(42) == "42 s"
    assert format_duration(7 * 60) == "7 min"
    assert format_duration(3_900) == "1 h 05 min"


def test_the_progress_callback_reports_every_share_with_time_left(caplog):
    callback = SigmaProgressCallback("stage1", every=0.25)
    state = SimpleNamespace(global_step=0, max_steps=100, is_world_process_zero=True)
    callback.on_train_begin(None, state, None)
    with caplog.at_level("INFO", logger="modeling_sigma.training.trainer"):
        for step in range(1, 101):
            state.global_step = step
            callback.on_step_end(None, state, None)
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [f"stage1: step {s}/100" for s in (25, 50, 75, 100)]
    assert lines[-1].endswith("about 0 s left")
    assert callback.progress_line(30, 100, 60.0) == "stage1: step 30/100 (30%), 2.00 s/step, about 2 min left"
