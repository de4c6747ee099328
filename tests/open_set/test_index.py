"""Tests for open-set indexing on SigmaIndex: add/remove, search, atomic persistence and input validation."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sigma_testing_utils import CAPTIONS, TINY_SIZES
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.index import SigmaIndex
from modeling_sigma.open_set.index import SigmaLayoutLogitsProcessor, add_images, remove_images, search
from modeling_sigma.open_set.storage import read_index_folder
from modeling_sigma.training.backbone import build_sigma_model

LAYOUT = SigmaIdentifierLayout(k1=4, k2=2, k3=2, k4=2, num_subspaces=1, suffix_size=8)
SEED_CODES = torch.tensor([[1, 0, 1, 0, 0], [1, 0, 1, 0, 2], [3, 1, 0, 1, 0]])
SEED_IDS = ["seed-0", "seed-1", "seed-2"]
QUERIES = ["a red circle", "two green squares"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model, _ = build_sigma_model(
        "embedded", LAYOUT, SEED_CODES, SEED_IDS, CAPTIONS, similarity_hidden_size=32, **TINY_SIZES
    )
    return model.eval()


@pytest.fixture
def index(model):
    """The model's own index, reset to the three seed images."""
    model.set_index(SEED_CODES, SEED_IDS)
    return model.index


@pytest.fixture(scope="module")
def images(tiny_corpus):
    return list(tiny_corpus["unseen"]["image"][:4]), [f"new-{i}" for i in range(4)]


class FixedQuantizer:
    """Stands in for a fitted SigmaIdentifierBuilder: returns given levels 1..L-1."""

    layout = LAYOUT

    def __init__(self, prefixes):
        self.prefixes = np.asarray(prefixes)

    def quantize(self, features):
        return self.prefixes[: len(features)]


class PixelEncoder:
    """Stands in for a SigmaEncoder: 12 mean-colour features of a 2x2 grid, L2-normalised."""

    def encode_images(self, images, batch_size=64):
        rows = [
            np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32).reshape(-1) for image in images
        ]
        features = np.stack(rows) + 1.0
        return features / np.linalg.norm(features, axis=1, keepdims=True)


class ForceIdentifier(LogitsProcessor):
    """Pushes greedy generation toward one identifier; the trie processor (applied after) has the last word."""

    def __init__(self, token_ids, prompt_length):
        self.token_ids, self.prompt_length = token_ids, prompt_length

    def __call__(self, input_ids, scores):
        depth = input_ids.shape[1] - self.prompt_length
        if depth < len(self.token_ids):
            scores[:, self.token_ids[depth]] += 1e4
        return scores


def forced_retrieval(model, codes):
    """Image id that trie-constrained greedy generation returns when pushed toward `codes` (None if unindexed)."""
    inputs = model.processor.process_queries(["anything"], prompt=model.config.retrieval_prompt)
    prompt_length = inputs["input_ids"].shape[1]
    tokens = (torch.tensor(model.config.identifier_token_offsets) + torch.as_tensor(codes)).tolist()
    with torch.no_grad():
        output = model.generate(
            **inputs, logits_processor=LogitsProcessorList([ForceIdentifier(tokens, prompt_length)])
        )
    generated = output[0, prompt_length : prompt_length + LAYOUT.length] - torch.tensor(
        model.config.identifier_token_offsets
    )
    row = int(model.index.lookup(generated[None])[0])
    return model.index.image_ids[row] if row >= 0 else None


def snapshot(index, model):
    metadata = [index.metadata(image_id) for image_id in index.image_ids]
    return index.codes.clone(), index.image_ids, metadata, model.index.image_ids


def assert_unchanged(before, index, model):
    codes, ids, metadata, model_ids = before
    assert torch.equal(index.codes, codes) and index.image_ids == ids
    assert [index.metadata(image_id) for image_id in ids] == metadata
    assert model.index.image_ids == model_ids and len(index.trie) == len(ids)


def test_layout_processor_allows_exactly_one_position():
    processor = SigmaLayoutLogitsProcessor([10, 14, 16], [4, 2, 3], prompt_length=5)
    scores = torch.zeros(2, 20)
    for depth, (start, size) in enumerate([(10, 4), (14, 2)]):
        masked = processor(torch.zeros(2, 5 + depth, dtype=torch.long), scores)
        allowed = torch.isfinite(masked[0]).nonzero().flatten().tolist()
        assert allowed == list(range(start, start + size))


def test_fresh_suffixes_fill_gaps_in_order(index, model):
    # prefix (1,0,1,0) already uses suffixes {0, 2}; (2,1,1,1) is new
    prefixes = [[1, 0, 1, 0], [2, 1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0]]
    codes = add_images(
        index, model, [solid_image(i) for i in range(4)], ["a", "b", "c", "d"], mode="quantizer",
        quantizer=FixedQuantizer(prefixes), encoder=PixelEncoder(),
    )  # fmt: skip
    assert codes[:, -1].tolist() == [1, 0, 3, 4]
    assert index.identifier("c") == LAYOUT.codes_to_string([1, 0, 1, 0, 3])


def solid_image(seed):
    """A small single-colour PIL image (the fake quantizer ignores the pixels)."""
    from PIL import Image

    return Image.new("RGB", (8, 8), (40 * seed, 255 - 30 * seed, 7 * seed))


def test_add_generate_is_searchable_at_once(index, model, images):
    pil_images, ids = images
    codes = add_images(index, model, pil_images, ids)
    assert codes.shape == (4, LAYOUT.length) and len(torch.unique(codes, dim=0)) == 4
    assert all(image_id in index and image_id in model.index for image_id in ids)
    assert bool(model.index.trie.contains(codes).all())
    for image_id, row in zip(ids, codes):
        assert forced_retrieval(model, row) == image_id
    hits = model.retrieve(QUERIES, k=len(index))  # all identifiers fit in the beams
    assert all(set(ids) <= {hit["image_id"] for hit in query_hits} for query_hits in hits)
    assert {hit["image_id"] for hit in search(index, model, QUERIES[:1], k=len(index))[0]} == set(
        index.image_ids
    )


def test_add_quantizer_mode_with_fitted_builder(index, model, tiny_corpus):
    encoder = PixelEncoder()
    config = SigmaIdentifierBuilderConfig(**LAYOUT.to_dict(), semi_nmf_iterations=5, kmeans_max_iter=2)
    builder = SigmaIdentifierBuilder(config)
    train = list(tiny_corpus["train"]["image"][:16])
    builder.fit(encoder.encode_images(train), [f"train-{i}" for i in range(16)])
    new = list(tiny_corpus["test"]["image"][:3])
    codes = add_images(
        index, model, new, ["q0", "q1", "q2"], mode="quantizer", quantizer=builder, encoder=encoder
    )
    assert torch.equal(codes[:, :-1], torch.as_tensor(builder.quantize(encoder.encode_images(new))))
    assert bool(model.index.trie.contains(codes).all())


def test_remove_is_never_returned_and_re_add_works(index, model, images):
    pil_images, ids = images
    codes = add_images(index, model, pil_images, ids)
    remove_images(index, ids[:2], model=model)
    assert ids[0] not in index and ids[0] not in model.index
    assert not bool(model.index.trie.contains(codes[:2]).any())
    assert forced_retrieval(model, codes[0]) not in ids[:2]
    for query_hits in search(index, model, QUERIES, k=len(index)):
        assert not {hit["image_id"] for hit in query_hits} & set(ids[:2])
    again = add_images(index, model, pil_images[:1], ids[:1])
    assert forced_retrieval(model, again[0]) == ids[0]


def test_rerank_fuses_beam_score_and_similarity(index, model):
    plain = search(index, model, QUERIES, k=3, num_beams=3)
    fused = search(index, model, QUERIES, k=3, num_beams=3, rerank=True, rerank_weight=2.0)
    for plain_hits, fused_hits in zip(plain, fused):
        assert {h["image_id"] for h in plain_hits} == {h["image_id"] for h in fused_hits}
        for hit in fused_hits:
            assert hit["fused_score"] == pytest.approx(hit["score"] + 2.0 * np.log(hit["similarity"]))
        assert [h["fused_score"] for h in fused_hits] == sorted(
            (h["fused_score"] for h in fused_hits), reverse=True
        )


def test_bad_input_leaves_index_unchanged(index, model, images, tmp_path):
    pil_images, _ = images
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    before = snapshot(index, model)
    cases = [
        ({"images": pil_images[:1], "image_ids": ["seed-0"]}, "already in the index"),
        ({"images": pil_images[:2], "image_ids": ["x", "x"]}, "repeated"),
        ({"images": [pil_images[0], str(not_an_image)], "image_ids": ["x", "y"]}, "Unreadable image"),
        ({"images": pil_images[:2], "image_ids": ["x"]}, "2 images for 1"),
        ({"images": pil_images[:1], "image_ids": ["x"], "metadata": [{"f": object()}]}, "JSON"),
        ({"images": pil_images[:1], "image_ids": ["x"], "mode": "quantizer"}, "needs quantizer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            add_images(index, model, **kwargs)
        assert_unchanged(before, index, model)
    with pytest.raises(ValueError, match="not in the index"):
        remove_images(index, ["seed-0", "missing"], model=model)
    assert_unchanged(before, index, model)


def test_exhausted_suffix_is_a_clear_error(index, model):
    before = snapshot(index, model)
    prefixes = [[1, 0, 1, 0]] * 7  # 8 suffixes, 2 already used
    with pytest.raises(ValueError, match="no free suffix left"):
        add_images(index, model, [solid_image(i % 5) for i in range(7)], [f"z{i}" for i in range(7)],
                   mode="quantizer", quantizer=FixedQuantizer(prefixes), encoder=PixelEncoder())  # fmt: skip
    assert_unchanged(before, index, model)


def test_incompatible_model_is_rejected(index, model, images, tmp_path):
    index.save(tmp_path / "index")
    other = copy.deepcopy(model.config)
    other.identifier_token_offsets = [offset + 1 for offset in other.identifier_token_offsets]
    with pytest.raises(ValueError, match="incompatible model: identifier_token_offsets"):
        SigmaIndex.load(tmp_path / "index", model=other)
    bigger = copy.deepcopy(model.config)
    bigger.backbone_config.text_config.hidden_size *= 2
    with pytest.raises(ValueError, match="config_sha256"):
        index.check_compatible(bigger)
    before = snapshot(index, model)
    with pytest.raises(ValueError, match="incompatible"):
        add_images(index, type("Fake", (), {"config": other})(), images[0][:1], ["x"])
    assert_unchanged(before, index, model)


LOAD_AND_SEARCH = """
import json, sys
from modeling_sigma.open_set.index import search
from modeling_sigma.open_set.storage import read_index_folder
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
model = SigmaForRetrieval.from_pretrained(sys.argv[1]).eval()
index = read_index_folder(sys.argv[2], model=model)
hits = search(index, model, {queries!r}, k=5, rerank=True)
metadata = [index.metadata(image_id) for image_id in index.image_ids]
print("RESULT" + json.dumps({{"ids": index.image_ids, "metadata": metadata, "hits": hits}}))
"""


def test_save_then_load_in_new_process_gives_identical_results(index, model, images, tmp_path):
    pil_images, ids = images
    add_images(index, model, pil_images, ids, metadata=[{"n": i} for i in range(4)])
    remove_images(index, ids[1:2], model=model)
    model.save_pretrained(tmp_path / "model")
    index.save(tmp_path / "index")
    expected = search(index, model, QUERIES, k=5, rerank=True)
    script = LOAD_AND_SEARCH.format(queries=QUERIES)
    output = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "index")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert output.returncode == 0, output.stderr[-2000:]
    loaded = json.loads(output.stdout.split("RESULT", 1)[1])
    assert tuple(loaded["ids"]) == index.image_ids
    assert loaded["metadata"] == [index.metadata(image_id) for image_id in index.image_ids]
    for got, want in zip(loaded["hits"], expected):
        assert [(h["image_id"], h["identifier"]) for h in got] == [
            (h["image_id"], h["identifier"]) for h in want
        ]
        assert [h["fused_score"] for h in got] == pytest.approx([h["fused_score"] for h in want], abs=1e-4)


def test_failed_save_keeps_previous_folder(index, model, images, tmp_path, monkeypatch):
    folder = tmp_path / "index"
    index.save(folder)
    add_images(index, model, images[0][:2], images[1][:2])

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("modeling_sigma.modeling.index._write_json", fail)  # after the tensors are written
    with pytest.raises(OSError, match="simulated"):
        index.save(folder)
    monkeypatch.undo()
    assert SigmaIndex.load(folder).image_ids == tuple(SEED_IDS)
    assert sorted(os.listdir(tmp_path)) == ["index"]  # the temp folder is gone
    # a save that died between its two renames: only the backup exists; load restores it
    os.replace(folder, tmp_path / ".index.old-crash")
    assert read_index_folder(folder, model=model).image_ids == tuple(SEED_IDS) and folder.is_dir()


KILLED_SAVE = """
import json, sys, time
from modeling_sigma.modeling import index as index_module
from modeling_sigma.modeling.index import SigmaIndex
index = SigmaIndex.load(sys.argv[1])
index.remove(list(index.image_ids))

def hang(path, payload):
    open(path, "w").write(json.dumps(payload)[:20])  # half a file, then stall until killed
    open(sys.argv[2], "w").close()
    time.sleep(120)

index_module._write_json = hang
index.save(sys.argv[1])
"""


def test_process_killed_mid_save_leaves_previous_index(index, model, tmp_path):
    folder, ready = tmp_path / "index", tmp_path / "ready"
    index.save(folder)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(folder), str(ready)], stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the saving process never reached the middle of the save"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    loaded = read_index_folder(folder, model=model)
    assert loaded.image_ids == tuple(SEED_IDS) and torch.equal(loaded.codes, SEED_CODES)
    assert any(name.startswith(".index.tmp-") for name in os.listdir(tmp_path))
    loaded.save(folder)  # the next save removes the dead process's temp folder
    assert not any(name.startswith(".index.tmp-") for name in os.listdir(tmp_path))
