"""Publishing on the Hugging Face Hub: the checkpoint (a model repo), the stage-0 codebook and a corpus (dataset
repos).

Every push is two steps. `export_*_repo(source, folder)` writes exactly the files of the repo into a local
folder; `upload_repo_folder(folder, repo_id, repo_type=...)` sends it with `HfApi.create_repo(exist_ok=True)`
and `HfApi.upload_folder`. `push_*_to_hub` does both, through a temporary folder, or only the first when given
`local_dir` (no network: the folder is the repo as it would be on the Hub, and `datasets.load_dataset(folder)`,
`AutoModel.from_pretrained(folder, trust_remote_code=True)` and `load_builder_folder(folder)` read it):

    push_model_to_hub("outputs/tiny-shapes/stage3", "you/sigma-tiny-shapes")
    push_codebook_to_hub("outputs/tiny-shapes/stage0", "you/sigma-tiny-shapes-codebook", private=True)
    push_corpus_to_hub("tiny-shapes", "you/tiny-shapes", local_dir="exports/tiny-shapes")  # writes, no upload

Repo layouts:

    model:    the save_pretrained files (weights, config, remote code, processor, sigma_index/) + README.md
    codebook: data/codebook-00000-of-00001.parquet (image_id, identifier, codes), quantizer.safetensors,
              stage0_config.json, README.md
    corpus:   data/<split>-00000-of-0000N.parquet (image with embedded bytes, image_id, captions), README.md

A local target is written beside itself and renamed into place, so it is either complete or untouched. It
must be missing or empty unless `overwrite=True`, which replaces it as a whole. Bad input (a missing or
incomplete source, a malformed repo id, a target that overlaps the source) raises before anything is written.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from modeling_sigma.hub.cards import SplitFiles, codebook_card, corpus_card
from modeling_sigma.identifiers.storage import (
    CODEBOOK_SPLIT,
    CONFIG_FILE,
    QUANTIZER_FILE,
    load_builder_folder,
)
from modeling_sigma.modeling.file_utils import replace_folder

logger = logging.getLogger(__name__)

DEFAULT_MODEL_CARD = Path(__file__).resolve().parents[2] / "model_card.md"
MODEL_CARD_REPO_PLACEHOLDER = "path/or/repo"
CARD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")  # markdown image links: ![alt](path "title")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Trainer checkpoints hold these beside the model; they are resume state, not part of a published model.
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin)$")  # fmt: skip
MAX_SHARD_BYTES = 500 * 1024 * 1024
# Remote files a new push replaces, so that a shard or weight file left by an earlier push is never read with
# the new ones (a split is every `data/<split>-*` file; transformers prefers model.safetensors to shards).
STALE_FILES = {
    "model": ["*.safetensors", "*.safetensors.index.json", "*.bin", "sigma_index.*", "sigma_index/*"],
    "dataset": ["data/*"],
}


# ------------------------------------------------------------------------------------------------- model
def export_model_repo(
    model_dir: str | os.PathLike,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    card: str | os.PathLike | Any | None = None,
    card_metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model repo of a checkpoint saved with `SigmaForRetrieval.save_pretrained` into `folder`.

    Args:
        model_dir: the checkpoint folder (weights, `config.json` with `auto_map`, the remote-code modules).
        folder: the repo folder to write.
        repo_id: fills the card's `"path/or/repo"` placeholder in the usage snippets.
        card: the model card (a markdown path or a `huggingface_hub.ModelCard`); default `model_card.md`.
        card_metadata: front-matter keys to set (`None` removes the key), e.g. `{"base_model": None}` for a
            checkpoint not fine-tuned from the card's `base_model`.
        overwrite: replace a non-empty `folder`.
    """
    files = _model_files(Path(model_dir))
    readme, card_dir = _model_card(card, card_metadata, repo_id)
    images = _card_images(readme.text, card_dir)
    with _staged(folder, overwrite, sources=[model_dir]) as staging:
        for path in files:
            (staging / path.relative_to(model_dir)).parent.mkdir(exist_ok=True)
            shutil.copy2(path, staging / path.relative_to(model_dir))
        for name, path in images:
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / name)
        readme.save(staging / "README.md")
    logger.info("exported model repo %s (%d files)", folder, len(files) + len(images) + 1)
    return Path(folder)


def _model_files(source: Path) -> list[Path]:
    """The files of a checkpoint to publish, after checking it is a complete SIGMA checkpoint."""
    if not source.is_dir():
        raise FileNotFoundError(f"model folder {str(source)!r} does not exist (save it with save_pretrained)")
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: not a checkpoint saved with save_pretrained")
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "sigma":
        raise ValueError(
            f"{source}: model_type {config.get('model_type')!r}, expected 'sigma' (SigmaForRetrieval)"
        )
    references = [ref for ref in config.get("auto_map", {}).values() if isinstance(ref, str)]
    modules = {f"{ref.split('--')[-1].split('.')[0]}.py" for ref in references}  # "repo--module.Class" too
    if not modules:
        raise ValueError(f"{source}/config.json has no auto_map: save with SigmaForRetrieval.save_pretrained")
    missing = _missing_modules(source, modules)
    if not any((source / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    elif (source / "model.safetensors.index.json").is_file():
        shards = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"].values()
        missing += [name for name in set(shards) if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} is not a complete SIGMA checkpoint: missing {sorted(set(missing))}"
        )
    files = [path for path in sorted(source.iterdir()) if path.is_file() and _publishable(path.name)]
    index_folder = source / "sigma_index"  # the checkpoint's SigmaIndex folder (safetensors + JSON)
    files += sorted(path for path in index_folder.glob("*") if path.is_file() and _publishable(path.name))
    if not index_folder.is_dir() and not (source / "sigma_index.pt").is_file():
        logger.warning(
            "%s holds no identifier index: the pushed model needs set_index before retrieve", source
        )
    return files


def _missing_modules(source: Path, modules: set[str]) -> list[str]:
    """The remote-code files that `modules` need, recursively through relative imports, that are missing."""
    from transformers.dynamic_module_utils import get_relative_imports

    pending, seen, missing = sorted(modules), set(), []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if not (source / name).is_file():
            missing.append(name)
            continue
        pending += [f"{module}.py" for module in get_relative_imports(str(source / name))]
    return missing


def _publishable(name: str) -> bool:
    return not name.startswith(".") and name != "README.md" and not TRAINING_STATE.match(name)


def _card_images(text: str, card_dir: Path | None) -> list[tuple[str, Path]]:
    """The images the card links by a relative path (`![plot](results/quality.png)`), as (path in the repo,
    file beside the card): the repo carries them so the card shows its plots on the Hub."""
    images = []
    for link in dict.fromkeys(CARD_IMAGE.findall(text)):
        relative = PurePosixPath(link)
        if "://" in link or relative.is_absolute() or ".." in relative.parts:
            continue  # a URL, or a path outside the repo
        path = card_dir / link if card_dir is not None else None
        if path is None or not path.is_file():
            logger.warning(
                "the model card links %s, which is not beside the card: it will show no image", link
            )
            continue
        images.append((relative.as_posix(), path))
    return images


def _model_card(
    card: str | os.PathLike | Any | None, card_metadata: dict[str, Any] | None, repo_id: str | None
):
    """The card to publish and the folder its relative links point into (`None` for a `ModelCard` object)."""
    from huggingface_hub import ModelCard

    if card is None and not DEFAULT_MODEL_CARD.is_file():
        raise FileNotFoundError(
            f"no model card at {DEFAULT_MODEL_CARD} (an installed package): pass card=PATH"
        )
    card_dir = None
    if isinstance(card, ModelCard):
        content = card.content
    else:
        path = Path(card) if card is not None else DEFAULT_MODEL_CARD
        if not path.is_file():
            raise FileNotFoundError(f"model card {str(path)!r} does not exist")
        content = path.read_text(encoding="utf-8")
        card_dir = path.resolve().parent
    if repo_id is not None:
        content = content.replace(MODEL_CARD_REPO_PLACEHOLDER, repo_id)
    readme = ModelCard(content, ignore_metadata_errors=False)
    for key, value in (card_metadata or {}).items():
        if value is None:
            readme.data.pop(key, None)
        else:
            readme.data[key] = value
    if readme.data.get("base_model") is None:
        readme.data.pop("base_model_relation", None)  # a relation to no base model is invalid on the Hub
    return readme, card_dir


# ---------------------------------------------------------------------------------------------- codebook
def export_codebook_repo(
    stage0_dir: str | os.PathLike,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    pretty_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the dataset repo of a stage-0 folder (either layout) into `folder`: the codebook as parquet,
    `quantizer.safetensors` and `stage0_config.json` byte for byte, and the dataset card.

    `license` is the card's; set the source corpus's license when the image ids name a licensed corpus.
    """
    source = Path(stage0_dir)
    if not source.is_dir():
        raise FileNotFoundError(
            f"stage-0 folder {str(stage0_dir)!r} does not exist (build it with recipes/stage0.py)"
        )
    quantizer, stage0_config, codebook = load_builder_folder(source)  # checks completeness and format
    shapes = {name: (tuple(tensor.shape), str(tensor.dtype)) for name, tensor in quantizer.items()}
    with _staged(folder, overwrite, sources=[source]) as staging:
        split = _write_split(codebook, staging, CODEBOOK_SPLIT)
        for name in (QUANTIZER_FILE, CONFIG_FILE):
            shutil.copy2(source / name, staging / name)
        card = codebook_card(repo_id, codebook.features, split, stage0_config, shapes, license, pretty_name)
        card.save(staging / "README.md")
    logger.info("exported codebook repo %s (%d identifiers)", folder, len(codebook))
    return Path(folder)


# ------------------------------------------------------------------------------------------------ corpus
def export_corpus_repo(
    corpus: Any,
    folder: str | os.PathLike,
    repo_id: str | None = None,
    tiny_shapes: Any | None = None,
    description: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    overwrite: bool = False,
    **load_kwargs: Any,
) -> Path:
    """Write the dataset repo of a corpus in the SIGMA schema into `folder`: parquet shards per split, images
    embedded as bytes, and the dataset card.

    Args:
        corpus: a `DatasetDict`, `"tiny-shapes"` (generated with `tiny_shapes`), a folder written by
            `save_corpus`, or a Hub corpus id `load_corpus` adapts (`load_kwargs` go to `load_corpus`).
        tiny_shapes (`TinyShapesConfig`, *optional*): the generator settings; the card then describes
            TinyShapes. Default for `"tiny-shapes"`: `TinyShapesConfig()`.
        description: markdown about any other corpus (origin, license, how it was made).
        license: the card's license; default `apache-2.0` for TinyShapes, else `other`.
        max_shard_bytes: a split larger than this (in Arrow bytes) is written as several shards.
    """
    sources = [corpus] if isinstance(corpus, str | os.PathLike) and os.path.isdir(corpus) else []
    _check_target(folder, overwrite, sources)  # before loading or generating the corpus
    dataset_dict, tiny_shapes = _resolve_corpus(corpus, tiny_shapes, load_kwargs)
    with _staged(folder, overwrite, sources=sources) as staging:
        splits = [_write_split(data, staging, name, max_shard_bytes) for name, data in dataset_dict.items()]
        captions = {name: sum(len(c) for c in data["captions"]) for name, data in dataset_dict.items()}
        features = next(iter(dataset_dict.values())).features
        card = corpus_card(
            repo_id, features, splits, captions, tiny_shapes, description, license, pretty_name
        )
        card.save(staging / "README.md")
    logger.info("exported corpus repo %s (%s)", folder, {split.name: split.num_examples for split in splits})
    return Path(folder)


def _resolve_corpus(corpus: Any, tiny_shapes: Any | None, load_kwargs: dict[str, Any]):
    """`(DatasetDict in the SIGMA schema, TinyShapesConfig or None)`."""
    import datasets

    from modeling_sigma.data.adapters import ADAPTERS
    from modeling_sigma.data.corpus import (
        EMBEDDED_CORPUS_NAME,
        TinyShapesConfig,
        load_corpus,
        validate_corpus,
    )

    if isinstance(corpus, str | os.PathLike):
        name = os.fspath(corpus)
        if name == EMBEDDED_CORPUS_NAME:
            tiny_shapes = tiny_shapes or TinyShapesConfig()
            load_kwargs = {**load_kwargs, "tiny_shapes": tiny_shapes}
        elif name not in ADAPTERS and not os.path.isdir(name):
            raise FileNotFoundError(
                f"corpus {name!r} is neither {EMBEDDED_CORPUS_NAME!r}, a folder written by save_corpus, "
                f"nor one of {sorted(ADAPTERS)}"
            )
        corpus = load_corpus(name, **load_kwargs)
    if isinstance(corpus, datasets.Dataset):
        corpus = datasets.DatasetDict({"test": corpus})
    if not isinstance(corpus, datasets.DatasetDict):
        raise ValueError(f"corpus must be a DatasetDict, a name or a folder, got {type(corpus).__name__}")
    validate_corpus(corpus)
    return corpus, tiny_shapes


# ------------------------------------------------------------------------------------------------ shared
def _write_split(
    dataset: Any, folder: Path, split: str, max_shard_bytes: int = MAX_SHARD_BYTES
) -> SplitFiles:
    """Write `data/<split>-<i>-of-<n>.parquet` with image files embedded as bytes, as `push_to_hub` does."""
    from datasets.features.features import require_storage_embed
    from datasets.table import embed_table_storage

    (folder / "data").mkdir(exist_ok=True)
    # What push_to_hub records as the split size: Arrow bytes plus the image files still referenced by path.
    estimate = getattr(dataset, "_estimate_nbytes", None)
    num_bytes = estimate() if estimate is not None else dataset.data.nbytes
    num_shards = max(1, math.ceil(num_bytes / max_shard_bytes))
    files = []
    for index in range(num_shards):
        shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
        if require_storage_embed(shard.features):
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        name = f"data/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.with_format(None).to_parquet(str(folder / name))
        files.append(name)
    download = sum((folder / name).stat().st_size for name in files)
    return SplitFiles(split, files, len(dataset), num_bytes, download)


@contextmanager
def _staged(folder: str | os.PathLike, overwrite: bool, sources: list[Any]) -> Iterator[Path]:
    """A temporary folder beside `folder` that replaces it when the block succeeds and is removed otherwise."""
    target = _check_target(folder, overwrite, sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_target(folder: str | os.PathLike, overwrite: bool, sources: list[Any]) -> Path:
    """The resolved target folder, if it may be written: missing or empty (or `overwrite`), and apart from
    the source folders (replacing a folder that holds the source would delete the source)."""
    target = Path(folder).resolve()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    for source in (Path(source).resolve() for source in sources):
        if target == source or source in target.parents or target in source.parents:
            raise ValueError(f"the target folder {target} overlaps the source {source}; pick another folder")
    return target


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub repo id (`name` or `namespace/name`), else a `ValueError` saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"malformed repo id {repo_id!r}: {error}") from None
    if not repo_id:
        raise ValueError("the repo id is empty; expected 'namespace/name'")
    return repo_id


def upload_repo_folder(
    folder: str | os.PathLike,
    repo_id: str,
    repo_type: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any | None = None,
    delete_patterns: list[str] | None = None,
) -> str:
    """Create the repo if needed, create `revision` as a branch if needed, and upload `folder` as one commit;
    returns the commit URL. `private` applies only when the repo is created (`None`: the namespace's
    default). `api` defaults to `HfApi(token=token)`. Remote files matching `delete_patterns` and not in
    `folder` are deleted in the same commit (default: `STALE_FILES[repo_type]`)."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True, token=token)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision, token=token,
        commit_message=commit_message or f"Upload SIGMA {repo_type} files",
        delete_patterns=STALE_FILES.get(repo_type) if delete_patterns is None else delete_patterns,
    )  # fmt: skip
    logger.info("uploaded %s to %s (%s)", folder, repo_id, repo_type)
    return str(getattr(info, "commit_url", info))


def _push(
    repo_type: str,
    export: Callable[..., Path],
    repo_id: str | None,
    local_dir: str | os.PathLike | None,
    overwrite: bool,
    **upload_options: Any,
) -> str:
    if repo_id is None and local_dir is None:
        raise ValueError("pass repo_id (upload to the Hub) or local_dir (write the repo folder, no network)")
    if repo_id is not None:
        check_repo_id(repo_id)
    if local_dir is not None:
        return str(export(folder=local_dir, repo_id=repo_id, overwrite=overwrite))
    with tempfile.TemporaryDirectory(prefix="sigma-push-") as tmp:
        folder = export(folder=Path(tmp, "repo"), repo_id=repo_id)
        return upload_repo_folder(folder, repo_id, repo_type=repo_type, **upload_options)


def push_model_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str | None = None,
    local_dir: str | os.PathLike | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    api: Any | None = None,
    **export_kwargs: Any,
) -> str:
    """Publish a SIGMA checkpoint as a model repo (see `export_model_repo` for `export_kwargs`: `card`,
    `card_metadata`). With `local_dir`, write the repo there and upload nothing; returns that path, else the
    commit URL."""

    export = functools.partial(export_model_repo, model_dir, **export_kwargs)
    return _push("model", export, repo_id, local_dir, overwrite, private=private, token=token,
                 revision=revision, commit_message=commit_message, api=api)  # fmt: skip


def push_codebook_to_hub(
    stage0_dir: str | os.PathLike,
    repo_id: str | None = None,
    local_dir: str | os.PathLike | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    api: Any | None = None,
    **export_kwargs: Any,
) -> str:
    """Publish a stage-0 folder as a dataset repo (`export_kwargs`: `license`, `pretty_name`). With `local_dir`,
    write the repo there and upload nothing; returns that path, else the commit URL."""

    export = functools.partial(export_codebook_repo, stage0_dir, **export_kwargs)
    return _push("dataset", export, repo_id, local_dir, overwrite, private=private, token=token,
                 revision=revision, commit_message=commit_message, api=api)  # fmt: skip


def push_corpus_to_hub(
    corpus_or_name: Any,
    repo_id: str | None = None,
    local_dir: str | os.PathLike | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    api: Any | None = None,
    **export_kwargs: Any,
) -> str:
    """Publish a corpus as a dataset repo (`export_kwargs`: see `export_corpus_repo`). With `local_dir`, write
    the repo there and upload nothing; returns that path, else the commit URL."""

    export = functools.partial(export_corpus_repo, corpus_or_name, **export_kwargs)
    return _push("dataset", export, repo_id, local_dir, overwrite, private=private, token=token,
                 revision=revision, commit_message=commit_message, api=api)  # fmt: skip


__all__ = [
    "check_repo_id",
    "export_codebook_repo",
    "export_corpus_repo",
    "export_model_repo",
    "push_codebook_to_hub",
    "push_corpus_to_hub",
    "push_model_to_hub",
    "upload_repo_folder",
]
