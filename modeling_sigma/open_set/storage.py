# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Folder format of `SigmaImageIndex`, written so that a crash never damages the previous index.

    folder/
      index.safetensors   tensors (codes, trie keys)
      index.json          everything else; written last

`write_index_folder` fills `.{name}.tmp-{pid}-*` beside the target, fsyncs it, moves the old folder to
`.{name}.old-*` and renames the new one into place. If the process dies between those two renames the target
is missing for a moment; `read_index_folder` then restores the backup, so the previous index is always
loadable. Temp folders of dead processes are removed by the next save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from modeling_sigma.modeling.file_utils import replace_folder

logger = logging.getLogger(__name__)

TENSORS_FILE = "index.safetensors"
METADATA_FILE = "index.json"


def write_index_folder(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], payload: dict) -> None:
    """Write `tensors` and the JSON `payload` as the index folder `folder`, atomically."""
    from safetensors.torch import save_file

    target = Path(folder).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_folders(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        save_file(tensors, str(tmp / TENSORS_FILE))
        _write_text(tmp / METADATA_FILE, json.dumps(payload))
        _fsync(tmp / TENSORS_FILE)
        _fsync(tmp)
        replace_folder(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_index_folder(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(tensors, payload)` of an index folder; a clear `FileNotFoundError` when it is missing or incomplete."""
    from safetensors.torch import load_file

    target = Path(folder).resolve()
    if not target.exists():
        _restore_backup(target)
    missing = [name for name in (TENSORS_FILE, METADATA_FILE) if not (target / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{target} is not a SIGMA index folder: missing {missing}")
    return load_file(str(target / TENSORS_FILE)), json.loads((target / METADATA_FILE).read_text())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    """Flush a file or a folder entry to disk (best effort where the platform cannot open folders)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _restore_backup(target: Path) -> None:
    """Put back the previous folder of a save that died between its two renames."""
    backups = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda path: path.stat().st_mtime)
    if backups and (backups[-1] / METADATA_FILE).is_file():
        logger.warning("restoring %s from %s (an earlier save was interrupted)", target, backups[-1])
        os.replace(backups[-1], target)


def _remove_stale_temp_folders(target: Path) -> None:
    for path in target.parent.glob(f".{target.name}.tmp-*"):
        pid = path.name[len(f".{target.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["read_index_folder", "write_index_folder"]
