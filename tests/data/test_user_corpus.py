import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import datasets
import pytest
from PIL import Image

from modeling_sigma.data import user_corpus
from modeling_sigma.data.corpus import validate_corpus
from modeling_sigma.data.user_corpus import content_fingerprint, prepare_corpus, source_fingerprint

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write_image(path: Path, index: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8 + index % 3, 8), ((index * 37) % 256, (index * 91) % 256, 90))
    if mode == "P":
        image = image.quantize(colors=4)
    elif mode == "RGBA":
        image = image.convert("RGBA")
    image.save(path, format="PNG" if mode != "RGB" else "JPEG")


def _image_folder(root: Path, n: int = 12, subfolder: str = "", rows=None) -> Path:
    """An ImageFolder with list captions in metadata.jsonl; `rows` overrides the records."""
    folder = root / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        mode = ("RGB", "RGBA", "P")[index % 3]
        name = f"images/{subfolder or 'x'}{index:03d}.{'jpg' if mode == 'RGB' else 'png'}"
        _write_image(folder / name, index, mode)
        records.append({"file_name": name, "captions": [f"image {index}", f"picture number {index}"]})
    records = rows(records) if rows else records
    with open(folder / "metadata.jsonl", "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return root


def _edit(index, **changes):
    def rows(records):
        records[index].update(changes)
        return records

    return rows


def test_image_folder_jsonl_with_list_captions(tmp_path):
    source = _image_folder(tmp_path / "src", rows=_edit(7, captions="one plain string"))
    corpus = prepare_corpus(str(source), tmp_path / "out", num_test=3, num_unseen=2)
    assert {name: len(ds) for name, ds in corpus.items()} == {"train": 7, "test": 3, "unseen": 2}
    validate_corpus(corpus)
    every = {i: c for split in corpus.values() for i, c in zip(split["image_id"], split["captions"])}
    assert every["images/x004.png"] == ["image 4", "picture number 4"]
    assert every["images/x007.png"] == ["one plain string"]
    assert all(image.mode in ("RGB", "RGBA", "P") for image in corpus["train"]["image"])
    assert list(datasets.load_from_disk(str(tmp_path / "out"))["test"]["image_id"]) == list(
        corpus["test"]["image_id"]
    )


def test_csv_with_several_caption_columns(tmp_path):
    source = tmp_path / "src"
    for index in range(6):
        _write_image(source / f"{index}.jpg", index)
    with open(source / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "caption_1", "caption_2", "photo"])
        writer.writerows([f"{i}.jpg", f"first {i}", f"second {i}", f"p{i}"] for i in range(6))
    corpus = prepare_corpus(
        str(source),
        tmp_path / "out",
        caption_columns=["caption_1", "caption_2"],
        id_column="photo",
        num_test=2,
    )
    every = {i: c for split in corpus.values() for i, c in zip(split["image_id"], split["captions"])}
    assert every["p3"] == ["first 3", "second 3"]
    assert sum(len(ds) for ds in corpus.values()) == 6
    text = (source / "metadata.csv").read_text().replace("second 2", "")
    (source / "metadata.csv").write_text(text)
    with pytest.raises(ValueError, match=r"metadata.csv, row 3 \(line 4\): .*column 'caption_2' holds ''"):
        prepare_corpus(str(source), tmp_path / "again", caption_columns=["caption_1", "caption_2"])
    assert not (tmp_path / "again").exists()


def test_saved_dataset_with_path_images_relative_to_the_folder(tmp_path):
    saved = tmp_path / "saved"
    for index in range(4):
        _write_image(saved / "pictures" / f"{index}.png", index, "P")
    raw = datasets.Dataset.from_dict(
        {"path": [f"pictures/{i}.png" for i in range(4)], "caption": list("abcd")}
    )
    raw.save_to_disk(str(saved))
    corpus = prepare_corpus(str(saved), tmp_path / "out", image_column="path", num_test=1, num_unseen=1)
    assert sorted(i for split in corpus.values() for i in split["image_id"]) == [
        f"train-{i:06d}" for i in range(4)
    ]
    assert all(image.mode == "P" for split in corpus.values() for image in split["image"])
    (saved / "pictures" / "2.png").unlink()
    with pytest.raises(
        ValueError, match=r"split 'train', row 2: the image file .*pictures/2.png' does not exist"
    ):
        prepare_corpus(str(saved), tmp_path / "again", image_column="path")


def test_saved_dataset_dict_with_column_mapping(tmp_path):
    images = [Image.new("RGB", (6, 6), (i * 20, 0, 0)) for i in range(8)]
    raw = datasets.Dataset.from_dict(
        {"picture": images, "text": [f"red {i}" for i in range(8)], "key": list(range(8))},
        features=datasets.Features(
            {"picture": datasets.Image(), "text": datasets.Value("string"), "key": datasets.Value("int64")}
        ),
    )
    datasets.DatasetDict({"train": raw.select(range(6)), "test": raw.select(range(6, 8))}).save_to_disk(
        str(tmp_path / "saved")
    )
    key = source_fingerprint(tmp_path / "saved", image_column="picture")
    corpus = prepare_corpus(
        str(tmp_path / "saved"), tmp_path / "out", image_column="picture", id_column="key", num_unseen=2
    )
    assert (
        source_fingerprint(tmp_path / "saved", image_column="picture") == key
    )  # the source is left as it was
    assert list(corpus["test"]["image_id"]) == ["6", "7"]
    assert list(corpus["test"]["captions"]) == [["red 6"], ["red 7"]]
    assert len(corpus["train"]) == 4 and len(corpus["unseen"]) == 2


def test_hub_id_maps_columns_and_passes_revision(tmp_path, monkeypatch):
    raw = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (5, 5))] * 4, "caption": ["a", "b", "c", "d"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or raw)
    corpus = prepare_corpus("someone/corpus", tmp_path / "out", num_test=1, num_unseen=1, revision="v1")
    assert calls == [(("someone/corpus",), {"revision": "v1"})]
    assert sorted(i for split in corpus.values() for i in split["image_id"]) == [
        f"train-{i:06d}" for i in range(4)
    ]


def test_offline_hub_id_says_hf_hub_offline(tmp_path):
    assert datasets.config.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1: the real load_dataset fails fast
    with pytest.raises(ValueError, match="someone/missing-corpus.*HF_HUB_OFFLINE"):
        prepare_corpus("someone/missing-corpus", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _split_ids(corpus):
    return {name: list(ds["image_id"]) for name, ds in corpus.items()}


def test_split_is_deterministic_and_sized(tmp_path):
    source = str(_image_folder(tmp_path / "src", n=20))
    first = _split_ids(prepare_corpus(source, tmp_path / "a", num_test=5, num_unseen=3, seed=1))
    again = _split_ids(prepare_corpus(source, tmp_path / "b", num_test=5, num_unseen=3, seed=1))
    other = _split_ids(prepare_corpus(source, tmp_path / "c", num_test=5, num_unseen=3, seed=2))
    assert first == again and first != other
    assert {name: len(ids) for name, ids in first.items()} == {"train": 12, "test": 5, "unseen": 3}
    fractions = _split_ids(prepare_corpus(source, tmp_path / "d", num_test=0.25, num_unseen=0.1))
    assert {name: len(ids) for name, ids in fractions.items()} == {"train": 13, "test": 5, "unseen": 2}
    no_unseen = prepare_corpus(source, tmp_path / "e", num_test=4, num_unseen=0)
    assert set(no_unseen) == {"train", "test"} and len(no_unseen["train"]) == 16


def test_split_ignores_metadata_order(tmp_path):
    forward = _image_folder(tmp_path / "f", n=10)
    backward = _image_folder(tmp_path / "b", n=10, rows=lambda records: records[::-1])
    a = prepare_corpus(str(forward), tmp_path / "a", num_test=3, num_unseen=2)
    b = prepare_corpus(str(backward), tmp_path / "b-out", num_test=3, num_unseen=2)
    assert _split_ids(a) == _split_ids(b)


def test_existing_train_and_test_are_kept(tmp_path):
    source = tmp_path / "src"
    _image_folder(source, n=8, subfolder="train")
    _image_folder(source, n=3, subfolder="test")
    _image_folder(source, n=2, subfolder="val")
    corpus = prepare_corpus(str(source), tmp_path / "out", num_test=5, num_unseen=2)
    expected = ["test/images/test000.jpg", "test/images/test001.png", "test/images/test002.png"]
    assert list(corpus["test"]["image_id"]) == expected
    assert len(corpus["train"]) == 6 and len(corpus["unseen"]) == 2 and len(corpus["validation"]) == 2
    assert all(i.startswith("train/") for s in ("train", "unseen") for i in corpus[s]["image_id"])


BAD_INPUTS = [
    ("empty list", _edit(4, captions=[]), r"metadata.jsonl, row 5 \(line 5\).*without a caption"),
    ("empty string", _edit(2, captions=["ok", " "]), r"row 3 .*without a caption"),
    ("none caption", _edit(1, captions=None), r"row 2 .*without a caption.*None"),
    ("int caption", _edit(6, captions=["fine", 7]), r"row 7 .*caption 1 of column 'captions' has type int"),
    ("missing file", _edit(3, file_name="images/gone.jpg"), r"row 4 .*'images/gone.jpg' does not exist"),
    ("duplicate id", _edit(5, key="same"), r"duplicate image_id 'same'.*row 1 .*and .*row 6 "),
]


@pytest.mark.parametrize("name,rows,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_and_row(tmp_path, name, rows, message):
    def with_keys(records):
        for index, record in enumerate(records):
            record["key"] = "same" if index == 0 else f"k{index}"
        return rows(records)

    source = _image_folder(tmp_path / "src", n=9, rows=with_keys)
    with pytest.raises(ValueError, match=message):
        prepare_corpus(str(source), tmp_path / "out", id_column="key" if name == "duplicate id" else None)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_unreadable_image_names_file_and_row(tmp_path):
    source = _image_folder(tmp_path / "src", n=6)
    (source / "images" / "x002.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"row 3 .*Unreadable image 'images/x002.png'"):
        prepare_corpus(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_column_lists_the_columns(tmp_path):
    source = _image_folder(
        tmp_path / "src", n=4, rows=lambda r: [{"file_name": x["file_name"], "desc": "a"} for x in r]
    )
    with pytest.raises(ValueError, match=r"metadata.jsonl: no caption column.*\['file_name', 'desc'\]"):
        prepare_corpus(str(source), tmp_path / "out")
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['label'\]; the columns are \['file_name', 'desc'\]"
    ):
        prepare_corpus(str(source), tmp_path / "out", caption_columns=["label"])
    assert not (tmp_path / "out").exists()


def test_empty_split_after_splitting(tmp_path):
    source = str(_image_folder(tmp_path / "src", n=5))
    with pytest.raises(ValueError, match="leaves none for train"):
        prepare_corpus(source, tmp_path / "out", num_test=4, num_unseen=1)
    with pytest.raises(ValueError, match="split 'unseen' is empty|split 'test' is empty"):
        prepare_corpus(source, tmp_path / "out", num_test=0.01, num_unseen=1)
    empty = _image_folder(tmp_path / "empty", n=0)
    with pytest.raises(ValueError, match="split 'train' is empty"):
        prepare_corpus(str(empty), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_corpus_folder(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain is neither a save_to_disk folder .* nor an ImageFolder"):
        prepare_corpus(str(tmp_path / "plain"), tmp_path / "out")
    source = str(_image_folder(tmp_path / "src", n=4))
    with pytest.raises(ValueError, match="overlaps the source folder"):
        prepare_corpus(source, tmp_path / "src" / "prepared")


def test_source_fingerprint_follows_content(tmp_path):
    source = _image_folder(tmp_path / "src", n=6)
    key = source_fingerprint(source, num_test=2)
    assert key == source_fingerprint(source, num_test=2) and len(key) == 16
    assert key != source_fingerprint(source, num_test=3)
    metadata = source / "metadata.jsonl"
    stat = metadata.stat()
    metadata.write_text(metadata.read_text().replace("image 3", "image 9"))  # same size
    os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the bytes must decide
    changed_caption = source_fingerprint(source, num_test=2)
    assert changed_caption != key
    image = source / "images" / "x000.jpg"
    stat = image.stat()
    _write_image(image, 1)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source_fingerprint(source, num_test=2) not in (key, changed_caption)
    hub = source_fingerprint("someone/corpus", revision="v1")
    assert hub == source_fingerprint("someone/corpus", revision="v1") != source_fingerprint("someone/corpus")


def _split(tmp_path, captions, images):
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "captions": [datasets.Value("string")],
        }
    )
    ids = [f"i{n}" for n in range(len(captions))]
    return datasets.Dataset.from_dict(
        {"image": images, "image_id": ids, "captions": captions}, features=features
    )


def test_content_fingerprint_follows_content(tmp_path):
    for index in range(3):
        _write_image(tmp_path / f"{index}.png", index, "RGBA")
    as_bytes = [{"bytes": (tmp_path / f"{i}.png").read_bytes(), "path": None} for i in range(3)]
    captions = [["a"], ["b", "c"], ["d"]]
    key = content_fingerprint(_split(tmp_path, captions, as_bytes))
    assert key == content_fingerprint(_split(tmp_path, [list(c) for c in captions], list(as_bytes)))
    assert key != content_fingerprint(_split(tmp_path, [["a"], ["b", "x"], ["d"]], as_bytes))
    other_image = [as_bytes[0], as_bytes[2], as_bytes[2]]
    assert key != content_fingerprint(_split(tmp_path, captions, other_image))
    as_paths = [{"bytes": None, "path": str(tmp_path / f"{i}.png")} for i in range(3)]
    path_key = content_fingerprint(_split(tmp_path, captions, as_paths))
    _write_image(tmp_path / "1.png", 1, "RGB")  # now a JPEG: another size
    assert content_fingerprint(_split(tmp_path, captions, as_paths)) != path_key


def _landscapes():
    spec = importlib.util.spec_from_file_location("landscapes", EXAMPLES / "landscapes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_landscapes_are_deterministic_and_load(tmp_path):
    landscapes = _landscapes()
    a = landscapes.generate_landscapes(tmp_path / "a", num_images=20, seed=0)
    b = landscapes.generate_landscapes(tmp_path / "b", num_images=20, seed=0)
    c = landscapes.generate_landscapes(tmp_path / "c", num_images=20, seed=1)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert all((a / name).read_bytes() == (b / name).read_bytes() for name in files)
    assert (a / "metadata.jsonl").read_text() != (c / "metadata.jsonl").read_text()
    corpus = prepare_corpus(str(a), tmp_path / "prepared", num_test=4, num_unseen=2)
    assert {name: len(ds) for name, ds in corpus.items()} == {"train": 14, "test": 4, "unseen": 2}
    captions = [c for split in corpus.values() for c in split["captions"]]
    assert all(3 <= len(c) <= 5 for c in captions)
    modes = {image.mode for split in corpus.values() for image in split["image"]}
    sizes = {image.size for split in corpus.values() for image in split["image"]}
    assert "RGB" in modes and len(modes) >= 2 and len(sizes) >= 2


def test_user_corpus_has_the_public_api():
    assert user_corpus.__all__ == ["content_fingerprint", "prepare_corpus", "source_fingerprint"]
