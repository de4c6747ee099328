# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""SIGMA processor: Qwen2.5-VL image processing (PIL path, no torchvision) + tokenizer + chat template."""

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .configuration_sigma import MEMORIZATION_PROMPT, RETRIEVAL_PROMPT

SIGMA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class SigmaProcessor(ProcessorMixin):
    r"""
    Builds SIGMA prompts: text queries for retrieval (stages 2/3, inference) and images for identifier
    memorisation (stage 1). Like `Qwen2_5_VLProcessor` without the video processor, which needs torchvision.

    Args:
        image_processor (`Qwen2VLImageProcessorPil`, *optional*):
            Image processor (resizes to multiples of `patch_size * merge_size` and patchifies).
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            Tokenizer holding the Qwen special tokens and the identifier tokens.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to a minimal Qwen-style template.
    """

    return_mm_token_type_ids = True

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        chat_template = chat_template or getattr(tokenizer, "chat_template", None) or SIGMA_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge_length = self.image_processor.merge_size**2
        num_image_tokens = int(image_inputs["image_grid_thw"][image_idx].prod()) // merge_length
        return self.image_token * num_image_tokens

    @property
    def min_image_size(self) -> int:
        """Smallest accepted image side: two merged patches (smaller images are upscaled)."""
        return 2 * self.image_processor.patch_size * self.image_processor.merge_size

    def prepare_image(self, image):
        """Convert to RGB and upscale so that the short side is at least `min_image_size`."""
        if not hasattr(image, "convert") or not hasattr(image, "size"):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"image has an empty side: {image.size}")
        if max(width, height) / min(width, height) > 200:
            raise ValueError(f"image aspect ratio must be at most 200, got size {image.size}")
        scale = self.min_image_size / min(width, height)
        if scale > 1:
            image = image.resize((max(round(width * scale), 1), max(round(height * scale), 1)))
        return image

    def _chat(self, user_content, answer: str | None = None) -> str:
        messages = [{"role": "user", "content": user_content}]
        text = self.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text if answer is None else f"{text}{answer}<|im_end|>"

    def process_queries(
        self,
        queries: list[str],
        prompt: str = RETRIEVAL_PROMPT,
        answers: list[str] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Tokenise text queries in the retrieval prompt (left padding by default, for generation).

        `answers` (e.g. identifier strings) are appended as the assistant turn for teacher forcing.
        """
        if isinstance(queries, str):
            queries = [queries]
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"queries must be non-empty strings, got {query!r}")
        answers = answers if answers is not None else [None] * len(queries)
        texts = [self._chat(prompt.format(query=query), answer) for query, answer in zip(queries, answers)]
        return self(text=texts, padding=True, padding_side=padding_side, return_tensors=return_tensors)

    def process_images(
        self,
        images: list,
        prompt: str = MEMORIZATION_PROMPT,
        answers: list[str] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Stage-1 inputs: each image followed by the memorisation prompt (RGB, upscaled to a minimum size)."""
        images = [self.prepare_image(image) for image in (images if isinstance(images, list) else [images])]
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        answers = answers if answers is not None else [None] * len(images)
        texts = [self._chat(content, answer) for answer in answers]
        return self(
            text=texts, images=images, padding=True, padding_side=padding_side, return_tensors=return_tensors
        )

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


SigmaProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["SigmaProcessor"]
