# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Crash-safe writes: the one helper every SIGMA artefact (index, codebook, corpus, caches, repos) is written with.

`atomic_folder(target)` yields a fresh folder beside `target`; when the block ends without an error its files
are flushed to disk and the folder takes `target`'s place. The previous `target` is moved aside (as
`.{name}.old-*`) and deleted only once the new folder is in place, so at every moment either the old or the new
folder is complete: a process killed between the two renames leaves the old folder as a backup, which
`restore_interrupted_folder` (called by every reader) puts back. `atomic_file(path)` does the same for one file
with a single rename.

This module travels with checkpoints as remote code: standard library only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Stage a folder beside `target` and put it in place of `target` when the block succeeds.

    On an exception the staged folder is removed and `target` is untouched.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        fsync_tree(staging)
        replace_folder(staging, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path` for writing; it replaces `path` (one rename) when the block succeeds."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
        fsync_path(path.parent)
    except BaseException:
        if os.path.exists(staging):
            os.unlink(staging)
        raise


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `source` in place of `target`, keeping the old `target` until it is replaced."""
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def restore_interrupted_folder(target: str | os.PathLike) -> None:
    """If `target` is missing because a replace died between its two renames, put the newest backup back."""
    target = Path(target).resolve()
    if target.exists():
        return
    backups = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda path: path.stat().st_mtime)
    if backups:
        logger.warning("restoring %s from %s (an earlier save was interrupted)", target, backups[-1])
        os.replace(backups[-1], target)


def remove_stale_staging(target: str | os.PathLike) -> None:
    """Delete staged folders and files left beside `target` by processes that no longer run."""
    target = Path(target).resolve()
    prefix = f".{target.name}.tmp-"
    for path in target.parent.glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root, name))
        fsync_path(Path(root))


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk (best effort where the platform cannot open folders)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "atomic_file",
    "atomic_folder",
    "remove_stale_staging",
    "replace_folder",
    "restore_interrupted_folder",
]
