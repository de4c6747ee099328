"""Tests for SigmaIndex: the one index type (codes, image ids, metadata, trie), its folder format, the
checkpoint's copy of it, and the formats of earlier releases."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sigma_testing_utils import LAYOUT, build_tiny_model

from modeling_sigma.modeling.index import SigmaIndex, SigmaIndexSnapshotError, model_fingerprint
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
from modeling_sigma.modeling.trie import SigmaIdentifierTrie

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PICKLE_SUFFIXES = {".pt", ".bin", ".pth", ".pkl", ".pickle"}
QUERIES = ["a red circle", "two green squares next to a yellow star"]


@pytest.fixture(scope="module")
def tiny():
    model, processor, codes, image_ids = build_tiny_model()
    return model, codes, image_ids


@pytest.fixture
def index(tiny):
    model, codes, image_ids = tiny
    return SigmaIndex.from_model(model, codes[:6], image_ids[:6], [{"n": i} for i in range(6)])


def state(index):
    return (
        index.codes.tolist(),
        index.image_ids,
        [index.metadata(i) for i in index.image_ids],
        len(index.trie),
    )


def test_lookup_and_identifier_strings(index, tiny):
    _, codes, image_ids = tiny
    assert len(index) == 6 and image_ids[0] in index and image_ids[7] not in index
    absent = codes[6].tolist()
    out_of_range = [LAYOUT.sizes[0], 0, 0, 0, 0]
    assert index.lookup(torch.stack([codes[3], codes[0]])).tolist() == [3, 0]
    assert index.lookup(torch.tensor([absent, out_of_range])).tolist() == [-1, -1]
    identifier = LAYOUT.codes_to_string(codes[2].tolist())
    assert index.identifier(image_ids[2]) == identifier and index.image_id_of(identifier) == image_ids[2]
    assert index.identifiers() == {
        i: LAYOUT.codes_to_string(c.tolist()) for i, c in zip(image_ids[:6], codes)
    }
    with pytest.raises(KeyError, match="not in the index"):
        index.image_id_of(LAYOUT.codes_to_string(absent))
    with pytest.raises(ValueError):
        index.image_id_of("<id1_0>")
    with pytest.raises(KeyError, match="'nope' is not in the index"):
        index.identifier("nope")
    assert index.metadata(image_ids[1]) == {"n": 1}


def test_add_remove_and_bad_input_changes_nothing(index, tiny):
    _, codes, image_ids = tiny
    before = state(index)
    cases = [
        ((codes[6:8], [image_ids[0], "x"]), "already in the index"),
        ((codes[6:8], ["x", "x"]), "repeated"),
        ((codes[6:8], ["x"]), "2 identifiers for 1"),
        ((codes[0:1], ["x"]), "share one identifier"),
        ((torch.tensor([[0, 0, 0, 0, 99]]), ["x"]), "out of range"),
        ((codes[6:7], ["x"], [{"f": object()}]), "JSON"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            index.add(*args)
        assert state(index) == before
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([image_ids[0], "missing"])
    assert state(index) == before
    index.add(codes[6:8], image_ids[6:8], [{"new": True}, None])
    assert index.lookup(codes[6:8]).tolist() == [6, 7] and index.metadata(image_ids[7]) == {}
    index.remove(image_ids[1:3])
    assert index.lookup(codes[:3]).tolist() == [0, -1, -1] and not bool(index.trie.contains(codes[1:3]).any())
    assert index.image_ids == (image_ids[0], *image_ids[3:8])


def test_fresh_suffixes_fill_gaps_in_row_order(tiny):
    model, _, _ = tiny
    index = SigmaIndex.from_model(model, torch.tensor([[1, 0, 1, 0, 0], [1, 0, 1, 0, 2]]), ["a", "b"])
    prefixes = torch.tensor([[1, 0, 1, 0], [2, 1, 1, 1], [2, 1, 1, 1]])  # (1, 0, 1, 0) uses suffixes 0 and 2
    assert index.fresh_suffixes(prefixes).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"prefix \[1, 0, 1, 0\] has no free suffix left"):
        index.fresh_suffixes(torch.tensor([[1, 0, 1, 0]] * 2))  # suffix_size 3


def test_copy_and_subset_are_independent(index, tiny):
    _, codes, image_ids = tiny
    copy, subset = index.copy(), index.subset([image_ids[4], image_ids[1]])
    copy.remove([image_ids[0]])
    assert image_ids[0] in index and len(index) == 6 and len(copy) == 5
    assert subset.image_ids == (image_ids[4], image_ids[1]) and subset.lookup(codes[:2]).tolist() == [-1, 1]
    assert subset.metadata(image_ids[4]) == {"n": 4}
    with pytest.raises(KeyError, match="'zzz'"):
        index.subset(["zzz"])


def test_folder_round_trip_and_compatibility(index, tiny, tmp_path):
    model, _, _ = tiny
    index.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["index.json", "index.safetensors"]
    loaded = SigmaIndex.load(tmp_path / "index", model=model)
    assert state(loaded)[1:] == state(index)[1:] and torch.equal(loaded.codes, index.codes)
    assert loaded.fingerprint == model_fingerprint(model)
    other = model.config.__class__.from_dict(model.config.to_dict())
    other.identifier_token_offsets = [offset + 1 for offset in other.identifier_token_offsets]
    with pytest.raises(ValueError, match="incompatible model: identifier_token_offsets"):
        SigmaIndex.load(tmp_path / "index", model=other)


def test_a_read_across_two_saves_is_detected(index, tmp_path):
    index.save(tmp_path / "a")
    index.save(tmp_path / "b")
    (tmp_path / "a" / "index.json").replace(
        tmp_path / "b" / "index.json"
    )  # json of one save, tensors of another
    with pytest.raises(SigmaIndexSnapshotError, match="replaced while it was read"):
        SigmaIndex.load(tmp_path / "b")


def test_format_1_open_set_folder_still_loads(index, tiny, tmp_path):
    """The folder `SigmaImageIndex.save` wrote before the one index type (codes + trie keys, format_version 1)."""
    model, _, _ = tiny
    folder = tmp_path / "old-index"
    folder.mkdir()
    trie = SigmaIdentifierTrie.from_codes(index.codes, LAYOUT.sizes)
    tensors = {"codes": index.codes.contiguous()}
    tensors.update({f"trie.{name}": value for name, value in trie.state_dict().items()})
    save_file(tensors, str(folder / "index.safetensors"))
    payload = {
        "format_version": 1,
        "fingerprint": model_fingerprint(model),
        "image_ids": list(index.image_ids),
        "metadata": [index.metadata(i) for i in index.image_ids],
    }
    (folder / "index.json").write_text(json.dumps(payload))
    loaded = SigmaIndex.load(folder, model=model)
    assert state(loaded)[1:] == state(index)[1:] and torch.equal(loaded.codes, index.codes)


def test_checkpoint_holds_the_index_and_no_pickle(tiny, tmp_path):
    model, _, image_ids = tiny
    model.save_pretrained(tmp_path / "checkpoint")
    files = [path for path in (tmp_path / "checkpoint").rglob("*") if path.is_file()]
    assert not [path.name for path in files if path.suffix in PICKLE_SUFFIXES]
    assert {path.suffix for path in files} <= {".safetensors", ".json", ".py", ".jinja"}
    assert (tmp_path / "checkpoint" / "sigma_index" / "index.safetensors").is_file()
    loaded = SigmaForRetrieval.from_pretrained(tmp_path / "checkpoint").eval()
    assert loaded.index.image_ids == tuple(image_ids) and torch.equal(loaded.index.codes, model.index.codes)
    assert loaded.retrieve(QUERIES, k=3) == model.retrieve(QUERIES, k=3)


def test_legacy_pickle_checkpoint_loads_with_a_warning_and_resaves_without_pickle(tiny, tmp_path, caplog):
    """A checkpoint of the release before SigmaIndex: `sigma_index.pt` (torch.save) + `sigma_index.json`."""
    import shutil

    model, codes, image_ids = tiny
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    shutil.rmtree(folder / "sigma_index")
    trie = SigmaIdentifierTrie.from_codes(codes, LAYOUT.sizes)
    tensors = {f"trie.{name}": tensor for name, tensor in trie.state_dict().items()}
    tensors["codebook.codes"] = codes.contiguous()
    torch.save(tensors, folder / "sigma_index.pt")
    metadata = {"image_ids": list(image_ids), "identifier_layout": model.config.identifier_layout}
    (folder / "sigma_index.json").write_text(json.dumps(metadata))
    with caplog.at_level(logging.WARNING):
        loaded = SigmaForRetrieval.from_pretrained(folder).eval()
    assert "old pickle format" in caplog.text and "save_pretrained" in caplog.text
    assert loaded.index.image_ids == tuple(image_ids) and torch.equal(loaded.index.codes, codes)
    assert loaded.retrieve(QUERIES, k=3) == model.retrieve(QUERIES, k=3)
    loaded.save_pretrained(folder)  # the conversion the warning names
    assert not [p for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES]
    assert SigmaForRetrieval.from_pretrained(folder).index.image_ids == tuple(image_ids)


def test_retrieve_searches_the_index_it_is_given(tiny):
    model, codes, image_ids = tiny
    gallery = model.index.subset(image_ids[:4])
    hits = model.retrieve(QUERIES, k=10, index=gallery)
    assert all({hit["image_id"] for hit in query_hits} == set(image_ids[:4]) for query_hits in hits)
    assert len(model.index) == len(image_ids)  # the model's own index is untouched


def test_index_loads_from_a_hub_repo_through_the_cache(tiny, tmp_path, monkeypatch):
    """`from_pretrained("org/name")` fetches `sigma_index/` with `cached_file` (here: an offline Hub cache)."""
    import shutil

    model, _, image_ids = tiny
    model.save_pretrained(tmp_path / "checkpoint")
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--me--sigma-tiny"
    shutil.copytree(tmp_path / "checkpoint", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = SigmaForRetrieval.from_pretrained("me/sigma-tiny", cache_dir=str(tmp_path / "hub")).eval()
    assert loaded.index is not None and loaded.index.image_ids == tuple(image_ids)
    assert loaded.retrieve(QUERIES, k=2) == model.retrieve(QUERIES, k=2)
