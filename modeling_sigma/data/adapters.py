"""Adapters from the real corpora of the paper to the SIGMA corpus schema (`image`, `image_id`, `captions`).

- Flickr30K in the `nlphuji/flickr30k` layout. Its main branch holds a dataset *script*, which datasets ≥ 4
  refuses ("Dataset scripts are no longer supported"); the Hub's parquet conversion of it lives under
  `revision="refs/convert/parquet"` (one `test` split holding all 31,014 images). The Karpathy split is in
  the `split` column: 29,000 train / 1,014 val / 1,000 test images, five captions each in `caption`.
  This is the split reproduced here; the paper's "29,783 train" counts the full 31,783-image Flickr30K,
  whose 769 extra images are not in this dataset.
- MS-COCO Karpathy in the `yerevann/coco-karpathy` layout: rows with `filepath`, `filename`, `sentences`,
  `cocoid` and a Karpathy `split`: 82,783 train + 30,504 restval (trained on together: 113,287) / 5,000
  val / 5,000 test. The images come from a local COCO folder (`image_root/<filepath>/<filename>`). Some
  images carry six or seven captions (25,010 in test); the standard protocol keeps the first five of each
  validation/test image (25,000 test queries).

Parquet files are listed and loaded explicitly, never through datasets' split inference, which silently
drops files whose names are not a known split (COCO's `restval`: train would shrink to 82,783 images). The
per-split image counts are checked against the published ones after loading.

Both produce `train`, `validation` and `test` splits, and an `unseen` split only when `num_unseen > 0`:
a seeded sample of Karpathy train images held out of training for open-set indexing (those images are then
not trained on, so the standard protocol uses `num_unseen=0`).
"""

from __future__ import annotations

import glob
import logging
import os

import datasets

from modeling_sigma.data.corpus import validate_corpus

logger = logging.getLogger(__name__)

FLICKR30K_COLUMNS = ("image", "caption", "sentids", "split", "img_id", "filename")
COCO_KARPATHY_COLUMNS = ("filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid")
KARPATHY_TO_SIGMA = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
# Images per Karpathy `split` value in the published datasets.
FLICKR30K_COUNTS = {"train": 29_000, "val": 1_014, "test": 1_000}
COCO_KARPATHY_COUNTS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
PARQUET_REVISION = {"nlphuji/flickr30k": "refs/convert/parquet", "yerevann/coco-karpathy": None}
EVALUATION_CAPTIONS_PER_IMAGE = 5
SCHEMA = datasets.Features(
    {"image": datasets.Image(), "image_id": datasets.Value("string"), "captions": [datasets.Value("string")]}
)


def _require_columns(raw: datasets.Dataset, columns: tuple[str, ...], source: str) -> None:
    missing = [column for column in columns if column not in raw.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected the source layout {list(columns)}."
        )


def check_split_counts(raw: datasets.Dataset, expected: dict[str, int] | None, source: str) -> None:
    """Raises `ValueError` unless the rows per Karpathy `split` value are exactly `expected` (None: skip)."""
    if expected is None:
        return
    found: dict[str, int] = {}
    for value in raw["split"]:
        found[value] = found.get(value, 0) + 1
    if found != expected:
        raise ValueError(
            f"{source}: images per Karpathy split are {dict(sorted(found.items()))}, expected "
            f"{dict(sorted(expected.items()))}: a parquet file is missing or the download is incomplete."
        )


def _split_by_karpathy(
    rows: datasets.Dataset, num_unseen: int, seed: int, source: str
) -> datasets.DatasetDict:
    """Groups rows (already in the SIGMA schema plus a `karpathy_split` column) into SIGMA splits."""
    unknown = sorted(set(rows["karpathy_split"]) - set(KARPATHY_TO_SIGMA))
    if unknown:
        raise ValueError(
            f"{source}: unknown Karpathy split value(s) {unknown}; expected {sorted(KARPATHY_TO_SIGMA)}."
        )
    splits = {}
    for sigma_split in ("train", "validation", "test"):
        names = {k for k, v in KARPATHY_TO_SIGMA.items() if v == sigma_split}
        part = rows.filter(lambda s, names=names: s in names, input_columns="karpathy_split")
        if len(part):
            splits[sigma_split] = part.remove_columns("karpathy_split")
    if num_unseen and "train" in splits:
        if num_unseen >= len(splits["train"]):
            raise ValueError(f"{source}: num_unseen={num_unseen} must be smaller than the train split.")
        held = splits["train"].train_test_split(test_size=num_unseen, seed=seed, shuffle=True)
        splits["train"], splits["unseen"] = held["train"], held["test"]
        logger.warning(
            "%s: %d train images held out as `unseen` (not trained on); %d remain for training",
            source,
            num_unseen,
            len(splits["train"]),
        )
    corpus = datasets.DatasetDict(splits)
    validate_corpus(corpus, name=source)
    return corpus


def adapt_flickr30k(
    raw: datasets.Dataset,
    num_unseen: int = 0,
    seed: int = 0,
    expected_counts: dict[str, int] | None = None,
) -> datasets.DatasetDict:
    """Converts the `nlphuji/flickr30k` layout into the SIGMA schema (`expected_counts`: see `check_split_counts`)."""
    _require_columns(raw, FLICKR30K_COLUMNS, "Flickr30K")
    check_split_counts(raw, expected_counts, "Flickr30K")
    rows = raw.select_columns(["image", "img_id", "caption", "split"]).rename_columns(
        {"img_id": "image_id", "caption": "captions", "split": "karpathy_split"}
    )
    rows = rows.cast_column("image_id", datasets.Value("string"))
    return _split_by_karpathy(rows, num_unseen, seed, "Flickr30K")


def adapt_coco_karpathy(
    raw: datasets.Dataset,
    image_root: str | os.PathLike,
    num_unseen: int = 0,
    seed: int = 0,
    expected_counts: dict[str, int] | None = None,
) -> datasets.DatasetDict:
    """Converts the `yerevann/coco-karpathy` layout into the SIGMA schema, reading images under `image_root`.

    Validation and test images keep their first five captions (the standard protocol); train keeps all.
    """
    _require_columns(raw, COCO_KARPATHY_COLUMNS, "COCO Karpathy")
    check_split_counts(raw, expected_counts, "COCO Karpathy")
    if not os.path.isdir(image_root):
        raise ValueError(
            f"COCO Karpathy: image_root {os.fspath(image_root)!r} is not a folder of COCO images."
        )

    def convert(batch):
        paths = [os.path.join(image_root, d, f) for d, f in zip(batch["filepath"], batch["filename"])]
        captions = [
            list(c) if s in ("train", "restval") else list(c)[:EVALUATION_CAPTIONS_PER_IMAGE]
            for c, s in zip(batch["sentences"], batch["split"])
        ]
        return {
            "image": paths,
            "image_id": [str(i) for i in batch["cocoid"]],
            "captions": captions,
            "karpathy_split": batch["split"],
        }

    rows = raw.map(convert, batched=True, remove_columns=raw.column_names)
    missing = [p for p in rows["image"] if not os.path.isfile(p)]
    if missing:
        raise ValueError(
            f"COCO Karpathy: {len(missing)} image file(s) not found under image_root, e.g. {missing[0]!r}."
        )
    rows = rows.cast(datasets.Features({**SCHEMA, "karpathy_split": datasets.Value("string")}))
    return _split_by_karpathy(rows, num_unseen, seed, "COCO Karpathy")


ADAPTERS = {"nlphuji/flickr30k": "flickr30k", "yerevann/coco-karpathy": "coco"}


def parquet_files(repo_id: str, revision: str | None = None, local_dir: str | None = None) -> list[str]:
    """Every parquet file of a Hub dataset revision (or of `local_dir`, a local copy of its files), sorted.

    Listed explicitly so that no file is dropped by split inference, and no script file is ever run.
    """
    if local_dir is not None:
        files = sorted(glob.glob(os.path.join(os.fspath(local_dir), "**", "*.parquet"), recursive=True))
        where = os.fspath(local_dir)
    else:
        from huggingface_hub import HfApi

        names = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
        at = f"@{revision}" if revision else ""
        files = sorted(f"hf://datasets/{repo_id}{at}/{n}" for n in names if n.endswith(".parquet"))
        where = f"{repo_id} (revision {revision or 'main'})"
    if not files:
        raise ValueError(f"No parquet files in {where}.")
    logger.info("loading %d parquet file(s) from %s", len(files), where)
    return files


def load_raw_parquet(files: list[str]) -> datasets.Dataset:
    """All `files` as one `Dataset` (the rows' own `split` column says the Karpathy split)."""
    return datasets.load_dataset("parquet", data_files={"train": files}, split="train")


def load_hub_corpus(
    repo_id: str,
    image_root: str | None = None,
    num_unseen: int = 0,
    seed: int = 0,
    local_dir: str | None = None,
    expected_counts: dict[str, int] | None | str = "published",
):
    """Loads a known corpus from its parquet files on the Hub (or a local copy of them) and adapts it.

    Args:
        repo_id: `nlphuji/flickr30k` (read from `refs/convert/parquet`) or `yerevann/coco-karpathy`.
        image_root: COCO only: the local folder holding `train2014/` and `val2014/`.
        num_unseen: train images held out as the `unseen` split (not trained on); 0 for the standard protocol.
        local_dir: a local copy of the repo revision's files (same layout); no network then.
        expected_counts: images per Karpathy split value; `"published"` checks the published counts.
    """
    kind = ADAPTERS.get(repo_id)
    if kind is None:
        raise ValueError(
            f"Unknown corpus {repo_id!r}: pass 'tiny-shapes', a local folder saved with save_to_disk, "
            f"or one of {sorted(ADAPTERS)}."
        )
    if kind == "coco" and image_root is None:
        raise ValueError("COCO Karpathy needs image_root: the local folder holding train2014/ and val2014/.")
    if expected_counts == "published":
        expected_counts = FLICKR30K_COUNTS if kind == "flickr30k" else COCO_KARPATHY_COUNTS
    raw = load_raw_parquet(parquet_files(repo_id, PARQUET_REVISION[repo_id], local_dir))
    options = {"num_unseen": num_unseen, "seed": seed, "expected_counts": expected_counts}
    if kind == "flickr30k":
        return adapt_flickr30k(raw, **options)
    return adapt_coco_karpathy(raw, image_root, **options)


__all__ = [
    "COCO_KARPATHY_COUNTS",
    "FLICKR30K_COUNTS",
    "adapt_coco_karpathy",
    "adapt_flickr30k",
    "check_split_counts",
    "load_hub_corpus",
    "parquet_files",
]
