"""Tests for modeling_sigma/evaluation/retrieval.py: which images a Recall@K run searches (an index built for
the split or gallery and passed to retrieve), and that the model's own index never changes."""

import datasets
import pytest
import torch
from sigma_testing_utils import build_tiny_model

from modeling_sigma.evaluation.retrieval import evaluate_retrieval, index_split, retrieve_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    model, _, codes, image_ids = build_tiny_model()
    model.config.num_beams = 4
    return model, codes, image_ids


def split_of(image_ids: list[str]) -> datasets.Dataset:
    captions = [[f"a red circle number {i}", f"a blue star number {i}"] for i in range(len(image_ids))]
    return datasets.Dataset.from_dict({"image_id": image_ids, "captions": captions})


def test_split_searches_only_its_own_images(tiny):
    model, codes, image_ids = tiny
    split = split_of(image_ids[:6])
    rankings, relevant = retrieve_split(model, split, k=4)
    assert relevant == [image_id for image_id in image_ids[:6] for _ in range(2)]
    assert all(len(hits) == 4 and set(hits) <= set(image_ids[:6]) for hits in rankings)
    assert model.index.image_ids == tuple(image_ids) and torch.equal(model.index.codes, codes)  # untouched


def test_gallery_searches_the_split_among_other_images(tiny):
    model, codes, image_ids = tiny
    split, gallery = split_of(image_ids[:3]), image_ids[:3] + image_ids[10:17]
    rankings, relevant = retrieve_split(model, split, k=8, gallery_ids=gallery)
    assert set(relevant) == set(image_ids[:3])
    assert all(len(hits) == 8 and set(hits) <= set(gallery) for hits in rankings)
    assert any(set(hits) - set(image_ids[:3]) for hits in rankings)  # the other images compete
    metrics = evaluate_retrieval(model, split, ks=(1, 10), gallery_ids=gallery)
    assert metrics["images"] == 10 and metrics["queries"] == 6
    assert metrics["recall@10"] == pytest.approx(1.0)  # 10 hits out of a 10-image gallery: always found
    assert model.index.image_ids == tuple(image_ids) and torch.equal(model.index.codes, codes)


def test_gallery_must_hold_the_split_and_be_indexed(tiny):
    model, codes, image_ids = tiny
    with pytest.raises(ValueError, match=r"not in the gallery \(e\.g\. 'img000'\)"):
        index_split(model, split_of(image_ids[:2]), gallery_ids=image_ids[1:5])
    with pytest.raises(ValueError, match=r"no identifier in the model's codebook \(e\.g\. 'new-photo'\)"):
        index_split(model, split_of(image_ids[:2]), gallery_ids=[*image_ids[:2], "new-photo"])
    assert model.index.image_ids == tuple(image_ids) and torch.equal(model.index.codes, codes)


def test_index_split_builds_a_gallery_index_and_an_explicit_index_is_searched(tiny):
    model, codes, image_ids = tiny
    gallery = index_split(model, split_of(image_ids[:2]), gallery_ids=image_ids[:5])
    assert gallery.image_ids == tuple(image_ids[:5]) and torch.equal(gallery.codes, codes[:5])
    other = model.index.subset(image_ids[20:])  # another index, e.g. an open-set folder
    split = split_of(image_ids[20:23])
    rankings, _ = retrieve_split(model, split, k=3, index=other)
    assert all(set(hits) <= set(image_ids[20:23]) for hits in rankings)
    with pytest.raises(ValueError, match="no identifier"):
        retrieve_split(model, split_of(image_ids[:2]), k=1, index=other)
