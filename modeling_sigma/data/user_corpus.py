"""User corpora (GitHub issue 17): read an image–caption collection, map it to the SIGMA schema, validate it
eagerly, split it and save it with `save_corpus`.

Sources of `prepare_corpus`:
- an ImageFolder: a folder holding `metadata.jsonl` or `metadata.csv` (a `file_name` column, relative to the
  metadata file, plus caption column(s)) at its root, or one per split subfolder (`train/`, `test/`,
  `validation/` (or `val/`, `valid/`, `dev/`), `unseen/`);
- a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`);
- anything else: a Hub dataset id, loaded with `datasets.load_dataset(source, revision=revision)`.

The metadata files are read here rather than through `load_dataset("imagefolder")`: datasets 5 replaces
`file_name` by the image (the relative name, the default `image_id`, is lost), never checks that the file
exists, and reports a wrong caption type from pyarrow without a row. Read here, every problem is reported
with its file and row, before anything is written. The corpus is held in memory (image bytes included)
while it is prepared: fine for user corpora of up to ~1e5 small images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import datasets

from modeling_sigma.data.corpus import load_image, save_corpus, validate_corpus

logger = logging.getLogger(__name__)

SCHEMA = datasets.Features(
    {"image": datasets.Image(), "image_id": datasets.Value("string"), "captions": [datasets.Value("string")]}
)
DEFAULT_CAPTION_COLUMNS = ("captions", "caption", "text")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Split folder (or split) names and the SIGMA split each gives.
SPLIT_FOLDERS = {"train": "train", "test": "test", "unseen": "unseen"} | dict.fromkeys(
    ("validation", "val", "valid", "dev"), "validation"
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class _Columns:
    image: str
    captions: list[str] | None
    id: str | None


@dataclass
class _Row:
    image: dict  # {"bytes": ..., "path": ...}, the value stored in the `image` column
    image_id: str
    captions: list[str]
    where: str  # file and row (or split and row), for error messages


def prepare_corpus(
    source: str,
    output_dir: str | os.PathLike,
    *,
    image_column: str = "image",
    caption_columns: list[str] | None = None,
    id_column: str | None = None,
    num_test: int | float = 0.15,
    num_unseen: int | float = 0.1,
    seed: int = 0,
    revision: str | None = None,
) -> datasets.DatasetDict:
    """Reads `source`, maps it to the SIGMA schema, validates it, splits it and saves it at `output_dir`.

    Args:
        source: an ImageFolder, a `save_to_disk` folder or a Hub dataset id (see the module docstring).
        output_dir: where the corpus is saved (atomically); nothing is written there if a check fails.
        image_column: the image column of a saved or Hub dataset (`datasets.Image` or string paths).
        caption_columns: the caption column(s), each holding a string or a list of strings; by default the
            first of `captions`, `caption`, `text` that exists.
        id_column: the column giving `image_id`; by default the image's path relative to an ImageFolder,
            else `"{split}-{row:06d}"`.
        num_test, num_unseen: images per carved split, a count (int) or a fraction (float in (0, 1)). Without
            a `test` split all rows but `validation` are merged, sorted by `image_id` and split with a
            permutation seeded by `seed` (fractions of all rows); with `train` and `test` but no `unseen`,
            `unseen` is carved from `train` (fractions of `train`). `num_unseen=0`: no `unseen` split.
        revision: the Hub revision (Hub ids only).

    Raises:
        ValueError: naming the file, split and row of the first problem found (missing column or file,
            unreadable image, missing or non-string caption, duplicate `image_id`, empty split).
    """
    _check_output_dir(source, output_dir)
    splits = _read_source(os.fspath(source), _Columns(image_column, caption_columns, id_column), revision)
    _check_rows(splits, source)
    splits = _split_rows(splits, num_test, num_unseen, seed)
    _check_nonempty(splits, source)
    corpus = datasets.DatasetDict({name: _to_dataset(rows) for name, rows in splits.items()})
    validate_corpus(corpus, name=os.fspath(source))
    save_corpus(corpus, output_dir)
    logger.info("Prepared %s: %s", source, {name: len(rows) for name, rows in splits.items()})
    return datasets.load_from_disk(os.fspath(output_dir))


def _check_output_dir(source, output_dir) -> None:
    if not os.path.isdir(source):
        return
    source_path, output_path = Path(source).resolve(), Path(output_dir).resolve()
    if output_path == source_path or source_path in output_path.parents or output_path in source_path.parents:
        raise ValueError(f"output_dir {str(output_path)!r} overlaps the source folder {str(source_path)!r}.")


# ---------------------------------------------------------------- reading


def _read_source(source: str, columns: _Columns, revision: str | None) -> dict[str, list[_Row]]:
    if os.path.isdir(source):
        if _is_saved_dataset(source):
            return _map_dataset(datasets.load_from_disk(source), columns, source, base=source)
        return _read_image_folder(Path(source), columns)
    if os.path.exists(source) or source.startswith((".", "/", "~")):
        raise ValueError(f"{source!r} is not a folder; pass a folder or a Hub dataset id.")
    return _map_dataset(_load_hub(source, revision), columns, source, base=None)


def _is_saved_dataset(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("dataset_dict.json", "state.json"))


def _load_hub(source: str, revision: str | None):
    try:
        return datasets.load_dataset(source, revision=revision)
    except Exception as error:  # offline, unknown id, network: all end here
        offline = " HF_HUB_OFFLINE is set: unset it, or download the dataset and pass its folder."
        offline = offline if datasets.config.HF_HUB_OFFLINE else ""
        raise ValueError(
            f"{source!r} is not a local folder, and loading it as a Hub dataset "
            f"(revision {revision or 'main'}) failed: {error}.{offline}"
        ) from error


def _map_dataset(raw, columns: _Columns, source: str, base: str | None) -> dict[str, list[_Row]]:
    """Maps each split of a `Dataset`/`DatasetDict` (a lone `Dataset` counts as unsplit `train`)."""
    if isinstance(raw, datasets.Dataset):
        raw = {"train": raw}
    splits: dict[str, list[_Row]] = {}
    for name, dataset in raw.items():
        split = SPLIT_FOLDERS.get(name, name)
        if split in splits:
            raise ValueError(f"{source}: two splits map to {split!r} ({sorted(raw)}).")
        splits[split] = _map_split(dataset, name, columns, source, base)
    return splits


def _map_split(dataset: datasets.Dataset, split: str, columns: _Columns, source: str, base) -> list[_Row]:
    where = f"{source}, split {split!r}"
    captions = _caption_columns(columns.captions, dataset.column_names, where)
    names = list(dict.fromkeys([columns.image, *captions, *([columns.id] if columns.id else [])]))
    _require_columns(names, dataset.column_names, where)
    feature = dataset.features[columns.image]
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(columns.image, datasets.Image(decode=False))
    elif feature not in (datasets.Value("string"), datasets.Value("large_string")):
        raise ValueError(
            f"{where}: column {columns.image!r} must be a datasets.Image or paths, not {feature}."
        )
    rows = []
    for index, example in enumerate(_iter_examples(dataset.select_columns(names))):
        at = f"{where}, row {index}"
        image = _image_value(example[columns.image], at, base)
        image_id = _image_id(example, columns.id, f"{split}-{index:06d}", at)
        rows.append(_Row(image, image_id, _captions(example, captions, at), at))
    return rows


def _iter_examples(dataset: datasets.Dataset):
    for batch in dataset.iter(batch_size=1000):
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            yield dict(zip(names, values))


def _image_value(value, where: str, base: str | None) -> dict:
    if isinstance(value, dict) and value.get("bytes") is not None:
        return {"bytes": value["bytes"], "path": value.get("path")}
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: no image (the image column holds {value!r}).")
    full = path if os.path.isabs(path) or base is None else os.path.join(base, path)
    if not os.path.isfile(full):
        raise ValueError(f"{where}: the image file {full!r} does not exist.")
    with open(full, "rb") as handle:
        return {"bytes": handle.read(), "path": path}


def _read_image_folder(root: Path, columns: _Columns) -> dict[str, list[_Row]]:
    files = _metadata_files(root)
    splits = {split: _read_metadata(path, root, columns) for split, path in files.items()}
    _warn_unlisted(root, splits)
    return splits


def _metadata_files(root: Path) -> dict[str, Path]:
    """The metadata file of each split; one at the root is one unsplit set (called `train`)."""
    at_root = _metadata_file(root)
    found: dict[str, Path] = {}
    for name in sorted(SPLIT_FOLDERS):
        path = _metadata_file(root / name) if (root / name).is_dir() else None
        split = SPLIT_FOLDERS[name]
        if path is not None and split in found:
            raise ValueError(f"{path} and {found[split]} both give the split {split!r}; keep one.")
        if path is not None:
            found[split] = path
    if at_root is not None and found:
        raise ValueError(f"{root} holds a metadata file at its root and in split folders; keep one layout.")
    if at_root is None and not found:
        raise ValueError(
            f"{root} is neither a save_to_disk folder (no dataset_dict.json or state.json) nor an ImageFolder: "
            f"no {' or '.join(METADATA_FILES)} at its root or in a split folder {sorted(SPLIT_FOLDERS)}."
        )
    return {"train": at_root} if at_root is not None else found


def _metadata_file(folder: Path) -> Path | None:
    here = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(here) > 1:
        raise ValueError(f"{folder} holds both {' and '.join(METADATA_FILES)}; keep one.")
    return here[0] if here else None


def _read_metadata(path: Path, root: Path, columns: _Columns) -> list[_Row]:
    records = list(_jsonl_records(path) if path.suffix == ".jsonl" else _csv_records(path))
    if not records:
        return []
    available = list(dict.fromkeys(key for _, record in records for key in record))
    captions = _caption_columns(columns.captions, available, str(path))
    _require_columns(["file_name", *([columns.id] if columns.id else [])], available, str(path))
    rows = []
    for at, record in records:
        image = _image_file(path.parent, record.get("file_name"), root, at)
        image_id = _image_id(record, columns.id, image["path"], at)
        rows.append(_Row(image, image_id, _captions(record, captions, at), at))
    return rows


def _jsonl_records(path: Path):
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, start=1) if line.strip()]
    for row, (number, line) in enumerate(lines, start=1):
        at = f"{path}, row {row} (line {number})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{at}: not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict):
            raise ValueError(f"{at}: expected a JSON object, got {type(record).__name__}.")
        yield at, record


def _csv_records(path: Path):
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        for row, record in enumerate(reader, start=1):
            yield f"{path}, row {row} (line {reader.line_num})", record


def _image_file(folder: Path, file_name, root: Path, where: str) -> dict:
    if not isinstance(file_name, str) or not file_name.strip():
        raise ValueError(f"{where}: 'file_name' must name an image file, got {file_name!r}.")
    relative = PurePosixPath(file_name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{where}: 'file_name' {file_name!r} must be a relative path inside {folder}.")
    path = folder / relative
    if not path.is_file():
        raise ValueError(f"{where}: the image file {file_name!r} does not exist ({path}).")
    return {"bytes": path.read_bytes(), "path": path.relative_to(root).as_posix()}


def _warn_unlisted(root: Path, splits: dict[str, list[_Row]]) -> None:
    listed = {row.image["path"] for rows in splits.values() for row in rows}
    images = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
    )
    unlisted = [name for name in images if name not in listed]
    if unlisted:
        logger.warning(
            "%s: %d image file(s) not in the metadata are left out, e.g. %s", root, len(unlisted), unlisted[0]
        )


# ---------------------------------------------------------------- columns and checks


def _require_columns(needed: list[str], available: list[str], where: str) -> None:
    missing = [name for name in needed if name not in available]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; the columns are {available}.")


def _caption_columns(requested, available: list[str], where: str) -> list[str]:
    if requested is None:
        for name in DEFAULT_CAPTION_COLUMNS:
            if name in available:
                return [name]
        raise ValueError(
            f"{where}: no caption column: none of {list(DEFAULT_CAPTION_COLUMNS)} among the columns "
            f"{available}; pass caption_columns=[...]."
        )
    requested = [requested] if isinstance(requested, str) else list(requested)
    _require_columns(requested, available, where)
    return requested


def _captions(record: dict, columns: list[str], where: str) -> list[str]:
    captions = []
    for column in columns:
        value = record.get(column)
        if isinstance(value, list | tuple) and not value:
            raise ValueError(f"{where}: an image without a caption: column {column!r} holds {value!r}.")
        for position, caption in enumerate(value if isinstance(value, list | tuple) else [value]):
            if caption is not None and not isinstance(caption, str):
                raise ValueError(
                    f"{where}: caption {position} of column {column!r} has type {type(caption).__name__} "
                    f"({caption!r}), not str."
                )
            if caption is None or not caption.strip():
                raise ValueError(f"{where}: an image without a caption: column {column!r} holds {value!r}.")
            captions.append(caption)
    return captions


def _image_id(record: dict, id_column: str | None, default: str, where: str) -> str:
    if id_column is None:
        return default
    value = record.get(id_column)
    if value is None or str(value).strip() == "":
        raise ValueError(f"{where}: no image id in column {id_column!r} (found {value!r}).")
    return str(value)


def _check_rows(splits: dict[str, list[_Row]], source) -> None:
    """Non-empty splits, unique ids across splits, and every image decodes fully."""
    _check_nonempty(splits, source)
    first: dict[str, str] = {}
    for rows in splits.values():
        for row in rows:
            if row.image_id in first:
                raise ValueError(
                    f"duplicate image_id {row.image_id!r}: {first[row.image_id]} and {row.where}."
                )
            first[row.image_id] = row.where
    for rows in splits.values():
        for row in rows:
            try:
                load_image(row.image)
            except ValueError as error:
                raise ValueError(f"{row.where}: {error}") from error


def _check_nonempty(splits: dict[str, list[_Row]], source) -> None:
    for name, rows in splits.items():
        if not rows:
            raise ValueError(f"{source}: split {name!r} is empty.")


# ---------------------------------------------------------------- splitting


def _split_rows(splits: dict[str, list], num_test, num_unseen, seed: int) -> dict[str, list]:
    """Gives `train`/`test`/(`unseen`)/(`validation`) (see `prepare_corpus`); rows need an `image_id`."""
    kept = {name: rows for name, rows in splits.items() if name == "validation"}
    rest = {name: rows for name, rows in splits.items() if name != "validation"}
    if "test" not in rest:
        pool = [row for name in sorted(rest) for row in rest[name]]
        counts = [_count(num_test, len(pool), "num_test"), _count(num_unseen, len(pool), "num_unseen")]
        test, unseen, train = _carve(pool, counts, seed)
    else:
        unknown = sorted(set(rest) - {"train", "test", "unseen"})
        if unknown or "train" not in rest:
            raise ValueError(
                f"splits {sorted(splits)}: with 'test', need 'train' and no unknown split {unknown}."
            )
        test, train = rest["test"], rest["train"]
        unseen = rest.get("unseen")
        if unseen is None:
            unseen, train = _carve(train, [_count(num_unseen, len(train), "num_unseen")], seed)
    out = {"train": train, "test": test}
    if unseen:
        out["unseen"] = unseen
    return {**out, **kept}


def _count(value, total: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a count (int >= 0) or a fraction (float in (0, 1)), got {value!r}.")
    if isinstance(value, float) and value != 0:
        if value >= 1:
            raise ValueError(f"{name}={value}: a fraction must be in (0, 1); pass an int for a count.")
        return round(value * total)
    return int(value)


def _carve(rows: list, counts: list[int], seed: int) -> list[list]:
    """Sorts by `image_id`, permutes with `seed`, and cuts `counts` off the front; the rest comes last."""
    if sum(counts) >= len(rows):
        raise ValueError(
            f"carving {counts} of {len(rows)} images leaves none for train: lower num_test/num_unseen."
        )
    order = sorted(rows, key=lambda row: row.image_id)
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for count in [*counts, len(rows) - sum(counts)]:
        parts.append(sorted(order[start : start + count], key=lambda row: row.image_id))
        start += count
    return parts


def _to_dataset(rows: list[_Row]) -> datasets.Dataset:
    columns = {"image": [r.image for r in rows], "image_id": [r.image_id for r in rows]}
    return datasets.Dataset.from_dict({**columns, "captions": [r.captions for r in rows]}, features=SCHEMA)


# ---------------------------------------------------------------- fingerprints


def source_fingerprint(source: str | os.PathLike, **options) -> str:
    """A 16-hex key of `source` and `options` (pass every `prepare_corpus` option, `revision` included).

    A folder: the relative path, size and mtime of every file plus the bytes of its metadata files; a Hub
    id: the id (its content is named by `revision`)."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    if os.path.isdir(source):
        root = Path(source)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                _update(digest, path.relative_to(root).as_posix(), str(stat.st_size), str(stat.st_mtime_ns))
                if path.name in METADATA_FILES:
                    _update(digest, path.read_bytes())
    else:
        _update(digest, f"hub:{os.fspath(source)}")
    return digest.hexdigest()[:16]


def content_fingerprint(dataset: datasets.Dataset) -> str:
    """A 16-hex key over a split's `image_id`s, captions and image bytes (path and size when only a path is
    stored); images are not decoded."""
    if not isinstance(dataset.features.get("image"), datasets.Image):
        raise ValueError(f"content_fingerprint needs a datasets.Image column 'image': {dataset.features}.")
    columns = dataset.select_columns(["image_id", "captions", "image"])
    digest = hashlib.sha256()
    for example in _iter_examples(columns.cast_column("image", datasets.Image(decode=False))):
        _update(digest, json.dumps([example["image_id"], example["captions"]]))
        image = example["image"]
        if image.get("bytes") is not None:
            _update(digest, image["bytes"])
        else:
            path = image.get("path")
            _update(digest, f"{path}:{os.path.getsize(path) if path and os.path.isfile(path) else -1}")
    return digest.hexdigest()[:16]


def _update(digest, *parts: str | bytes) -> None:
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)


__all__ = ["content_fingerprint", "prepare_corpus", "source_fingerprint"]
