"""Pseudo-queries for stage 3, written by one process before a multi-process stage-3 launch.

    python recipes/pseudo_queries.py --config recipes/configs/flickr30k.yaml
    accelerate launch --multi_gpu --num_processes 4 recipes/stage3.py --config recipes/configs/flickr30k.yaml

Reads the `stage3` section (`pseudo_queries`: the captioner, `pseudo_queries_per_image`, `captioner_epochs`,
`train_splits`, `seed`) and writes the cache file stage 3 reads (`modeling_sigma/training/pseudo_queries.py`).
A single-process stage 3 writes it itself; under several processes stage 3 refuses to start without it, since
training or running the captioner inside one rank would stall the others.
"""

from __future__ import annotations

from modeling_sigma.training import arguments as stage
from modeling_sigma.training.pseudo_queries import stage_pseudo_queries

SECTION = "stage3"
make_parser = stage.make_stage_parser


def main(script_args: stage.SigmaStageArguments, training_args) -> dict:
    corpus = stage.load_stage_corpus(script_args)
    splits = stage_pseudo_queries(script_args, corpus, training_args.seed)
    if not splits:
        print("pseudo_queries is off (or train_splits holds no split but train): nothing to write")
    counts = {"images": sum(len(split) for split in splits)}
    counts["pseudo_queries"] = sum(len(captions) for split in splits for captions in split["captions"])
    print(f"pseudo-queries ready: {counts}")
    return counts


if __name__ == "__main__":
    stage.run_stage_cli(main, SECTION)
