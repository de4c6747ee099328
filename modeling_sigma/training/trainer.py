# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""`SigmaTrainer`, TRL's `SFTTrainer` optimising SIGMA's joint loss, and the train-resume-save loop of a stage."""

from __future__ import annotations

import logging
import os

from trl import SFTTrainer

from modeling_sigma.training.collator import IGNORE_INDEX, SigmaCollator
from modeling_sigma.training.examples import to_dataset

logger = logging.getLogger(__name__)


class SigmaTrainer(SFTTrainer):
    """`SFTTrainer` that optimises SIGMA's own loss (L_gen + λ·L_ssp) and logs both parts.

    Data arrive already as examples for `SigmaCollator` (`dataset_kwargs={"skip_prepare_dataset": True}`).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        outputs = model(**inputs, use_cache=False)
        labels = inputs["labels"][:, 1:]
        predictions = outputs.logits[:, :-1].argmax(-1)
        valid = labels != IGNORE_INDEX
        accuracy = ((predictions == labels) & valid).sum() / valid.sum().clamp(min=1)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy.item())
        self._metrics[mode]["gen_loss"].append(outputs.gen_loss.item())
        if outputs.similarity_loss is not None:
            self._metrics[mode]["similarity_loss"].append(outputs.similarity_loss.item())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume with the checkpoint's weights. Trainer's own loader reads the safetensors file with
        `load_state_dict(strict=False)`, which skips the Qwen2.5-VL key conversion that `from_pretrained` applies
        (checkpoints keep the original `backbone.model.*` / `backbone.visual.*` names): every backbone weight
        would be reported missing and training would go on from the freshly built weights."""
        target = model if model is not None else self.model
        if type(target).__name__ != "SigmaForRetrieval" or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # peft adapters, FSDP shards
        load_checkpoint_weights(target, resume_from_checkpoint)


def load_checkpoint_weights(model, folder: str) -> None:
    """Copy the weights of a saved `SigmaForRetrieval` folder into `model` (strict: every key must match)."""
    logger.info("Loading model weights from %s.", folder)
    saved = type(model).from_pretrained(folder)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step `checkpoint-N` in output_dir whose trainer state was written (a process killed
    while saving leaves an incomplete one behind, which is skipped)."""
    if not os.path.isdir(output_dir):
        return None
    steps = [
        int(name.split("-")[1])
        for name in os.listdir(output_dir)
        if name.startswith("checkpoint-")
        and name.split("-")[1].isdigit()
        and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json"))
    ]
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def train_and_save(model, processor, training_args, examples: list[dict], peft_config=None) -> dict:
    """Runs `SigmaTrainer` (resuming from the last checkpoint in output_dir) and saves the final model
    (LoRA adapters, if any, merged into it)."""
    if training_args.max_steps <= 0 and training_args.num_train_epochs == 0:
        logger.warning("num_train_epochs=0: stage skipped, the model is saved unchanged (ablation)")
        model.save_pretrained(training_args.output_dir)
        return {"skipped": True}
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    trainer = SigmaTrainer(
        model=model,
        args=training_args,
        train_dataset=to_dataset(examples),
        data_collator=SigmaCollator(processor, model.config, max_length=training_args.max_length or 1024),
        processing_class=processor.tokenizer,
        peft_config=peft_config,
    )
    logger.info(
        "training %d examples on %d process(es), %d per device",
        len(examples),
        training_args.world_size,
        training_args.per_device_train_batch_size,
    )
    last = last_complete_checkpoint(training_args.output_dir)
    if last:
        logger.info("Resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "merge_and_unload"):  # a peft model: fold the adapters into the weights
        trained = trained.merge_and_unload()
    if trainer.is_world_process_zero():
        trained.save_pretrained(training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return result.metrics


__all__ = ["SigmaTrainer", "last_complete_checkpoint", "load_checkpoint_weights", "train_and_save"]
