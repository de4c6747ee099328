# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Index folders shared by several processes: every change is made under a lock and on a fresh read.

`SigmaIndex.save` replaces a folder atomically, so a reader always finds a complete folder, but two writers
that each read, change and save the same folder would keep only the last one's change. Here every change
(`update_index_folder`) holds a `filelock.FileLock` on `.{name}.lock` beside the folder, re-reads the folder
under the lock, applies the change and saves before releasing it: an acknowledged add or remove is never
overwritten by another writer. The OS releases the lock of a process that is killed, and the previous folder
stays loadable (the atomic save), so a killed writer loses only its own unacknowledged change.

Readers (`read_index_folder`) take no lock: both files of a folder carry one snapshot id, and a read that
straddles a replace is simply repeated; only a folder that a killed save left missing is restored, under the lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from modeling_sigma.modeling.index import SigmaIndex, SigmaIndexSnapshotError

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 300.0  # a writer waits this long for another one before giving up with an error
READ_ATTEMPTS = 5


def index_lock(folder: str | os.PathLike, timeout: float = LOCK_TIMEOUT_SECONDS) -> FileLock:
    """The inter-process lock of an index folder: `.{name}.lock` beside it."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=timeout)


def read_index_folder(folder: str | os.PathLike, model=None) -> SigmaIndex:
    """A complete snapshot of the index folder (checked against `model` when given), even while another process
    replaces it; `FileNotFoundError` when there is no index folder."""
    folder = Path(folder).resolve()
    for attempt in range(READ_ATTEMPTS):
        if not folder.is_dir():
            break
        try:
            return SigmaIndex.load(folder, model=model, restore_interrupted=False)
        except (SigmaIndexSnapshotError, FileNotFoundError):  # replaced while we read it: read again
            time.sleep(0.01 * (attempt + 1))
    with index_lock(folder):  # no writer is mid-replace now: a missing folder is one a killed save left
        return SigmaIndex.load(folder, model=model)


@contextmanager
def update_index_folder(
    folder: str | os.PathLike,
    model=None,
    new_index: Callable[[], SigmaIndex] | None = None,
    timeout: float = LOCK_TIMEOUT_SECONDS,
) -> Iterator[SigmaIndex]:
    """Lock the folder, read it afresh and yield the index; save it when the block succeeds, then unlock.

    Args:
        folder: the index folder.
        model: checked against the index (`check_compatible`) when given.
        new_index: builds the index to start from when the folder does not exist yet (otherwise that is a
            `FileNotFoundError`).
        timeout: seconds to wait for another writer (`filelock.Timeout` after that).

    An exception inside the block leaves the folder as it was.
    """
    folder = Path(folder).resolve()
    with index_lock(folder, timeout):
        index = _read_or_create(folder, model, new_index)
        yield index
        index.save(folder)


def _read_or_create(folder: Path, model, new_index) -> SigmaIndex:
    try:
        return SigmaIndex.load(folder, model=model)
    except FileNotFoundError:
        if folder.exists() or new_index is None:
            raise
    index = new_index()
    if model is not None:
        index.check_compatible(model)
    return index


__all__ = ["index_lock", "read_index_folder", "update_index_folder"]
