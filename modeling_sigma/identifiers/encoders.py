"""Frozen image/text encoders behind one interface, with an atomic on-disk feature cache.

Three families, one interface (`encode_images`, `encode_texts` → L2-normalised float32 arrays):

- `SigmaDualEncoder`: any transformers CLIP/SigLIP checkpoint (`get_image_features`/`get_text_features`);
  the embedded default `tiny-clip` is such a checkpoint, trained locally (see `tiny_clip.py`).
- `SigmaJinaV4Encoder`: jina-embeddings-v4 through `trust_remote_code`, the paper's encoder (needs the Hub).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_sigma.data.corpus import caption_pairs, load_image
from modeling_sigma.modeling.file_utils import atomic_file

logger = logging.getLogger(__name__)

TINY_CLIP_NAME = "tiny-clip"


def l2_normalise(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Returns float32 rows of unit norm (rows of zeros stay zero)."""
    features = torch.as_tensor(features, dtype=torch.float32)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def _batches(items: Sequence, batch_size: int, progress: bool, description: str):
    for start in tqdm(range(0, len(items), batch_size), desc=description, disable=not progress):
        yield items[start : start + batch_size]


def _pooled(output) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers 4 and a pooled ModelOutput in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class SigmaEncoder:
    """Interface of every frozen encoder. `name` keys the feature cache."""

    name: str

    def encode_images(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        raise NotImplementedError


class SigmaDualEncoder(SigmaEncoder):
    """A transformers dual encoder (CLIP, SigLIP, the embedded tiny CLIP) loaded with `from_pretrained`."""

    def __init__(self, name_or_path: str, device: str | None = None):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.name = name_or_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        # SigLIP was trained on texts padded to 64 tokens; CLIP on the longest in the batch.
        self.padding = "max_length" if "siglip" in self.model.config.model_type else True

    @torch.inference_mode()
    def encode_images(self, images: Sequence, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        chunks = []
        for batch in _batches(images, batch_size, progress, "encode images"):
            pixels = self.image_processor([load_image(image) for image in batch], return_tensors="pt")
            features = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            chunks.append(_pooled(features).float().cpu())
        return l2_normalise(torch.cat(chunks)) if chunks else np.zeros((0, 0), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        chunks = []
        for batch in _batches(list(texts), batch_size, progress, "encode texts"):
            tokens = self.tokenizer(list(batch), padding=self.padding, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_pooled(self.model.get_text_features(**tokens)).float().cpu())
        return l2_normalise(torch.cat(chunks)) if chunks else np.zeros((0, 0), np.float32)


class SigmaJinaV4Encoder(SigmaEncoder):
    """jina-embeddings-v4 (2,048-d), the paper's stage-0 encoder, via its remote code (needs Hub access).

    Its remote code needs peft, torchvision and transformers < 5.24 (it reads
    `Qwen2_5_VLForConditionalGeneration._checkpoint_conversion_mapping`). Run it in the pinned environment of
    docs/REPRODUCE.md through `recipes/extract_features.py`, then stage 0 with `--features_dir`.
    """

    def __init__(self, name_or_path: str = "jinaai/jina-embeddings-v4", device: str | None = None):
        self.check_environment()
        from transformers import AutoModel

        self.name = name_or_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype)
        self.model = self.model.to(self.device).eval()

    @staticmethod
    def check_environment() -> None:
        """Raises `RuntimeError` naming what is missing before the remote code fails deep inside loading."""
        from importlib.util import find_spec

        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

        problems = [f"{name} is not installed" for name in ("peft", "torchvision") if find_spec(name) is None]
        if not hasattr(Qwen2_5_VLForConditionalGeneration, "_checkpoint_conversion_mapping"):
            import transformers

            problems.append(f"transformers {transformers.__version__} lacks `_checkpoint_conversion_mapping`")
        if problems:
            raise RuntimeError(
                "jina-embeddings-v4's remote code cannot run here: " + "; ".join(problems) + ". Extract the "
                "features in the pinned environment of docs/REPRODUCE.md (recipes/extract_features.py) and "
                "run stage 0 with --features_dir."
            )

    @torch.inference_mode()
    def encode_images(self, images: Sequence, batch_size: int = 16, progress: bool = False) -> np.ndarray:
        chunks = []
        for batch in _batches(images, batch_size, progress, "encode images"):
            rgb = [load_image(image) for image in batch]
            chunks.append(
                torch.stack(list(self.model.encode_image(images=rgb, task="retrieval"))).float().cpu()
            )
        return l2_normalise(torch.cat(chunks))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        chunks = []
        for batch in _batches(list(texts), batch_size, progress, "encode texts"):
            output = self.model.encode_text(texts=list(batch), task="retrieval", prompt_name="query")
            chunks.append(torch.stack(list(output)).float().cpu())
        return l2_normalise(torch.cat(chunks))


def load_encoder(name_or_path: str, device: str | None = None, **tiny_clip_kwargs) -> SigmaEncoder:
    """Loads an encoder by name: `"tiny-clip"` (trained on demand, see `tiny_clip.train_tiny_clip`),
    a jina-embeddings-v4 repo, or any CLIP/SigLIP checkpoint (Hub id or local folder)."""
    if name_or_path == TINY_CLIP_NAME:
        from modeling_sigma.identifiers.tiny_clip import get_tiny_clip

        name_or_path = get_tiny_clip(**tiny_clip_kwargs)
    if "jina-embeddings-v4" in name_or_path:
        return SigmaJinaV4Encoder(name_or_path, device=device)
    return SigmaDualEncoder(name_or_path, device=device)


def _cache_path(cache_dir, encoder: SigmaEncoder, corpus_name: str, split: str, kind: str, fingerprint: str):
    key = hashlib.sha1(f"{encoder.name}|{corpus_name}|{split}|{kind}|{fingerprint}".encode()).hexdigest()[:16]
    slug = lambda s: "".join(c if c.isalnum() else "-" for c in os.path.basename(s.rstrip("/")))  # noqa: E731
    return os.path.join(
        os.fspath(cache_dir), f"{slug(encoder.name)}__{slug(corpus_name)}__{split}-{kind}-{key}.npy"
    )


def encode_split(
    encoder: SigmaEncoder,
    dataset,
    corpus_name: str,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    kind: str = "images",
    progress: bool = True,
) -> np.ndarray:
    """Features of one corpus split, cached on disk keyed by (encoder, corpus, split, kind).

    `kind="images"` gives one row per image; `kind="captions"` one row per caption, in the order of
    `corpus.caption_pairs(dataset)`. Cache files are written aside and renamed, never half-written.
    """
    if kind not in ("images", "captions"):
        raise ValueError(f"kind must be 'images' or 'captions', got {kind!r}.")
    path = None
    if cache_dir is not None:
        fingerprint = getattr(dataset, "_fingerprint", None) or str(len(dataset))
        path = _cache_path(cache_dir, encoder, corpus_name, split, kind, fingerprint)
        if os.path.isfile(path):
            return np.load(path, allow_pickle=False)
    if kind == "images":
        features = encoder.encode_images(dataset["image"], progress=progress)
    else:
        features = encoder.encode_texts(caption_pairs(dataset)[0], progress=progress)
    if path is not None:
        with atomic_file(path) as stream:
            np.save(stream, features, allow_pickle=False)
    return features


__all__ = [
    "SigmaDualEncoder",
    "SigmaEncoder",
    "SigmaJinaV4Encoder",
    "TINY_CLIP_NAME",
    "encode_split",
    "l2_normalise",
    "load_encoder",
]
