"""`make rehearse` as a slow test: the real-scale rehearsal (benchmarks/rehearse.py, ~10 min) passes every row."""

import json
import os
import sys

import pytest
from sigma_testing_utils import REPO_ROOT

pytestmark = pytest.mark.slow


def test_rehearsal_passes(tmp_path):
    sys.path.insert(0, os.path.join(str(REPO_ROOT), "benchmarks"))
    import rehearse

    output = tmp_path / "rehearsal.json"
    code = rehearse.main(["--workdir", str(tmp_path / "work"), "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert code == 0, [row for row in rows if row["result"] == "FAIL"]
    assert {row["result"] for row in rows} <= {"PASS", "skip"}
