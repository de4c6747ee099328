import datasets
import pytest
from PIL import Image

from modeling_sigma.data.adapters import adapt_coco_karpathy, adapt_flickr30k, load_hub_corpus


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
    (tmp_path / "val2014").mkdir()
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
