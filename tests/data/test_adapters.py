import datasets
import pytest
from PIL import Image

from modeling_sigma.data.adapters import (
    COCO_KARPATHY_COUNTS,
    FLICKR30K_COUNTS,
    PARQUET_REVISION,
    adapt_coco_karpathy,
    adapt_flickr30k,
    check_split_counts,
    load_hub_corpus,
    parquet_files,
)


def fake_flickr30k(n=12):
    """Reproduces the exact columns of `nlphuji/flickr30k` (one Hub split, Karpathy split in `split`)."""
    splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (32, 24), (i * 10, 0, 0)) for i in range(n)],
            "caption": [[f"caption {i} {j}" for j in range(5)] for i in range(n)],
            "sentids": [[str(5 * i + j) for j in range(5)] for i in range(n)],
            "split": splits,
            "img_id": [str(i) for i in range(n)],
            "filename": [f"{1000 + i}.jpg" for i in range(n)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "caption": [datasets.Value("string")],
                "sentids": [datasets.Value("string")],
                "split": datasets.Value("string"),
                "img_id": datasets.Value("string"),
                "filename": datasets.Value("string"),
            }
        ),
    )


def fake_coco(tmp_path, n=10):
    """Reproduces the columns of `yerevann/coco-karpathy`, with the images in a local COCO folder."""
    (tmp_path / "val2014").mkdir(exist_ok=True)
    rows = {
        k: [] for k in ("filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid", "url")
    }
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40, 30), (0, i * 20, 0)).save(tmp_path / "val2014" / name)
        rows["filepath"].append("val2014")
        rows["sentids"].append([5 * i + j for j in range(5)])
        rows["filename"].append(name)
        rows["imgid"].append(i)
        rows["split"].append(["train", "restval", "val", "test"][i % 4])
        rows["sentences"].append([f"coco {i} {j}" for j in range(5)])
        rows["cocoid"].append(100 + i)
        rows["url"].append(f"http://images.cocodataset.org/val2014/{name}")
    return datasets.Dataset.from_dict(rows)


def test_flickr30k_adapter_follows_karpathy_split():
    corpus = adapt_flickr30k(fake_flickr30k(), num_unseen=2)
    assert {s: len(d) for s, d in corpus.items()} == {"train": 6, "validation": 2, "test": 2, "unseen": 2}
    for split in corpus.values():
        assert split.column_names == ["image", "image_id", "captions"]
    test = corpus["test"]
    assert test["image_id"] == ["10", "11"] and test[0]["captions"][0] == "caption 10 0"
    assert not set(corpus["unseen"]["image_id"]) & set(corpus["train"]["image_id"])


def test_flickr30k_missing_column_is_named():
    with pytest.raises(ValueError, match="missing column.*caption"):
        adapt_flickr30k(fake_flickr30k().remove_columns("caption"))


def test_coco_adapter_reads_local_images_and_merges_restval(tmp_path):
    corpus = adapt_coco_karpathy(fake_coco(tmp_path), tmp_path, num_unseen=1)
    assert len(corpus["train"]) + len(corpus["unseen"]) == 6  # train + restval
    assert len(corpus["test"]) == 2 and corpus["test"]["image_id"] == ["103", "107"]
    assert corpus["test"][0]["image"].size == (40, 30)


def test_coco_adapter_missing_images_is_clear(tmp_path):
    raw = fake_coco(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        adapt_coco_karpathy(raw, tmp_path / "nowhere")
    (tmp_path / "val2014" / raw[0]["filename"]).unlink()
    with pytest.raises(ValueError, match="not found under image_root"):
        adapt_coco_karpathy(raw, tmp_path)


def test_unknown_hub_corpus_lists_the_known_ones():
    with pytest.raises(ValueError, match="nlphuji/flickr30k"):
        load_hub_corpus("someone/unknown")


# ----- real file layouts: the parquet conversion (with the script beside it) and COCO's restval file -----
FLICKR30K_SCRIPT = """import datasets


class Flickr30k(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIGS = [datasets.BuilderConfig(name="TEST")]
"""


def flickr30k_parquet_copy(root, n=12):
    """A local copy of `nlphuji/flickr30k`: the script on top, the conversion's shards under `TEST/test/`."""
    (root / "TEST" / "test").mkdir(parents=True)
    (root / "flickr30k.py").write_text(FLICKR30K_SCRIPT)
    raw = fake_flickr30k(n)
    half = n // 2
    raw.select(range(half)).to_parquet(str(root / "TEST" / "test" / "0000.parquet"))
    raw.select(range(half, n)).to_parquet(str(root / "TEST" / "test" / "0001.parquet"))
    return root


def coco_karpathy_copy(root, image_root, n=12):
    """A local copy of `yerevann/coco-karpathy` with one file per Karpathy split, `restval.parquet` among them."""
    (root / "data").mkdir(parents=True)
    raw = fake_coco(image_root, n)
    raw = raw.map(
        lambda row, i: {"sentences": row["sentences"] + ["sixth", "seventh"][: i % 3]}, with_indices=True
    )
    for split, name in [("train", "train"), ("restval", "restval"), ("val", "validation"), ("test", "test")]:
        raw.filter(lambda s, split=split: s == split, input_columns="split").to_parquet(
            str(root / "data" / f"{name}.parquet")
        )
    return root


def test_flickr30k_loads_the_parquet_conversion_and_ignores_the_script(tmp_path):
    copy = flickr30k_parquet_copy(tmp_path / "flickr30k")
    corpus = load_hub_corpus(
        "nlphuji/flickr30k", local_dir=str(copy), expected_counts={"train": 8, "val": 2, "test": 2}
    )
    assert {s: len(d) for s, d in corpus.items()} == {"train": 8, "validation": 2, "test": 2}  # none held out
    assert corpus["test"]["image_id"] == ["10", "11"] and corpus["test"][1]["image"].size == (32, 24)
    assert PARQUET_REVISION["nlphuji/flickr30k"] == "refs/convert/parquet"


def test_flickr30k_count_mismatch_is_an_error(tmp_path):
    copy = flickr30k_parquet_copy(tmp_path / "flickr30k")
    (copy / "TEST" / "test" / "0001.parquet").unlink()  # an incomplete download
    with pytest.raises(ValueError, match="images per Karpathy split.*expected"):
        load_hub_corpus(
            "nlphuji/flickr30k", local_dir=str(copy), expected_counts={"train": 8, "val": 2, "test": 2}
        )


def test_coco_restval_file_is_kept_and_evaluation_images_keep_five_captions(tmp_path):
    (tmp_path / "images").mkdir()
    copy = coco_karpathy_copy(tmp_path / "coco", tmp_path / "images")
    datasets.disable_progress_bars()
    assert "restval" not in datasets.load_dataset(str(copy))  # the trap: split inference drops the file
    corpus = load_hub_corpus(
        "yerevann/coco-karpathy",
        image_root=str(tmp_path / "images"),
        local_dir=str(copy),
        expected_counts={"train": 3, "restval": 3, "val": 3, "test": 3},
    )
    assert {s: len(d) for s, d in corpus.items()} == {"train": 6, "validation": 3, "test": 3}
    assert all(len(c) == 5 for split in ("validation", "test") for c in corpus[split]["captions"])
    assert sorted(len(c) for c in corpus["train"]["captions"]) == [5, 5, 6, 6, 7, 7]  # train keeps them all


def test_published_counts_are_checked():
    flickr = datasets.Dataset.from_dict({"split": [s for s, n in FLICKR30K_COUNTS.items() for _ in range(n)]})
    check_split_counts(flickr, FLICKR30K_COUNTS, "Flickr30K")
    assert sum(FLICKR30K_COUNTS.values()) == 31_014
    assert COCO_KARPATHY_COUNTS["train"] + COCO_KARPATHY_COUNTS["restval"] == 113_287
    without_restval = datasets.Dataset.from_dict(
        {"split": [s for s, n in COCO_KARPATHY_COUNTS.items() if s != "restval" for _ in range(n)]}
    )
    with pytest.raises(ValueError, match="parquet file is missing"):
        check_split_counts(without_restval, COCO_KARPATHY_COUNTS, "COCO Karpathy")


def test_num_unseen_holds_out_train_images_only_when_asked():
    corpus = adapt_flickr30k(fake_flickr30k())
    assert "unseen" not in corpus and len(corpus["train"]) == 8


def test_hub_files_are_listed_at_the_parquet_revision(monkeypatch):
    import huggingface_hub

    asked = {}

    class FakeApi:
        def list_repo_files(self, repo_id, repo_type, revision):
            asked.update(repo_id=repo_id, repo_type=repo_type, revision=revision)
            return [".gitattributes", "TEST/test/0001.parquet", "TEST/test/0000.parquet", "flickr30k.py"]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    files = parquet_files("nlphuji/flickr30k", PARQUET_REVISION["nlphuji/flickr30k"])
    assert asked == {
        "repo_id": "nlphuji/flickr30k",
        "repo_type": "dataset",
        "revision": "refs/convert/parquet",
    }
    assert files == [
        "hf://datasets/nlphuji/flickr30k@refs/convert/parquet/TEST/test/0000.parquet",
        "hf://datasets/nlphuji/flickr30k@refs/convert/parquet/TEST/test/0001.parquet",
    ]
    parsed = huggingface_hub.utils.parse_hf_uri(files[0])  # how datasets' HfFileSystem reads the URL
    assert (parsed.revision, parsed.path_in_repo) == ("refs/convert/parquet", "TEST/test/0000.parquet")
