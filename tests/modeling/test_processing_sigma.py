"""Tests for SigmaProcessor and the offline embedded tokenizer."""

import pytest
import torch
from PIL import Image
from sigma_testing_utils import CAPTIONS, LAYOUT

from modeling_sigma.modeling.processing_sigma import SigmaProcessor
from modeling_sigma.training.backbone import add_identifier_tokens, build_image_processor, build_tokenizer


@pytest.fixture(scope="module")
def processor_and_offsets():
    tokenizer = build_tokenizer(CAPTIONS, vocab_size=300)
    offsets = add_identifier_tokens(tokenizer, LAYOUT)
    return SigmaProcessor(image_processor=build_image_processor(), tokenizer=tokenizer), offsets


def test_identifier_tokens_are_contiguous_single_non_special_tokens(processor_and_offsets):
    processor, offsets = processor_and_offsets
    tokenizer = processor.tokenizer
    codes = [3, 2, 1, 0, 2]
    identifier = LAYOUT.codes_to_string(codes)
    ids = tokenizer(identifier, add_special_tokens=False)["input_ids"]
    assert ids == [offset + code for offset, code in zip(offsets, codes)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == identifier
    assert tokenizer.convert_tokens_to_ids(LAYOUT.token_strings()) == list(range(offsets[0], offsets[0] + 15))


def test_queries_are_left_padded_by_default(processor_and_offsets):
    processor, _ = processor_and_offsets
    batch = processor.process_queries(["red circle", "a much longer query about a green square"])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    right = processor.process_queries(["red circle", "a much longer query"], padding_side="right")
    assert right["attention_mask"][0, -1] == 0
    text = processor.decode(batch["input_ids"][1])
    assert text.endswith("<|im_start|>assistant\n") and "green square" in text
    with pytest.raises(ValueError, match="non-empty"):
        processor.process_queries(["ok", ""])


def test_images_become_four_image_tokens_and_odd_images_are_fixed(processor_and_offsets):
    processor, _ = processor_and_offsets
    image_pad = processor.image_token_id
    images = [
        Image.new("RGB", (64, 64)),
        Image.new("RGBA", (64, 64)),
        Image.new("L", (5, 3)),
        Image.new("P", (90, 20)),
    ]
    batch = processor.process_images(images)
    counts = (batch["input_ids"] == image_pad).sum(dim=-1)
    assert counts[0] == 4 and counts[1] == 4 and (counts >= 1).all()
    assert batch["image_grid_thw"].shape == (4, 3)
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_pad)
    with pytest.raises(ValueError, match="aspect ratio"):
        processor.process_images([Image.new("RGB", (1000, 2))])
    with pytest.raises(TypeError):
        processor.process_images(["not an image"])


def test_save_and_reload(processor_and_offsets, tmp_path):
    processor, _ = processor_and_offsets
    processor.save_pretrained(tmp_path)
    reloaded = SigmaProcessor.from_pretrained(tmp_path)
    queries = ["red circle", "two green squares"]
    assert torch.equal(
        processor.process_queries(queries)["input_ids"], reloaded.process_queries(queries)["input_ids"]
    )
    image_batch = reloaded.process_images([Image.new("RGB", (64, 64))])
    assert (image_batch["input_ids"] == reloaded.image_token_id).sum() == 4
