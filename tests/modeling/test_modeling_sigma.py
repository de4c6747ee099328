"""Tests for SigmaForRetrieval: joint loss, identifier pooling, constrained retrieval, save/load as remote code."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from sigma_testing_utils import LAYOUT, build_tiny_model

QUERIES = ["a red circle", "two green squares next to a yellow star on a white background", "black cross"]


@pytest.fixture(scope="module")
def tiny():
    model, processor, codes, image_ids = build_tiny_model()
    return model, processor, codes, image_ids


def teacher_forced_batch(processor, codes, padding_side="right"):
    answers = [LAYOUT.codes_to_string(row.tolist()) for row in codes[: len(QUERIES)]]
    batch = processor.process_queries(QUERIES, answers=answers, padding_side=padding_side)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch, labels


def reference_prefix_fn(codes, offsets, prompt_length, eos):
    """GENRE-style dict-of-dicts trie, as in transformers' `prefix_allowed_tokens_fn` examples."""
    root = {}
    for row in (codes + torch.tensor(offsets)).tolist():
        node = root
        for token in row:
            node = node.setdefault(token, {})

    def allowed(batch_id, sent):
        node = root
        for token in sent[prompt_length:].tolist():
            node = node.get(token)
            if node is None:
                return [eos]
        return list(node) or [eos]

    return allowed


def test_lambda_zero_loss_is_exactly_lm_loss(tiny):
    model, processor, codes, _ = tiny
    model.config.lambda_ssp = 0.0
    try:
        batch = processor.process_queries(QUERIES[:1], answers=[LAYOUT.codes_to_string(codes[0].tolist())])
        with torch.no_grad():
            output = model(**batch, labels=batch["input_ids"], similarity_labels=torch.tensor([0.7]))
            reference = model.backbone(**batch, labels=batch["input_ids"])
        assert torch.equal(output.loss, reference.loss) and torch.equal(output.gen_loss, reference.loss)
        assert torch.equal(output.logits, reference.logits)
        assert output.similarity_loss is not None
    finally:
        model.config.lambda_ssp = 0.1


def test_joint_loss_and_gradients_reach_head_and_backbone(tiny):
    model, processor, codes, _ = tiny
    batch, labels = teacher_forced_batch(processor, codes)
    targets = torch.tensor([0.2, 0.9, 0.5])
    output = model(**batch, labels=labels, similarity_labels=targets)
    expected_mse = torch.mean((output.similarity - targets) ** 2)
    assert output.similarity_loss.item() == pytest.approx(expected_mse.item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(output.gen_loss.item() + 0.1 * expected_mse.item(), rel=1e-5)
    assert ((output.similarity >= 0) & (output.similarity <= 1)).all()
    model.zero_grad()
    output.loss.backward()
    head_grad = model.similarity_head.dense_in.weight.grad
    layer_grad = model.backbone.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    assert layer_grad is not None and layer_grad.abs().sum() > 0
    model.zero_grad()


def test_loss_without_similarity_labels_is_gen_loss(tiny):
    model, processor, codes, _ = tiny
    batch, labels = teacher_forced_batch(processor, codes)
    with torch.no_grad():
        output = model(**batch, labels=labels)
    assert output.similarity_loss is None and torch.equal(output.loss, output.gen_loss)


def test_identifier_positions_left_and_right_padding(tiny):
    model, processor, codes, _ = tiny
    right, _ = teacher_forced_batch(processor, codes, "right")
    left, _ = teacher_forced_batch(processor, codes, "left")
    for batch in (right, left):
        mask = model.identifier_mask(batch["input_ids"], batch["attention_mask"])
        assert mask.sum(dim=-1).tolist() == [LAYOUT.length] * len(QUERIES)
        tokens = batch["input_ids"][mask].view(len(QUERIES), -1)
        decoded = processor.batch_decode(tokens)
        assert decoded == [LAYOUT.codes_to_string(row.tolist()) for row in codes[: len(QUERIES)]]
    with torch.no_grad():
        similarity_right = model(**right).similarity
        similarity_left = model(**left).similarity
    torch.testing.assert_close(similarity_right, similarity_left, atol=1e-5, rtol=1e-5)


def test_stage1_image_inputs(tiny):
    from PIL import Image

    model, processor, codes, _ = tiny
    images = [Image.new("RGB", (64, 64), "red"), Image.new("L", (20, 90), 128)]
    answers = [LAYOUT.codes_to_string(row.tolist()) for row in codes[:2]]
    batch = processor.process_images(images, answers=answers, padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        output = model(**batch, labels=labels)
    assert torch.isfinite(output.loss) and output.similarity.shape == (2,)


def test_retrieve_returns_k_distinct_indexed_images(tiny):
    model, _, codes, image_ids = tiny
    results = model.retrieve(QUERIES, k=4, batch_size=2)
    indexed = {LAYOUT.codes_to_string(row.tolist()): image_id for row, image_id in zip(codes, image_ids)}
    assert len(results) == len(QUERIES)
    for hits in results:
        assert len(hits) == 4 and len({hit["image_id"] for hit in hits}) == 4
        for hit in hits:
            assert indexed[hit["identifier"]] == hit["image_id"]
            assert 0.0 <= hit["similarity"] <= 1.0
        assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)


def test_trie_generation_matches_prefix_constrained_reference(tiny):
    model, processor, codes, _ = tiny
    batch = processor.process_queries(QUERIES)
    prompt_length = batch["input_ids"].shape[1]
    eos, num_beams = model.config.eos_token_id, 5
    common = dict(num_beams=num_beams, num_return_sequences=num_beams, output_scores=True)
    common.update(return_dict_in_generate=True, max_new_tokens=LAYOUT.length + 1)
    with torch.no_grad():
        ours = model.generate(**batch, **common)
        fn = reference_prefix_fn(codes, model.config.identifier_token_offsets, prompt_length, eos)
        reference = model.generate(**batch, prefix_allowed_tokens_fn=fn, **common)
    assert torch.equal(ours.sequences, reference.sequences)
    assert torch.equal(ours.sequences_scores, reference.sequences_scores)


def test_bad_inputs(tiny, caplog):
    model, processor, codes, image_ids = tiny
    with pytest.raises(ValueError, match="query 1: empty"):
        model.retrieve(["a red circle", "   "], k=2)
    with pytest.raises(ValueError):
        model.retrieve([], k=2)
    with pytest.raises(ValueError, match="max_query_length"):
        model.retrieve(["red circle " * 200], k=2)
    with pytest.raises(ValueError, match="num_beams"):
        model.retrieve(["red circle"], k=3, num_beams=2)
    with caplog.at_level(logging.WARNING):
        hits = model.retrieve(["red circle"], k=10_000)[0]
    assert len(hits) == len(image_ids) and "larger than" in caplog.text
    with pytest.raises(KeyError, match="not in the index"):
        missing = next(row for row in _all_codes() if not model.index.trie.contains(row).item())
        model.identifier_to_image_id(LAYOUT.codes_to_string(missing))
    with pytest.raises(ValueError):
        model.identifier_to_image_id("<id1_0><id2_0>")
    assert model.identifier_to_image_id(LAYOUT.codes_to_string(codes[3].tolist())) == image_ids[3]
    with pytest.raises(ValueError, match="unique"):
        model.set_index(torch.cat([codes[:2], codes[:1]]), ["a", "b", "c"])


def test_retrieve_without_index_raises():
    from sigma_testing_utils import CAPTIONS, TINY_SIZES

    from modeling_sigma.training.backbone import build_sigma_model

    model, _ = build_sigma_model(
        "embedded", LAYOUT, captions=CAPTIONS, similarity_hidden_size=16, **TINY_SIZES
    )
    with pytest.raises(ValueError, match="set_index"):
        model.retrieve(["red circle"], k=1)


def _all_codes():
    import itertools

    return [list(row) for row in itertools.product(*[range(size) for size in LAYOUT.sizes])]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModel, AutoProcessor
    directory = sys.argv[1]
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    batch = torch.load(directory + "/inputs.pt")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.save(logits, directory + "/reloaded_logits.pt")
    result = {
        "model_module": type(model).__module__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "retrieved": model.retrieve(json.load(open(directory + "/queries.json")), k=3),
    }
    json.dump(result, open(directory + "/reloaded.json", "w"))
    """
)


def test_save_and_load_as_remote_code_in_fresh_process(tiny, tmp_path):
    model, processor, codes, _ = tiny
    directory = tmp_path / "checkpoint"
    model.save_pretrained(directory)
    batch, _ = teacher_forced_batch(processor, codes)
    batch = {key: value for key, value in batch.items()}
    torch.save(batch, directory / "inputs.pt")
    (directory / "queries.json").write_text(json.dumps(QUERIES))
    with torch.no_grad():
        logits = model(**batch).logits
    expected = model.retrieve(QUERIES, k=3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(directory)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reloaded = json.loads((directory / "reloaded.json").read_text())
    assert reloaded["model_class"] == "SigmaForRetrieval"
    assert reloaded["model_module"].startswith("transformers_modules")
    assert reloaded["processor_class"] == "SigmaProcessor"
    assert torch.equal(torch.load(directory / "reloaded_logits.pt"), logits)
    assert reloaded["retrieved"] == expected


def test_resume_loads_every_checkpoint_weight(tmp_path):
    """Resuming a stage restores the saved weights (Trainer's raw `load_state_dict(strict=False)` would miss
    the whole backbone: checkpoints keep Qwen2.5-VL's original key names)."""
    from safetensors import safe_open

    from modeling_sigma.training.trainer import load_checkpoint_weights

    saved, *_ = build_tiny_model(seed=0)
    saved.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as stream:
        names = set(stream.keys())
    assert names != set(saved.state_dict()), "saved names equal module names: the conversion is not covered"
    fresh, *_ = build_tiny_model(seed=1)
    assert not torch.equal(fresh.get_input_embeddings().weight, saved.get_input_embeddings().weight)
    load_checkpoint_weights(fresh, str(tmp_path))
    expected = saved.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_forward_cache_continues_like_a_full_forward(tiny):
    # the cache is `cache` from transformers 5.24 on and `past_key_values` before; both releases must decode alike
    from modeling_sigma.modeling.modeling_sigma import CACHE_NAME

    model, processor, codes, _ = tiny
    batch = processor.process_queries(QUERIES[:1], answers=[LAYOUT.codes_to_string(codes[0].tolist())])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask)
        head = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        cache = getattr(head, CACHE_NAME)
        assert cache is not None and head[CACHE_NAME] is cache
        # explicit positions: the backbone would otherwise offset them by rope deltas a previous generate left
        last = mask.sum(-1, keepdim=True) - 1  # (1, 1)
        step = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=last, use_cache=True,
                     **{CACHE_NAME: cache})  # fmt: skip
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=ids, past_key_values=cache, cache=cache)
