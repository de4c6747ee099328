"""Stage 2 — identifier comprehension: "Describe the image represented by the identifier <ID>" → caption.

    accelerate launch recipes/stage2.py --config recipes/configs/tiny-shapes.yaml

Trains on the captions of the `train` images, plus `replay_fraction` × that many replayed stage-1 samples
(image → identifier) so the model keeps the ability that assigns identifiers to new images. Starts from
the stage-1 checkpoint (`model_name_or_path`).
"""

from __future__ import annotations

import logging

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
from modeling_sigma.training.examples import comprehension_examples, memorization_examples
from modeling_sigma.training.recipe_config import parse_recipe_args
from modeling_sigma.training.trainer import train_and_save

SECTION = "stage2"


def make_parser() -> TrlParser:
    return TrlParser((SigmaStageArguments, SFTConfig))


def main(script_args: SigmaStageArguments, training_args: SFTConfig) -> dict:
    # ----- model -----
    model, processor = load_previous_stage(script_args.model_name_or_path, "stage1")

    # ----- data -----
    corpus = load_stage_corpus(script_args)
    identifiers = checkpoint_identifiers(model)  # the ones stage 1 memorised
    train = get_split(corpus, "train")
    require_columns(train, ["image", "image_id", "captions"], "the train split")
    replay_splits = [get_split(corpus, split) for split in script_args.train_splits]
    replay = memorization_examples(replay_splits, identifiers)
    examples = comprehension_examples(
        train, identifiers, replay, script_args.replay_fraction, seed=training_args.seed
    )
    print(f"stage 2: {len(examples)} examples ({len(examples) - 5 * len(train)} replayed from stage 1)")

    # ----- train and save -----
    metrics = train_and_save(model, processor, training_args, examples, lora_config(script_args))
    print(f"stage 2 done: {metrics} → {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_recipe_args(make_parser(), SECTION))
