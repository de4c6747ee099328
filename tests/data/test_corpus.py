from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from modeling_sigma.data.corpus import (
    CORPUS_COLUMNS,
    TinyShapesConfig,
    caption_pairs,
    generate_tiny_shapes,
    get_split,
    load_corpus,
    load_image,
    save_corpus,
    validate_corpus,
)


def test_schema_and_sizes(tiny_corpus, tiny_corpus_config):
    assert set(tiny_corpus) == {"train", "test", "unseen"}
    for split, size in tiny_corpus_config.split_sizes().items():
        assert tiny_corpus[split].column_names == list(CORPUS_COLUMNS)
        assert len(tiny_corpus[split]) == size
        assert all(len(c) == 5 for c in tiny_corpus[split]["captions"])
    validate_corpus(tiny_corpus)


def test_same_seed_same_corpus_pixel_equal(tiny_corpus, tiny_corpus_config):
    again = generate_tiny_shapes(tiny_corpus_config)
    for split in tiny_corpus:
        assert again[split]["captions"] == tiny_corpus[split]["captions"]
        for a, b in zip(again[split]["image"], tiny_corpus[split]["image"]):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_other_seed_other_corpus(tiny_corpus, tiny_corpus_config):
    other = generate_tiny_shapes(TinyShapesConfig(**{**tiny_corpus_config.__dict__, "seed": 4}))
    assert other["train"]["captions"] != tiny_corpus["train"]["captions"]
    assert not np.array_equal(
        np.asarray(other["train"][0]["image"]), np.asarray(tiny_corpus["train"][0]["image"])
    )


def test_splits_are_disjoint_scenes_and_captions_vary_in_granularity(tiny_corpus):
    captions = tiny_corpus["train"][0]["captions"]
    full, partial, relational, coarse, paraphrase = captions
    assert len(partial.split()) < len(full.split())
    assert "background" in coarse and "shape" in coarse
    assert "scene showing" in paraphrase
    assert len(set(captions)) == 5


def test_partial_captions_match_several_images():
    corpus = generate_tiny_shapes(TinyShapesConfig(num_train=300, num_test=1, num_unseen=1))
    partials = [c[1] for c in corpus["train"]["captions"]]
    assert len(set(partials)) < len(partials) / 3  # many images share a partial description


def test_rgb_64px_images(tiny_corpus):
    image = tiny_corpus["test"][0]["image"]
    assert image.mode == "RGB" and image.size == (64, 64)


def test_unknown_split_names_the_split(tiny_corpus):
    with pytest.raises(ValueError, match="'validation'.*splits"):
        get_split(tiny_corpus, "validation")


def test_empty_corpus_is_rejected():
    with pytest.raises(ValueError, match="at least one image"):
        generate_tiny_shapes(TinyShapesConfig(num_train=0))
    empty = DatasetDict({"test": Dataset.from_dict({"image": [], "image_id": [], "captions": []})})
    with pytest.raises(ValueError):
        validate_corpus(empty)


def test_missing_column_is_named(tiny_corpus):
    broken = DatasetDict({"test": tiny_corpus["test"].remove_columns("captions")})
    with pytest.raises(ValueError, match="missing the column.*captions"):
        validate_corpus(broken)


def test_save_load_roundtrip_and_no_half_written_corpus(tiny_corpus, tmp_path):
    save_corpus(tiny_corpus, tmp_path / "corpus")
    loaded = load_corpus(str(tmp_path / "corpus"))
    assert loaded["test"]["captions"] == tiny_corpus["test"]["captions"]
    broken = DatasetDict({"test": tiny_corpus["test"].remove_columns("image_id")})
    with pytest.raises(ValueError):
        save_corpus(broken, tmp_path / "corpus")
    assert load_from_disk(str(tmp_path / "corpus"))["test"]["captions"] == tiny_corpus["test"]["captions"]
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_failure_while_writing_keeps_the_previous_corpus(tiny_corpus, tmp_path, monkeypatch):
    save_corpus(tiny_corpus, tmp_path / "corpus")

    def write_half_then_fail(self, folder, *args, **kwargs):
        (Path(folder) / "test").mkdir(parents=True)
        (Path(folder) / "test" / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_corpus(tiny_corpus, tmp_path / "corpus")
    monkeypatch.undo()
    assert load_corpus(str(tmp_path / "corpus"))["test"]["captions"] == tiny_corpus["test"]["captions"]
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_cache_interrupted_between_renames_is_restored(tmp_path, tiny_corpus_config):
    first = load_corpus("tiny-shapes", cache_dir=tmp_path, tiny_shapes=tiny_corpus_config)
    (cached,) = tmp_path.iterdir()
    cached.rename(tmp_path / f".{cached.name}.old-crash")  # a replace killed after moving the old copy aside
    again = load_corpus("tiny-shapes", cache_dir=tmp_path, tiny_shapes=tiny_corpus_config)
    assert again["train"]["image_id"] == first["train"]["image_id"]
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]


def test_cached_embedded_corpus_is_reused(tmp_path, tiny_corpus_config):
    first = load_corpus("tiny-shapes", cache_dir=tmp_path, tiny_shapes=tiny_corpus_config)
    second = load_corpus("tiny-shapes", cache_dir=tmp_path, tiny_shapes=tiny_corpus_config)
    assert first["train"]["image_id"] == second["train"]["image_id"]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_image_modes_convert_to_rgb(mode, tmp_path):
    image = Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)
    assert load_image(image).mode == "RGB"
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    image.save(path)
    assert load_image(str(path)).size == (20, 10)


def test_transparent_image_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Unreadable image.*broken.png"):
        load_image(str(bad))


def test_caption_pairs_flatten_in_order(tiny_corpus):
    captions, owners = caption_pairs(tiny_corpus["test"])
    assert len(captions) == 5 * len(tiny_corpus["test"])
    assert captions[5] == tiny_corpus["test"][1]["captions"][0] and owners[5] == 1


def test_load_image_accepts_numpy_arrays():
    import numpy as np

    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    assert load_image(rgb).size == (8, 6) and load_image(rgb).getpixel((0, 0)) == (200, 0, 0)
    grey = np.full((5, 4), 0.5, dtype=np.float32)
    assert load_image(grey).mode == "RGB" and load_image(grey).getpixel((0, 0)) == (128, 128, 128)
    rgba = np.zeros((3, 3, 4), dtype=np.uint8)  # fully transparent: composited on white
    assert load_image(rgba).getpixel((1, 1)) == (255, 255, 255)
    assert load_image(np.ones((2, 2, 1), dtype=np.float64)).getpixel((0, 0)) == (255, 255, 255)
    for bad, match in [
        (np.zeros((4, 4, 2), dtype=np.uint8), "shape"),
        (np.zeros((4,), dtype=np.uint8), "shape"),
        (np.full((4, 4), 2.0), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), r"\[0, 1\]"),
        (np.zeros((4, 4), dtype=np.int64), "uint8"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_image(bad)
