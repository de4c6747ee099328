"""Stage 2 — identifier comprehension: "Describe the image represented by the identifier <ID>" → caption.

    accelerate launch recipes/stage2.py --config recipes/configs/tiny-shapes.yaml

Trains on the captions of the `train` images, plus `replay_fraction` (default 0.2) × that many replayed stage-1
samples (image → identifier) so the model keeps the ability that assigns identifiers to new images. Starts from
the stage-1 checkpoint (`model_name_or_path`).
"""

from __future__ import annotations

from modeling_sigma.data.corpus import get_split
from modeling_sigma.training import arguments as stage
from modeling_sigma.training.examples import comprehension_examples, memorization_examples, replay_examples

SECTION = "stage2"
make_parser = stage.make_stage_parser


def main(script_args: stage.SigmaStageArguments, training_args) -> dict:
    # ----- model -----
    model, processor = stage.load_previous_stage(script_args.model_name_or_path, "stage1")

    # ----- data -----
    corpus = stage.load_stage_corpus(script_args)
    identifiers = stage.checkpoint_identifiers(model)  # the ones stage 1 memorised
    train = get_split(corpus, "train")
    stage.require_columns(train, ["image", "image_id", "captions"], "the train split")
    splits = stage.indexed_splits(corpus, script_args)
    examples = comprehension_examples(train, identifiers)
    fraction = stage.stage_replay_fraction(script_args, SECTION)
    replay = replay_examples(
        memorization_examples(splits, identifiers), fraction, len(examples), training_args.seed
    )
    examples += replay
    print(f"stage 2: {len(examples)} examples ({len(replay)} replayed from stage 1)")

    # ----- train and save -----
    return stage.train_stage(SECTION, model, processor, script_args, training_args, examples, splits)


if __name__ == "__main__":
    stage.run_stage_cli(main, SECTION)
