"""Decode-time levers of a trained SIGMA checkpoint (issue 16): beam width, similarity-head re-rank weight and
scoring mode, Recall@1/5/10 on a corpus split's captions, one retrieval per beam width.

    python benchmarks/bench_decode_levers.py --checkpoint outputs/tiny-shapes/stage3
    python benchmarks/bench_decode_levers.py --checkpoint outputs/landscapes/stage3 --corpus DIR --json out.json

Re-ranking sorts the same beams by `score + w * log(similarity)` (`open_set.index.rerank_hits`); `w = 0` is the
beam order. Restricted scoring is run at the default beam width only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from modeling_sigma.data.corpus import caption_pairs, get_split, load_corpus
from modeling_sigma.evaluation.metrics import recall_at_k
from modeling_sigma.evaluation.retrieval import index_split
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
from modeling_sigma.open_set.index import rerank_hits

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def sweep(model, dataset, beam_widths: list[int], batch_size: int) -> dict:
    queries, owners = caption_pairs(dataset)
    relevant = [dataset["image_id"][owner] for owner in owners]
    gallery = index_split(model, dataset)
    figures = {}
    for beams in beam_widths:
        for scoring in ("exact", "restricted") if beams == beam_widths[0] else ("exact",):
            start = time.time()
            hits = model.retrieve(
                queries, k=beams, num_beams=beams, batch_size=batch_size, index=gallery, scoring=scoring
            )
            seconds = time.time() - start
            for weight in WEIGHTS:
                ranked = (
                    rerank_hits([[dict(h) for h in q] for q in hits], 10, weight)
                    if weight
                    else [q[:10] for q in hits]
                )
                metrics = recall_at_k([[hit["image_id"] for hit in q] for q in ranked], relevant)
                name = f"beams {beams}, {scoring}, rerank w={weight}"
                figures[name] = {
                    **{k: round(100 * v, 1) for k, v in metrics.items()},
                    "seconds": round(seconds, 1),
                }
                print(name, figures[name], flush=True)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a stage-3 checkpoint folder")
    parser.add_argument("--corpus", default="tiny-shapes", help="load_corpus name or folder")
    parser.add_argument("--cache-dir", default="outputs/cache")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SigmaForRetrieval.from_pretrained(args.checkpoint).eval()
    dataset = get_split(load_corpus(args.corpus, cache_dir=args.cache_dir), args.split)
    figures = sweep(model, dataset, args.beams, args.batch_size)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(figures, stream, indent=2)
    return figures


if __name__ == "__main__":
    main()
