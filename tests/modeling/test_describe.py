"""Tests for SigmaForRetrieval.describe: the stage-2 ability (identifier → caption) at inference."""

import pytest
import torch
from sigma_testing_utils import LAYOUT, build_tiny_model

from modeling_sigma.training.collator import SigmaCollator


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny_model()
    torch.set_num_threads(threads)


def identifiers_of(codes, count):
    return [LAYOUT.codes_to_string(row.tolist()) for row in codes[:count]]


def test_one_caption_string_per_identifier(tiny):
    model, _, codes, _ = tiny
    identifiers = identifiers_of(codes, 3)
    captions = model.describe(identifiers, max_new_tokens=6)
    assert len(captions) == 3 and all(isinstance(caption, str) for caption in captions)
    assert captions == model.describe(identifiers, max_new_tokens=6)  # greedy: deterministic
    assert [model.describe([i], max_new_tokens=6)[0] for i in identifiers] == captions  # batch = one by one


def test_prompt_is_the_stage2_training_prompt(tiny, monkeypatch):
    model, processor, codes, _ = tiny
    identifier = identifiers_of(codes, 1)[0]
    seen = {}

    def fake_generate(input_ids, attention_mask, **kwargs):
        seen.update(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, torch.tensor([[model.config.eos_token_id]])], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    assert model.describe([identifier]) == [""]
    collator = SigmaCollator(processor, model.config)
    encoded = collator._encode({"task": "comprehend", "identifier": identifier, "answer": "a red circle"})
    prompt = [token for token, label in zip(encoded["input_ids"], encoded["labels"]) if label == -100]
    assert seen["input_ids"][0].tolist() == prompt
    assert seen["use_trie"] is False and seen["num_beams"] == 1 and seen["max_new_tokens"] == 48


def test_bad_identifiers_raise_clearly(tiny):
    model, _, codes, _ = tiny
    indexed = {tuple(row) for row in codes.tolist()}
    missing = next(
        row for row in ([a, 0, 0, 0, 0] for a in range(LAYOUT.sizes[0])) if tuple(row) not in indexed
    )
    missing_string = LAYOUT.codes_to_string(missing)
    with pytest.raises(KeyError, match="not in the index"):
        model.describe([missing_string])
    with pytest.raises(ValueError, match="malformed identifier"):
        model.describe(["a red circle"])
    with pytest.raises(ValueError, match="out of range"):
        model.describe([LAYOUT.codes_to_string([0, 0, 0, 0, 0]).replace("<id1_0>", "<id1_99>")])
    with pytest.raises(ValueError, match="non-empty list"):
        model.describe(identifiers_of(codes, 1)[0])
    with pytest.raises(ValueError, match="non-empty list"):
        model.describe([])
