# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""A recipe config for any corpus: the embedded config (`recipes/configs/tiny-shapes.yaml`) scaled to its size.

`make e2e CORPUS=...` and `sigma e2e --corpus ...` prepare a user's corpus (`data/user_corpus.py`), then write
this config beside the run's checkpoints and train with it. What scales with the corpus:

- the identifier layout: `k1` keeps about 39 indexed images per id1 cluster, as on TinyShapes (2,500 images,
  K1 = 64), so that clusters are neither empty nor crowded and the instance suffix stays short; the lower
  levels never have more codes than a cluster has members;
- the epochs: the number of optimiser steps of TinyShapes' schedule is kept, within bounds, so a small corpus
  gets more passes and a large one fewer (times printed by the job follow from it);
- the batch: 32, smaller only for corpora of a few hundred images.

Every other setting (learning rates, soft labels, pseudo-queries, replay) is the embedded config's.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os

import yaml

from modeling_sigma.modeling.file_utils import restore_interrupted_folder

logger = logging.getLogger(__name__)

EMBEDDED_INDEXED_IMAGES = (
    2_500  # train + test of the default TinyShapes corpus the embedded config is tuned on
)
IMAGES_PER_CLUSTER = 39
EPOCH_BOUNDS = {"stage1": (2, 40), "stage2": (1, 4), "stage3": (2, 30)}
STAGES = ("stage0", "stage1", "stage2", "stage3", "evaluation")


def scaled_settings(num_indexed: int, base: dict) -> dict:
    """The layout, epochs and batch chosen for a corpus of `num_indexed` indexed (train + test) images."""
    if num_indexed < 8:
        raise ValueError(f"a corpus needs at least 8 indexed images to train on, got {num_indexed}")
    k1 = min(base["stage0"]["k1"], max(2, round(num_indexed / IMAGES_PER_CLUSTER)))
    members = num_indexed // k1
    layout = {
        "k1": k1,
        "k2": min(base["stage0"]["k2"], max(2, members)),
        "k3": min(base["stage0"]["k3"], max(2, members // 2)),
        "k4": min(base["stage0"]["k4"], max(2, members)),
        "suffix_size": max(base["stage0"]["suffix_size"], members // 2),
    }
    batch = min(base["stage1"]["per_device_train_batch_size"], max(4, num_indexed // 10))
    epochs = {}
    for stage, (low, high) in EPOCH_BOUNDS.items():
        scaled = base[stage]["num_train_epochs"] * EMBEDDED_INDEXED_IMAGES / num_indexed
        epochs[stage] = int(min(high, max(low, math.ceil(scaled))))
    return {"layout": layout, "epochs": epochs, "per_device_train_batch_size": batch}


def corpus_config(base: dict, corpus: str, sizes: dict[str, int], output_root: str, encoder: str) -> dict:
    """The embedded config `base` (one section per stage) pointed at `corpus`, its checkpoints under
    `output_root`, with `scaled_settings` for a corpus whose splits have `sizes` images."""
    config = copy.deepcopy(base)
    indexed = config["stage1"].get("train_splits", ["train", "test"])
    chosen = scaled_settings(sum(sizes.get(split, 0) for split in indexed), base)
    dirs = {stage: os.path.join(output_root, stage) for stage in STAGES[:4]}
    for stage in STAGES:
        config[stage]["corpus"] = corpus
    config["stage0"].update(chosen["layout"], encoder=encoder, output_dir=dirs["stage0"])
    for number, stage in enumerate(STAGES[1:4], start=1):
        section = config[stage]
        section.update(stage0_dir=dirs["stage0"], output_dir=dirs[stage])
        section["num_train_epochs"] = chosen["epochs"][stage]
        section["per_device_train_batch_size"] = chosen["per_device_train_batch_size"]
        if number > 1:
            section["model_name_or_path"] = dirs[f"stage{number - 1}"]
    if encoder != "tiny-clip" and config["stage3"].get("teacher") == "tiny-clip":
        config["stage3"]["teacher"] = encoder  # the soft labels come from the same frozen encoder
    config["evaluation"].update(
        model_name_or_path=dirs["stage3"], output_file=os.path.join(output_root, "evaluation.json")
    )
    return config


def describe_settings(config: dict) -> str:
    """The values `corpus_config` chose, one line, for the job to print."""
    stage0 = config["stage0"]
    layout = "/".join(str(stage0[k]) for k in ("k1", "k2", "k3", "k4"))
    if stage0.get("num_subspaces", 1) > 1:
        layout += f" (id4 in {stage0['num_subspaces']} subspaces)"
    layout += f", suffix {stage0['suffix_size']}"
    epochs = ", ".join(f"{stage} {config[stage]['num_train_epochs']}" for stage in STAGES[1:4])
    batch = config["stage1"]["per_device_train_batch_size"]
    return f"identifier layout K1..K4 {layout}; epochs {epochs}; batch {batch}; encoder {stage0['encoder']}"


def write_corpus_config(config: dict, path: str) -> str:
    """Writes `config` as a recipe YAML (`--config path` of every recipe) and returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as stream:
        stream.write(
            "# Written by the corpus job (modeling_sigma/training/corpus_config.py); CPU, offline.\n"
        )
        yaml.safe_dump(config, stream, sort_keys=False)
    logger.info("wrote %s: %s", path, describe_settings(config))
    return path


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run on a user's corpus (`make e2e CORPUS=...`, `sigma e2e --corpus ...`)."""
    group = parser.add_argument_group("your own corpus (data/user_corpus.py)")
    group.add_argument(
        "--corpus",
        default=None,
        help="an ImageFolder with metadata.jsonl/.csv, a saved DatasetDict, or a Hub dataset id (default: TinyShapes)",
    )
    group.add_argument("--image-column", default="image", help="column holding the images")
    group.add_argument("--caption-columns", nargs="+", default=None, help="column(s) holding the captions")
    group.add_argument("--id-column", default=None, help="column of unique image ids (default: file names)")
    group.add_argument("--num-test", type=float, default=0.15, help="test images: a count or a share (<1)")
    group.add_argument("--num-unseen", type=float, default=0.1, help="unseen images: a count or a share")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the split of an unsplit corpus")
    group.add_argument("--revision", default=None, help="Hub dataset revision")
    group.add_argument("--encoder", default="tiny-clip", help="frozen encoder: tiny-clip or a CLIP/SigLIP id")


def _count(value: float) -> int | float:
    return int(value) if value >= 1 else value


def corpus_options(args: argparse.Namespace) -> dict:
    """The `prepare_corpus` keyword arguments given on the command line."""
    return {
        "image_column": args.image_column,
        "caption_columns": args.caption_columns,
        "id_column": args.id_column,
        "num_test": _count(args.num_test),
        "num_unseen": _count(args.num_unseen),
        "seed": args.split_seed,
        "revision": args.revision,
    }


def corpus_name(source: str) -> str:
    """A folder name for a corpus source: the folder's base name, or the Hub id with `/` as `--`."""
    name = os.path.basename(os.path.normpath(source)) if os.path.exists(source) else source.replace("/", "--")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "corpus"


def prepared_corpus(source: str, cache_dir: str, options: dict) -> str:
    """The SIGMA-schema copy of `source` under `cache_dir/corpora/`, keyed by the source's content and the
    options: validated and written on first use (before any training), reused while the source is unchanged."""
    from modeling_sigma.data.user_corpus import prepare_corpus, source_fingerprint

    key = source_fingerprint(source, **options)
    path = os.path.join(cache_dir, "corpora", f"{corpus_name(source)}-{key}")
    restore_interrupted_folder(path)
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        logger.info("reusing the prepared corpus %s (same source content and options)", path)
        return path
    logger.info("preparing %s into %s (validating every row and image)", source, path)
    prepare_corpus(source, path, **options)
    return path


def prepare_corpus_run(args: argparse.Namespace, base_config: str, cache_dir: str) -> dict:
    """Prepares `args.corpus` and writes its scaled config; returns the run's `config`, `corpus` (the prepared
    folder), `output_dir` and `results` paths."""
    from modeling_sigma.data.corpus import load_corpus

    corpus = prepared_corpus(args.corpus, cache_dir, corpus_options(args))
    sizes = {split: len(dataset) for split, dataset in load_corpus(corpus).items()}
    name = corpus_name(args.corpus)
    output_dir = args.output_dir or os.path.join("outputs", name)
    with open(base_config) as stream:
        base = yaml.safe_load(stream)
    config = corpus_config(base, corpus, sizes, output_dir, args.encoder)
    path = write_corpus_config(config, os.path.join(output_dir, "config.yaml"))
    print(f"corpus {args.corpus}: splits {sizes}\n{describe_settings(config)}\nconfig: {path}", flush=True)
    return {"config": path, "corpus": corpus, "output_dir": output_dir, "results": f"results/{name}.json"}


__all__ = [
    "add_corpus_arguments",
    "corpus_config",
    "corpus_name",
    "corpus_options",
    "describe_settings",
    "prepare_corpus_run",
    "prepared_corpus",
    "scaled_settings",
    "write_corpus_config",
]
