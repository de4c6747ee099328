"""Recall@1/5/10 of a SIGMA checkpoint on a corpus split; results as JSON.

    python recipes/evaluation.py --config recipes/configs/tiny-shapes.yaml
    python recipes/evaluation.py --config recipes/configs/tiny-shapes.yaml --model_name_or_path outputs/x --split test

Every caption of the split is a query; the index holds the split's images (as the two-tower baseline's);
the figures come from the `evaluate` metric in `modeling_sigma/evaluation/recall_metric.py`, which wraps the shared
`recall_at_k`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import evaluate
import torch
from transformers import HfArgumentParser

from modeling_sigma.data.corpus import get_split, load_corpus
from modeling_sigma.evaluation import recall_metric
from modeling_sigma.evaluation.retrieval import retrieve_split
from modeling_sigma.evaluation.statistics import relevant_ranks
from modeling_sigma.training.arguments import load_previous_stage
from modeling_sigma.training.recipe_config import parse_recipe_args

SECTION = "evaluation"


@dataclass
class EvaluateArguments:
    model_name_or_path: str = field(
        default="outputs/tiny-shapes/stage3", metadata={"help": "SIGMA checkpoint"}
    )
    corpus: str = field(default="tiny-shapes", metadata={"help": "load_corpus name, folder or Hub id"})
    cache_dir: str = field(default="outputs/cache", metadata={"help": "corpus cache"})
    image_root: str | None = field(
        default=None, metadata={"help": "COCO Karpathy: local folder of COCO images"}
    )
    split: str = field(
        default="test", metadata={"help": "split whose images are indexed and captions queried"}
    )
    batch_size: int = field(default=64, metadata={"help": "queries per constrained beam search"})
    num_beams: int | None = field(default=None, metadata={"help": "beams (default: the model config's)"})
    max_queries: int | None = field(default=None, metadata={"help": "evaluate only the first N captions"})
    rerank_weight: float | None = field(
        default=None,
        metadata={"help": "re-rank the beams by score + w * log(similarity head) with this w (default: off)"},
    )
    output_file: str | None = field(default=None, metadata={"help": "JSON results file"})
    device: str | None = field(
        default=None, metadata={"help": "where the model runs (default: the GPU when there is one, else CPU)"}
    )


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(EvaluateArguments)


def default_device() -> str:
    """The accelerator when there is one: 25,010 constrained beam searches with a 3B model are hours on CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model(args: EvaluateArguments):
    """The stage-3 checkpoint, in eval mode, on `args.device` (default: `default_device()`)."""
    model, _ = load_previous_stage(args.model_name_or_path, "stage3")
    device = args.device or default_device()
    print(f"evaluating on {device}")
    return model.to(device).eval()


def main(args: EvaluateArguments) -> dict:
    model = load_model(args)
    extra = {"image_root": args.image_root} if args.image_root else {}
    dataset = get_split(load_corpus(args.corpus, cache_dir=args.cache_dir, **extra), args.split)
    rankings, relevant = retrieve_split(
        model,
        dataset,
        k=10,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_queries=args.max_queries,
        rerank_weight=args.rerank_weight,
    )
    recall = evaluate.load(recall_metric.__file__)
    results = recall.compute(predictions=rankings, references=[[image_id] for image_id in relevant])
    report = {"arguments": asdict(args), "queries": len(rankings), "images": len(dataset), **results}
    print(json.dumps(report, indent=2))
    # per-query ranks of the relevant image (0: not in the top 10), for paired bootstrap intervals
    report["ranks"] = relevant_ranks(rankings, relevant)
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w") as stream:
            json.dump(report, stream, indent=2)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_recipe_args(make_parser(), SECTION))
