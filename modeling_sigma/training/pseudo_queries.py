# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Pseudo-queries: captions written by a captioner for the indexed images that have no training caption.

Beyond the paper. Generative retrieval learns query → identifier only for the documents it sees queries of
(DSI-QG; Pradeep et al. 2023 found synthetic queries the one technique that matters at scale). SIGMA's stage 3
sees the captions of `train` only, so the `test` images are known to it through stage 1 (image → identifier)
alone. A captioner that never sees a `test` caption writes a few captions per indexed image, and stage 3 trains
caption → identifier on them too (`pseudo_queries` in the stage-3 config). The `test` captions stay unseen.

Captioners:
- `"embedded"`: a tiny Qwen2.5-VL trained here on the `train` split's image → caption pairs (cached in
  `cache_dir`, keyed by the train split's fingerprint and the captioner settings), for the offline default;
- a Qwen2.5-VL-Instruct id or folder: used zero-shot with `CAPTIONER_PROMPT` (the real path).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import datasets
import torch

from modeling_sigma.data.corpus import load_image
from modeling_sigma.modeling.file_utils import atomic_file, atomic_folder

logger = logging.getLogger(__name__)

EMBEDDED_CAPTIONER = "embedded"
CAPTIONER_PROMPT = "Describe this image in one short sentence."  # zero-shot prompt of an Instruct captioner


@dataclass
class SigmaCaptionerConfig:
    """Training schedule of the embedded captioner and the sampling of pseudo-queries.

    Args:
        epochs (`float`), batch_size (`int`), learning_rate (`float`): image → caption training on `train`.
        per_image (`int`): captions sampled per indexed image (duplicates are dropped).
        temperature (`float`): sampling temperature; 1.0 keeps the mix of caption styles the captioner learnt.
        max_new_tokens (`int`): longest pseudo-query. seed (`int`): training and sampling seed.
        image_size (`int`), patch_size (`int`): the embedded captioner's image side and vision patch side
            (64 and 14: 4 visual tokens; 64 and 8: 16), as `embedded_image_size` / `embedded_patch_size`.
    """

    epochs: float = 6.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    per_image: int = 5
    temperature: float = 1.0
    max_new_tokens: int = 40
    seed: int = 0
    image_size: int = 64
    patch_size: int = 14

    def key(self, *parts: str) -> str:
        """A short hash of these settings and `parts` (e.g. dataset fingerprints): the cache key."""
        text = json.dumps([asdict(self), *parts], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def captioning_examples(split: datasets.Dataset, image_source: int = 0) -> list[dict]:
    """Image → caption for every caption of `split` (its images are `SigmaCollator` image source `image_source`)."""
    return [
        {"task": "caption", "image_source": image_source, "image_row": row, "answer": caption}
        for row, captions in enumerate(split["captions"])
        for caption in captions
    ]


def train_embedded_captioner(
    train: datasets.Dataset, cache_dir: str, config: SigmaCaptionerConfig | None = None
) -> str:
    """The folder of a tiny captioner trained on `train`'s image → caption pairs (trained once per key)."""
    from transformers import set_seed
    from trl import SFTConfig

    from modeling_sigma.training.backbone import build_sigma_model
    from modeling_sigma.training.trainer import train_and_save

    config = config or SigmaCaptionerConfig()
    folder = os.path.join(cache_dir, "captioners", config.key(content_key(train)))
    if os.path.isfile(os.path.join(folder, "config.json")):
        logger.info("reusing the embedded captioner in %s", folder)
        return folder
    captions = [caption for image_captions in train["captions"] for caption in image_captions]
    set_seed(config.seed)  # its initial weights: without it every run trains another captioner
    model, processor = build_sigma_model(
        "embedded",
        captions=captions,
        image_size=config.image_size,
        patch_size=config.patch_size,
    )
    with atomic_folder(folder) as staging:
        arguments = SFTConfig(
            output_dir=str(staging),
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=False,
            seed=config.seed,
            disable_tqdm=True,
            run_name="pseudo-query captioner",
        )
        print(f"pseudo-queries: training the embedded captioner on {len(captions)} train captions")
        train_and_save(model, processor, arguments, captioning_examples(train), image_sources=[train])
    return folder


def load_captioner(name_or_path: str, train: datasets.Dataset, cache_dir: str, config: SigmaCaptionerConfig):
    """`(model, processor, prompt)` of the captioner: the embedded one (trained on `train` if needed) or a
    Qwen2.5-VL-Instruct checkpoint used zero-shot."""
    if name_or_path == EMBEDDED_CAPTIONER:
        from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

        model = SigmaForRetrieval.from_pretrained(train_embedded_captioner(train, cache_dir, config))
        return model, model.processor, model.config.captioning_prompt
    from transformers import AutoModelForImageTextToText

    from modeling_sigma.training.backbone import load_pretrained_processor

    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype="auto")
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, load_pretrained_processor(name_or_path), CAPTIONER_PROMPT


@torch.no_grad()
def caption_images(
    model, processor, images, prompt: str, config: SigmaCaptionerConfig, batch_size: int = 64
) -> list[list[str]]:
    """`config.per_image` sampled captions (distinct, non-empty, in sampling order) for each image of `images`
    (a list, or a dataset with an `image` column: decoded one batch at a time). Seeded by `config.seed` (the same
    inputs and batch size give the same captions); a SIGMA captioner never writes identifier tokens."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    extra = {}
    if getattr(
        model.config, "identifier_token_offsets", None
    ):  # a SIGMA model: free text, no identifier token
        first, end = model.config.identifier_token_range
        extra = {"use_trie": False, "suppress_tokens": list(range(first, end))}
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    results = []
    try:
        for start in range(0, len(images), batch_size):
            rows = images[start : start + batch_size]
            batch = [load_image(image) for image in (rows["image"] if isinstance(rows, dict) else rows)]
            inputs = processor.process_images(batch, prompt=prompt).to(model.device)
            sequences = model.generate(
                **inputs,
                do_sample=True,
                temperature=config.temperature,
                top_k=0,
                num_return_sequences=config.per_image,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=processor.tokenizer.pad_token_id,
                **extra,
            )  # (batch * per_image, prompt + new)
            texts = processor.tokenizer.batch_decode(
                sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for first in range(0, len(texts), config.per_image):
                captions = [text.strip() for text in texts[first : first + config.per_image]]
                results.append(list(dict.fromkeys(caption for caption in captions if caption)))
    finally:
        torch.random.set_rng_state(generator_state)
    return results


def content_key(dataset: datasets.Dataset) -> str:
    """A digest of a split's image ids (and captions, when it has them): the same on every rank and machine
    (an arrow fingerprint need not be)."""
    digest = hashlib.sha1()
    captions = dataset["captions"] if "captions" in dataset.column_names else [None] * len(dataset)
    for image_id, image_captions in zip(dataset["image_id"], captions):
        digest.update(json.dumps([image_id, image_captions]).encode())
    return digest.hexdigest()[:16]


def pseudo_query_path(
    cache_dir: str, captioner: str, train: datasets.Dataset, splits: list[datasets.Dataset], config
) -> str:
    """The cache file of the pseudo-queries of `splits` written by `captioner` (trained on `train`)."""
    key = config.key(captioner, content_key(train), *(content_key(split) for split in splits))
    return os.path.join(cache_dir, "pseudo-queries", f"{key}.json")


def get_pseudo_queries(
    captioner: str,
    train: datasets.Dataset,
    splits: list[datasets.Dataset],
    cache_dir: str,
    config: SigmaCaptionerConfig | None = None,
) -> dict[str, list[str]]:
    """Pseudo-queries `{image_id: captions}` for every image of `splits`, computed once and cached as JSON.

    Under several processes the file must exist already: `python recipes/pseudo_queries.py --config ...` (one
    process) writes it, since training the embedded captioner inside one rank of a launch would hang the others.
    """
    config = config or SigmaCaptionerConfig()
    path = pseudo_query_path(cache_dir, captioner, train, splits, config)
    if not os.path.isfile(path):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise FileNotFoundError(
                f"no pseudo-queries at {path}: write them first with one process, "
                "`python recipes/pseudo_queries.py --config <the stage-3 config>`"
            )
        write_pseudo_queries(path, captioner, train, splits, cache_dir, config)
    with open(path) as stream:
        return json.load(stream)


def write_pseudo_queries(path: str, captioner: str, train, splits, cache_dir: str, config) -> None:
    model, processor, prompt = load_captioner(captioner, train, cache_dir, config)
    model.eval()
    queries = {}
    for split in splits:
        print(f"pseudo-queries: captioning {len(split)} images with {captioner}")
        captions = caption_images(model, processor, split.select_columns(["image"]), prompt, config)
        queries.update(zip(split["image_id"], captions))
    with atomic_file(path, "w") as stream:
        json.dump(queries, stream)
    logger.info("wrote %d images' pseudo-queries to %s", len(queries), path)


def switched_off(captioner: str | None) -> bool:
    """`pseudo_queries: null` (or "none") in a config: the paper's stage 3."""
    return captioner is None or captioner.strip().lower() in ("", "none", "null", "false")


def stage_pseudo_queries(script_args, corpus, seed: int) -> list[datasets.Dataset]:
    """The indexed splits but `train` (`script_args.train_splits`) with their captions replaced by pseudo-queries
    (computed once, see `get_pseudo_queries`); `[]` when `script_args.pseudo_queries` is off."""
    from modeling_sigma.data.corpus import get_split

    names = [name for name in script_args.train_splits if name != "train"]
    if switched_off(script_args.pseudo_queries) or not names:
        return []
    train = get_split(corpus, "train")
    splits = [get_split(corpus, name) for name in names]
    config = SigmaCaptionerConfig(
        epochs=script_args.captioner_epochs,
        per_image=script_args.pseudo_queries_per_image,
        seed=seed,
        image_size=script_args.embedded_image_size,
        patch_size=script_args.embedded_patch_size,
    )
    queries = get_pseudo_queries(script_args.pseudo_queries, train, splits, script_args.cache_dir, config)
    return [pseudo_query_split(split, queries) for split in splits]


def pseudo_query_split(split: datasets.Dataset, queries: dict[str, list[str]]) -> datasets.Dataset:
    """`split` with its `captions` replaced by the pseudo-queries of its images (images without any are dropped)."""
    keep = [row for row, image_id in enumerate(split["image_id"]) if queries.get(image_id)]
    subset = split.select(keep).remove_columns([c for c in split.column_names if c == "captions"])
    return subset.add_column("captions", [queries[image_id] for image_id in subset["image_id"]])


__all__ = [
    "CAPTIONER_PROMPT",
    "EMBEDDED_CAPTIONER",
    "SigmaCaptionerConfig",
    "caption_images",
    "captioning_examples",
    "content_key",
    "get_pseudo_queries",
    "load_captioner",
    "pseudo_query_path",
    "pseudo_query_split",
    "stage_pseudo_queries",
    "switched_off",
    "train_embedded_captioner",
    "write_pseudo_queries",
]
