"""Pseudo-queries: the captioning task, sampled captions, their cache, and stage 3 training on them."""

import json

import pytest
import torch

from modeling_sigma.training import pseudo_queries
from modeling_sigma.training.collator import IGNORE_INDEX, SigmaCollator
from modeling_sigma.training.pseudo_queries import (
    SigmaCaptionerConfig,
    caption_images,
    captioning_examples,
    content_key,
    get_pseudo_queries,
    pseudo_query_path,
    pseudo_query_split,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def captioner(tiny_corpus):
    from modeling_sigma.training.backbone import build_sigma_model

    captions = [c for image_captions in tiny_corpus["train"]["captions"] for c in image_captions]
    torch.manual_seed(0)
    model, processor = build_sigma_model("embedded", captions=captions)
    return model.eval(), processor


def test_captioning_examples_cover_every_caption(tiny_corpus):
    train = tiny_corpus["train"]
    examples = captioning_examples(train, image_source=2)
    assert len(examples) == sum(len(c) for c in train["captions"])
    assert examples[0] == {
        "task": "caption",
        "image_source": 2,
        "image_row": 0,
        "answer": train["captions"][0][0],
    }
    assert examples[-1]["image_row"] == len(train) - 1


def test_collator_trains_the_caption_after_the_image(tiny_corpus, captioner):
    model, processor = captioner
    train = tiny_corpus["train"]
    batch = SigmaCollator(processor, model.config, image_sources=[train])(captioning_examples(train)[:3])
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape[0] == 3
    labels = batch["labels"][0]
    answer = processor.tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True)
    assert answer == train["captions"][0][0]
    prompt = processor.tokenizer.decode(batch["input_ids"][0][labels == IGNORE_INDEX])
    assert model.config.captioning_prompt in prompt and "<|image_pad|>" in prompt


def test_caption_images_samples_distinct_captions_per_image(tiny_corpus, captioner):
    model, processor = captioner
    config = SigmaCaptionerConfig(per_image=3, max_new_tokens=6)
    images = tiny_corpus["test"].select(range(5)).select_columns(["image"])
    first = caption_images(model, processor, images, model.config.captioning_prompt, config, batch_size=2)
    again = caption_images(model, processor, images, model.config.captioning_prompt, config, batch_size=2)
    assert len(first) == 5 and all(1 <= len(c) <= 3 and len(set(c)) == len(c) for c in first)
    assert first == again  # seeded
    assert not any("<id" in caption for captions in first for caption in captions)  # an untrained model too


def test_the_embedded_captioner_is_the_same_for_the_same_seed(tiny_corpus, tmp_path):
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    def trained(cache, draw, seed=0):
        torch.manual_seed(draw)  # what the process drew before must not matter
        config = SigmaCaptionerConfig(epochs=0.2, seed=seed)
        folder = pseudo_queries.train_embedded_captioner(tiny_corpus["train"], str(tmp_path / cache), config)
        return SigmaForRetrieval.from_pretrained(folder).state_dict()

    first, again, other = trained("a", 1), trained("b", 2), trained("c", 1, seed=1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_pseudo_query_split_replaces_the_captions(tiny_corpus):
    test = tiny_corpus["test"]
    ids = test["image_id"]
    queries = {ids[0]: ["a pseudo caption"], ids[2]: ["two", "more"]}
    split = pseudo_query_split(test, queries)
    assert split["image_id"] == [ids[0], ids[2]]
    assert split["captions"] == [["a pseudo caption"], ["two", "more"]]


def test_pseudo_queries_are_cached_and_keyed_by_content(tiny_corpus, tmp_path, monkeypatch):
    train, test = tiny_corpus["train"], tiny_corpus["test"]
    calls = []

    def fake_write(path, captioner, train, splits, cache_dir, config):
        calls.append(path)
        with open(path, "w") as stream:
            json.dump(
                {image_id: [f"caption of {image_id}"] for s in splits for image_id in s["image_id"]}, stream
            )

    monkeypatch.setattr(pseudo_queries, "write_pseudo_queries", fake_write)
    config = SigmaCaptionerConfig()
    (tmp_path / "pseudo-queries").mkdir()
    first = get_pseudo_queries("embedded", train, [test], str(tmp_path), config)
    second = get_pseudo_queries("embedded", train, [test], str(tmp_path), config)
    assert first == second and len(calls) == 1 and len(first) == len(test)
    other = pseudo_query_path(str(tmp_path), "embedded", train, [test.select(range(3))], config)
    assert other != calls[0]  # another set of images is another file
    assert content_key(test) == content_key(test.flatten_indices())


def test_several_processes_need_the_file_written_first(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FileNotFoundError, match="recipes/pseudo_queries.py"):
        get_pseudo_queries("embedded", tiny_corpus["train"], [tiny_corpus["test"]], str(tmp_path))
