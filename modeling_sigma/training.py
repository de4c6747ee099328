"""Training data for the three SIGMA stages, their collator, and the trainer built on TRL's `SFTTrainer`.

Each example is a prompt and an answer; only the answer is trained on (labels are -100 on the prompt).

- stage 1, memorise:   image + "Generate the identifier for this image." → identifier
- stage 2, comprehend: "Describe the image represented by the identifier <ID>" → caption (+ replayed stage 1)
- stage 3, align:      caption → identifier, with the caption's soft label for the similarity head
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from trl import SFTTrainer

from .corpus import load_image

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def memorization_examples(splits: list[datasets.Dataset], identifiers: dict[str, str]) -> list[dict]:
    """Stage 1: one example per image of every split to be indexed."""
    examples = []
    for split in splits:
        for image_id, image in zip(split["image_id"], split["image"]):
            examples.append({"task": "memorize", "source_image": image, "answer": identifiers[image_id]})
    return examples


def comprehension_examples(
    split: datasets.Dataset,
    identifiers: dict[str, str],
    replay: list[dict],
    replay_fraction: float,
    seed: int,
) -> list[dict]:
    """Stage 2: identifier → caption for every caption, plus a replayed share of stage-1 examples."""
    examples = [
        {"task": "comprehend", "identifier": identifiers[image_id], "answer": caption}
        for image_id, captions in zip(split["image_id"], split["captions"])
        for caption in captions
    ]
    count = min(len(replay), math.ceil(replay_fraction * len(examples)))
    examples += random.Random(seed).sample(replay, count)
    return examples


def alignment_examples(split: datasets.Dataset, identifiers: dict[str, str], soft_labels_column: str | None):
    """Stage 3: caption → identifier, carrying the caption's soft label (NaN when there is none)."""
    soft = split[soft_labels_column] if soft_labels_column else [None] * len(split)
    examples = []
    for image_id, captions, scores in zip(split["image_id"], split["captions"], soft):
        for index, caption in enumerate(captions):
            label = float("nan") if scores is None else float(scores[index])
            examples.append(
                {"task": "align", "query": caption, "answer": identifiers[image_id], "soft_label": label}
            )
    return examples


def to_dataset(examples: list[dict]) -> datasets.Dataset:
    """A `datasets.Dataset` over example dicts of mixed tasks (absent fields become None)."""
    keys = sorted({key for example in examples for key in example})
    return datasets.Dataset.from_list([{key: example.get(key) for key in keys} for example in examples])


class SigmaCollator:
    """Tokenises prompt + answer per example, pads to the right, and masks the prompt out of the labels."""

    def __init__(self, processor, config, max_length: int = 512):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.max_length = max_length
        self.end_of_turn = "<|im_end|>"

    def _prompt(self, example: dict) -> tuple[str, list]:
        task = example["task"]
        if task == "memorize":
            content = [{"type": "image"}, {"type": "text", "text": self.config.memorization_prompt}]
            images = [self.processor.prepare_image(load_image(example["source_image"]))]
        elif task == "comprehend":
            content = self.config.comprehension_prompt.format(identifier=example["identifier"])
            images = []
        elif task == "align":
            content = self.config.retrieval_prompt.format(query=example["query"])
            images = []
        else:
            raise ValueError(f"Unknown task {task!r}; expected memorize, comprehend or align.")
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, images

    def _encode(self, example: dict) -> dict:
        text, images = self._prompt(example)
        if images:
            prompt = self.processor(text=[text], images=images, return_tensors="pt")
        else:
            prompt = self.tokenizer([text], return_tensors="pt")
        answer = self.tokenizer(example["answer"] + self.end_of_turn, add_special_tokens=False)["input_ids"]
        prompt_ids = prompt["input_ids"][0].tolist()
        input_ids = (prompt_ids + answer)[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + answer)[: self.max_length]
        encoded = {"input_ids": input_ids, "labels": labels}
        if images:
            encoded["pixel_values"], encoded["image_grid_thw"] = (
                prompt["pixel_values"],
                prompt["image_grid_thw"],
            )
        return encoded

    def __call__(self, examples: list[dict]) -> dict:
        encoded = [self._encode(example) for example in examples]
        width = max(len(e["input_ids"]) for e in encoded)
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor(
                [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in encoded]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in encoded]
            ),
            "labels": torch.tensor(
                [e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in encoded]
            ),
        }
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        if any(example.get("soft_label") is not None for example in examples):
            labels = [example.get("soft_label") for example in examples]
            labels = [float("nan") if label is None else label for label in labels]
            batch["similarity_labels"] = torch.tensor(labels, dtype=torch.float32)
        return batch


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


# ---------------------------------------------------------------------------------------------- recipes
@dataclass
class SigmaStageArguments:
    """Data and model settings shared by the stage-1/2/3 recipes (trainer settings are `SFTConfig`'s)."""

    corpus: str = field(default="tiny-shapes", metadata={"help": "load_corpus name, folder or Hub id"})
    cache_dir: str = field(default="outputs/cache", metadata={"help": "corpus and feature cache"})
    stage0_dir: str = field(
        default="outputs/tiny-shapes/stage0", metadata={"help": "stage-0 codebook folder"}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "previous stage's checkpoint (stage 1: the backbone, e.g. 'embedded')"},
    )
    train_splits: list[str] = field(default_factory=lambda: ["train"], metadata={"help": "splits trained on"})
    replay_fraction: float = field(
        default=0.2, metadata={"help": "stage 2: share of replayed stage-1 samples"}
    )
    teacher: str | None = field(
        default="tiny-clip", metadata={"help": "stage 3: soft-label teacher (None: hard)"}
    )
    lambda_ssp: float | None = field(
        default=None, metadata={"help": "stage 3: weight of the similarity loss"}
    )
    alignment_replay_fraction: float = field(
        default=0.0,
        metadata={"help": "stage 3: share of replayed stage-1 samples (keeps open-set assignment)"},
    )
    similarity_hidden_size: int = field(default=256, metadata={"help": "stage 1: similarity-head width"})
    image_root: str | None = field(
        default=None, metadata={"help": "COCO Karpathy: local folder of COCO images"}
    )
    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft), merged when saved"})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "projections that get adapters"},
    )


def load_stage_corpus(script_args: SigmaStageArguments):
    """The corpus named by the recipe arguments (COCO Karpathy also needs `image_root`)."""
    from .corpus import load_corpus

    extra = {"image_root": script_args.image_root} if script_args.image_root else {}
    return load_corpus(script_args.corpus, cache_dir=script_args.cache_dir, **extra)


def lora_config(script_args: SigmaStageArguments):
    """A peft `LoraConfig` when `use_lora`: adapters on the projections; the identifier embeddings, the LM
    head and the similarity head train fully (they are new or must learn the new tokens)."""
    if not script_args.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=script_args.lora_target_modules,
        modules_to_save=["similarity_head", "embed_tokens", "lm_head"],
    )


def load_identifiers(stage0_dir: str) -> tuple[object, torch.Tensor, list[str], dict[str, str]]:
    """(layout, codes, image ids, image id → identifier string) from a stage-0 folder."""
    from .stage0_identifiers import SigmaIdentifierBuilder

    if not os.path.isdir(stage0_dir):
        raise FileNotFoundError(
            f"No stage-0 folder at {stage0_dir!r}: run `python recipes/stage0.py --config ...` first."
        )
    builder = SigmaIdentifierBuilder.load(stage0_dir)
    codes = torch.as_tensor(np.asarray(builder.codes), dtype=torch.long)
    image_ids = list(builder.image_ids)
    identifiers = {i: builder.layout.codes_to_string(row.tolist()) for i, row in zip(image_ids, codes)}
    return builder.layout, codes, image_ids, identifiers


def load_previous_stage(path: str | None, previous: str):
    """Loads the checkpoint a stage starts from, or says which recipe to run first."""
    from .modeling_sigma import SigmaForRetrieval

    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"No {previous} checkpoint at {path!r}: run `python recipes/{previous}.py --config ...` first "
            f"(or point --model_name_or_path at its output_dir)."
        )
    model = SigmaForRetrieval.from_pretrained(path)
    return model, model.processor


def require_columns(dataset, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} is missing the column(s) {missing} (has {dataset.column_names}).")


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


__all__ = [
    "SigmaCollator",
    "SigmaStageArguments",
    "load_identifiers",
    "load_previous_stage",
    "load_stage_corpus",
    "lora_config",
    "require_columns",
    "train_and_save",
    "SigmaTrainer",
    "alignment_examples",
    "comprehension_examples",
    "memorization_examples",
    "to_dataset",
]
