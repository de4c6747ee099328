# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The model repo of a SIGMA checkpoint: the `save_pretrained` files (weights, config, remote code, processor,
the identifier index) and the model card with the images it links.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from modeling_sigma.hub.repo_folder import staged_repo_folder

logger = logging.getLogger(__name__)

DEFAULT_MODEL_CARD = Path(__file__).resolve().parents[2] / "model_card.md"
MODEL_CARD_REPO_PLACEHOLDER = "path/or/repo"
CARD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")  # markdown image links: ![alt](path "title")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Trainer checkpoints hold these beside the model; they are resume state, not part of a published model.
# The identifier index a checkpoint carries: a `sigma_index/` folder (safetensors + JSON), or the two files of
# checkpoints saved before it (`sigma_index.pt` + `sigma_index.json`), published as they are.
INDEX_FOLDER_NAME = "sigma_index"
INDEX_FILES = ("index.safetensors", "sigma_index.pt")
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin)$")  # fmt: skip


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
    model_dir = Path(model_dir)
    files = _model_files(model_dir)
    readme, card_dir = _model_card(card, card_metadata, repo_id)
    images = _card_images(readme.text, card_dir)
    with staged_repo_folder(folder, overwrite, sources=[model_dir]) as staging:
        for path in files:
            name = path.relative_to(model_dir).as_posix()
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / name)
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
    index_folder = source / INDEX_FOLDER_NAME
    if index_folder.is_dir():
        files += sorted(
            path for path in index_folder.rglob("*") if path.is_file() and _publishable(path.name)
        )
    if not any(path.name in INDEX_FILES for path in files):
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


__all__ = ["DEFAULT_MODEL_CARD", "export_model_repo"]
