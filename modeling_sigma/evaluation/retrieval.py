"""Recall@K of a SIGMA checkpoint on a corpus split, with the shared `recall_at_k`."""

from __future__ import annotations

import logging
import time
from functools import partial

import torch

from modeling_sigma.data.corpus import caption_pairs
from modeling_sigma.evaluation.metrics import DEFAULT_KS, recall_at_k

logger = logging.getLogger(__name__)


def index_split(model, dataset, gallery_ids=None, index=None):
    """A `SigmaIndex` of the images of `dataset` (as the two-tower baseline searches them), or of `gallery_ids`
    when given: a larger gallery that holds the split's images among others.

    Every image must already have an identifier in `index` (default `model.index`: stage 0 or open-set adds).
    """
    index = index if index is not None else model.index
    if index is None:
        raise ValueError("the model has no identifier index: call `model.set_index(codes, image_ids)` first")
    split_ids = list(dataset["image_id"])
    gallery = split_ids if gallery_ids is None else list(dict.fromkeys(gallery_ids))
    outside = sorted(set(split_ids) - set(gallery))
    if outside:
        raise ValueError(
            f"{len(outside)} image(s) of this split are not in the gallery (e.g. {outside[0]!r}); "
            "a gallery must hold every image whose captions are queried."
        )
    missing = [image_id for image_id in gallery if image_id not in index]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) to search have no identifier in the model's codebook "
            f"(e.g. {missing[0]!r}); index them first."
        )
    return index.subset(gallery)


def retrieve_split(
    model,
    dataset,
    k: int = 10,
    batch_size: int = 32,
    num_beams: int | None = None,
    max_queries=None,
    rerank_weight: float | None = None,
    gallery_ids=None,
    index=None,
    progress: bool = True,
) -> tuple[list[list[str]], list[str]]:
    """Searches only the split's images (or `gallery_ids`, see `index_split`) of `index` (default
    `model.index`) with each of its captions (the first `max_queries`).

    With `rerank_weight`, the beams are rescored by the similarity head as `open_set.index.search(rerank=True)`
    does. `progress` shows a bar over the queries (tqdm). Returns (retrieved image ids per caption, best first;
    each caption's own image id).
    """
    from modeling_sigma.open_set.index import rerank_candidates, rerank_hits

    queries, owners = caption_pairs(dataset)
    if max_queries:
        queries, owners = queries[:max_queries], owners[:max_queries]
    gallery = index_split(model, dataset, gallery_ids, index)
    search = partial(_search_in_chunks, model, queries, batch_size, gallery, progress)
    if rerank_weight is None:
        hits = search(k=k, num_beams=num_beams)
    else:
        candidates = rerank_candidates(model, k, num_beams, len(gallery))
        hits = search(k=candidates, num_beams=max(num_beams or model.config.num_beams, candidates))
        hits = rerank_hits(hits, k, rerank_weight)
    image_ids = dataset["image_id"]
    rankings = [[hit["image_id"] for hit in query_hits] for query_hits in hits]
    return rankings, [image_ids[o] for o in owners]


def _search_in_chunks(model, queries, batch_size, index, progress, **search) -> list[list[dict]]:
    """`model.retrieve` over the queries a few batches at a time, so a bar can show how far it is."""
    from tqdm.auto import tqdm

    hits, chunk = [], batch_size * 4
    with tqdm(total=len(queries), desc="retrieve", unit="query", disable=not progress) as bar:
        for start in range(0, len(queries), chunk):
            batch = queries[start : start + chunk]
            hits += model.retrieve(batch, batch_size=batch_size, index=index, **search)
            bar.update(len(batch))
    return hits


def evaluate_retrieval(model, dataset, ks=DEFAULT_KS, **options) -> dict:
    """Text→image Recall@K over the split's captions, searching only the split's images, or the larger
    gallery `gallery_ids`, of `index` (default `model.index`; re-ranked by the similarity head when
    `rerank_weight` is given).

    `options` are those of `retrieve_split` (batch_size, num_beams, max_queries, rerank_weight, gallery_ids,
    index, progress). Returns the `recall@{k}` figures plus `queries`, `images` (the gallery size) and `seconds`.
    """
    start = time.time()
    rankings, relevant = retrieve_split(model, dataset, k=max(ks), **options)
    metrics = recall_at_k(rankings, relevant, ks)
    gallery_ids = options.get("gallery_ids")
    images = len(dataset) if gallery_ids is None else len(set(gallery_ids))
    metrics.update(queries=len(rankings), images=images, seconds=round(time.time() - start, 1))
    return metrics


@torch.no_grad()
def memorization_exact_match(model, dataset, max_images: int | None = None, batch_size: int = 64) -> dict:
    """Stage 1's job: share of indexed images whose identifier the model writes exactly (greedy,
    constrained to the identifiers in the index), and share whose first level (id1) is right."""
    from modeling_sigma.open_set.index import generate_prefixes

    index = model.index
    images, rows = [], []
    for image_id, image in zip(dataset["image_id"][:max_images], dataset["image"][:max_images]):
        if index is not None and image_id in index:
            images.append(image)
            rows.append(index.row(image_id))
    if not rows:
        raise ValueError("none of these images has an identifier in the model's index")
    expected = index.codes[torch.tensor(rows)]  # (images, length)
    predicted = generate_prefixes(model, images, batch_size=batch_size)  # (images, length - 1)
    prefix_match = (predicted == expected[:, : predicted.shape[1]]).all(dim=1)
    return {
        "prefix_exact_match": prefix_match.float().mean().item(),
        "id1_accuracy": (predicted[:, 0] == expected[:, 0]).float().mean().item(),
        "images": len(rows),
    }


@torch.no_grad()
def comprehension_token_accuracy(model, dataset, identifiers: dict[str, str], max_images: int = 64) -> dict:
    """Stage 2's job: teacher-forced next-token accuracy of captions given only the identifier."""
    from modeling_sigma.training.collator import SigmaCollator
    from modeling_sigma.training.examples import comprehension_examples

    subset = dataset.select(range(min(max_images, len(dataset))))
    examples = comprehension_examples(subset, identifiers, replay=[], replay_fraction=0.0, seed=0)
    batch = SigmaCollator(model.processor, model.config)(examples)
    logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
    labels = batch["labels"][:, 1:].to(model.device)
    valid = labels != -100
    correct = (logits[:, :-1].argmax(-1) == labels) & valid
    return {"caption_token_accuracy": (correct.sum() / valid.sum()).item(), "captions": len(examples)}


__all__ = [
    "comprehension_token_accuracy",
    "evaluate_retrieval",
    "index_split",
    "memorization_exact_match",
    "retrieve_split",
]
