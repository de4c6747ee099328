# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""`SigmaTrainer`, TRL's `SFTTrainer` optimising SIGMA's joint loss, and the train-resume-save loop of a stage."""

from __future__ import annotations

import logging
import os
import time

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from modeling_sigma.modeling.fused_projections import clear_fused_weights
from modeling_sigma.modeling.modeling_sigma import label_targets
from modeling_sigma.training.collator import SigmaCollator
from modeling_sigma.training.examples import to_dataset
from modeling_sigma.training.job_pool import share_cores

logger = logging.getLogger(__name__)


class SigmaProgressCallback(TrainerCallback):
    """One log line every `every` share of the run: step, share done, seconds per step and time left.

    For runs whose tqdm bar is off (`disable_tqdm`, e.g. logs written to a file), so a person can still follow a
    long stage; only the main process prints.
    """

    def __init__(self, name: str, every: float = 0.05):
        self.name, self.every = name, every
        self.start, self.first_step, self.next_report = None, 0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.time(), state.global_step
        self.next_report = state.global_step + max(1, round(state.max_steps * self.every))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < self.next_report and state.global_step != state.max_steps:
            return
        self.next_report = state.global_step + max(1, round(state.max_steps * self.every))
        if state.is_world_process_zero:
            logger.info(
                "%s", self.progress_line(state.global_step, state.max_steps, time.time() - self.start)
            )

    def progress_line(self, step: int, max_steps: int, elapsed: float) -> str:
        done = max(1, step - self.first_step)
        per_step = elapsed / done
        left = per_step * max(0, max_steps - step)
        return (
            f"{self.name}: step {step}/{max_steps} ({100 * step / max(1, max_steps):.0f}%), "
            f"{per_step:.2f} s/step, about {format_duration(left)} left"
        )


class SigmaCoreShareCallback(TrainerCallback):
    """Before each optimiser step, takes the cores the other steps of the end-to-end job leave free
    (`job_pool.share_cores`; nothing outside a pool worker)."""

    def on_step_begin(self, args, state, control, **kwargs):
        share_cores()


def format_duration(seconds: float) -> str:
    """`42 s`, `7 min`, `1 h 05 min`: a remaining time a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class SigmaTrainer(SFTTrainer):
    """`SFTTrainer` that optimises SIGMA's own loss (L_gen + λ·L_ssp) and logs both parts.

    Data arrive already as examples for `SigmaCollator` (`dataset_kwargs={"skip_prepare_dataset": True}`).
    The loss is the mean over one micro-batch, not normalised by `num_items_in_batch`: the Trainer divides it by
    the gradient-accumulation steps (`SigmaPreTrainedModel.accepts_loss_kwargs = False` says the same to it).
    """

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        # the LM head only where a label is predicted: same loss, a fraction of the head's time and memory
        outputs = model(**inputs, use_cache=False, logits_at_labels=True)
        _, targets = label_targets(inputs["labels"])  # (num_labels,), the rows of label_logits
        correct = (outputs.label_logits.argmax(-1) == targets).sum()
        accuracy = correct / max(1, targets.numel())
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


def train_and_save(
    model,
    processor,
    training_args,
    examples: list[dict],
    peft_config=None,
    image_sources=(),
    global_batch_size=None,
) -> dict:
    """Runs `SigmaTrainer` (resuming from the last checkpoint in output_dir) and saves the final model (LoRA
    adapters, if any, merged into it; full weights gathered from every rank under ZeRO-3 / FSDP).

    Args:
        image_sources: the splits that stage-1 examples point into (`memorization_examples`' `splits`).
        global_batch_size: when given, per-device batch × processes × accumulation must equal it.
    """
    if training_args.max_steps <= 0 and training_args.num_train_epochs == 0:
        logger.warning("num_train_epochs=0: stage skipped, the model is saved unchanged (ablation)")
        model.save_pretrained(training_args.output_dir)
        return {"skipped": True}
    check_global_batch(training_args, global_batch_size)
    prepare_distributed_args(training_args)
    saved_dtype = upcast_for_training(model)
    collator = SigmaCollator(
        processor, model.config, max_length=training_args.max_length or 1024, image_sources=image_sources
    )
    trainer = SigmaTrainer(
        model=model,
        args=training_args,
        train_dataset=to_dataset(examples),
        data_collator=collator,
        processing_class=processor.tokenizer,
        peft_config=peft_config,
        callbacks=[SigmaCoreShareCallback()],
    )
    if training_args.disable_tqdm:  # no bar: log the progress instead
        name = training_args.run_name or os.path.basename(os.path.normpath(training_args.output_dir))
        trainer.add_callback(SigmaProgressCallback(name))
    if peft_config is not None and parameters_are_sharded(trainer):
        raise ValueError(
            "LoRA runs need whole weights on every rank to merge: use DDP or ZeRO-2, not ZeRO-3/FSDP"
        )
    logger.info(
        "training %d examples on %d process(es), %d per device, global batch %d",
        len(examples),
        training_args.world_size,
        training_args.per_device_train_batch_size,
        global_batch(training_args),
    )
    last = last_complete_checkpoint(training_args.output_dir)
    if last:
        logger.info("Resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    save_final_model(trainer, training_args.output_dir, saved_dtype)
    return result.metrics


def global_batch(training_args) -> int:
    """Examples per optimiser step: per-device batch × processes × gradient-accumulation steps."""
    return (
        training_args.per_device_train_batch_size
        * training_args.world_size
        * training_args.gradient_accumulation_steps
    )


def check_global_batch(training_args, expected: int | None) -> None:
    """A config that states the paper's global batch fails early when the launch gives another one."""
    if expected is not None and global_batch(training_args) != expected:
        raise ValueError(
            f"global batch {global_batch(training_args)} (per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x {training_args.world_size} process(es) x "
            f"gradient_accumulation_steps {training_args.gradient_accumulation_steps}) differs from "
            f"global_batch_size {expected}: change the number of processes or the per-device batch"
        )


def prepare_distributed_args(training_args) -> None:
    """DDP must look for unused parameters: the similarity head takes no part in stages 1–2, the vision tower none
    in a text-only batch. transformers turns the search off whenever gradient checkpointing is on, and DDP then
    fails at step 2 ("Expected to have finished reduction"). transformers' non-reentrant checkpointing (its
    default) supports the search."""
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = True


def upcast_for_training(model) -> torch.dtype:
    """Trains fp32 weights (the optimiser's master copy; `bf16: true` autocasts the matmuls) and returns the
    dtype the weights came in, which the final checkpoint is saved in. A bf16 backbone (`from_pretrained`'s
    `dtype="auto"`) updated in bf16 would lose every update smaller than its 8-bit mantissa resolves."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    loaded = torch.bfloat16 if torch.bfloat16 in dtypes else next(iter(dtypes), torch.float32)
    if dtypes - {torch.float32}:
        logger.info(
            "weights in %s: training an fp32 copy (saved back in %s)", sorted(map(str, dtypes)), loaded
        )
        model.float()
    return loaded


def parameters_are_sharded(trainer) -> bool:
    """ZeRO-3 or FSDP: no rank holds the whole weights."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def save_final_model(trainer, output_dir: str, dtype: torch.dtype = torch.float32) -> None:
    """Writes the trained model to output_dir from the main process. Under ZeRO-3/FSDP every rank must take part
    in gathering the full weights (`accelerator.get_state_dict`); rank 0's own module holds only its shard.
    The weights are written (and rank 0's model left) in `dtype`, the one they were loaded in."""
    accelerator = trainer.accelerator
    trained = accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "merge_and_unload"):  # a peft model (never sharded here): fold the adapters in
        trained = trained.merge_and_unload()
        clear_fused_weights()  # the merge writes through `.data`, which no version counter sees
        state_dict = trained.state_dict()
    else:
        state_dict = accelerator.get_state_dict(trainer.model)  # collective under ZeRO-3 / FSDP
    if trainer.is_world_process_zero():
        state_dict = {
            name: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for name, tensor in state_dict.items()
        }
        if not parameters_are_sharded(trainer):  # an FSDP module's flat shards are not cast in place
            trained.to(dtype)  # config.json records the module's dtype, which `dtype="auto"` loads back
        trained.save_pretrained(output_dir, state_dict=state_dict)
    accelerator.wait_for_everyone()


__all__ = [
    "SigmaProgressCallback",
    "SigmaTrainer",
    "format_duration",
    "check_global_batch",
    "global_batch",
    "last_complete_checkpoint",
    "load_checkpoint_weights",
    "save_final_model",
    "train_and_save",
    "upcast_for_training",
]
