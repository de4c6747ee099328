"""Real-scale rehearsal inputs built offline: a Qwen2.5-VL-3B-shaped backbone folder and a corpus of 500×375 JPEGs.

The backbone has the real checkpoint's shapes where they set memory, dtypes and code paths — 151,936 embedding
rows (tied to the LM head, as in Qwen2.5-VL-3B), text hidden 2048 / MLP 11008 / 16 query and 2 key-value heads,
vision hidden 1280 / MLP 3420 / 16 heads, patch 14, merge 2, out hidden 2048, the real image processor settings
(min_pixels 3,136, max_pixels 12,845,056, CLIP mean/std) — but one decoder layer and one vision block, random
weights, saved in bf16 like the Hub checkpoint. The tokenizer is a small BPE trained on the captions (the real
one cannot be downloaded here): its ids end far below the 151,936 rows, so identifier tokens land inside the
embedding matrix as they do on the real checkpoint (151,665 tokens, 151,936 rows).
"""

from __future__ import annotations

import os
import random

import datasets
import torch
from PIL import Image, ImageDraw
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from modeling_sigma.data.corpus import save_corpus
from modeling_sigma.training.backbone import build_tokenizer

QWEN25_VL_3B_VOCAB = 151_936
FLICKR_SIZE = (500, 375)
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square"]


def qwen25_vl_3b_config(tokenizer, text_layers: int = 1, vision_depth: int = 1) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-3B-Instruct's config.json values, with `text_layers` decoder layers and `vision_depth` blocks."""
    special = {"image": "<|image_pad|>", "video": "<|video_pad|>", "vision_start": "<|vision_start|>"}
    special["vision_end"] = "<|vision_end|>"
    ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in special.items()}
    text = {
        "vocab_size": QWEN25_VL_3B_VOCAB,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": text_layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": True,
    }
    vision = {
        "depth": vision_depth,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [vision_depth - 1],
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)


def real_image_processor() -> Qwen2VLImageProcessorPil:
    """Qwen2.5-VL-3B's preprocessor_config.json settings (PIL path: no torchvision)."""
    return Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2)


def save_backbone_folder(
    folder: str, captions: list[str], text_layers: int = 1, vision_depth: int = 1
) -> str:
    """A folder laid out like a Hub Qwen2.5-VL checkpoint (config, bf16 safetensors, tokenizer, preprocessor)."""
    tokenizer = build_tokenizer(captions)
    torch.manual_seed(0)
    backbone = Qwen2_5_VLForConditionalGeneration(qwen25_vl_3b_config(tokenizer, text_layers, vision_depth))
    backbone.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    real_image_processor().save_pretrained(folder)
    return folder


def caption_set(colour: str, shape: str, rng: random.Random) -> list[str]:
    other = rng.choice(COLOURS)
    return [
        f"a {colour} {shape} on a {other} background",
        f"a large {colour} {shape}",
        f"one {shape} painted {colour}",
        f"a photo of a {colour} {shape} next to nothing",
        f"{colour} {shape}",
    ]


def write_jpeg_corpus(folder: str, images_per_split: dict[str, int], seed: int = 0) -> str:
    """A corpus (the schema every adapter produces) whose images are 500×375 JPEG files, referenced by path."""
    rng, splits = random.Random(seed), {}
    os.makedirs(os.path.join(folder, "jpeg"), exist_ok=True)
    for split, count in images_per_split.items():
        rows = {"image": [], "image_id": [], "captions": []}
        for index in range(count):
            colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
            path = os.path.join(folder, "jpeg", f"{split}-{index:05d}.jpg")
            draw_jpeg(path, colour, shape, rng)
            rows["image"].append(path)
            rows["image_id"].append(f"{split}-{index:05d}")
            rows["captions"].append(caption_set(colour, shape, rng))
        splits[split] = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    save_corpus(datasets.DatasetDict(splits), os.path.join(folder, "corpus"))
    return os.path.join(folder, "corpus")


def draw_jpeg(
    path: str, colour: str, shape: str, rng: random.Random, size=FLICKR_SIZE, quality: int = 90
) -> None:
    """A Flickr-sized JPEG: a noisy background (so it compresses like a photo) and one shape."""
    image = Image.effect_noise(size, 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    x, y, r = rng.randint(100, 400), rng.randint(80, 300), rng.randint(30, 70)
    fill = {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}.get(colour, colour)
    (draw.ellipse if shape == "circle" else draw.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    image.save(path, "JPEG", quality=quality)
