# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Upload to the Hub: `upload_repo_folder` sends a local repo folder as one commit, and `push_to_hub` writes the
repo of a checkpoint, a stage-0 folder or a corpus (`export_*_repo`) and uploads it, or only writes it when
given `local_dir` (no network).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modeling_sigma.hub.dataset_repos import export_codebook_repo, export_corpus_repo
from modeling_sigma.hub.model_repo import export_model_repo
from modeling_sigma.hub.repo_folder import check_repo_id

logger = logging.getLogger(__name__)

# Remote files a new push replaces, so that a shard or weight file left by an earlier push is never read with
# the new ones (a split is every `data/<split>-*` file; transformers prefers model.safetensors to shards).
STALE_FILES = {
    "model": ["*.safetensors", "*.safetensors.index.json", "*.bin", "sigma_index.*", "sigma_index/*"],
    "dataset": ["data/*"],
}
# kind → (Hub repo type, exporter, what the source is)
REPO_KINDS: dict[str, tuple[str, Callable[..., Path], str]] = {
    "model": ("model", export_model_repo, "a SIGMA checkpoint as a model repo (`export_kwargs`: `card`, `card_metadata`)"),
    "codebook": ("dataset", export_codebook_repo, "a stage-0 folder as a dataset repo (`export_kwargs`: `license`, `pretty_name`)"),
    "corpus": ("dataset", export_corpus_repo, "a corpus as a dataset repo (`export_kwargs`: see `export_corpus_repo`)"),
}  # fmt: skip


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


def push_to_hub(
    kind: str,
    source: Any,
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
    """Publish `source` as the repo of `kind` (`"model"`, `"codebook"` or `"corpus"`, see `REPO_KINDS`).

    With `local_dir`, write the repo there and upload nothing (returns that path); else write it in a temporary
    folder and upload it with `upload_repo_folder` (returns the commit URL).
    """
    if kind not in REPO_KINDS:
        raise ValueError(f"unknown repo kind {kind!r}; expected one of {sorted(REPO_KINDS)}")
    if repo_id is None and local_dir is None:
        raise ValueError("pass repo_id (upload to the Hub) or local_dir (write the repo folder, no network)")
    if repo_id is not None:
        check_repo_id(repo_id)
    repo_type, export, _ = REPO_KINDS[kind]
    if local_dir is not None:
        return str(export(source, folder=local_dir, repo_id=repo_id, overwrite=overwrite, **export_kwargs))
    with tempfile.TemporaryDirectory(prefix="sigma-push-") as tmp:
        folder = export(source, folder=Path(tmp, "repo"), repo_id=repo_id, **export_kwargs)
        return upload_repo_folder(folder, repo_id, repo_type=repo_type, private=private, token=token,
                                  revision=revision, commit_message=commit_message, api=api)  # fmt: skip


def _push_function(kind: str) -> Callable[..., str]:
    """`push_to_hub` with `kind` fixed, under the name `push_{kind}_to_hub`."""

    def push(
        source: Any, repo_id: str | None = None, local_dir: str | os.PathLike | None = None, **options: Any
    ) -> str:
        return push_to_hub(kind, source, repo_id, local_dir, **options)

    push.__name__ = push.__qualname__ = f"push_{kind}_to_hub"
    push.__doc__ = f"Publish {REPO_KINDS[kind][2]}: `push_to_hub({kind!r}, source, repo_id, local_dir, ...)`."
    return push


push_model_to_hub = _push_function("model")
push_codebook_to_hub = _push_function("codebook")
push_corpus_to_hub = _push_function("corpus")

__all__ = [
    "REPO_KINDS",
    "STALE_FILES",
    "push_codebook_to_hub",
    "push_corpus_to_hub",
    "push_model_to_hub",
    "push_to_hub",
    "upload_repo_folder",
]
