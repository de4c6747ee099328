"""Adapters from the real corpora of the paper to the SIGMA corpus schema (`image`, `image_id`, `captions`).

- Flickr30K in the `nlphuji/flickr30k` layout: one Hub split holding every image, with the Karpathy split
  in a `split` column (`train` / `val` / `test`) and five captions in `caption`.
- MS-COCO Karpathy in the `yerevann/coco-karpathy` layout: rows with `filepath`, `filename`, `sentences`,
  `cocoid` and a Karpathy `split` (`train` / `restval` / `val` / `test`); the images themselves come from a
  local COCO folder (`image_root/<filepath>/<filename>`), as in every Karpathy-split pipeline.

Both produce `train`, `validation`, `test` and `unseen` splits; `unseen` is a seeded sample of Karpathy
`train` images held out of training for open-set indexing.
"""

from __future__ import annotations

import logging
import os

import datasets

from modeling_sigma.data.corpus import validate_corpus

logger = logging.getLogger(__name__)

FLICKR30K_COLUMNS = ("image", "caption", "sentids", "split", "img_id", "filename")
COCO_KARPATHY_COLUMNS = ("filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid")
KARPATHY_TO_SIGMA = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
SCHEMA = datasets.Features(
    {"image": datasets.Image(), "image_id": datasets.Value("string"), "captions": [datasets.Value("string")]}
)


def _require_columns(raw: datasets.Dataset, columns: tuple[str, ...], source: str) -> None:
    missing = [column for column in columns if column not in raw.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected the source layout {list(columns)}."
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
    corpus = datasets.DatasetDict(splits)
    validate_corpus(corpus, name=source)
    return corpus


def adapt_flickr30k(raw: datasets.Dataset, num_unseen: int = 1000, seed: int = 0) -> datasets.DatasetDict:
    """Converts the `nlphuji/flickr30k` layout into the SIGMA schema."""
    _require_columns(raw, FLICKR30K_COLUMNS, "Flickr30K")
    rows = raw.select_columns(["image", "img_id", "caption", "split"]).rename_columns(
        {"img_id": "image_id", "caption": "captions", "split": "karpathy_split"}
    )
    rows = rows.cast_column("image_id", datasets.Value("string"))
    return _split_by_karpathy(rows, num_unseen, seed, "Flickr30K")


def adapt_coco_karpathy(
    raw: datasets.Dataset, image_root: str | os.PathLike, num_unseen: int = 1000, seed: int = 0
) -> datasets.DatasetDict:
    """Converts the `yerevann/coco-karpathy` layout into the SIGMA schema, reading images under `image_root`."""
    _require_columns(raw, COCO_KARPATHY_COLUMNS, "COCO Karpathy")
    if not os.path.isdir(image_root):
        raise ValueError(
            f"COCO Karpathy: image_root {os.fspath(image_root)!r} is not a folder of COCO images."
        )

    def convert(batch):
        paths = [os.path.join(image_root, d, f) for d, f in zip(batch["filepath"], batch["filename"])]
        return {
            "image": paths,
            "image_id": [str(i) for i in batch["cocoid"]],
            "captions": batch["sentences"],
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


def load_hub_corpus(repo_id: str, image_root: str | None = None, num_unseen: int = 1000, seed: int = 0):
    """Downloads a known corpus from the Hub and adapts it (needs network access)."""
    kind = ADAPTERS.get(repo_id)
    if kind is None:
        raise ValueError(
            f"Unknown corpus {repo_id!r}: pass 'tiny-shapes', a local folder saved with save_to_disk, "
            f"or one of {sorted(ADAPTERS)}."
        )
    if kind == "flickr30k":
        raw = datasets.load_dataset(repo_id, split="test")
        return adapt_flickr30k(raw, num_unseen=num_unseen, seed=seed)
    if image_root is None:
        raise ValueError("COCO Karpathy needs image_root: the local folder holding train2014/ and val2014/.")
    raw = datasets.concatenate_datasets(list(datasets.load_dataset(repo_id).values()))
    return adapt_coco_karpathy(raw, image_root, num_unseen=num_unseen, seed=seed)


__all__ = ["adapt_coco_karpathy", "adapt_flickr30k", "load_hub_corpus"]
