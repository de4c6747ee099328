# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""SIGMA processor: Qwen2.5-VL image processing (PIL path, no torchvision) + tokenizer + chat template.

User text (queries, Space inputs, command-line arguments) is tokenised as plain text: special tokens, chat markup
and identifier tokens written in it stay ordinary text tokens. The only control tokens of a text prompt are the
ones the chat template writes and the identifier tokens the code puts in from a strictly parsed identifier.
"""

import re
from functools import lru_cache

import torch
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
# Where the user content goes in the rendered chat template (a private-use character): the template's control
# tokens are found in the rendered text first, then the content is put in their place as plain text
_USER_SLOT = "\U000f0100"
_IDENTIFIER_SLOT = "\U000f0101"
_IDENTIFIER_STRING = re.compile(r"(?:<id[0-9]+(?:\.[0-9]+)?_[0-9]+>)+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER_TOKEN = re.compile(r"<id[0-9]+(?:\.[0-9]+)?_[0-9]+>")


@lru_cache(maxsize=16)
def _control_token_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    """Regex whose `split` keeps every one of `tokens` (longest first, so a token beats the ones it contains)."""
    if not tokens:
        return re.compile("(?!)")
    return re.compile("(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) + ")")


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

    # ---------------------------------------------------------------------------------- plain-text prompts
    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` as plain text: no added token (special, chat markup, identifier) is matched.

        Runs the tokenizer's own normaliser, pre-tokeniser and model, as `tokenizer(text)` does between added tokens,
        so text without added tokens gets exactly the ids it always had.
        """
        return self._encode_plain(text, set(self.tokenizer.added_tokens_encoder.values()))

    def _encode_plain(self, text: str, added_ids: set[int]) -> list[int]:
        """`encode_text` given the ids of the tokenizer's added tokens (the table is rebuilt on every read)."""
        if _LONE_SURROGATE.search(text):
            raise ValueError(f"text is not valid Unicode (a lone surrogate code point): {text[:80]!r}")
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = [text] if backend.pre_tokenizer is None else backend.pre_tokenizer.pre_tokenize_str(text)
        pieces = [piece if isinstance(piece, str) else piece[0] for piece in pieces]
        ids = [token.id for piece in pieces for token in backend.model.tokenize(piece)]
        forged = set(ids) & added_ids
        if forged:  # a vocabulary whose plain-text merges spell a control token cannot keep text as text
            raise ValueError(
                f"the tokenizer spells control tokens {sorted(forged)} from plain text {text[:80]!r}"
            )
        return ids

    def encode_identifier(self, identifier: str) -> list[int]:
        """Token ids of an identifier string `<id1_3><id2_0>…` (strict pattern, every token in the vocabulary)."""
        text = identifier.strip() if isinstance(identifier, str) else None
        if not text or not _IDENTIFIER_STRING.fullmatch(text):
            raise ValueError(f"malformed identifier {identifier!r}: expected tokens like '<id1_12>' only")
        tokens = _IDENTIFIER_TOKEN.findall(text)
        known = self.tokenizer.added_tokens_encoder
        unknown = [token for token in tokens if token not in known]
        if unknown:
            raise ValueError(f"identifier {identifier!r} has tokens this tokenizer lacks: {unknown}")
        return [known[token] for token in tokens]

    def encode_chat_prompt(self, content: list) -> list[int]:
        """Ids of the one-turn chat prompt (user turn, then the assistant header) around `content`.

        Args:
            content (`list`): the user turn in pieces: `str` pieces are plain text, `list[int]` pieces are token ids
                the caller vouches for (an identifier from `encode_identifier`). Text pieces are tokenised together
                with the template text around them, as `tokenizer(apply_chat_template(...))` would.
        """
        added = self.tokenizer.added_tokens_encoder  # read once: the property rebuilds the table every time
        pieces = _control_token_pattern(tuple(added)).split(self._template())
        items = []  # plain-text strings and trusted id lists, in order
        for index, piece in enumerate(pieces):
            if index % 2:  # odd pieces are the template's own control tokens
                items.append([added[piece]])
                continue
            before, *after = piece.split(_USER_SLOT)
            items.append(before)
            for rest in after:
                items.extend([*content, rest])
        return self._encode_items(items, set(added.values()))

    def _template(self) -> str:
        template = self.chat_template if isinstance(self.chat_template, str) else None
        rendered = self.apply_chat_template(
            [{"role": "user", "content": _USER_SLOT}], chat_template=template, tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        if _USER_SLOT not in rendered:
            raise ValueError("the chat template does not write the user message's content")
        return rendered

    def _encode_items(self, items: list, added_ids: set[int]) -> list[int]:
        ids, text = [], ""
        for item in items:
            if isinstance(item, str):
                text += item
                continue
            ids += self._encode_plain(text, added_ids) + list(item)
            text = ""
        return ids + self._encode_plain(text, added_ids)

    def identifier_prompt_ids(self, identifier: str, prompt: str) -> list[int]:
        """Ids of a prompt with an `{identifier}` placeholder (stage 2), the identifier as identifier tokens."""
        ids = self.encode_identifier(identifier)
        head, *tail = prompt.format(identifier=_IDENTIFIER_SLOT).split(_IDENTIFIER_SLOT)
        content = [head]
        for rest in tail:
            content += [ids, rest]
        return self.encode_chat_prompt(content)

    # ------------------------------------------------------------------------------------------ queries
    def query_prompt_ids(self, query: str, prompt: str = RETRIEVAL_PROMPT) -> list[int]:
        """Ids of the retrieval prompt around `query`, the query read as plain text."""
        return self.encode_chat_prompt([prompt.format(query=query)])

    def truncate_query(self, query: str, max_length: int, prompt: str = RETRIEVAL_PROMPT) -> str:
        """The longest start of `query` whose retrieval prompt has at most `max_length` tokens (`ValueError` if none)."""
        if len(self.query_prompt_ids(query, prompt)) <= max_length:
            return query
        fits, low, high = "", 0, len(query)  # binary search on characters keeps whole characters
        while low < high:
            middle = (low + high + 1) // 2
            candidate = query[:middle].rstrip()
            if candidate and len(self.query_prompt_ids(candidate, prompt)) <= max_length:
                fits, low = candidate, middle
            else:
                high = middle - 1
        if not fits:
            raise ValueError(f"the retrieval prompt alone is longer than max_length={max_length} tokens")
        return fits

    def process_queries(
        self,
        queries: list[str],
        prompt: str = RETRIEVAL_PROMPT,
        answers: list[str] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Tokenise text queries, as plain text, in the retrieval prompt (left padding by default, for generation).

        `answers` (identifier strings, parsed strictly) are appended as the assistant turn for teacher forcing.
        """
        if isinstance(queries, str):
            queries = [queries]
        for index, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"queries must be non-empty strings, got {query!r} at index {index}")
        answers = answers if answers is not None else [None] * len(queries)
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        rows = [
            self.query_prompt_ids(query, prompt)
            + ([] if a is None else self.encode_identifier(a) + [end_of_turn])
            for query, a in zip(queries, answers)
        ]
        return self.pad_prompts(rows, padding_side=padding_side, return_tensors=return_tensors)

    def pad_prompts(
        self, rows: list[list[int]], padding_side: str = "left", return_tensors: str = "pt"
    ) -> BatchFeature:
        """A batch of text prompts from their ids (e.g. `query_prompt_ids`), padded as `process_queries` pads."""
        batch = self.tokenizer.pad(
            {"input_ids": rows}, padding=True, padding_side=padding_side, return_tensors=return_tensors
        )
        if return_tensors == "pt":
            batch["mm_token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return BatchFeature(dict(batch))

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
