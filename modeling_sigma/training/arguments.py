# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Arguments of the stage-1/2/3 recipes and the loaders they share (corpus, identifiers, previous stage, LoRA)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch


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
    from modeling_sigma.data.corpus import load_corpus

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
    """(layout, codes, image ids, image id → identifier string) from a stage-0 folder (stage 1)."""
    from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder

    if not os.path.isdir(stage0_dir):
        raise FileNotFoundError(
            f"No stage-0 folder at {stage0_dir!r}: run `python recipes/stage0.py --config ...` first."
        )
    builder = SigmaIdentifierBuilder.load(stage0_dir)
    codes = torch.as_tensor(np.asarray(builder.codes), dtype=torch.long)
    image_ids = list(builder.image_ids)
    identifiers = {i: builder.layout.codes_to_string(row.tolist()) for i, row in zip(image_ids, codes)}
    return builder.layout, codes, image_ids, identifiers


def checkpoint_identifiers(model) -> dict[str, str]:
    """Image id → identifier string of every image in a checkpoint's index (stages 2 and 3 read the
    identifiers the previous stage was trained with from its checkpoint, not from the stage-0 folder)."""
    if model.index is None or len(model.index) == 0:
        raise ValueError(
            "the previous stage's checkpoint holds no identifier index: it was not saved by the stage-1 recipe"
        )
    return model.index.identifiers()


def load_previous_stage(path: str | None, previous: str):
    """Loads the checkpoint a stage starts from, or says which recipe to run first."""
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

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


__all__ = [
    "SigmaStageArguments",
    "checkpoint_identifiers",
    "load_identifiers",
    "load_previous_stage",
    "load_stage_corpus",
    "lora_config",
    "require_columns",
]
