"""Stage 3 — retrieval alignment: caption → identifier, with L = L_gen + λ·L_ssp against soft labels.

    accelerate launch recipes/stage3.py --config recipes/configs/tiny-shapes.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/stage3.py --config recipes/configs/tiny-shapes.yaml

Before training, a teacher scores every (train image, caption) pair in [0, 1] and the scores are stored as
the `soft_labels` column (`teacher: null` trains with hard labels only, the "no soft labels" ablation).
`replay_fraction` (default 0) mixes replayed stage-1 samples in, which keeps open-set assignment by generation.
`pseudo_queries` (default off, the paper's stage 3) adds caption → identifier examples on captions a captioner
wrote for the indexed images outside `train` (`modeling_sigma/training/pseudo_queries.py`); their own captions
are never read.
Starts from the stage-2 checkpoint (`model_name_or_path`); resumes from the last checkpoint in output_dir.
"""

from __future__ import annotations

from modeling_sigma.data.corpus import get_split
from modeling_sigma.training import arguments as stage
from modeling_sigma.training.examples import alignment_examples, memorization_examples, replay_examples
from modeling_sigma.training.pseudo_queries import stage_pseudo_queries
from modeling_sigma.training.soft_labels import SOFT_LABEL_COLUMN, add_soft_labels

SECTION = "stage3"
make_parser = stage.make_stage_parser


def hard_labels_only(teacher: str | None) -> bool:
    return teacher is None or teacher.strip().lower() in ("", "none", "null")


def soft_labelled_train_split(script_args: stage.SigmaStageArguments, corpus):
    train = get_split(corpus, "train")
    stage.require_columns(train, ["image", "image_id", "captions"], "the train split")
    if hard_labels_only(script_args.teacher) or SOFT_LABEL_COLUMN in train.column_names:
        return train
    teacher_name = script_args.teacher
    if teacher_name == "tiny-clip":
        from modeling_sigma.identifiers.tiny_clip import get_tiny_clip

        teacher_name = get_tiny_clip(script_args.cache_dir, corpus=script_args.corpus)
    return add_soft_labels(train, teacher_name, cache_dir=script_args.cache_dir)


def main(script_args: stage.SigmaStageArguments, training_args) -> dict:
    # ----- model -----
    model, processor = stage.load_previous_stage(script_args.model_name_or_path, "stage2")
    if script_args.lambda_ssp is not None:
        model.config.lambda_ssp = script_args.lambda_ssp

    # ----- data -----
    corpus = stage.load_stage_corpus(script_args)
    identifiers = stage.checkpoint_identifiers(model)  # the ones stages 1-2 were trained with
    train = soft_labelled_train_split(script_args, corpus)
    soft_column = None if hard_labels_only(script_args.teacher) else SOFT_LABEL_COLUMN
    examples = alignment_examples(train, identifiers, soft_column)
    pseudo = []
    for split in stage_pseudo_queries(script_args, corpus, training_args.seed):
        pseudo += alignment_examples(split, identifiers, None)  # hard labels: the teacher never scored them
    examples += pseudo
    fraction = stage.stage_replay_fraction(script_args, SECTION)
    splits = stage.indexed_splits(corpus, script_args) if fraction > 0 else []
    replay = replay_examples(
        memorization_examples(splits, identifiers), fraction, len(examples), training_args.seed
    )
    examples += replay
    print(
        f"stage 3: {len(examples)} examples ({len(replay)} replayed, {len(pseudo)} pseudo-queries), "
        f"soft labels from {script_args.teacher}"
    )

    # ----- train and save -----
    return stage.train_stage(SECTION, model, processor, script_args, training_args, examples, splits)


if __name__ == "__main__":
    stage.run_stage_cli(main, SECTION)
