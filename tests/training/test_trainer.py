"""SigmaTrainer: gradient accumulation, fp32 master weights, global batch, the final save and lazy images."""

import math

import pytest
import torch
from sigma_testing_utils import build_tiny_model
from transformers import Trainer, TrainingArguments
from trl import SFTConfig

from modeling_sigma.training.collator import SigmaCollator, SigmaEncodingCache
from modeling_sigma.training.examples import (
    comprehension_examples,
    memorization_examples,
    replay_examples,
    to_dataset,
)
from modeling_sigma.training.trainer import (
    SigmaTrainer,
    check_global_batch,
    train_and_save,
    upcast_for_training,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def alignment_rows(model, count=4):
    layout = model.config.layout
    identifiers = [layout.codes_to_string(row.tolist()) for row in model.index.codes[:count]]
    queries = ["a red circle", "two green squares on sand", "a black cross", "an orange star at the top left"]
    return [
        {"task": "align", "query": query, "answer": identifier, "soft_label": 0.25 * (index + 1)}
        for index, (query, identifier) in enumerate(zip(queries, identifiers))
    ]


def one_sgd_step(trainer_class, tmp_path, batch: int, accumulation: int) -> dict:
    """Weights after one optimiser step of plain SGD (lr 1, no clipping): their change is minus the gradient."""
    model, processor, _, _ = build_tiny_model(seed=0)
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = alignment_rows(model)
    arguments = dict(
        output_dir=str(tmp_path / f"{trainer_class.__name__}-{batch}x{accumulation}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        bf16=False,  # SFTConfig's default is bf16 autocast, whose rounding would blur the comparison
        seed=0,
    )
    common = dict(
        model=model, train_dataset=to_dataset(rows), data_collator=SigmaCollator(processor, model.config)
    )
    if trainer_class is SigmaTrainer:
        args = SFTConfig(**arguments, dataset_kwargs={"skip_prepare_dataset": True})
        trainer = SigmaTrainer(args=args, processing_class=processor.tokenizer, **common)
    else:
        trainer = Trainer(args=TrainingArguments(**arguments), **common)
    loss = trainer.train().training_loss
    gradients = {name: before[name] - p.detach() for name, p in model.named_parameters()}
    return {"loss": loss, "gradients": gradients}


@pytest.mark.parametrize("trainer_class", [SigmaTrainer, Trainer])
def test_accumulating_two_batches_equals_one_batch_twice_the_size(trainer_class, tmp_path):
    """Rows with equally many answer tokens and one soft label each: the mean over 4 equals the mean of two
    means over 2, so accumulation 2 must give the batch-4 gradient (it was twice that: the loss was taken as
    normalised by `num_items_in_batch` and never divided by the accumulation steps)."""
    doubled = one_sgd_step(trainer_class, tmp_path, batch=4, accumulation=1)
    accumulated = one_sgd_step(trainer_class, tmp_path, batch=2, accumulation=2)
    assert accumulated["loss"] == pytest.approx(doubled["loss"], rel=1e-5)
    norm = math.sqrt(sum(g.pow(2).sum() for g in doubled["gradients"].values()))
    difference = math.sqrt(
        sum((accumulated["gradients"][n] - g).pow(2).sum() for n, g in doubled["gradients"].items())
    )
    assert norm > 0 and difference <= 1e-5 * norm, (difference, norm)


def test_bf16_weights_are_trained_as_an_fp32_master_copy():
    model, _, _, _ = build_tiny_model()
    model.to(torch.bfloat16)
    assert upcast_for_training(model) is torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert upcast_for_training(model) is torch.float32  # already fp32: unchanged


def test_a_launch_that_changes_the_global_batch_is_refused():
    args = SFTConfig(
        output_dir="unused", per_device_train_batch_size=5, gradient_accumulation_steps=1, use_cpu=True
    )
    check_global_batch(args, 5)
    check_global_batch(args, None)
    with pytest.raises(ValueError, match="global batch 5 .* differs from global_batch_size 10"):
        check_global_batch(args, 10)


def test_replay_draws_a_rounded_share_once():
    replay = [{"task": "memorize", "image_source": 0, "image_row": row, "answer": "x"} for row in range(50)]
    assert len(replay_examples(replay, 0.2, 15, seed=0)) == 3  # 0.2 * 15 = 3.0000000000000004: not 4
    assert len(replay_examples(replay, 0.2, 1000, seed=0)) == 50  # capped at what there is
    assert replay_examples(replay, 0.3, 20, seed=1) == replay_examples(replay, 0.3, 20, seed=1)
    with pytest.raises(ValueError, match="replay_fraction"):
        replay_examples(replay, -0.1, 20, seed=0)


def test_examples_hold_no_images_and_the_collator_decodes_them(tiny_corpus):
    model, processor, _, _ = build_tiny_model()
    train = tiny_corpus["train"].select(range(6))
    identifiers = {image_id: "<id1_0><id2_0><id3_0><id4_0><id5_0>" for image_id in train["image_id"]}
    examples = memorization_examples([train], identifiers)
    assert [e["image_row"] for e in examples] == list(range(6))
    assert all(isinstance(v, int | str) for e in examples for v in e.values())  # rows, not pixels
    examples += comprehension_examples(train.select(range(1)), identifiers)
    dataset = to_dataset(examples)
    batch = SigmaCollator(processor, model.config, image_sources=[train])([dataset[0], dataset[6]])
    assert batch["image_grid_thw"].shape[0] == 1 and batch["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="image_sources"):
        SigmaCollator(processor, model.config)([dataset[0]])


def test_cached_prompts_give_the_batches_an_uncached_collator_gives(tiny_corpus):
    """Each image's captions come back every epoch: the second time the prompt (pixels included) is read from the
    cache, and every tensor of the batch is the same as without one."""
    model, processor, _, _ = build_tiny_model()
    train = tiny_corpus["train"].select(range(4))
    identifiers = {image_id: "<id1_0><id2_0><id3_0><id4_0><id5_0>" for image_id in train["image_id"]}
    examples = memorization_examples([train], identifiers) + comprehension_examples(train, identifiers)
    examples += [{"task": "caption", "image_source": 0, "image_row": 1, "answer": "a red circle"}]
    examples += alignment_rows(model, count=2)
    cached = SigmaCollator(processor, model.config, image_sources=[train])
    plain = SigmaCollator(processor, model.config, image_sources=[train], cache_bytes=0)
    for _ in range(2):  # two epochs: filled, then read
        for start in range(0, len(examples), 3):
            batch, reference = cached(examples[start : start + 3]), plain(examples[start : start + 3])
            assert batch.keys() == reference.keys()
            for key in batch:  # similarity_labels are NaN where a row has no soft label
                torch.testing.assert_close(batch[key], reference[key], rtol=0, atol=0, equal_nan=True)
    assert len(cached.prompts) == len(
        {(e["task"], str(e.get("image_row") or e.get("query"))) for e in examples}
    )
    assert len(plain.prompts) == 0


def test_the_encoding_cache_drops_the_least_recently_used_beyond_its_budget():
    cache = SigmaEncodingCache(max_bytes=10)
    cache.put("a", 1, size=4)
    cache.put("b", 2, size=4)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3, size=4)  # 12 bytes > 10: "b" goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3) and cache.bytes == 8
    cache.put("huge", 4, size=11)  # larger than the whole budget: never kept
    assert cache.get("huge") is None and len(cache) == 2


def test_logits_at_labels_give_the_full_logits_loss_and_gradients(tiny_corpus):
    """Training applies the LM head only where a label is predicted: the loss, its gradient and the label rows'
    logits are those of the full `(batch, seq, vocab)` logits."""
    model, processor, _, _ = build_tiny_model(seed=0)
    train = tiny_corpus["train"].select(range(2))
    identifiers = {image_id: "<id1_1><id2_0><id3_2><id4_0><id5_1>" for image_id in train["image_id"]}
    examples = memorization_examples([train], identifiers) + alignment_rows(model, count=3)
    batch = SigmaCollator(processor, model.config, image_sources=[train])(examples)

    def loss_and_gradients(**flags):
        model.zero_grad()
        outputs = model(**batch, **flags)
        outputs.loss.backward()
        return outputs, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full, full_gradients = loss_and_gradients()
    at_labels, gradients = loss_and_gradients(logits_at_labels=True)
    assert full.label_logits is None and at_labels.logits is None
    predicting = batch["labels"][:, 1:] != -100
    torch.testing.assert_close(at_labels.label_logits, full.logits[:, :-1][predicting])
    torch.testing.assert_close(at_labels.gen_loss, full.gen_loss)
    torch.testing.assert_close(at_labels.loss, full.loss)
    assert gradients.keys() == full_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, full_gradients[name], rtol=1e-5, atol=1e-7, msg=name)


def test_final_save_writes_the_loaded_dtype(tmp_path):
    """A bf16 backbone trains in fp32 and is saved back in bf16 (what Qwen2.5-VL checkpoints hold)."""
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    model, processor, _, _ = build_tiny_model()
    model.to(torch.bfloat16)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,
    )
    train_and_save(model, processor, args, alignment_rows(model))
    saved = SigmaForRetrieval.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}
