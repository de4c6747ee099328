"""The embedded end-to-end job: the whole paper on 2 CPU cores, offline (README command 1: `make e2e`).

    python recipes/run_embedded.py                  # SIGMA-tiny and the two-tower baseline
    python recipes/run_embedded.py --ablations      # + no stage 1, no stage 2, no soft labels, random ids
    python recipes/run_embedded.py --smoke          # tiny schedules, for a quick check of the plumbing
    python recipes/run_embedded.py --seeds 2        # every SIGMA system trained with seeds 0 and 1
    python recipes/run_embedded.py --corpus DIR     # the same job on your images (README "Your own images")

Steps: TinyShapes corpus → tiny CLIP encoder → two-tower baseline → stage 0 identifiers → stage 1 →
stage 2 → stage 3 (with pseudo-queries, and again without: the paper-faithful row) → Recall@1/5/10 on the
same test captions → the two-tower baseline again with the same pseudo-queries (equal information). Every step
is a recipe of this folder, run in-process with `recipes/configs/tiny-shapes.yaml`; the tables (Recall@K, paired
bootstrap intervals of every difference, Recall@K per caption type) are printed and written to `results/`.

With `--corpus` (an ImageFolder with metadata.jsonl/.csv, a saved DatasetDict or a Hub id, with column options),
the corpus is validated and split first (`data/user_corpus.py`, cached under outputs/cache/corpora/), the tiny
CLIP is trained on its train split, and the config is the embedded one scaled to its size
(`training/corpus_config.py`, written to `outputs/<name>/config.yaml`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from modeling_sigma.data.corpus import EMBEDDED_CORPUS_NAME, caption_pairs, load_corpus
from modeling_sigma.evaluation.metrics import recall_at_k
from modeling_sigma.evaluation.statistics import (
    TINY_SHAPES_CAPTION_TYPES,
    caption_types_by_position,
    relevant_ranks,
)
from modeling_sigma.evaluation.tables import (
    caption_type_rows,
    comparison_rows,
    format_caption_types,
    format_comparisons,
    format_table,
    open_set_summary,
    pooled_comparison_rows,
)
from modeling_sigma.evaluation.two_tower import expand_with_captions, two_tower_rankings
from modeling_sigma.identifiers.encoders import encode_split, load_encoder
from modeling_sigma.training.corpus_config import add_corpus_arguments, prepare_corpus_run
from modeling_sigma.training.job_pool import default_jobs, make_pool, timed_call
from modeling_sigma.training.pseudo_queries import stage_pseudo_queries
from modeling_sigma.training.recipe_config import read_section
from modeling_sigma.training.recipe_config import run_recipe as run_recipe_file

RECIPES = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(RECIPES, "configs", "tiny-shapes.yaml")
SMOKE_OVERRIDES = ["--max_steps", "3", "--save_strategy", "no"]
SMOKE_CAPTIONER_EPOCHS = 0.02  # --smoke: the pseudo-query captioner trains a few steps too
RERANK_WEIGHT = 1.0  # fused_score = beam log-probability + w * log(similarity head)
PAPER_FAITHFUL = ["--pseudo_queries", "none"]  # the stage-3 flags of the paper-faithful row
TWO_TOWER = "two-tower (tiny CLIP + faiss)"
TWO_TOWER_PSEUDO = "two-tower + the same pseudo-queries"
SIGMA = "SIGMA-tiny"
PAPER = "SIGMA-tiny, paper-faithful (no pseudo-queries)"
# (mode, stage-3 folder, row name) of the open-set runs: images added after training, without retraining
OPEN_SET_RUNS = [
    ("generate", "stage3", f"{SIGMA}, unseen images added after training (generate)"),
    ("quantizer", "stage3", f"{SIGMA}, unseen images added after training (quantizer)"),
    ("generate", "stage3-paper", f"{PAPER}, unseen images added after training (generate)"),
]
# name → (extra flags per stage, stage-0 flags)
ABLATIONS = {
    "w/o stage 1 (memorise)": ({"stage1": ["--num_train_epochs", "0"]}, []),
    "w/o stage 2 (comprehend)": ({"stage2": ["--num_train_epochs", "0"]}, []),
    "w/o soft labels (λ = 0)": ({"stage3": ["--teacher", "None", "--lambda_ssp", "0"]}, []),
    "random identifiers (codes shuffled)": ({}, ["--random_identifiers", "true"]),
}


@dataclass
class SigmaJob:
    """What one run trains on: the recipe config (one section per stage), its corpus and cache folder."""

    config: str = CONFIG
    corpus: str = EMBEDDED_CORPUS_NAME
    cache_dir: str = "outputs/cache"
    encoder: str = "tiny-clip"

    @property
    def embedded(self) -> bool:
        return self.corpus == EMBEDDED_CORPUS_NAME

    def load_corpus(self):
        return load_corpus(self.corpus, cache_dir=self.cache_dir)

    def load_encoder(self):
        return load_encoder(self.encoder, cache_dir=self.cache_dir, corpus=self.corpus)


def run_recipe(job: SigmaJob, name: str, flags: list[str]):
    print(f"\n=== {name} {' '.join(flags)}", flush=True)
    return run_recipe_file(os.path.join(RECIPES, f"{name}.py"), ["--config", job.config, *flags])


def run_two_tower(job: SigmaJob, pseudo_queries: dict[str, list[str]] | None = None) -> dict:
    """Dense retrieval with the stage-0 encoder (tiny CLIP: the one trained on this corpus); with
    `pseudo_queries`, each image vector is expanded with its pseudo-queries' text vectors
    (`expand_with_captions`): the same extra information SIGMA trains on."""
    encoder, test, cache_dir = job.load_encoder(), job.load_corpus()["test"], job.cache_dir
    image_features = encode_split(encoder, test, job.corpus, "test", cache_dir)
    query_features = encode_split(encoder, test, job.corpus, "test", cache_dir, kind="captions")
    ids = test["image_id"]
    if pseudo_queries is not None:
        captions = [pseudo_queries.get(image_id, []) for image_id in ids]
        flat = encoder.encode_texts([c for image_captions in captions for c in image_captions])
        bounds = np.cumsum([0] + [len(image_captions) for image_captions in captions])
        image_features = expand_with_captions(image_features, [flat[a:b] for a, b in zip(bounds, bounds[1:])])
    _, owners = caption_pairs(test)
    relevant = [ids[o] for o in owners]
    rankings = two_tower_rankings(image_features, ids, query_features)
    metrics = recall_at_k(rankings, relevant)
    return {
        **metrics,
        "queries": len(owners),
        "images": len(ids),
        "ranks": relevant_ranks(rankings, relevant),
    }


def stage3_pseudo_queries(job: SigmaJob, seed: int = 0, smoke: bool = False) -> dict[str, list[str]]:
    """The pseudo-queries stage 3 trained on, through stage 3's own `stage_pseudo_queries` (so the same cache
    key): read from their cache, computed there if missing; empty when the config switches them off."""
    from dataclasses import fields

    from modeling_sigma.training.arguments import SigmaStageArguments

    section = read_section(job.config, "stage3")
    names = {field.name for field in fields(SigmaStageArguments)}
    script_args = SigmaStageArguments(**{key: value for key, value in section.items() if key in names})
    script_args.cache_dir = job.cache_dir
    if smoke:
        script_args.captioner_epochs = SMOKE_CAPTIONER_EPOCHS
    splits = stage_pseudo_queries(script_args, job.load_corpus(), seed)
    return {
        image_id: captions
        for split in splits
        for image_id, captions in zip(split["image_id"], split["captions"])
    }


RUN_RECORD = ".sigma_run.json"  # what produced a finished stage folder (for --reuse)


def run_stage(job: SigmaJob, name: str, flags: list[str], output_dir: str, reuse: bool) -> None:
    """Runs a training recipe; with `reuse`, skips it when `output_dir` was finished by the same recipe,
    flags and config file (its record is written only after the recipe returns)."""
    with open(job.config, "rb") as stream:
        record = {"recipe": name, "flags": flags, "config_sha256": hashlib.sha256(stream.read()).hexdigest()}
    record_file = os.path.join(output_dir, RUN_RECORD)
    if reuse and os.path.isfile(record_file):
        with open(record_file) as stream:
            if json.load(stream) == record:
                print(f"\n=== {name}: reusing {output_dir} (same recipe, flags and config)", flush=True)
                return
    run_recipe(job, name, flags)
    with open(record_file, "w") as stream:
        json.dump(record, stream, indent=2)


def prepare_sigma(
    job: SigmaJob,
    root: str,
    stage_flags: dict,
    stage0_flags: list[str],
    smoke: bool,
    reuse: bool,
    two_tower: bool,
) -> dict | None:
    """Stages 0–2 into `root` (first the two-tower row when `two_tower`: it trains the tiny CLIP stage 0 reads);
    returns the two-tower row or None."""
    row = run_two_tower(job) if two_tower else None
    stage0 = os.path.join(root, "stage0")
    run_stage(job, "stage0", ["--output_dir", stage0, *stage0_flags], stage0, reuse)
    for number in (1, 2):
        output = os.path.join(root, f"stage{number}")
        flags = ["--stage0_dir", stage0, "--output_dir", output, "--disable_tqdm", "true"]
        flags += ["--model_name_or_path", os.path.join(root, "stage1")] if number == 2 else []
        flags += SMOKE_OVERRIDES if smoke else []
        run_stage(job, f"stage{number}", [*flags, *stage_flags.get(f"stage{number}", [])], output, reuse)
    return row


def train_stage3(
    job: SigmaJob, root: str, folder: str, flags: list[str], smoke: bool, reuse: bool, rerank: bool
) -> dict:
    """Stage 3 from `root`/stage2 into `root`/`folder` with the extra `flags`, then its evaluation report."""
    output = os.path.join(root, folder)
    stage_flags = [
        "--stage0_dir",
        os.path.join(root, "stage0"),
        "--output_dir",
        output,
        "--disable_tqdm",
        "true",
    ]
    stage_flags += ["--model_name_or_path", os.path.join(root, "stage2")]
    stage_flags += [*SMOKE_OVERRIDES, "--captioner_epochs", str(SMOKE_CAPTIONER_EPOCHS)] if smoke else []
    run_stage(job, "stage3", [*stage_flags, *flags], output, reuse)
    name = "evaluation" if folder == "stage3" else f"evaluation-{folder}"
    return evaluate_stage3(job, output, root, name, smoke, rerank)


def run_sigma(
    job: SigmaJob,
    root: str,
    stage_flags: dict,
    stage0_flags: list[str],
    smoke: bool,
    reuse: bool,
    rerank: bool,
) -> dict:
    """Stage 0 → 3 and evaluation into `root`, one after the other (an ablation); returns the evaluation report
    (with `rerank`, plus the similarity-head re-ranked figures under `"reranked"`)."""
    prepare_sigma(job, root, stage_flags, stage0_flags, smoke, reuse, two_tower=False)
    return train_stage3(job, root, "stage3", stage_flags.get("stage3", []), smoke, reuse, rerank)


def evaluate_stage3(job: SigmaJob, checkpoint: str, root: str, name: str, smoke: bool, rerank: bool) -> dict:
    """Recall@K of a stage-3 checkpoint on the test captions (and re-ranked by the similarity head)."""
    flags = ["--model_name_or_path", checkpoint] + (["--max_queries", "64"] if smoke else [])
    report = run_recipe(job, "evaluation", flags + ["--output_file", os.path.join(root, f"{name}.json")])
    if not rerank:
        return report
    reranked = run_recipe(
        job,
        "evaluation",
        flags
        + [
            "--rerank_weight",
            str(RERANK_WEIGHT),
            "--output_file",
            os.path.join(root, f"{name}-rerank.json"),
        ],
    )
    return {**report, "reranked": reranked}


def run_open_set(
    job: SigmaJob,
    root: str,
    mode: str,
    smoke: bool,
    rerank: bool = False,
    joint: bool = False,
    checkpoint: str = "stage3",
) -> dict:
    """Adds the never-trained-on `unseen` images to the stage-3 model's index without training
    (`mode`: the model's stage-1 generation or the stage-0 quantiser), then queries their captions.

    The main figures search the unseen images alone. With `joint`, `"joint_gallery"` also holds the unseen
    and the test captions searched in one gallery of test + unseen images: the new images compete with the
    trained ones, and the two Recall@K figures are comparable (same gallery).
    """
    from modeling_sigma.evaluation.retrieval import evaluate_retrieval
    from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder
    from modeling_sigma.open_set.index import add_images
    from modeling_sigma.training.arguments import load_previous_stage

    model, _ = load_previous_stage(os.path.join(root, checkpoint), "stage3")
    corpus = job.load_corpus()
    unseen = corpus["unseen"]
    if smoke:  # a 3-step model writes one prefix for every image: keep within the suffix capacity
        unseen = unseen.select(range(min(16, len(unseen))))
    extra = {}
    if mode == "quantizer":
        extra = {
            "quantizer": SigmaIdentifierBuilder.load(os.path.join(root, "stage0")),
            "encoder": job.load_encoder(),
        }
    lap = time.time()
    add_images(model.index, model, unseen["image"], unseen["image_id"], mode=mode, **extra)
    added = time.time() - lap
    evaluate = partial(evaluate_retrieval, model, max_queries=64 if smoke else None)
    metrics = {**evaluate(unseen), "queries_on": "unseen", "gallery": "unseen"}
    metrics["images_per_second_added"] = round(len(unseen) / added, 1)
    if rerank:
        metrics["reranked"] = evaluate(unseen, rerank_weight=RERANK_WEIGHT)
    if joint:
        gallery = list(corpus["test"]["image_id"]) + list(unseen["image_id"])
        metrics["joint_gallery"] = {
            split: {**evaluate(dataset, gallery_ids=gallery), "queries_on": split, "gallery": "test + unseen"}
            for split, dataset in (("unseen", unseen), ("test", corpus["test"]))
        }
    return metrics


def seed_flags(seed: int) -> tuple[dict, list[str]]:
    """Stage flags and stage-0 flags that train a whole SIGMA system with `seed` (seed 0: the config's own)."""
    if seed == 0:
        return {}, []
    return {stage: ["--seed", str(seed)] for stage in ("stage1", "stage2", "stage3")}, ["--seed", str(seed)]


def seed_tag(seed: int, seeds: int) -> str:
    """What the row names of seed `seed` end in when `seeds` seeds run (nothing when there is one)."""
    return f" (seed {seed})" if seeds > 1 else ""


def seed_root(output_dir: str, seed: int) -> str:
    """The folder of seed `seed`'s checkpoints: `output_dir` itself for seed 0, `output_dir/seed-<s>` after it."""
    return output_dir if seed == 0 else os.path.join(output_dir, f"seed-{seed}")


def merge_flags(*flag_sets: dict) -> dict:
    merged = {}
    for flags in flag_sets:
        for stage, values in flags.items():
            merged[stage] = merged.get(stage, []) + values
    return merged


def run_seed(args, job: SigmaJob, seed: int, pool, timings: dict) -> dict[str, dict]:
    """The rows of one seed, as a graph of steps on `pool`: stages 0–2 beside the pseudo-query captioner, then
    the two stage-3 models (with and without pseudo-queries) side by side, then the open-set rows."""
    tag = seed_tag(seed, args.seeds)
    root = seed_root(args.output_dir, seed)
    stage_flags, stage0_flags = seed_flags(seed)
    common = (job, root, stage_flags, stage0_flags, args.smoke, args.reuse)
    lap = time.time()
    prepared = pool.submit(timed_call, prepare_sigma, *common, two_tower=seed == 0)
    queries = pool.submit(timed_call, stage3_pseudo_queries, job, seed, args.smoke)
    rows = {}
    row, timings[f"stages 0–2{tag}"] = prepared.result()
    if row is not None:
        rows[TWO_TOWER] = row
    stage3 = partial(train_stage3, job, root, smoke=args.smoke, reuse=args.reuse, rerank=args.rerank)
    paper = pool.submit(timed_call, stage3, "stage3-paper", [*stage_flags.get("stage3", []), *PAPER_FAITHFUL])
    pseudo_queries, timings[f"pseudo-queries{tag}"] = queries.result()
    sigma = pool.submit(timed_call, stage3, "stage3", stage_flags.get("stage3", []))
    rows[TWO_TOWER_PSEUDO + tag] = run_two_tower(job, pseudo_queries)
    open_set, with_open_set = {}, seed == 0 and "unseen" in job.load_corpus()  # a user's corpus may have none

    def add_open_set(model_folder: str) -> None:  # its rows start as soon as their stage-3 model is trained
        for mode, checkpoint, name in OPEN_SET_RUNS if with_open_set else ():
            if checkpoint == model_folder:
                joint = mode == "generate"
                open_set[name] = pool.submit(
                    timed_call, run_open_set, job, root, mode, args.smoke, args.rerank, joint, checkpoint
                )

    rows[PAPER + tag], timings[PAPER + tag] = paper.result()
    add_open_set("stage3-paper")
    rows[SIGMA + tag], timings[SIGMA + tag] = sigma.result()
    add_open_set("stage3")
    for name, future in open_set.items():
        rows[name], timings[name] = future.result()
    timings[f"{SIGMA}{tag}, all systems"] = round(time.time() - lap, 1)
    order = [
        TWO_TOWER,
        SIGMA + tag,
        PAPER + tag,
        TWO_TOWER_PSEUDO + tag,
        *(name for _, _, name in OPEN_SET_RUNS),
    ]
    return {name: rows[name] for name in order if name in rows}


def run_systems(args, job: SigmaJob, timings: dict) -> dict[str, dict]:
    """Every row of the Recall@K table, seed by seed; names end in ` (seed s)` when several seeds run. With
    `--jobs 2` independent steps run in two processes (`training/job_pool.py`)."""
    rows = {}
    with make_pool(args.jobs, import_paths=[RECIPES]) as pool:
        for seed in range(args.seeds):
            rows.update(run_seed(args, job, seed, pool, timings))
        ablations = {}
        for seed in range(args.seeds) if args.ablations else ():
            tag = seed_tag(seed, args.seeds)
            root = seed_root(args.output_dir, seed)
            stage_flags, stage0_flags = seed_flags(seed)
            for number, (name, (flags, stage0)) in enumerate(ABLATIONS.items()):
                ablations[name + tag] = pool.submit(
                    timed_call,
                    run_sigma,
                    job,
                    os.path.join(root, f"ablation-{number}"),
                    merge_flags(stage_flags, flags),
                    stage0_flags + stage0,
                    args.smoke,
                    args.reuse,
                    args.rerank,
                )
        for name, future in ablations.items():
            rows[name], timings[name] = future.result()
    return rows


def comparisons(seeds: int, ablations: bool) -> list[tuple[str, str]]:
    """The differences the README claims, per seed: SIGMA against both baselines, the paper-faithful row
    against the two-tower, pseudo-queries' contribution, and each ablation against the full system."""
    pairs = []
    for seed in range(seeds):
        tag = seed_tag(seed, seeds)
        pairs += [
            (SIGMA + tag, TWO_TOWER),
            (SIGMA + tag, TWO_TOWER_PSEUDO + tag),
            (PAPER + tag, TWO_TOWER),
            (SIGMA + tag, PAPER + tag),
        ]
        pairs += [(SIGMA + tag, name + tag) for name in ABLATIONS] if ablations else []
    return pairs


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default=None, help="checkpoints (default outputs/<corpus name>)")
    parser.add_argument("--results", default=None, help="the table's JSON (default results/embedded.json)")
    parser.add_argument("--ablations", action="store_true", help="also train the four ablations (~4× longer)")
    parser.add_argument("--seeds", type=int, default=1, help="train every SIGMA system with seeds 0..N-1")
    parser.add_argument("--smoke", action="store_true", help="3 steps per stage, 64 queries: plumbing only")
    parser.add_argument(
        "--rerank", action="store_true", help="also report every SIGMA row re-ranked by the similarity head"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="skip stages whose folder a run with the same flags finished"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="steps run side by side, one process each (default: 2 where there are 2 cores; 1: all in this process)",
    )
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def make_job(args) -> SigmaJob:
    """TinyShapes with `recipes/configs/tiny-shapes.yaml`, or the user's corpus prepared (validated, split,
    cached) with a config scaled to it, written beside its checkpoints."""
    cache_dir = read_section(CONFIG, "stage0").get("cache_dir", "outputs/cache")
    suffix = "-smoke" if args.smoke else ""  # a smoke run never replaces a real run's checkpoints or table
    if args.corpus in (None, EMBEDDED_CORPUS_NAME):
        args.output_dir = args.output_dir or f"outputs/tiny-shapes{suffix}"
        args.results = args.results or f"results/embedded{suffix}.json"
        return SigmaJob(CONFIG, EMBEDDED_CORPUS_NAME, cache_dir)
    run = prepare_corpus_run(args, CONFIG, cache_dir)
    stem, extension = os.path.splitext(run["results"])
    args.output_dir = args.output_dir or f"{run['output_dir']}{suffix}"
    args.results = args.results or f"{stem}{suffix}{extension}"
    return SigmaJob(run["config"], run["corpus"], cache_dir, args.encoder)


def print_report(args, job: SigmaJob, rows: dict) -> tuple[list, list]:
    """Prints the tables; returns (differences, Recall@K by caption type: TinyShapes only)."""
    corpus = job.load_corpus()
    test = corpus["test"]
    _, owners = caption_pairs(test)
    differences = comparison_rows(rows, comparisons(args.seeds, args.ablations), owners)
    tags = [seed_tag(seed, args.seeds) for seed in range(args.seeds)]
    if args.seeds > 1:  # every claim once more with the seeds pooled: the mean difference over seeds
        differences += pooled_comparison_rows(rows, comparisons(1, args.ablations), owners, tags)
    by_type, types_table = [], ""
    if job.embedded:
        types = caption_types_by_position([len(c) for c in test["captions"]], TINY_SHAPES_CAPTION_TYPES)
        systems = [TWO_TOWER, *(name + tag for tag in tags for name in (TWO_TOWER_PSEUDO, SIGMA, PAPER))]
        by_type = caption_type_rows(rows, systems, types)
        types_table = f"\n\nRecall@K by caption type (test captions, %):\n{format_caption_types(by_type)}"
    name = "TinyShapes" if job.embedded else f"{args.corpus} (prepared as {job.corpus})"
    unseen = len(corpus["unseen"]) if "unseen" in corpus else 0
    print(
        f"\nText→image retrieval on {name}, Recall@K in %: each row queries the captions of one split "
        f"(test: {len(test)} images indexed at training; unseen: {unseen} images added "
        f"after training) and searches the gallery named, with its size"
        f"{' (smoke run: 64 queries)' if args.smoke else ''}\n{format_table(rows, 1 / len(test))}\n\n"
        f"{open_set_summary(rows)}\n\nDifferences in Recall@K points (test captions, paired by query):\n"
        f"{format_comparisons(differences)}{types_table}"
    )
    return differences, by_type


def main(argv=None) -> dict:
    args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("modeling_sigma").setLevel(logging.INFO)  # progress lines of training and caches
    args.start, timings = time.time(), {}
    job = make_job(args)
    rows = run_systems(args, job, timings)
    differences, by_type = print_report(args, job, rows)
    report = {
        "corpus": job.corpus,
        "config": job.config,
        "results": rows,
        "differences": differences,
        "by_caption_type": by_type,
        "seconds": timings,
        "wall_time_s": round(time.time() - args.start, 1),
        "smoke": args.smoke,
        "seeds": args.seeds,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as stream:
        json.dump(report, stream, indent=2)
    print(f"\nwrote {args.results}; wall time {report['wall_time_s']} s")
    if not job.embedded:
        examples = "|".join(captions[0] for captions in job.load_corpus()["test"]["captions"][:2])
        print(
            f"Space on this checkpoint: SIGMA_MODEL={args.output_dir}/stage3 SIGMA_CORPUS={job.corpus} "
            f"SIGMA_DESCRIBE_MODEL={args.output_dir}/stage2 SIGMA_EXAMPLES={shlex.quote(examples)} "
            "python space/app.py"
        )
    return report


if __name__ == "__main__":
    main()
