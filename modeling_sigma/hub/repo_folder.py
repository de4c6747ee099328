# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Local repo folders: the checks every `export_*_repo` makes before writing, and the atomic write itself.

A target is written with `modeling_sigma.modeling.file_utils.atomic_folder`, so it is either complete or
untouched. It must be missing or empty unless `overwrite=True`, which replaces it as a whole, and it must not
overlap the folder it is exported from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modeling_sigma.modeling.file_utils import atomic_folder


@contextmanager
def staged_repo_folder(folder: str | os.PathLike, overwrite: bool, sources: list[Any]) -> Iterator[Path]:
    """`atomic_folder(folder)` after checking that `folder` may be written (see `check_target`)."""
    with atomic_folder(check_target(folder, overwrite, sources)) as staging:
        yield staging


def check_target(folder: str | os.PathLike, overwrite: bool, sources: list[Any]) -> Path:
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


__all__ = ["check_repo_id", "check_target", "staged_repo_folder"]
