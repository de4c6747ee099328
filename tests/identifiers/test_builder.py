import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from sigma_testing_utils import REPO_ROOT

from modeling_sigma.identifiers.builder import (
    SigmaIdentifierBuilder,
    SigmaIdentifierBuilderConfig,
    load_codebook,
)


def tiny_config(**overrides):
    values = dict(k1=6, k2=4, k3=3, k4=5, num_subspaces=2, suffix_size=32, semi_nmf_iterations=15,
                  coefficient_iterations=40, kmeans_batch_size=256, coherence_pairs=500)  # fmt: skip
    return SigmaIdentifierBuilderConfig(**{**values, **overrides})


def clustered_features(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((6, d))
    labels = rng.integers(0, 6, n)
    return (centers[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


def ids(n, prefix="img"):
    return [f"{prefix}-{i}" for i in range(n)]


@pytest.fixture(scope="module")
def fitted():
    features, labels = clustered_features()
    builder = SigmaIdentifierBuilder(tiny_config())
    codes = builder.fit(features, ids(len(features)), attributes=[{f"topic{label}"} for label in labels])
    return builder, features, codes


def test_every_image_gets_a_distinct_valid_identifier(fitted):
    builder, features, codes = fitted
    assert codes.shape == (len(features), builder.layout.length) == (300, 6)
    assert len({tuple(row) for row in codes.tolist()}) == len(codes)
    for row in codes.tolist():
        builder.layout.validate_codes(row)
    # suffixes count up from 0 within each prefix, in input order
    first = {}
    for row in codes.tolist():
        assert row[-1] == first.setdefault(tuple(row[:-1]), 0)
        first[tuple(row[:-1])] += 1


def test_same_seed_same_codes(fitted):
    builder, features, codes = fitted
    again = SigmaIdentifierBuilder(tiny_config()).fit(features, ids(len(features)))
    np.testing.assert_array_equal(again, codes)


def test_assign_reproduces_levels_on_training_features_and_adds_fresh_suffixes(fitted):
    builder, features, codes = fitted
    clone = SigmaIdentifierBuilder.__new__(SigmaIdentifierBuilder)
    clone.__dict__.update({**builder.__dict__, "codes": codes.copy(), "image_ids": list(builder.image_ids)})
    assigned = clone.assign(features, ids(len(features), "copy"))
    np.testing.assert_array_equal(assigned[:, :-1], codes[:, :-1])
    np.testing.assert_array_equal(builder.quantize(features), codes[:, :-1])
    everything = np.concatenate([codes, assigned])
    assert len({tuple(row) for row in everything.tolist()}) == 2 * len(codes)
    assert (assigned[:, -1] > codes[:, -1]).all()


def test_assign_new_features(fitted):
    builder, _, codes = fitted
    clone = SigmaIdentifierBuilder.__new__(SigmaIdentifierBuilder)
    clone.__dict__.update({**builder.__dict__, "codes": codes.copy(), "image_ids": list(builder.image_ids)})
    new, _ = clustered_features(n=40, seed=9)
    assigned = clone.assign(new, ids(40, "new"))
    assert len(clone.codes) == 340 and clone.image_ids[-1] == "new-39"
    assert len({tuple(row) for row in clone.codes.tolist()}) == 340
    with pytest.raises(ValueError, match="already in the codebook"):
        clone.assign(new[:1], ["new-0"])
    with pytest.raises(ValueError, match="dimension 8"):
        clone.assign(new[:1, :8], ["other"])
    assert assigned.min() >= 0


def test_statistics(fitted):
    stats = fitted[0].statistics()
    assert stats["num_images"] == 300 and stats["occupancy_id1"] == 1.0
    assert stats["capacity"] == 6 * 4 * 3 * 5 * 5 * 32
    assert 0 <= stats["share_suffix_gt0"] <= 1 and stats["longest_suffix"] >= 0
    assert stats["cosine_same_id1"] > stats["cosine_random"] + 0.3
    assert stats["shared_attribute_rate_same_id1"] > stats["shared_attribute_rate_random"]


def test_save_load_in_new_process(fitted, tmp_path):
    builder, features, codes = fitted
    folder = tmp_path / "stage0"
    builder.save(str(folder))
    builder.save(str(folder))  # replacing an existing folder is atomic too
    assert sorted(os.listdir(tmp_path)) == ["stage0"]
    np.save(tmp_path / "features.npy", features)
    script = (
        "import sys, numpy as np; from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder\n"
        "b = SigmaIdentifierBuilder.load(sys.argv[1]); f = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], b.codes); np.save(sys.argv[4], b.assign(f[:20], [f'n{i}' for i in range(20)]))\n"
    )
    out = [str(tmp_path / "codes.npy"), str(tmp_path / "assigned.npy")]
    subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "features.npy"), *out],
                   check=True, cwd=REPO_ROOT)  # fmt: skip
    np.testing.assert_array_equal(np.load(out[0]), codes)
    clone = SigmaIdentifierBuilder.load(str(folder))
    np.testing.assert_array_equal(np.load(out[1]), clone.assign(features[:20], [f"n{i}" for i in range(20)]))
    dataset = datasets.load_from_disk(str(folder / "codebook"))
    assert dataset.column_names == ["image_id", "identifier", "codes"]
    assert dataset[0]["identifier"] == builder.layout.codes_to_string(codes[0])
    assert load_codebook(str(folder))["image_id"] == builder.image_ids
    config = json.loads((folder / "stage0_config.json").read_text())
    assert config["layout"]["num_subspaces"] == 2 and config["statistics"]["num_images"] == 300


def test_failure_while_saving_keeps_the_previous_folder(fitted, tmp_path, monkeypatch):
    import safetensors.numpy

    builder, features, codes = fitted
    folder = tmp_path / "stage0"
    builder.save(str(folder))
    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    monkeypatch.setattr(safetensors.numpy, "save_file", lambda *args, **kwargs: 1 / 0)  # after the codebook
    with pytest.raises(ZeroDivisionError):
        builder.save(str(folder))
    monkeypatch.undo()
    assert sorted(path.relative_to(folder) for path in folder.rglob("*")) == before
    assert os.listdir(tmp_path) == ["stage0"]
    np.testing.assert_array_equal(SigmaIdentifierBuilder.load(str(folder)).codes, codes)


def test_save_interrupted_between_renames_is_restored_on_load(fitted, tmp_path):
    builder, _, codes = fitted
    builder.save(str(tmp_path / "stage0"))
    (tmp_path / "stage0").rename(tmp_path / ".stage0.old-crash")  # killed after moving the old copy aside
    np.testing.assert_array_equal(SigmaIdentifierBuilder.load(str(tmp_path / "stage0")).codes, codes)
    assert os.listdir(tmp_path) == ["stage0"]


def test_folder_with_the_old_residual_tensor_name_loads(fitted, tmp_path):
    from safetensors.numpy import load_file, save_file

    builder, features, _ = fitted
    folder = tmp_path / "stage0"
    builder.save(str(folder))
    tensors = load_file(str(folder / "quantizer.safetensors"))
    assert set(tensors) >= {"centroids", "residual_centroids"} and "residual_codebooks" not in tensors
    tensors["residual_codebooks"] = tensors.pop("residual_centroids")  # as written before the rename
    save_file(tensors, str(folder / "quantizer.safetensors"), metadata={"format_version": "1"})
    old = SigmaIdentifierBuilder.load(str(folder))
    np.testing.assert_array_equal(old.quantize(features), builder.quantize(features))


def test_suffix_ranks_count_earlier_equal_prefixes():
    from modeling_sigma.identifiers.builder import _suffix_ranks

    prefixes = np.array([[1, 2], [0, 0], [1, 2], [1, 3], [0, 0], [1, 2]])
    np.testing.assert_array_equal(_suffix_ranks(prefixes), [0, 0, 1, 0, 1, 2])
    assert _suffix_ranks(np.zeros((0, 2), dtype=np.int64)).shape == (0,)


def test_config_layout_fields_are_validated_and_unknown_keys_rejected():
    with pytest.raises(ValueError, match="SigmaIdentifierBuilderConfig.k2 must be a positive int"):
        SigmaIdentifierBuilderConfig(k2=0)
    with pytest.raises(ValueError, match="unknown SigmaIdentifierBuilderConfig keys"):
        SigmaIdentifierBuilderConfig.from_dict({"k1": 4, "k_one": 2})
    config = SigmaIdentifierBuilderConfig(k1=4, seed=0)  # seed 0 is fine: only layout sizes must be positive
    assert config.layout.k1 == 4 and type(config.layout).__name__ == "SigmaIdentifierLayout"


def test_missing_file_is_a_clear_error(fitted, tmp_path):
    folder = tmp_path / "stage0"
    fitted[0].save(str(folder))
    os.remove(folder / "quantizer.safetensors")
    with pytest.raises(FileNotFoundError, match="quantizer.safetensors"):
        SigmaIdentifierBuilder.load(str(folder))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SigmaIdentifierBuilder.load(str(tmp_path / "nowhere"))


def test_bad_inputs():
    features, _ = clustered_features(n=60)
    builder = SigmaIdentifierBuilder(tiny_config())
    bad = features.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        builder.fit(bad, ids(60))
    with pytest.raises(ValueError, match="duplicate image ids: \\['img-1'\\]"):
        builder.fit(features, ids(59) + ["img-1"])
    with pytest.raises(ValueError, match="at least k1=6"):
        builder.fit(features[:5], ids(5))
    with pytest.raises(ValueError, match="image ids for 60"):
        builder.fit(features, ids(10))
    with pytest.raises(RuntimeError, match="not fitted"):
        builder.assign(features, ids(60))
    with pytest.raises(ValueError, match="suffix_size=2"):
        SigmaIdentifierBuilder(tiny_config(suffix_size=2)).fit(np.repeat(features[:6], 10, axis=0), ids(60))
    with pytest.raises(
        ValueError, match=f"feature dim {features.shape[1]} is not divisible by num_subspaces=7"
    ):
        SigmaIdentifierBuilder(tiny_config(num_subspaces=7)).fit(features, ids(60))


def test_small_clusters_use_fewer_components():
    features, _ = clustered_features(n=12, d=8)
    builder = SigmaIdentifierBuilder(tiny_config(k1=6, k2=4, k3=3))
    codes = builder.fit(features, ids(12))
    num2 = builder.quantizer["num_components2"]
    assert num2.max() <= 4 and (codes[:, 1] < np.maximum(num2[codes[:, 0]], 1)).all()


def test_recipe_arguments_yaml_section_and_overrides(tmp_path):
    from stage0 import parse_args  # recipes/ is on pytest's pythonpath (pyproject.toml)

    config = os.path.join(REPO_ROOT, "recipes", "configs", "tiny-shapes.yaml")
    script_args, builder_config = parse_args(["--config", config, "--k1", "12", "--fit_splits", "train"])
    assert builder_config.k1 == 12 and builder_config.k2 == 32 and script_args.fit_splits == ["train"]
    other = tmp_path / "other.yaml"
    other.write_text("stage0:\n  k1: 3\n  k_one: 2\nstage1:\n  learning_rate: 1.0\n")
    with pytest.raises(ValueError, match="k_one"):
        parse_args(["--config", str(other)])
    with pytest.raises(ValueError, match="bogus"):
        parse_args(["--config", config, "--bogus", "1"])
