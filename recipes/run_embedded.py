"""The embedded end-to-end job: the whole paper on 2 CPU cores, offline (README command 1: `make e2e`).

    python recipes/run_embedded.py                  # SIGMA-tiny and the two-tower baseline
    python recipes/run_embedded.py --ablations      # + no stage 1, no stage 2, no soft labels, random ids
    python recipes/run_embedded.py --smoke          # tiny schedules, for a quick check of the plumbing

Steps: TinyShapes corpus → tiny CLIP encoder → two-tower baseline → stage 0 identifiers → stage 1 →
stage 2 → stage 3 → Recall@1/5/10 on the same test captions. Every step is a recipe of this folder, run
in-process with `recipes/configs/tiny-shapes.yaml`; the table is printed and written to `results/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from functools import partial

from modeling_sigma.data.corpus import EMBEDDED_CORPUS_NAME, caption_pairs, load_corpus
from modeling_sigma.evaluation.two_tower import evaluate_two_tower
from modeling_sigma.identifiers.encoders import encode_split, load_encoder
from modeling_sigma.training.recipe_config import read_section
from modeling_sigma.training.recipe_config import run_recipe as run_recipe_file

RECIPES = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(RECIPES, "configs", "tiny-shapes.yaml")
SMOKE_OVERRIDES = ["--max_steps", "3", "--save_strategy", "no"]
RERANK_WEIGHT = 1.0  # fused_score = beam log-probability + w * log(similarity head)
# name → (extra flags per stage, stage-0 flags)
ABLATIONS = {
    "w/o stage 1 (memorise)": ({"stage1": ["--num_train_epochs", "0"]}, []),
    "w/o stage 2 (comprehend)": ({"stage2": ["--num_train_epochs", "0"]}, []),
    "w/o soft labels (λ = 0)": ({"stage3": ["--teacher", "None", "--lambda_ssp", "0"]}, []),
    "random identifiers (codes shuffled)": ({}, ["--random_identifiers", "true"]),
}


def run_recipe(name: str, flags: list[str]):
    print(f"\n=== {name} {' '.join(flags)}", flush=True)
    return run_recipe_file(os.path.join(RECIPES, f"{name}.py"), ["--config", CONFIG, *flags])


def run_two_tower(cache_dir: str) -> dict[str, float]:
    corpus = load_corpus(EMBEDDED_CORPUS_NAME, cache_dir=cache_dir)
    encoder = load_encoder("tiny-clip", cache_dir=cache_dir)
    test = corpus["test"]
    image_features = encode_split(encoder, test, EMBEDDED_CORPUS_NAME, "test", cache_dir)
    query_features = encode_split(encoder, test, EMBEDDED_CORPUS_NAME, "test", cache_dir, kind="captions")
    _, owners = caption_pairs(test)
    ids = test["image_id"]
    metrics = evaluate_two_tower(image_features, ids, query_features, [ids[o] for o in owners])
    return {**metrics, "queries": len(owners), "images": len(ids)}


RUN_RECORD = ".sigma_run.json"  # what produced a finished stage folder (for --reuse)


def run_stage(name: str, flags: list[str], output_dir: str, reuse: bool) -> None:
    """Runs a training recipe; with `reuse`, skips it when `output_dir` was finished by the same recipe,
    flags and config file (its record is written only after the recipe returns)."""
    with open(CONFIG, "rb") as stream:
        record = {"recipe": name, "flags": flags, "config_sha256": hashlib.sha256(stream.read()).hexdigest()}
    record_file = os.path.join(output_dir, RUN_RECORD)
    if reuse and os.path.isfile(record_file):
        with open(record_file) as stream:
            if json.load(stream) == record:
                print(f"\n=== {name}: reusing {output_dir} (same recipe, flags and config)", flush=True)
                return
    run_recipe(name, flags)
    with open(record_file, "w") as stream:
        json.dump(record, stream, indent=2)


def run_sigma(
    root: str,
    stage_flags: dict,
    stage0_flags: list[str],
    smoke: bool,
    reuse: bool = False,
    rerank: bool = False,
) -> dict:
    """Stage 0 → 3 and evaluation into `root`; returns the evaluation report (with `rerank`, plus the
    similarity-head re-ranked figures under `"reranked"`)."""
    dirs = {f"stage{n}": os.path.join(root, f"stage{n}") for n in range(4)}
    common = SMOKE_OVERRIDES if smoke else []
    run_stage("stage0", ["--output_dir", dirs["stage0"], *stage0_flags], dirs["stage0"], reuse)
    previous = None
    for stage in ("stage1", "stage2", "stage3"):
        flags = ["--stage0_dir", dirs["stage0"], "--output_dir", dirs[stage], "--disable_tqdm", "true"]
        flags += ["--model_name_or_path", previous] if previous else []
        run_stage(stage, [*flags, *common, *stage_flags.get(stage, [])], dirs[stage], reuse)
        previous = dirs[stage]
    flags = ["--model_name_or_path", previous] + (["--max_queries", "64"] if smoke else [])
    report = run_recipe("evaluation", flags + ["--output_file", os.path.join(root, "evaluation.json")])
    if not rerank:
        return report
    reranked = run_recipe(
        "evaluation",
        flags
        + [
            "--rerank_weight",
            str(RERANK_WEIGHT),
            "--output_file",
            os.path.join(root, "evaluation-rerank.json"),
        ],
    )
    return {**report, "reranked": reranked}


def run_open_set(
    root: str, cache_dir: str, mode: str, smoke: bool, rerank: bool = False, joint: bool = False
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

    model, _ = load_previous_stage(os.path.join(root, "stage3"), "stage3")
    corpus = load_corpus(EMBEDDED_CORPUS_NAME, cache_dir=cache_dir)
    unseen = corpus["unseen"]
    if smoke:  # a 3-step model writes one prefix for every image: keep within the suffix capacity
        unseen = unseen.select(range(16))
    extra = {}
    if mode == "quantizer":
        extra = {
            "quantizer": SigmaIdentifierBuilder.load(os.path.join(root, "stage0")),
            "encoder": load_encoder("tiny-clip", cache_dir=cache_dir),
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


def table_rows(results: dict[str, dict]) -> list[dict]:
    """One flat row per figure set of `main`'s results: `system`, `queries_on`, `gallery` (with its size),
    `reranked` and `R@1/5/10` in %. Nested re-ranked and joint-gallery figures become rows of their own."""
    rows = []

    def add(system: str, figures: dict, reranked: bool, defaults: dict) -> None:
        queries_on = figures.get("queries_on", defaults.get("queries_on", "test"))
        gallery = figures.get("gallery", defaults.get("gallery", queries_on))
        size = figures.get("images", defaults.get("images"))
        recall = {f"R@{k}": round(100 * figures[f"recall@{k}"], 1) for k in (1, 5, 10)}
        gallery_label = f"{gallery} ({size})" if size else gallery
        rows.append(
            {
                "system": system,
                "queries_on": queries_on,
                "gallery": gallery_label,
                "reranked": reranked,
                **recall,
            }
        )

    for system, metrics in results.items():
        add(system, metrics, False, {})
        if metrics.get("reranked"):
            add(system, metrics["reranked"], True, metrics)
        for figures in metrics.get("joint_gallery", {}).values():
            add(system, figures, False, {})
    return rows


def format_table(results: dict[str, dict], chance: float) -> str:
    lines = ["| system | queries on | gallery | R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|"]
    for row in table_rows(results):
        label = f"{row['system']} + re-ranking" if row["reranked"] else row["system"]
        cells = " | ".join(str(row[f"R@{k}"]) for k in (1, 5, 10))
        lines.append(f"| {label} | {row['queries_on']} | {row['gallery']} | {cells} |")
    lines.append(
        f"| chance (1 / test images) | test | test | {100 * chance:.1f} | {500 * chance:.1f} | {1000 * chance:.1f} |"
    )
    return "\n".join(lines)


def open_set_summary(results: dict[str, dict]) -> str:
    """The open-set check in one line per mode: unseen R@10 as a share of test R@10 in the same gallery."""
    lines = []
    for system, metrics in results.items():
        joint = metrics.get("joint_gallery")
        if joint:
            unseen, test = (100 * joint[split]["recall@10"] for split in ("unseen", "test"))
            share = f"{100 * unseen / test:.0f} %" if test else "n/a"
            lines.append(
                f"open set, {system}: R@10 {unseen:.1f} on unseen queries vs {test:.1f} on test queries, "
                f"same gallery of {joint['test']['images']} images ({share})"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="outputs/tiny-shapes", help="checkpoints of every stage")
    parser.add_argument("--results", default="results/embedded.json", help="where the table is written")
    parser.add_argument("--ablations", action="store_true", help="also train the four ablations (~4× longer)")
    parser.add_argument("--smoke", action="store_true", help="3 steps per stage, 64 queries: plumbing only")
    parser.add_argument(
        "--rerank", action="store_true", help="also report every SIGMA row re-ranked by the similarity head"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="skip stages whose folder a run with the same flags finished"
    )
    args = parser.parse_args(argv)
    start, timings = time.time(), {}
    cache_dir = read_section(CONFIG, "stage0").get("cache_dir", "outputs/cache")

    rows = {"two-tower (tiny CLIP + faiss)": run_two_tower(cache_dir)}
    timings["two-tower"] = round(time.time() - start, 1)
    rows["SIGMA-tiny"] = run_sigma(args.output_dir, {}, [], args.smoke, args.reuse, args.rerank)
    timings["SIGMA-tiny"] = round(time.time() - start - timings["two-tower"], 1)
    for mode in ("generate", "quantizer"):
        lap = time.time()
        rows[f"SIGMA-tiny, unseen images added after training ({mode})"] = run_open_set(
            args.output_dir, cache_dir, mode, args.smoke, args.rerank, joint=mode == "generate"
        )
        timings[f"open-set {mode}"] = round(time.time() - lap, 1)
    if args.ablations:
        for number, (name, (stage_flags, stage0_flags)) in enumerate(ABLATIONS.items()):
            root = os.path.join(args.output_dir, f"ablation-{number}")
            lap = time.time()
            rows[name] = run_sigma(root, stage_flags, stage0_flags, args.smoke, args.reuse, args.rerank)
            timings[name] = round(time.time() - lap, 1)

    corpus = load_corpus(EMBEDDED_CORPUS_NAME, cache_dir=cache_dir)
    table = format_table(rows, 1 / len(corpus["test"]))
    print(
        f"\nText→image retrieval on TinyShapes, Recall@K in %: each row queries the captions of one split "
        f"(test: {len(corpus['test'])} images indexed at training; unseen: {len(corpus['unseen'])} images added "
        f"after training) and searches the gallery named, with its size"
        f"{' (smoke run: 64 queries)' if args.smoke else ''}\n{table}\n\n{open_set_summary(rows)}"
    )
    report = {
        "results": rows,
        "seconds": timings,
        "wall_time_s": round(time.time() - start, 1),
        "smoke": args.smoke,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as stream:
        json.dump(report, stream, indent=2)
    print(f"\nwrote {args.results}; wall time {report['wall_time_s']} s")
    return report


if __name__ == "__main__":
    main()
