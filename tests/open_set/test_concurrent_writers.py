"""Several processes change one index folder at once through the `sigma index add` path: none loses an
acknowledged image (a lock and a re-read under it), and a reader always sees a complete snapshot."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from sigma_testing_utils import CAPTIONS, TINY_SIZES

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.open_set.storage import read_index_folder
from modeling_sigma.training.backbone import build_sigma_model

# a wide suffix: an untrained model writes one prefix for most images, so the suffix tells them apart
LAYOUT = SigmaIdentifierLayout(k1=4, k2=2, k3=2, k4=2, num_subspaces=1, suffix_size=256)
SEED_IDS = ["seed-0", "seed-1"]

WRITER = """
import json, os, sys, time
from modeling_sigma.cli import main
model, index, go, name, calls, per_call, *images = sys.argv[1:]
open(f"{go}.{name}.ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
acknowledged, failed = [], 0
for call in range(int(calls)):
    ids = [f"{name}-{call}-{i}" for i in range(int(per_call))]
    paths = [images[(call + i) % len(images)] for i in range(int(per_call))]
    if main(["index", "add", *paths, "--ids", *ids, "--model", model, "--index", index]) == 0:
        acknowledged += ids
    else:
        failed += 1
print("RESULT" + json.dumps({"acknowledged": acknowledged, "failed_calls": failed}))
"""

READER = """
import json, os, sys, time
from modeling_sigma.open_set.storage import read_index_folder
index, go, done = sys.argv[1:]
open(f"{go}.reader.ready", "w").close()
reads, incomplete, sizes = 0, 0, []
while not os.path.exists(done):
    time.sleep(0.02)  # leaves the two cores to the writers
    if not os.path.exists(go):
        continue
    snapshot = read_index_folder(index)
    reads += 1
    incomplete += len(snapshot.codes) != len(snapshot.image_ids) or len(snapshot.trie) != len(snapshot)
    sizes.append(len(snapshot))
grew = all(a <= b for a, b in zip(sizes, sizes[1:]))
print("RESULT" + json.dumps({"reads": reads, "incomplete": incomplete, "never_shrank": grew}))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_corpus):
    """A saved tiny model whose index holds two images, an index folder written from it, and three PNGs."""
    torch.manual_seed(0)
    codes = torch.tensor([[1, 0, 1, 0, 0], [3, 1, 0, 1, 0]])
    model, _ = build_sigma_model(
        "embedded", LAYOUT, codes, SEED_IDS, CAPTIONS, similarity_hidden_size=16, **TINY_SIZES
    )
    root = tmp_path_factory.mktemp("concurrent")
    model.save_pretrained(root / "model")
    images = []
    for i, image in enumerate(tiny_corpus["unseen"]["image"][:3]):
        image.save(root / f"photo{i}.png")
        images.append(str(root / f"photo{i}.png"))
    return root, images


def run_together(root, images, tmp_path, processes: int, calls: int, per_call: int) -> dict:
    """Start `processes` writers (and one reader) that wait for one signal, then add images via the CLI."""
    index, go, done = tmp_path / "index", str(tmp_path / "go"), str(tmp_path / "done")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env,
              "stdin": subprocess.DEVNULL}  # fmt: skip
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(root / "model"),
                str(index),
                go,
                f"w{n}",
                str(calls),
                str(per_call),
                *images,
            ],
            **common,
        )  # fmt: skip
        for n in range(processes)
    ]
    # the folder exists before the reader starts; the first writers then race on an existing folder
    assert _cli_add(root, index, images[:1], ["first"]) == 0
    reader = subprocess.Popen([sys.executable, "-c", READER, str(index), go, done], **common)
    names = [f"w{n}" for n in range(processes)] + ["reader"]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(f"{go}.{name}.ready") for name in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    open(go, "w").close()  # all start together
    results = [_result(process) for process in writers]
    seconds = time.monotonic() - start
    open(done, "w").close()
    return {"writers": results, "reader": _result(reader), "seconds": seconds, "index": index}


def _cli_add(root, index, paths, ids) -> int:
    from modeling_sigma.cli import main

    return main(
        ["index", "add", *paths, "--ids", *ids, "--model", str(root / "model"), "--index", str(index)]
    )


def _result(process) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "RESULT" in out, err[-3000:]
    return json.loads(out.split("RESULT", 1)[1])


def check_nothing_lost(setup, tmp_path, processes: int, calls: int, per_call: int) -> None:
    root, images = setup
    run = run_together(root, images, tmp_path, processes, calls, per_call)
    acknowledged = [image_id for result in run["writers"] for image_id in result["acknowledged"]]
    failed_calls = sum(result["failed_calls"] for result in run["writers"])
    final = read_index_folder(run["index"])
    lost = [image_id for image_id in acknowledged if image_id not in final]
    reader = run["reader"]
    print(
        f"\nconcurrent writers: {processes} processes x {calls} `sigma index add` calls x {per_call} images: "
        f"{len(acknowledged)} acknowledged adds, {len(lost)} lost, {failed_calls} failed calls, "
        f"{run['seconds']:.1f} s; reader: {reader['reads']} snapshots, {reader['incomplete']} incomplete"
    )
    assert len(acknowledged) == processes * calls * per_call and failed_calls == 0
    assert lost == []
    assert set(final.image_ids) == {*SEED_IDS, "first", *acknowledged}
    assert len(torch.unique(final.codes, dim=0)) == len(final)  # one identifier per image
    assert reader["reads"] > 0 and reader["incomplete"] == 0 and reader["never_shrank"]


def test_concurrent_cli_writers_lose_no_acknowledged_add(setup, tmp_path):
    check_nothing_lost(setup, tmp_path, processes=4, calls=5, per_call=5)  # 100 acknowledged adds


@pytest.mark.slow
def test_many_concurrent_cli_writers_lose_no_acknowledged_add(setup, tmp_path):
    check_nothing_lost(setup, tmp_path, processes=8, calls=10, per_call=3)  # 240 acknowledged adds


KILLED_WRITER = """
import json, sys, time
from modeling_sigma.cli import main
from modeling_sigma.modeling import index as index_module
model, index, ready, image = sys.argv[1:]

def hang(path, payload):
    open(path, "w").write(json.dumps(payload)[:20])  # half a file while holding the lock, then stall
    open(ready, "w").close()
    time.sleep(120)

index_module._write_json = hang
main(["index", "add", image, "--ids", "never-acknowledged", "--model", model, "--index", index])
"""


def test_writer_killed_while_holding_the_lock_blocks_nobody(setup, tmp_path):
    from modeling_sigma.open_set.storage import index_lock

    root, images = setup
    index, ready = tmp_path / "index", tmp_path / "ready"
    assert _cli_add(root, index, images[:1], ["kept"]) == 0
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root / "model"), str(index), str(ready), images[1]],
        stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the writer never reached the middle of its save"
    finally:
        process.kill()
        process.wait()
    with index_lock(index, timeout=10):  # the OS released the dead writer's lock
        pass
    assert _cli_add(root, index, images[2:3], ["after-kill"]) == 0
    final = read_index_folder(index)
    assert {"kept", "after-kill"} <= set(final.image_ids) and "never-acknowledged" not in final
