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
