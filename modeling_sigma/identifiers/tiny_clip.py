"""The embedded default encoder: a tiny `transformers.CLIPModel` trained contrastively on a corpus's train split.

It is a real CLIP checkpoint (config, weights, tokenizer and image processor saved with
`save_pretrained`), so the same `SigmaDualEncoder` code path loads it and any Hub CLIP/SigLIP. It is trained on
the corpus it encodes (TinyShapes by default, or any corpus folder) and cached under a key of that corpus's
train split: a second run on the same corpus reuses it, a changed corpus trains a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from modeling_sigma.data.corpus import EMBEDDED_CORPUS_NAME, TinyShapesConfig, load_corpus, load_image
from modeling_sigma.modeling.file_utils import atomic_folder, restore_interrupted_folder

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.path.join("outputs", "cache")


@dataclass
class TinyClipConfig:
    """Size and training schedule of the embedded CLIP.

    Args:
        hidden_size (`int`): width of both towers. projection_dim (`int`): size of the shared space.
        num_layers (`int`): transformer layers per tower. patch_size (`int`): ViT patch side in pixels.
        image_size (`int`, *optional*): side the images are resized and centre-cropped to; `None`: the median
            shorter side of the first train images (TinyShapes: 64), rounded down to a multiple of the patch.
        epochs (`int`), batch_size (`int`), learning_rate (`float`), seed (`int`): contrastive training.
    """

    hidden_size: int = 96
    projection_dim: int = 64
    num_layers: int = 2
    patch_size: int = 8
    image_size: int | None = None
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


def train_tokenizer(captions: list[str]):
    """Word-level tokenizer over the caption vocabulary, with `[EOS]` appended (CLIP pools at EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    tokenizer.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=specials))
    eos = tokenizer.token_to_id("[EOS]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A [EOS]", special_tokens=[("[EOS]", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        eos_token="[EOS]",
        model_max_length=64,
    )


def build_tiny_clip(tokenizer, image_size: int, config: TinyClipConfig):
    from transformers import CLIPConfig, CLIPModel

    heads = max(1, config.hidden_size // 32)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.hidden_size * 2,
        num_hidden_layers=config.num_layers,
        num_attention_heads=heads,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    vision = dict(
        image_size=image_size,
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.hidden_size * 2,
        num_hidden_layers=config.num_layers,
        num_attention_heads=heads,
    )
    clip_config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim)
    torch.manual_seed(config.seed)
    return CLIPModel(clip_config)


def _pixel_tensor(images, image_processor) -> torch.Tensor:
    return image_processor([load_image(image) for image in images], return_tensors="pt")["pixel_values"]


def train_tiny_clip(
    train_split, output_dir: str, config: TinyClipConfig | None = None, progress: bool = True
):
    """Trains the tiny CLIP on (image, one of its captions) pairs and saves it with `save_pretrained`."""
    from tqdm.auto import tqdm
    from transformers import CLIPImageProcessorPil

    config = config or TinyClipConfig()
    captions = train_split["captions"]
    tokenizer = train_tokenizer([c for image_captions in captions for c in image_captions])
    image_size = config.image_size or corpus_image_size(train_split, config.patch_size)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=image_size)
    model = build_tiny_clip(tokenizer, image_size, config)
    pixels = _pixel_tensor(train_split["image"], image_processor)  # (images, 3, side, side)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.1)
    steps = config.epochs * max(1, len(pixels) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate, total_steps=steps)
    model.train()
    bar = tqdm(total=steps, desc="train tiny-clip", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            rows = order[start : start + config.batch_size]
            picks = torch.randint(0, 5, (len(rows),), generator=generator)
            texts = [captions[r][p % len(captions[r])] for r, p in zip(rows.tolist(), picks.tolist())]
            tokens = tokenizer(texts, padding=True, return_tensors="pt")
            loss = model(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                pixel_values=pixels[rows],
                return_loss=True,
            ).loss
            loss.backward()
            optimiser.step(), scheduler.step(), optimiser.zero_grad()
            bar.update(), bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    _save_atomically(model.eval(), tokenizer, image_processor, config, output_dir)
    return output_dir


def corpus_image_size(split, patch_size: int, sample: int = 64) -> int:
    """Median shorter side of the first `sample` images, a multiple of `patch_size` (mixed sizes allowed)."""
    sides = sorted(min(load_image(split[row]["image"]).size) for row in range(min(sample, len(split))))
    side = sides[len(sides) // 2]
    return max(patch_size, side - side % patch_size)


def _save_atomically(model, tokenizer, image_processor, config: TinyClipConfig, output_dir: str) -> None:
    with atomic_folder(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        (staging / "tiny_clip_training.json").write_text(json.dumps(asdict(config), indent=2))


def get_tiny_clip(
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    corpus_config: TinyShapesConfig | None = None,
    config: TinyClipConfig | None = None,
    progress: bool = True,
    corpus: str = EMBEDDED_CORPUS_NAME,
) -> str:
    """Path of the tiny CLIP of `corpus` (TinyShapes with `corpus_config`, or a corpus folder / `load_corpus`
    name); trains it on that corpus's train split and caches it on first use.

    The cache key holds the training config and the corpus: TinyShapes by its generator config, any other
    corpus by `content_fingerprint` of its train split (image bytes, ids, captions).
    """
    config = config or TinyClipConfig()
    if corpus == EMBEDDED_CORPUS_NAME:
        corpus_config = corpus_config or TinyShapesConfig()
        corpus_key, train = asdict(corpus_config), None
    else:
        from modeling_sigma.data.user_corpus import content_fingerprint

        train = load_corpus(corpus, cache_dir=cache_dir)["train"]
        corpus_key = content_fingerprint(train)
    key = hashlib.sha1(json.dumps([corpus_key, asdict(config)]).encode()).hexdigest()[:12]
    path = os.path.join(os.fspath(cache_dir), f"tiny-clip-{key}")
    restore_interrupted_folder(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        if train is None:
            train = load_corpus(EMBEDDED_CORPUS_NAME, cache_dir=cache_dir, tiny_shapes=corpus_config)["train"]
        logger.info("Training the embedded tiny CLIP on %s into %s", corpus, path)
        np.random.seed(config.seed)
        train_tiny_clip(train, path, config, progress=progress)
    else:
        logger.info("Reusing the tiny CLIP of %s at %s", corpus, path)
    return path


__all__ = [
    "TinyClipConfig",
    "build_tiny_clip",
    "corpus_image_size",
    "get_tiny_clip",
    "train_tiny_clip",
    "train_tokenizer",
]
