"""Stage 1 — identifier memorisation: image + "Generate the identifier for this image." → identifier.

    accelerate launch recipes/stage1.py --config recipes/configs/tiny-shapes.yaml
    python recipes/stage1.py --config recipes/configs/tiny-shapes.yaml --num_train_epochs 1

Trains on every image to be indexed (by default the `train` and `test` images; test captions are never
trained on). Starts from a backbone (`embedded` or a Qwen2.5-VL repo id / folder) and the stage-0 codebook,
adds the identifier tokens, and saves a `SigmaForRetrieval` checkpoint to `output_dir`.
"""

from __future__ import annotations

from transformers import set_seed

from modeling_sigma.data.corpus import get_split
from modeling_sigma.training import arguments as stage
from modeling_sigma.training.backbone import build_sigma_model
from modeling_sigma.training.examples import memorization_examples

SECTION = "stage1"
make_parser = stage.make_stage_parser


def embedded_options(script_args: stage.SigmaStageArguments) -> dict:
    """Image and patch size of the embedded backbone (a real Qwen2.5-VL keeps its own processor settings)."""
    if (script_args.model_name_or_path or "embedded") != "embedded":
        return {}
    return {"image_size": script_args.embedded_image_size, "patch_size": script_args.embedded_patch_size}


def main(script_args: stage.SigmaStageArguments, training_args) -> dict:
    # ----- data -----
    corpus = stage.load_stage_corpus(script_args)
    layout, codes, image_ids, identifiers = stage.load_identifiers(script_args.stage0_dir)
    splits = stage.indexed_splits(corpus, script_args)
    examples = memorization_examples(splits, identifiers)
    print(f"stage 1: {len(examples)} image → identifier examples from {script_args.train_splits}")

    # ----- model -----
    captions = [c for image_captions in get_split(corpus, "train")["captions"] for c in image_captions]
    set_seed(training_args.seed)  # new weights: identifier embeddings, similarity head, an embedded backbone
    model, processor = build_sigma_model(
        script_args.model_name_or_path or "embedded",
        layout=layout,
        codes=codes,
        image_ids=image_ids,
        captions=captions,
        similarity_hidden_size=script_args.similarity_hidden_size,
        **embedded_options(script_args),
    )

    # ----- train and save -----
    return stage.train_stage(SECTION, model, processor, script_args, training_args, examples, splits)


if __name__ == "__main__":
    stage.run_stage_cli(main, SECTION)
