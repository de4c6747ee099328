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

import logging
from collections.abc import Sequence

import datasets
import numpy as np

from modeling_sigma.data.corpus import caption_pairs
from modeling_sigma.identifiers.encoders import SigmaEncoder, load_encoder

logger = logging.getLogger(__name__)

SOFT_LABEL_COLUMN = "soft_labels"


class SigmaSoftLabelTeacher:
    """Scores (image, caption) pairs in [0, 1]."""

    name: str

    def score(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score_split(self, dataset: datasets.Dataset) -> np.ndarray:
        """Scores every (image, caption) pair of a corpus split, in `caption_pairs` order."""
        captions, owners = caption_pairs(dataset)
        images = dataset["image"]
        return self.score([images[o] for o in owners], captions)


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
    """jina-reranker-m0 (the paper's teacher): a multimodal cross-encoder with scores in [0, 1]."""

    def __init__(self, name_or_path: str = "jinaai/jina-reranker-m0", batch_size: int = 16):
        import torch
        from transformers import AutoModel

        self.name = name_or_path
        self.batch_size = batch_size
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        self.model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype).eval()

    def score(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        from modeling_sigma.data.corpus import load_image

        pairs = [[caption, load_image(image)] for image, caption in zip(images, captions)]
        scores = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            scores.extend(self.model.compute_score(batch, max_length=1024, doc_type="image"))
        return np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)


def load_teacher(name_or_path: str, gallery_images: Sequence | None = None) -> SigmaSoftLabelTeacher:
    """`jina-reranker-*` repos give the cross-encoder teacher; anything else a dual-encoder teacher."""
    if "reranker" in name_or_path:
        return SigmaRerankerTeacher(name_or_path)
    return SigmaDualEncoderTeacher(name_or_path, gallery_images)


def add_soft_labels(dataset: datasets.Dataset, teacher: SigmaSoftLabelTeacher) -> datasets.Dataset:
    """Adds a `soft_labels` column (one float per caption of each image) scored by `teacher`."""
    scores = teacher.score_split(dataset)
    if not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError(f"Teacher {teacher.name} returned scores outside [0, 1].")
    per_image, start = [], 0
    for image_captions in dataset["captions"]:
        per_image.append(scores[start : start + len(image_captions)].tolist())
        start += len(image_captions)
    if SOFT_LABEL_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(SOFT_LABEL_COLUMN)
    logger.info("Soft labels from %s: mean %.3f, std %.3f", teacher.name, scores.mean(), scores.std())
    return dataset.add_column(SOFT_LABEL_COLUMN, per_image)


__all__ = [
    "SOFT_LABEL_COLUMN",
    "SigmaDualEncoderTeacher",
    "SigmaRerankerTeacher",
    "SigmaSoftLabelTeacher",
    "add_soft_labels",
    "load_teacher",
]
