# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Independent steps of the end-to-end job run side by side, one process each (`recipes/run_embedded.py --jobs`).

The embedded models are far too small to keep several cores busy, so on a 2-core machine two trainings in two
processes of one thread each finish in about the time of one: the captioner trains while stages 0–2 run, and
the paper-faithful stage 3 trains beside the one with pseudo-queries. Each worker is a fresh (spawned) process
with `OMP_NUM_THREADS = cores // jobs` unless the variable is set already; `--jobs 1` runs every step in the
calling process, in submission order, through the same `submit` calls (`SigmaImmediateExecutor`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_jobs() -> int:
    """Two side-by-side steps where there are at least two cores (the job's graph has at most two at once)."""
    return 2 if available_cores() >= 2 else 1


class SigmaImmediateExecutor(Executor):
    """An `Executor` that runs each call at `submit`, in the calling process: `--jobs 1`."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # re-raised by `future.result()`, as a pool would
            future.set_exception(error)
        return future


def make_pool(jobs: int, import_paths: list[str] = ()) -> Executor:
    """`jobs` spawned worker processes (or the calling process when `jobs == 1`).

    `import_paths` are prepended to the workers' `PYTHONPATH` and to this process's `sys.path` (a spawned worker
    starts from its parent's `sys.path`), so functions of a script folder (e.g. `recipes/`, loaded by its path
    from `benchmarks/run_suite.py`) can be sent to them by reference.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return SigmaImmediateExecutor()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // jobs)))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    paths = [*import_paths, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    sys.path[:0] = [path for path in import_paths if path not in sys.path]
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def timed_call(fn, *args, **kwargs) -> tuple[object, float]:
    """`(fn(*args, **kwargs), seconds)`; in a worker, first sets up the progress logging the job prints."""
    if not logging.getLogger("modeling_sigma").handlers and not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("modeling_sigma").setLevel(logging.INFO)
    start = time.time()
    result = fn(*args, **kwargs)
    return result, round(time.time() - start, 1)


__all__ = ["SigmaImmediateExecutor", "available_cores", "default_jobs", "make_pool", "timed_call"]
