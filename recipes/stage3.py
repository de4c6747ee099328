"""Stage 3 — retrieval alignment: caption → identifier, with L = L_gen + λ·L_ssp against soft labels.

    accelerate launch recipes/stage3.py --config recipes/configs/tiny-shapes.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/stage3.py --config recipes/configs/tiny-shapes.yaml

Before training, a teacher scores every (train image, caption) pair in [0, 1] and the scores are stored as
the `soft_labels` column (`teacher: null` trains with hard labels only, the "no soft labels" ablation).
Starts from the stage-2 checkpoint (`model_name_or_path`); resumes from the last checkpoint in output_dir.
"""

from __future__ import annotations

import logging
import random

from trl import SFTConfig, TrlParser

from modeling_sigma.data.corpus import get_split
from modeling_sigma.training.arguments import (
    SigmaStageArguments,
    checkpoint_identifiers,
    load_previous_stage,
    load_stage_corpus,
    lora_config,
    require_columns,
)
from modeling_sigma.training.examples import alignment_examples, memorization_examples
from modeling_sigma.training.recipe_config import parse_recipe_args
from modeling_sigma.training.soft_labels import SOFT_LABEL_COLUMN, add_soft_labels
from modeling_sigma.training.trainer import train_and_save

SECTION = "stage3"


def make_parser() -> TrlParser:
    return TrlParser((SigmaStageArguments, SFTConfig))


def hard_labels_only(teacher: str | None) -> bool:
    return teacher is None or teacher.strip().lower() in ("", "none", "null")


def soft_labelled_train_split(script_args: SigmaStageArguments, corpus):
    train = get_split(corpus, "train")
    require_columns(train, ["image", "image_id", "captions"], "the train split")
    if hard_labels_only(script_args.teacher) or SOFT_LABEL_COLUMN in train.column_names:
        return train
    teacher_name = script_args.teacher
    if teacher_name == "tiny-clip":
        from modeling_sigma.identifiers.tiny_clip import get_tiny_clip

        teacher_name = get_tiny_clip(script_args.cache_dir)
    return add_soft_labels(train, teacher_name, cache_dir=script_args.cache_dir)


def main(script_args: SigmaStageArguments, training_args: SFTConfig) -> dict:
    # ----- model -----
    model, processor = load_previous_stage(script_args.model_name_or_path, "stage2")
    if script_args.lambda_ssp is not None:
        model.config.lambda_ssp = script_args.lambda_ssp

    # ----- data -----
    corpus = load_stage_corpus(script_args)
    identifiers = checkpoint_identifiers(model)  # the ones stages 1-2 were trained with
    train = soft_labelled_train_split(script_args, corpus)
    soft_column = None if hard_labels_only(script_args.teacher) else SOFT_LABEL_COLUMN
    examples = alignment_examples(train, identifiers, soft_column)
    if script_args.alignment_replay_fraction > 0:
        replay = memorization_examples([get_split(corpus, s) for s in script_args.train_splits], identifiers)
        count = min(len(replay), round(script_args.alignment_replay_fraction * len(examples)))
        examples += random.Random(training_args.seed).sample(replay, count)
    print(
        f"stage 3: {len(examples)} examples (caption → identifier, plus replayed stage-1), soft labels from {script_args.teacher}"
    )

    # ----- train and save -----
    metrics = train_and_save(model, processor, training_args, examples, lora_config(script_args))
    print(f"stage 3 done: {metrics} → {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_recipe_args(make_parser(), SECTION))
