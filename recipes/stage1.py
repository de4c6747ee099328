"""Stage 1 — identifier memorisation: image + "Generate the identifier for this image." → identifier.

    accelerate launch recipes/stage1.py --config recipes/configs/tiny-shapes.yaml
    python recipes/stage1.py --config recipes/configs/tiny-shapes.yaml --num_train_epochs 1

Trains on every image to be indexed (by default the `train` and `test` images; test captions are never
trained on). Starts from a backbone (`embedded` or a Qwen2.5-VL repo id / folder) and the stage-0 codebook,
adds the identifier tokens, and saves a `SigmaForRetrieval` checkpoint to `output_dir`.
"""

from __future__ import annotations

import logging

from trl import SFTConfig, TrlParser

from modeling_sigma.data.corpus import get_split
from modeling_sigma.training.arguments import (
    SigmaStageArguments,
    load_identifiers,
    load_stage_corpus,
    lora_config,
)
from modeling_sigma.training.backbone import build_sigma_model
from modeling_sigma.training.examples import memorization_examples
from modeling_sigma.training.recipe_config import parse_recipe_args
from modeling_sigma.training.trainer import train_and_save

SECTION = "stage1"


def make_parser() -> TrlParser:
    return TrlParser((SigmaStageArguments, SFTConfig))


def main(script_args: SigmaStageArguments, training_args: SFTConfig) -> dict:
    # ----- data -----
    corpus = load_stage_corpus(script_args)
    layout, codes, image_ids, identifiers = load_identifiers(script_args.stage0_dir)
    splits = [get_split(corpus, split) for split in script_args.train_splits]
    examples = memorization_examples(splits, identifiers)
    print(f"stage 1: {len(examples)} image → identifier examples from {script_args.train_splits}")

    # ----- model -----
    captions = [c for image_captions in get_split(corpus, "train")["captions"] for c in image_captions]
    model, processor = build_sigma_model(
        script_args.model_name_or_path or "embedded",
        layout=layout,
        codes=codes,
        image_ids=image_ids,
        captions=captions,
        similarity_hidden_size=script_args.similarity_hidden_size,
    )

    # ----- train and save -----
    metrics = train_and_save(model, processor, training_args, examples, lora_config(script_args))
    print(f"stage 1 done: {metrics} → {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_recipe_args(make_parser(), SECTION))
