# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Independent steps of the end-to-end job run side by side, one process each (`recipes/run_embedded.py --jobs`).

The embedded models are far too small to keep several cores busy, so on a 2-core machine two trainings in two
processes of one thread each finish in about the time of one: the captioner trains while stages 0–2 run, and
the paper-faithful stage 3 trains beside the one with pseudo-queries. Each worker is a fresh (spawned) process
with `OMP_NUM_THREADS = cores // jobs` unless the variable is set already; `--jobs 1` runs every step in the
calling process, in submission order, through the same `submit` calls (`SigmaImmediateExecutor`).

The two paths of the job's graph are not equally long (the captioner and the stage 3 with pseudo-queries take
longer than stages 0–2 and the paper-faithful stage 3), so for the last minutes one step runs alone. Workers
count the steps running (`timed_call`) and `share_cores` gives a step the cores the others leave
(`cores // running`, through `torch.set_num_threads`); trainings call it before every optimiser step
(`SigmaCoreShareCallback` in `training/trainer.py`). A two-thread stage 3 of the embedded models runs 1.5× faster
than a one-thread one (5.8 against 3.8 steps/s here). Its floating-point sums are then ordered otherwise, so the
step that ends alone (in the default job, the stage 3 with pseudo-queries) can differ from run to run in the last
digits, from the step on where it took the second core. Setting `OMP_NUM_THREADS` (e.g. `OMP_NUM_THREADS=1 make
e2e`) turns the sharing off and a run then repeats bit for bit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor

logger = logging.getLogger(__name__)

# in a worker of `make_pool` that may share cores: (the pool's count of running steps, the pool's cores)
_shared_cores = None
SHARE_GRACE_S = 5.0
_more_cores_since = None  # when this worker first saw cores it could take (share_cores)


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
    cores = available_cores()
    context = multiprocessing.get_context("spawn")
    shared = None if "OMP_NUM_THREADS" in os.environ else (context.Value("i", 0), cores)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    paths = [*import_paths, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    sys.path[:0] = [path for path in import_paths if path not in sys.path]
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(shared,)
    )


def _start_worker(shared) -> None:
    global _shared_cores
    _shared_cores = shared


def share_cores() -> int | None:
    """In a pool worker: sets this process's torch threads to the pool's cores divided by the steps running now
    (at least 1) and returns that number; None (and nothing changed) in the calling process or where the user
    set `OMP_NUM_THREADS`. Fewer threads take effect at once; more only once the other steps have been gone
    for `SHARE_GRACE_S` (a step ending as the next one starts is no reason to change the numerics of a third)."""
    global _more_cores_since
    if _shared_cores is None:
        return None
    import torch

    running, cores = _shared_cores
    steps = max(1, running.value)
    threads, current = max(1, cores // steps), torch.get_num_threads()
    if threads > current:
        now = time.monotonic()
        _more_cores_since = _more_cores_since or now
        if now - _more_cores_since < SHARE_GRACE_S:
            return current
    _more_cores_since = None
    if threads != current:
        logger.info("%d thread(s): %d step(s) running on %d cores", threads, steps, cores)
        torch.set_num_threads(threads)
    return threads


def _count_running(change: int) -> None:
    if _shared_cores is not None:
        with _shared_cores[0].get_lock():
            _shared_cores[0].value += change


def timed_call(fn, *args, **kwargs) -> tuple[object, float]:
    """`(fn(*args, **kwargs), seconds)`; in a worker, first sets up the progress logging the job prints."""
    if not logging.getLogger("modeling_sigma").handlers and not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("modeling_sigma").setLevel(logging.INFO)
    global _more_cores_since
    start, _more_cores_since = time.time(), None
    _count_running(+1)
    try:
        share_cores()
        result = fn(*args, **kwargs)
    finally:
        _count_running(-1)
    return result, round(time.time() - start, 1)


__all__ = [
    "SigmaImmediateExecutor",
    "available_cores",
    "default_jobs",
    "make_pool",
    "share_cores",
    "timed_call",
]
