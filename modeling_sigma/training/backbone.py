# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Build SIGMA models offline: the embedded tiny Qwen2.5-VL (BPE tokenizer trained on the corpus captions)
or a real Qwen2.5-VL checkpoint, both extended with identifier tokens and a fresh similarity head.

Not remote code: this module may use `tokenizers` and the corpus loader.
"""

from __future__ import annotations

import itertools
import json
import logging
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from modeling_sigma.modeling.configuration_sigma import (
    CAPTIONING_PROMPT,
    COMPREHENSION_PROMPT,
    MEMORIZATION_PROMPT,
    RETRIEVAL_PROMPT,
    SigmaConfig,
)
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
from modeling_sigma.modeling.processing_sigma import SIGMA_CHAT_TEMPLATE, SigmaProcessor

logger = logging.getLogger(__name__)

EMBEDDED_BACKBONE = "embedded"
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
EMBEDDED_IMAGE_SIZE = 64
EMBEDDED_PATCH_SIZE = 14
# the fixed text of every training prompt: the chat roles and the task prompts without their slot
PROMPT_TEXTS = [
    "system\n",
    "user\n",
    "assistant\n",
    *(prompt.split("{")[0].strip() for prompt in (COMPREHENSION_PROMPT, RETRIEVAL_PROMPT)),
    MEMORIZATION_PROMPT,
    CAPTIONING_PROMPT,
]


def build_tokenizer(
    captions: list[str], vocab_size: int = 1024, prompts: list[str] = PROMPT_TEXTS
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `captions` and on the fixed text of the prompts, with the Qwen special tokens
    (ids 0..7). The prompts count once per caption, as often as training shows them, so their words are whole
    tokens as in a real tokenizer: trained on captions alone, "Generate the identifier of the image that
    matches this description:" was 40 tokens of one or two letters, half of a stage-3 example."""
    if not captions:
        raise ValueError("need at least one caption to train the embedded tokenizer")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    prompt_text = itertools.chain.from_iterable(itertools.repeat(prompts, len(captions)))
    tokenizer.train_from_iterator(itertools.chain(captions, prompt_text), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN_SPECIAL_TOKENS[1:],
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        chat_template=SIGMA_CHAT_TEMPLATE,
    )


def add_identifier_tokens(tokenizer, layout: SigmaIdentifierLayout) -> list[int]:
    """Add the identifier tokens as ordinary tokens (kept by `skip_special_tokens`); return per-position offsets.

    Tokens already present (a re-run) are reused; the ids must be contiguous in layout order.
    """
    strings = layout.token_strings()
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in strings])
    ids = tokenizer.convert_tokens_to_ids(strings)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError(
            "identifier tokens are not contiguous in the tokenizer; start from a fresh tokenizer"
        )
    return [ids[0] + offset for offset in layout.offsets]


def build_image_processor(
    image_size: int = EMBEDDED_IMAGE_SIZE, patch_size: int = EMBEDDED_PATCH_SIZE
) -> Qwen2VLImageProcessorPil:
    """PIL image processor: any image is resized (aspect kept) to at most `image_size`² pixels, in multiples of
    `2 * patch_size` (at least 4 patches a side). With 14-pixel patches (Qwen2.5-VL's) a 64×64 image becomes 56×56
    → 16 patches → 4 image tokens after the 2×2 merge; with 8-pixel patches it stays 64×64 → 64 patches → 16."""
    side = 4 * patch_size
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size, min_pixels=side * side, max_pixels=max(image_size, side) ** 2
    )


def tiny_backbone_config(
    tokenizer,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    patch_size: int = EMBEDDED_PATCH_SIZE,
) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL config whose special token ids come from `tokenizer`."""
    head_dim = hidden_size // num_heads
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # sums to head_dim / 2
    token_ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": max(1, num_heads // 2),
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": vision_hidden_size,
        "intermediate_size": 2 * vision_hidden_size,
        "depth": vision_depth,
        "num_heads": max(1, vision_hidden_size // 32),
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [vision_depth - 1],
        "patch_size": patch_size,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **token_ids
    )


def build_embedded_backbone(
    captions: list[str], layout: SigmaIdentifierLayout, image_size: int = EMBEDDED_IMAGE_SIZE, **config_kwargs
):
    """Tokenizer (with identifier tokens), tiny backbone config, processor and identifier offsets."""
    tokenizer = build_tokenizer(captions)
    offsets = add_identifier_tokens(tokenizer, layout)
    patch_size = config_kwargs.get("patch_size", EMBEDDED_PATCH_SIZE)
    processor = SigmaProcessor(
        image_processor=build_image_processor(image_size, patch_size), tokenizer=tokenizer
    )
    backbone_config = tiny_backbone_config(tokenizer, **config_kwargs)
    return Qwen2_5_VLForConditionalGeneration(backbone_config), processor, offsets


def load_pretrained_processor(name_or_path: str, **options) -> SigmaProcessor:
    """The processor of a real Qwen2.5-VL folder without torchvision: `AutoProcessor` on such a folder builds
    the torchvision video processor, so the tokenizer and the PIL image processor are loaded one by one."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **options)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **options)
    return SigmaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None) or _folder_chat_template(name_or_path),
    )


def _folder_chat_template(name_or_path: str) -> str | None:
    """Qwen2.5-VL keeps its chat template in `chat_template.json` (older) or `chat_template.jinja`."""
    if not os.path.isdir(name_or_path):
        return None
    jinja, legacy = (os.path.join(name_or_path, n) for n in ("chat_template.jinja", "chat_template.json"))
    if os.path.isfile(jinja):
        with open(jinja) as stream:
            return stream.read()
    if os.path.isfile(legacy):
        with open(legacy) as stream:
            return json.load(stream).get("chat_template")
    return None


def resize_for_identifiers(
    backbone, tokenizer, first_identifier_id: int, pad_to_multiple_of: int = 64
) -> int:
    """Grows the embedding matrices to hold every token, never shrinking them, and initialises the identifier
    rows deliberately. Returns the number of rows.

    Qwen2.5-VL-3B has 151,936 rows for 151,665 tokens: the identifier tokens added after them fall on rows
    that were never trained (padding), so growing is not enough and the rows are overwritten either way. Each
    identifier token `<id{position}_{value}>` starts at the mean embedding of the tokens spelling `value`
    (distinct rows, on the scale of trained ones), in the input embeddings and, when untied, the LM head.
    """
    rows = backbone.get_input_embeddings().weight.shape[0]
    needed = len(tokenizer)
    if needed > rows:
        backbone.resize_token_embeddings(needed, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    strings = tokenizer.convert_ids_to_tokens(list(range(first_identifier_id, needed)))
    spelled = [tokenizer(_identifier_value(s), add_special_tokens=False)["input_ids"] for s in strings]
    matrices = {
        id(m.weight): m.weight for m in (backbone.get_input_embeddings(), backbone.get_output_embeddings())
    }
    with torch.no_grad():
        for weight in matrices.values():
            for offset, ids in enumerate(spelled):
                weight[first_identifier_id + offset] = weight[ids].float().mean(0).to(weight.dtype)
    return backbone.get_input_embeddings().weight.shape[0]


def _identifier_value(token: str) -> str:
    """`"<id3_17>"` → `"17"`."""
    return token.rstrip(">").rsplit("_", 1)[-1]


def build_pretrained_backbone(name_or_path: str, layout: SigmaIdentifierLayout, **load_kwargs):
    """A real Qwen2.5-VL checkpoint with its processor, extended with identifier tokens (torchvision-free)."""
    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_path, **load_kwargs)
    options = {
        k: load_kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in load_kwargs
    }
    processor = load_pretrained_processor(name_or_path, **options)
    tokenizer = processor.tokenizer
    first_identifier_id = len(tokenizer)
    offsets = add_identifier_tokens(tokenizer, layout)
    if offsets[0] != first_identifier_id:
        raise ValueError(
            f"{name_or_path} already holds identifier tokens; start from the original checkpoint"
        )
    rows = resize_for_identifiers(backbone, tokenizer, first_identifier_id)
    logger.info("identifier tokens %d..%d, embedding rows %d", first_identifier_id, len(tokenizer) - 1, rows)
    return backbone, processor, offsets


def build_sigma_model(
    backbone: str = EMBEDDED_BACKBONE,
    layout: SigmaIdentifierLayout | None = None,
    codes: torch.Tensor | None = None,
    image_ids: list[str] | None = None,
    captions: list[str] | None = None,
    similarity_hidden_size: int = 256,
    lambda_ssp: float = 0.1,
    **backbone_kwargs,
):
    """Build `(SigmaForRetrieval, SigmaProcessor)` ready for training, with the codebook installed if given.

    Args:
        backbone (`str`): `"embedded"` for the tiny offline Qwen2.5-VL, else a hub id or local path of a
            Qwen2.5-VL checkpoint (e.g. `Qwen/Qwen2.5-VL-3B-Instruct`).
        layout (`SigmaIdentifierLayout`, *optional*): identifier layout; the default layout if `None`.
        codes (`torch.LongTensor` of shape `(num_images, layout.length)`, *optional*): identifiers of the corpus.
        image_ids (`list[str]`, *optional*): image ids aligned with `codes`.
        captions (`list[str]`, *optional*): tokenizer training text for the embedded backbone; defaults to the
            TinyShapes train captions.
        backbone_kwargs: `tiny_backbone_config` sizes (embedded) or `from_pretrained` kwargs (real backbone).
    """
    layout = layout or SigmaIdentifierLayout()
    if backbone == EMBEDDED_BACKBONE:
        captions = captions if captions is not None else _tiny_shapes_captions()
        backbone_model, processor, offsets = build_embedded_backbone(captions, layout, **backbone_kwargs)
    else:
        backbone_model, processor, offsets = build_pretrained_backbone(backbone, layout, **backbone_kwargs)
    tokenizer = processor.tokenizer
    config = SigmaConfig(
        backbone_config=backbone_model.config,
        identifier_layout=layout.to_dict(),
        identifier_token_offsets=offsets,
        similarity_hidden_size=similarity_hidden_size,
        lambda_ssp=lambda_ssp,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = SigmaForRetrieval(config, backbone=backbone_model)
    model.processor = processor
    if codes is not None:
        model.set_index(codes, image_ids)
    logger.info("built SIGMA model on %s backbone: %d parameters", backbone, model.num_parameters())
    return model, processor


def _tiny_shapes_captions() -> list[str]:
    from modeling_sigma.data.corpus import load_corpus

    captions = load_corpus("tiny-shapes")["train"]["captions"]
    return [caption for image_captions in captions for caption in image_captions]


__all__ = [
    "add_identifier_tokens",
    "build_embedded_backbone",
    "build_image_processor",
    "build_pretrained_backbone",
    "build_sigma_model",
    "PROMPT_TEXTS",
    "build_tokenizer",
    "load_pretrained_processor",
    "resize_for_identifiers",
    "tiny_backbone_config",
]
