# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Arguments of the stage-1/2/3 recipes and the loaders they share (corpus, identifiers, previous stage, LoRA)."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)
DEFAULT_REPLAY_FRACTION = {"stage2": 0.2, "stage3": 0.0}


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
    replay_fraction: float | None = field(
        default=None,
        metadata={
            "help": "stages 2 and 3: replayed stage-1 samples, as a share of the stage's own examples "
            "(default 0.2 in stage 2, 0 in stage 3); keeps the image → identifier ability open-set indexing uses"
        },
    )
    teacher: str | None = field(
        default="tiny-clip", metadata={"help": "stage 3: soft-label teacher (None: hard)"}
    )
    lambda_ssp: float | None = field(
        default=None, metadata={"help": "stage 3: weight of the similarity loss"}
    )
    pseudo_queries: str | None = field(
        default=None,
        metadata={
            "help": "stage 3: captioner of pseudo-queries for the indexed images outside `train` ('embedded': "
            "a tiny captioner trained on train; or a Qwen2.5-VL-Instruct id, zero-shot). None: the paper's stage 3"
        },
    )
    pseudo_queries_per_image: int = field(default=5, metadata={"help": "stage 3: pseudo-queries per image"})
    captioner_epochs: float = field(
        default=6.0, metadata={"help": "stage 3: epochs of the embedded captioner"}
    )
    alignment_replay_fraction: float | None = field(
        default=None, metadata={"help": "deprecated: stage 3's former name of replay_fraction"}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "when set, per-device batch x processes x accumulation must equal it (paper settings)"
        },
    )
    similarity_hidden_size: int = field(default=256, metadata={"help": "stage 1: similarity-head width"})
    embedded_image_size: int = field(
        default=64,
        metadata={
            "help": "stage 1, embedded backbone: images are resized (aspect kept) to at most this side squared "
            "pixels (64: 4 visual tokens, 128: 16); real backbones keep their own processor"
        },
    )
    embedded_patch_size: int = field(
        default=14,
        metadata={
            "help": "stages 1 and 3 (the embedded captioner), embedded backbone: side of a vision patch in pixels "
            "(14: Qwen2.5-VL's, a 64-pixel image is 4 visual tokens; 8: 16 tokens, no resize)"
        },
    )
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


def stage_replay_fraction(script_args: SigmaStageArguments, stage: str) -> float:
    """The replay share of `stage` (`replay_fraction`; stage 3 still reads `alignment_replay_fraction`, warning)."""
    fraction = script_args.replay_fraction
    if script_args.alignment_replay_fraction is not None:
        if fraction is not None:
            raise ValueError("set replay_fraction only (alignment_replay_fraction is its deprecated name)")
        warnings.warn(
            "alignment_replay_fraction is deprecated: call it replay_fraction", FutureWarning, stacklevel=2
        )
        fraction = script_args.alignment_replay_fraction
    return DEFAULT_REPLAY_FRACTION[stage] if fraction is None else fraction


def make_stage_parser():
    """The parser of the stage-1/2/3 recipes: `SigmaStageArguments` and TRL's `SFTConfig`."""
    from trl import SFTConfig, TrlParser

    return TrlParser((SigmaStageArguments, SFTConfig))


def run_stage_cli(main, section: str) -> None:
    """A stage recipe's `__main__`: logging, then `main(*arguments)` parsed from `--config` (its section) and flags."""
    from modeling_sigma.training.recipe_config import parse_recipe_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_recipe_args(make_stage_parser(), section))


def train_stage(section, model, processor, script_args, training_args, examples, image_sources) -> dict:
    """Trains and saves one stage (`trainer.train_and_save`) with the recipe's LoRA and global-batch settings."""
    from modeling_sigma.training.trainer import train_and_save

    lora, batch = lora_config(script_args), script_args.global_batch_size
    metrics = train_and_save(model, processor, training_args, examples, lora, image_sources, batch)
    logger.info("%s done: %s → %s", section, metrics, training_args.output_dir)
    return metrics


def indexed_splits(corpus, script_args: SigmaStageArguments) -> list:
    """The splits whose images are indexed (`train_splits`): stage 1 trains on them, stages 2–3 replay them."""
    from modeling_sigma.data.corpus import get_split

    splits = [get_split(corpus, split) for split in script_args.train_splits]
    for name, split in zip(script_args.train_splits, splits):
        require_columns(split, ["image", "image_id"], f"the {name} split")
    return splits


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
    "indexed_splits",
    "make_stage_parser",
    "run_stage_cli",
    "train_stage",
    "load_identifiers",
    "load_previous_stage",
    "load_stage_corpus",
    "lora_config",
    "require_columns",
    "stage_replay_fraction",
]
