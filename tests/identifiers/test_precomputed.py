"""Precomputed stage-0 features: the folder written in the encoder's own environment and read by stage 0."""

import argparse
import os

import numpy as np
import pytest
import yaml
from sigma_testing_utils import REPO_ROOT

from modeling_sigma.data.corpus import TinyShapesConfig, generate_tiny_shapes, save_corpus
from modeling_sigma.identifiers.encoders import SigmaJinaV4Encoder
from modeling_sigma.identifiers.precomputed import load_split_features, save_split_features
from modeling_sigma.training.recipe_config import load_recipe, run_recipe


def test_features_are_aligned_by_image_id_and_normalised(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    save_split_features(tmp_path, "train", features, ["a", "b", "c", "d"], "jinaai/jina-embeddings-v4")
    loaded = load_split_features(tmp_path, "train", ["c", "a"], encoder="jinaai/jina-embeddings-v4")
    expected = features[[2, 0]] / np.linalg.norm(features[[2, 0]], axis=1, keepdims=True)
    np.testing.assert_allclose(loaded, expected, rtol=1e-6)
    assert loaded.dtype == np.float32 and sorted(os.listdir(tmp_path)) == ["train.json", "train.npy"]


def test_bad_feature_folders_are_named(tmp_path):
    save_split_features(tmp_path, "train", np.ones((2, 3)), ["a", "b"], "enc")
    with pytest.raises(FileNotFoundError, match="extract_features"):
        load_split_features(tmp_path, "test", ["a"])
    with pytest.raises(ValueError, match="1 of 2 images.*'z'"):
        load_split_features(tmp_path, "train", ["a", "z"])
    with pytest.raises(ValueError, match="not 'other'"):
        load_split_features(tmp_path, "train", ["a"], encoder="other")
    save_split_features(tmp_path, "bad", np.full((1, 3), np.nan), ["a"], "enc")
    with pytest.raises(ValueError, match="NaN"):
        load_split_features(tmp_path, "bad", ["a"])
    with pytest.raises(ValueError, match="must be"):
        save_split_features(tmp_path, "x", np.ones((3, 2)), ["a"], "enc")


def test_jina_v4_says_what_its_remote_code_needs():
    with pytest.raises(
        RuntimeError, match="torchvision is not installed.*_checkpoint_conversion_mapping.*features_dir"
    ):
        SigmaJinaV4Encoder.check_environment()


class FixedEncoder:
    """Stands in for jina-embeddings-v4 in its own environment: features from the image pixels."""

    name = "jinaai/jina-embeddings-v4"

    def encode_images(self, images, batch_size=16, progress=False):
        rows = [np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0) for image in images]
        return np.stack(rows) + np.arange(len(rows))[:, None] * 1e-3


def test_extracted_features_drive_stage0_without_loading_the_encoder(tmp_path, monkeypatch):
    corpus_dir = tmp_path / "corpus"
    save_corpus(
        generate_tiny_shapes(TinyShapesConfig(num_train=40, num_test=8, num_unseen=2, seed=1)), corpus_dir
    )
    extract = load_recipe(os.path.join(REPO_ROOT, "recipes", "extract_features.py"))
    monkeypatch.setattr(extract, "load_encoder", lambda name: FixedEncoder())
    args = argparse.Namespace(
        corpus=str(corpus_dir), encoder="jinaai/jina-embeddings-v4", splits=["train", "test"],
        output_dir=str(tmp_path / "features"), image_root=None, cache_dir=str(tmp_path / "cache"), batch_size=8,
    )  # fmt: skip
    assert extract.main(args) == {"train": (40, 3), "test": (8, 3)}
    config = {
        "stage0": {
            "corpus": str(corpus_dir),
            "encoder": "jinaai/jina-embeddings-v4",  # would fail to load here: it must not be loaded
            "features_dir": str(tmp_path / "features"),
            "cache_dir": str(tmp_path / "cache"),
            "output_dir": str(tmp_path / "stage0"),
            **{"k1": 4, "k2": 2, "k3": 2, "k4": 2, "suffix_size": 16},
            **{"semi_nmf_iterations": 3, "coefficient_iterations": 5},
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    statistics = run_recipe(os.path.join(REPO_ROOT, "recipes", "stage0.py"), ["--config", str(path)])
    assert os.path.isdir(tmp_path / "stage0") and statistics
