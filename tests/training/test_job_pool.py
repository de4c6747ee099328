"""Side-by-side steps of the end-to-end job (`training/job_pool.py`): the one-process executor behaves like a
pool, and a spawned pool reaches functions of a script folder named in `import_paths`."""

import os

import pytest

from modeling_sigma.training.job_pool import SigmaImmediateExecutor, make_pool, timed_call


def _fail():
    raise ValueError("step failed")


def test_immediate_executor_runs_at_submit_and_raises_at_result():
    order = []
    with SigmaImmediateExecutor() as pool:
        first = pool.submit(order.append, "a")
        failed = pool.submit(_fail)
        pool.submit(order.append, "b")
    assert order == ["a", "b"] and first.result() is None
    with pytest.raises(ValueError, match="step failed"):
        failed.result()


def test_make_pool_refuses_zero_jobs():
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        make_pool(0)


def test_spawned_workers_import_a_script_folder_and_get_one_thread_each(tmp_path, monkeypatch):
    (tmp_path / "my_script.py").write_text(
        "import os\n\ndef work(x):\n    return x * 2, os.environ['OMP_NUM_THREADS'], os.getpid()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # make_pool sets them; monkeypatch restores them
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr("modeling_sigma.training.job_pool.available_cores", lambda: 2)
    import my_script

    with make_pool(2, import_paths=[str(tmp_path)]) as pool:
        results = [future.result() for future in [pool.submit(timed_call, my_script.work, n) for n in (1, 2)]]
    (values, seconds) = zip(*results)
    assert [v[0] for v in values] == [2, 4] and all(s >= 0 for s in seconds)
    assert {v[1] for v in values} == {"1"}  # 2 cores / 2 jobs
    assert all(v[2] != os.getpid() for v in values)


def test_workers_reach_a_script_loaded_by_path_from_another_folder(tmp_path, monkeypatch):
    # benchmarks/run_suite.py loads recipes/run_embedded.py by its path: the folder is on no sys.path of the
    # parent, and spawned workers start from the parent's sys.path (not only PYTHONPATH)
    import importlib.util
    import sys

    script = tmp_path / "loaded_script.py"
    script.write_text("def work(x):\n    return x + 1\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    spec = importlib.util.spec_from_file_location("loaded_script", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "loaded_script", module)
    spec.loader.exec_module(module)
    with make_pool(2, import_paths=[str(tmp_path)]) as pool:
        assert [pool.submit(module.work, n).result() for n in (1, 2)] == [2, 3]


SHARING_SCRIPT = """
import time

from modeling_sigma.training import job_pool


def alone_at_the_end(started, checked, release):
    started.set()
    checked.wait(30)  # the other step has run beside this one
    beside = job_pool.share_cores()
    release.wait(30)  # the other step has ended
    job_pool.SHARE_GRACE_S = 0.2
    at_once = job_pool.share_cores()
    time.sleep(0.3)
    return beside, at_once, job_pool.share_cores()


def beside_it(started, checked):
    started.wait(30)
    threads = job_pool.share_cores()
    checked.set()
    return threads
"""


def test_a_step_left_alone_takes_the_free_cores_after_a_grace(tmp_path, monkeypatch):
    import multiprocessing

    (tmp_path / "sharing_script.py").write_text(SHARING_SCRIPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr("modeling_sigma.training.job_pool.available_cores", lambda: 4)
    import sharing_script

    with multiprocessing.get_context("spawn").Manager() as manager:
        started, checked, release = manager.Event(), manager.Event(), manager.Event()
        with make_pool(2, import_paths=[str(tmp_path)]) as pool:
            alone = pool.submit(timed_call, sharing_script.alone_at_the_end, started, checked, release)
            beside = pool.submit(timed_call, sharing_script.beside_it, started, checked)
            assert beside.result()[0] == 2  # 4 cores, 2 steps running
            release.set()
            (threads_beside, threads_at_once, threads_later), _ = alone.result()
    assert (threads_beside, threads_at_once, threads_later) == (2, 2, 4)


def test_no_sharing_outside_a_pool_or_when_the_user_set_the_threads(tmp_path, monkeypatch):
    from modeling_sigma.training.job_pool import share_cores

    assert share_cores() is None  # the calling process
    (tmp_path / "fixed_script.py").write_text(
        "from modeling_sigma.training.job_pool import share_cores\n\ndef work():\n    return share_cores()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    import fixed_script

    with make_pool(2, import_paths=[str(tmp_path)]) as pool:
        assert pool.submit(timed_call, fixed_script.work).result()[0] is None
