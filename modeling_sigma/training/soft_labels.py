"""Stage 3's semantic soft labels: a cross-modal teacher scores every (image, caption) pair in [0, 1].

Teachers, one interface (`score(images, captions) -> np.ndarray` in [0, 1], one score per pair):

- `SigmaRerankerTeacher`: jina-reranker-m0, the paper's cross-encoder, through `trust_remote_code`
  (needs the Hub; the code path follows the model card's `compute_score(..., doc_type="image")`).
- `SigmaDualEncoderTeacher`: any CLIP/SigLIP checkpoint, or the embedded tiny CLIP. A dual encoder's
  cosine is not a calibrated probability, so the score is the caption's *retrieval percentile*: the share
  of gallery images that the caption scores below its own image. A specific caption ("a small red circle at
  the left and ...") scores near 1; a coarse one ("two shapes on a gray background") that fits many images
  scores lower. That is the graded relevance the soft labels exist to carry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence

import datasets
import numpy as np

from modeling_sigma.data.corpus import caption_pairs, load_image
from modeling_sigma.identifiers.encoders import SigmaEncoder, load_encoder
from modeling_sigma.modeling.file_utils import atomic_file

logger = logging.getLogger(__name__)

SOFT_LABEL_COLUMN = "soft_labels"


class SigmaSoftLabelTeacher:
    """Scores (image, caption) pairs in [0, 1]."""

    name: str

    def score(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score_split(self, dataset: datasets.Dataset, chunk_size: int = 256) -> np.ndarray:
        """Scores every (image, caption) pair of a corpus split, in `caption_pairs` order, a chunk of pairs at a
        time: only one chunk's images are ever decoded (all of Flickr30K's 145,000 pairs would take ~79 GB)."""
        return np.concatenate(
            [self.score(images, captions) for images, captions in pair_chunks(dataset, chunk_size)]
            or [np.zeros(0, np.float32)]
        )


def pair_chunks(dataset: datasets.Dataset, chunk_size: int):
    """Yields `(images, captions)` lists of at most `chunk_size` pairs; each image is decoded once per chunk."""
    captions, owners = caption_pairs(dataset)
    column = dataset["image"]  # a lazy column: rows decode when indexed
    for start in range(0, len(captions), chunk_size):
        chunk_owners = owners[start : start + chunk_size]
        decoded = {owner: column[owner] for owner in dict.fromkeys(chunk_owners)}
        yield [decoded[o] for o in chunk_owners], captions[start : start + chunk_size]


class SigmaDualEncoderTeacher(SigmaSoftLabelTeacher):
    """Retrieval-percentile scores from a frozen dual encoder over a gallery of images.

    The gallery defaults to the images being scored (for `score_split`, the split's own images).
    """

    def __init__(self, encoder: SigmaEncoder | str, gallery_images: Sequence | None = None):
        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        self.name = f"dual-encoder:{self.encoder.name}"
        self.gallery = None if gallery_images is None else self.encoder.encode_images(gallery_images)

    def score(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions: scores are per pair.")
        image_features = self.encoder.encode_images(images)  # (pairs, dim)
        return self._percentiles(image_features, self.encoder.encode_texts(captions))

    def score_split(self, dataset: datasets.Dataset) -> np.ndarray:
        captions, owners = caption_pairs(dataset)
        image_features = self.encoder.encode_images(dataset["image"])  # (images, dim), each image once
        return self._percentiles(image_features[owners], self.encoder.encode_texts(captions), image_features)

    def _percentiles(self, image_features, text_features, default_gallery=None) -> np.ndarray:
        gallery = self.gallery if self.gallery is not None else default_gallery
        gallery = image_features if gallery is None else gallery
        own = (image_features * text_features).sum(axis=1, keepdims=True)  # (pairs, 1)
        against_gallery = text_features @ gallery.T  # (pairs, gallery)
        return (against_gallery < own).mean(axis=1).astype(np.float32)


class SigmaRerankerTeacher(SigmaSoftLabelTeacher):
    """jina-reranker-m0 (the paper's teacher): a multimodal cross-encoder with scores in [0, 1], on the GPU when
    there is one (bf16 there, fp32 on CPU)."""

    def __init__(self, name_or_path: str = "jinaai/jina-reranker-m0", batch_size: int = 16, device=None):
        import torch
        from transformers import AutoModel

        self.name = name_or_path
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if str(self.device).startswith("cuda") else torch.float32
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
        self.model = model.to(self.device).eval()

    def score(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions: scores are per pair.")
        scores = []
        for start in range(0, len(captions), self.batch_size):
            batch = [
                [caption, load_image(image)]
                for image, caption in zip(
                    images[start : start + self.batch_size], captions[start : start + self.batch_size]
                )
            ]
            result = self.model.compute_score(batch, max_length=1024, doc_type="image")
            scores.append(np.atleast_1d(np.asarray(result, dtype=np.float32)))  # one pair: a bare float
        scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return np.clip(scores, 0.0, 1.0)


def load_teacher(name_or_path: str, gallery_images: Sequence | None = None) -> SigmaSoftLabelTeacher:
    """`jina-reranker-*` repos give the cross-encoder teacher; anything else a dual-encoder teacher."""
    if "reranker" in name_or_path:
        return SigmaRerankerTeacher(name_or_path)
    return SigmaDualEncoderTeacher(name_or_path, gallery_images)


def soft_label_scores(
    dataset: datasets.Dataset,
    teacher: SigmaSoftLabelTeacher | str,
    cache_dir: str | os.PathLike | None = None,
    poll_seconds: float = 2.0,
) -> np.ndarray:
    """The teacher's score of every pair of `dataset`, computed once and cached as `.npy` under `cache_dir`.

    Under several processes (`LOCAL_RANK` set by torchrun / accelerate launch) the local main process loads the
    teacher (a name is loaded only there), scores and writes the file; the other ranks wait for the file and
    read it. They poll the file system rather than wait in a collective, so the scoring (hours for COCO) cannot
    hit the process group's timeout.
    """
    if cache_dir is None:
        return _teacher(teacher).score_split(dataset)
    path = soft_label_path(cache_dir, teacher if isinstance(teacher, str) else teacher.name, dataset)
    if not os.path.isfile(path):
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            _write_scores(path, teacher, dataset)
        else:
            logger.info("waiting for the main process to write %s", path)
            while not os.path.isfile(path):
                time.sleep(poll_seconds)
    return np.load(path, allow_pickle=False)


def soft_label_path(cache_dir: str | os.PathLike, teacher_name: str, dataset: datasets.Dataset) -> str:
    """Cache file of a (teacher, split) pair, keyed by the split's image ids and captions: the same key on every
    rank and in every environment (an arrow fingerprint need not be)."""
    digest = hashlib.sha1(teacher_name.encode())
    for image_id, captions in zip(dataset["image_id"], dataset["captions"]):
        digest.update(json.dumps([image_id, captions]).encode())
    key = digest.hexdigest()[:16]
    slug = "".join(c if c.isalnum() else "-" for c in os.path.basename(teacher_name.rstrip("/")))
    return os.path.join(os.fspath(cache_dir), "soft-labels", f"{slug}-{key}.npy")


def _write_scores(path: str, teacher: SigmaSoftLabelTeacher | str, dataset: datasets.Dataset) -> None:
    scorer = _teacher(teacher)
    scores = scorer.score_split(dataset)
    with atomic_file(path) as stream:
        np.save(stream, scores)
    logger.info("soft labels of %d pairs written to %s", len(scores), path)
    if isinstance(teacher, str):  # loaded here: free its (GPU) memory before the student is loaded
        del scorer
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _teacher(teacher: SigmaSoftLabelTeacher | str) -> SigmaSoftLabelTeacher:
    return load_teacher(teacher) if isinstance(teacher, str) else teacher


def add_soft_labels(
    dataset: datasets.Dataset,
    teacher: SigmaSoftLabelTeacher | str,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Adds a `soft_labels` column (one float per caption of each image) scored by `teacher` (cached, see
    `soft_label_scores`)."""
    scores = soft_label_scores(dataset, teacher, cache_dir)
    name = teacher if isinstance(teacher, str) else teacher.name
    captions, _ = caption_pairs(dataset)
    if scores.shape != (len(captions),):
        raise ValueError(f"Teacher {name} returned {scores.shape[0]} scores for {len(captions)} pairs.")
    if not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError(f"Teacher {name} returned scores outside [0, 1].")
    per_image, start = [], 0
    for image_captions in dataset["captions"]:
        per_image.append(scores[start : start + len(image_captions)].tolist())
        start += len(image_captions)
    if SOFT_LABEL_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(SOFT_LABEL_COLUMN)
    logger.info("Soft labels from %s: mean %.3f, std %.3f", name, scores.mean(), scores.std())
    return dataset.add_column(SOFT_LABEL_COLUMN, per_image)


__all__ = [
    "SOFT_LABEL_COLUMN",
    "SigmaDualEncoderTeacher",
    "SigmaRerankerTeacher",
    "SigmaSoftLabelTeacher",
    "add_soft_labels",
    "load_teacher",
    "pair_chunks",
    "soft_label_path",
    "soft_label_scores",
]
