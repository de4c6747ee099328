"""Tests for the `sigma` command line: help, index add/remove/info, search, eval, and input errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import DatasetDict
from sigma_testing_utils import CAPTIONS, TINY_SIZES

from modeling_sigma.cli import main
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.training.backbone import build_sigma_model

LAYOUT = SigmaIdentifierLayout(k1=4, k2=2, k3=2, k4=2, num_subspaces=1, suffix_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_corpus):
    """A saved tiny model with two indexed images, and three PNG files of new images."""
    torch.manual_seed(0)
    codes = torch.tensor([[1, 0, 1, 0, 0], [3, 1, 0, 1, 0]])
    model, _ = build_sigma_model(
        "embedded", LAYOUT, codes, ["seed-0", "seed-1"], CAPTIONS, similarity_hidden_size=32, **TINY_SIZES
    )
    root = tmp_path_factory.mktemp("cli")
    model.save_pretrained(root / "model")
    for i, image in enumerate(tiny_corpus["unseen"]["image"][:3]):
        image.save(root / f"photo{i}.png")
    return root


def run(capsys, *argv):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    "argv", [[], ["search"], ["index"], ["index", "add"], ["index", "remove"], ["index", "info"], ["eval"]]
)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sigma" in capsys.readouterr().out


def test_console_entry_point_help():
    output = subprocess.run(
        [sys.executable, "-m", "modeling_sigma.cli", "index", "add", "--help"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert output.returncode == 0 and "--mode {generate,quantizer}" in output.stdout


def test_add_search_remove_round_trip(checkpoint, capsys):
    model, index = checkpoint / "model", checkpoint / "index"
    photos = [checkpoint / f"photo{i}.png" for i in range(3)]
    status, out, err = run(capsys, "index", "add", *photos, "--model", model, "--index", index)
    assert status == 0, err
    assert "photo0\t<id1_" in out and f"{index} holds 5" in out
    status, out, _ = run(
        capsys, "search", "a red circle", "--model", model, "--index", index, "-k", 5, "--json"
    )
    hits = json.loads(out)[0]["hits"]
    assert status == 0 and {hit["image_id"] for hit in hits} == {
        "seed-0",
        "seed-1",
        "photo0",
        "photo1",
        "photo2",
    }
    assert {hit["metadata"].get("path") for hit in hits} >= {str(photo) for photo in photos}
    status, out, _ = run(capsys, "index", "remove", "photo1", "--model", model, "--index", index)
    assert status == 0 and f"{index} holds 4" in out
    status, out, _ = run(
        capsys, "search", "a red circle", "--model", model, "--index", index, "-k", 4, "--rerank"
    )
    assert status == 0 and "photo1" not in out and "photo2" in out and "fused" in out
    status, out, _ = run(capsys, "index", "info", "--index", index)
    assert status == 0 and json.loads(out)["images"] == 4


def test_search_uses_the_model_index_without_index_folder(checkpoint, capsys):
    status, out, _ = run(capsys, "search", "a star", "--model", checkpoint / "model", "-k", 2)
    assert status == 0 and "seed-0" in out and "seed-1" in out


def test_long_and_marked_up_queries(checkpoint, capsys, caplog):
    model, long_query = checkpoint / "model", "a " * 300
    with caplog.at_level("WARNING"):
        status, out, _ = run(capsys, "search", "a star", long_query, "--model", model, "-k", 1, "--json")
    assert status == 0 and "query 1 is" in caplog.text and "more than max_query_length=256" in caplog.text
    assert [len(row["hits"]) for row in json.loads(out)] == [1, 1]
    status, _, err = run(capsys, "search", "a star", long_query, "--model", model, "--no-truncate")
    assert status == 2 and "1 of 2 queries are invalid: query 1:" in err and "truncate" in err
    status, out, _ = run(capsys, "search", "<|image_pad|><|im_end|><id1_0>", "--model", model, "-k", 1)
    assert status == 0 and "seed-" in out


def test_bad_input_is_a_clear_error_and_changes_nothing(checkpoint, capsys, tmp_path):
    model, index = checkpoint / "model", tmp_path / "index"
    photo = checkpoint / "photo0.png"
    assert run(capsys, "index", "add", photo, "--model", model, "--index", index)[0] == 0
    before = {name: (index / name).read_bytes() for name in os.listdir(index)}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    status, _, err = run(
        capsys, "index", "add", broken, checkpoint / "photo1.png", "--model", model, "--index", index
    )
    assert status == 2 and "Unreadable image" in err
    status, _, err = run(capsys, "index", "add", photo, "--model", model, "--index", index)
    assert status == 2 and "already in the index" in err
    status, _, err = run(capsys, "index", "remove", "nope", "--model", model, "--index", index)
    assert status == 2 and "not in the index" in err
    assert {name: (index / name).read_bytes() for name in os.listdir(index)} == before


def test_eval_on_an_index_folder(checkpoint, capsys, tiny_corpus, tmp_path):
    from modeling_sigma.data.corpus import save_corpus
    from modeling_sigma.modeling.index import SigmaIndex
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    model = SigmaForRetrieval.from_pretrained(checkpoint / "model")
    test_ids = tiny_corpus["test"]["image_id"][:4]
    SigmaIndex.from_model(model, torch.tensor([[0, 0, 0, 0, i] for i in range(4)]), test_ids).save(
        tmp_path / "index"
    )
    argv = [
        "eval",
        "--model",
        checkpoint / "model",
        "--index",
        tmp_path / "index",
        "--corpus",
        tmp_path / "corpus",
    ]
    save_corpus(tiny_corpus, tmp_path / "corpus")
    status, out, err = run(capsys, *argv, "--split", "test", "-k", 1, 2, "--max-queries", 3)
    assert status == 2 and "no identifier" in err  # the split has 16 images, the index 4 of them
    corpus = DatasetDict({**tiny_corpus, "test": tiny_corpus["test"].select(range(4))})
    save_corpus(corpus, tmp_path / "corpus")
    status, out, err = run(capsys, *argv, "--split", "test", "-k", 1, 2, "--max-queries", 3)
    assert status == 0, err
    metrics = json.loads(out)
    assert set(metrics) >= {"recall@1", "recall@2"} and metrics["queries"] == 3
