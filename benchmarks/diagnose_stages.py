"""Four diagnostics of what limits SIGMA-tiny (issue 16), on the embedded TinyShapes corpus.

    python benchmarks/diagnose_stages.py memorisation outputs/tiny-shapes/stage1
    python benchmarks/diagnose_stages.py captioner --patch-size 8 --epochs 6 --temperatures 1.0 0.5
    python benchmarks/diagnose_stages.py prefixes outputs/tiny-shapes/stage3-paper outputs/tiny-shapes/stage3
    python benchmarks/diagnose_stages.py compare results/embedded-m4.json results/embedded.json

`memorisation`: a stage-1 (or later) checkpoint writes levels 1..L-1 for 500 train and 500 test images
(greedy, as open-set indexing does); prints the share equal to their stage-0 prefix, whole and per level.

`captioner`: trains the embedded pseudo-query captioner on `train` (cached like stage 3's) and samples its
pseudo-queries for the `test` images; prints, per caption type, the share of test images for which one of them
is exactly the true caption of that type. The test captions are read here only to score, never to train.

`prefixes`: where retrieval misses, level by level. For every test caption, each stage-3 checkpoint and the
two-tower baseline (the stage-0 encoder, tiny CLIP) retrieve 10 test images; prints, per caption type, the share
of queries whose top-1 (and best of the top 10) shares the first j levels of the true image's identifier
(j = 1 … L, the stage-0 codes of the first checkpoint's index; L: the whole identifier, i.e. Recall@1 / @10).
A system that loses at level 1 misses the coarse cluster; one that loses only at the suffix found the right
prefix and picked the wrong image inside it.

`compare`: two runs of the end-to-end job on the same test captions (a lever on, then off): for every system the
two results files share, the paired bootstrap of A − B (the captions of an image resampled together, as the
job's own differences; `--corpus`: the corpus both ran on, for the owner of each caption).
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from modeling_sigma.data.corpus import load_corpus, load_image
from modeling_sigma.evaluation.statistics import TINY_SHAPES_CAPTION_TYPES, caption_types_by_position
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval


def memorisation(checkpoint: str, cache_dir: str, count: int = 500) -> dict:
    from modeling_sigma.open_set.index import generate_prefixes

    model = SigmaForRetrieval.from_pretrained(checkpoint).eval()
    corpus = load_corpus("tiny-shapes", cache_dir=cache_dir)
    rows = {image_id: row for row, image_id in enumerate(model.index.image_ids)}
    report = {}
    for split in ("train", "test"):
        dataset = corpus[split].select(range(min(count, len(corpus[split]))))
        with torch.no_grad():
            written = generate_prefixes(model, [load_image(image) for image in dataset["image"]])
        equal = written == model.index.codes[[rows[i] for i in dataset["image_id"]], :-1]
        report[split] = {
            "levels_1_to_4_exact_%": round(100 * equal.all(1).float().mean().item(), 1),
            "per_level_%": [round(100 * value, 1) for value in equal.float().mean(0).tolist()],
        }
    return report


def captioner(args, cache_dir: str) -> list[dict]:
    from modeling_sigma.training.pseudo_queries import (
        SigmaCaptionerConfig,
        caption_images,
        train_embedded_captioner,
    )

    corpus = load_corpus("tiny-shapes", cache_dir=cache_dir)
    config = SigmaCaptionerConfig(
        epochs=args.epochs, per_image=args.per_image, image_size=args.image_size, patch_size=args.patch_size
    )
    start = time.time()
    model = SigmaForRetrieval.from_pretrained(train_embedded_captioner(corpus["train"], cache_dir, config))
    trained = round(time.time() - start, 1)
    test, reports = corpus["test"], []
    for temperature in args.temperatures:
        config.temperature = temperature
        images = test.select_columns(["image"])
        written = caption_images(
            model.eval(), model.processor, images, model.config.captioning_prompt, config
        )
        hits = collections.Counter()
        for truths, queries in zip(test["captions"], written):
            for kind, truth in zip(TINY_SHAPES_CAPTION_TYPES, truths):
                hits[kind] += truth in queries
            hits["full or paraphrase"] += truths[0] in queries or truths[-1] in queries
        reports.append(
            {
                "temperature": temperature,
                "captioner_seconds": trained,
                "pseudo_queries_per_image": round(sum(map(len, written)) / len(written), 2),
                "exact_%": {kind: round(100 * n / len(test), 1) for kind, n in hits.items()},
            }
        )
    return reports


def prefixes(checkpoints: list[str], cache_dir: str, k: int = 10) -> dict:
    import numpy as np

    from modeling_sigma.evaluation.retrieval import retrieve_split
    from modeling_sigma.evaluation.two_tower import two_tower_rankings
    from modeling_sigma.identifiers.encoders import encode_split, load_encoder

    test = load_corpus("tiny-shapes", cache_dir=cache_dir)["test"]
    types = caption_types_by_position([len(c) for c in test["captions"]], TINY_SHAPES_CAPTION_TYPES)
    rankings, index = {}, None
    for checkpoint in checkpoints:
        model = SigmaForRetrieval.from_pretrained(checkpoint).eval()
        index = index or model.index
        with torch.no_grad():
            rankings[checkpoint], relevant = retrieve_split(model, test, k=k, progress=False)
    encoder = load_encoder("tiny-clip", cache_dir=cache_dir, corpus="tiny-shapes")
    images = encode_split(encoder, test, "tiny-shapes", "test", cache_dir, progress=False)
    texts = encode_split(encoder, test, "tiny-shapes", "test", cache_dir, kind="captions", progress=False)
    rankings["two-tower (tiny CLIP + faiss)"] = two_tower_rankings(images, test["image_id"], texts, k=k)
    rows = {image_id: row for row, image_id in enumerate(index.image_ids)}
    codes = np.asarray(index.codes)
    gold = codes[[rows[image_id] for image_id in relevant]]  # (queries, L)
    report = {}
    for system, ranked in rankings.items():
        shared = np.zeros((len(ranked), k), dtype=np.int64)  # levels each hit shares with the true identifier
        for query, hits in enumerate(ranked):
            for position, image_id in enumerate(hits[:k]):
                equal = codes[rows[image_id]] == gold[query]
                shared[query, position] = int(np.argmin(equal)) if not equal.all() else equal.size
        table = {}
        for caption_type in ("all", *TINY_SHAPES_CAPTION_TYPES):
            chosen = np.asarray([caption_type in ("all", kind) for kind in types])
            top1, best = shared[chosen, 0], shared[chosen].max(axis=1)
            table[caption_type] = {
                "top1": [round(100 * float((top1 >= j).mean()), 1) for j in range(1, gold.shape[1] + 1)],
                f"top{k}": [round(100 * float((best >= j).mean()), 1) for j in range(1, gold.shape[1] + 1)],
            }
        report[system] = table
    return report


def compare(file_a: str, file_b: str, corpus: str, cache_dir: str) -> list[dict]:
    from modeling_sigma.data.corpus import caption_pairs
    from modeling_sigma.evaluation.tables import comparison_rows

    runs = []
    for path in (file_a, file_b):
        with open(path) as stream:
            runs.append(json.load(stream)["results"])
    _, owners = caption_pairs(load_corpus(corpus, cache_dir=cache_dir)["test"])
    shared = [name for name in runs[0] if "ranks" in runs[0][name] and "ranks" in runs[1].get(name, {})]
    for name in shared:
        for run, path in zip(runs, (file_a, file_b)):
            if len(run[name]["ranks"]) != len(owners):
                raise ValueError(
                    f"{path}: {name!r} ranks {len(run[name]['ranks'])} queries, the test split of {corpus!r} "
                    f"has {len(owners)} captions; compare runs on the corpus they were made on (--corpus)"
                )
    merged = {f"{name} (A)": runs[0][name] for name in shared} | {
        f"{name} (B)": runs[1][name] for name in shared
    }
    return comparison_rows(merged, [(f"{name} (A)", f"{name} (B)") for name in shared], owners)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache-dir", default="outputs/cache")
    commands = parser.add_subparsers(dest="command", required=True)
    memorise = commands.add_parser("memorisation", help="stage-1 memorisation of a checkpoint")
    memorise.add_argument("checkpoint")
    caption = commands.add_parser("captioner", help="exactness of the embedded captioner's pseudo-queries")
    caption.add_argument("--image-size", type=int, default=64)
    caption.add_argument("--patch-size", type=int, default=8)
    caption.add_argument("--epochs", type=float, default=6)
    caption.add_argument("--per-image", type=int, default=5)
    caption.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    levels = commands.add_parser("prefixes", help="how many identifier levels the retrieved images share")
    levels.add_argument("checkpoints", nargs="+", help="stage-3 checkpoints of one stage 0")
    paired = commands.add_parser("compare", help="paired bootstrap of two runs' results files, A − B")
    paired.add_argument("results_a")
    paired.add_argument("results_b")
    paired.add_argument("--corpus", default="tiny-shapes", help="the corpus both runs evaluated on")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "memorisation":
        print(json.dumps({"checkpoint": args.checkpoint, **memorisation(args.checkpoint, args.cache_dir)}))
    elif args.command == "compare":
        rows = compare(args.results_a, args.results_b, args.corpus, args.cache_dir)
        print(f"A = {args.results_a}, B = {args.results_b}; A − B, paired bootstrap over images, 95 %")
        for row in rows:
            cells = "  ".join(
                f"R@{k} {row[f'R@{k}']['difference']:+.1f} [{row[f'R@{k}']['low']:+.1f}, {row[f'R@{k}']['high']:+.1f}]"
                for k in (1, 5, 10)
            )
            print(f"  {row['a'][: -len(' (A)')]}: {cells}")
        print(
            json.dumps({"a": args.results_a, "b": args.results_b, "corpus": args.corpus, "differences": rows})
        )
    elif args.command == "prefixes":
        report = prefixes(args.checkpoints, args.cache_dir)
        for system, table in report.items():
            print(
                f"\n{system}: % of queries whose top-1 | best of top 10 shares levels 1..L of the true identifier"
            )
            for caption_type, row in table.items():
                print(f"  {caption_type:>10}  {row['top1']}  |  {row['top10']}")
        print(json.dumps({"checkpoints": args.checkpoints, "prefixes": report}))
    else:
        for report in captioner(args, args.cache_dir):
            print(json.dumps({"patch_size": args.patch_size, "image_size": args.image_size, **report}))


if __name__ == "__main__":
    main()
