# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""SIGMA model configuration: a Qwen2.5-VL backbone config plus the identifier layout and the similarity head."""

from transformers import PreTrainedConfig
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig

from .identifier_layout import SigmaIdentifierLayout

MEMORIZATION_PROMPT = "Generate the identifier for this image."
COMPREHENSION_PROMPT = "Describe the image represented by the identifier {identifier}"
RETRIEVAL_PROMPT = "Generate the identifier of the image that matches this description: {query}"
CAPTIONING_PROMPT = "Describe this image."


class SigmaConfig(PreTrainedConfig):
    r"""
    Configuration of [`SigmaForRetrieval`]: a multimodal LM that writes the identifier of the image matching a
    text query, and a similarity head that scores the query against the identifier it wrote.

    Args:
        backbone_config (`Qwen2_5_VLConfig` or `dict`, *optional*):
            Configuration of the Qwen2.5-VL backbone (a dict is converted by its `model_type`).
        identifier_layout (`dict`, *optional*):
            `SigmaIdentifierLayout.to_dict()` of the identifier positions and their sizes.
        identifier_token_offsets (`list[int]`, *optional*):
            Token id of code 0 at every identifier position: `token_id = identifier_token_offsets[p] + code`.
            Identifier tokens occupy the contiguous id range `[offsets[0], offsets[-1] + sizes[-1])`.
        similarity_hidden_size (`int`, *optional*, defaults to 256):
            Width of the two hidden layers of the three-layer similarity MLP.
        lambda_ssp (`float`, *optional*, defaults to 0.1):
            Weight of the semantic-similarity-prediction MSE loss in `L_gen + lambda_ssp * L_ssp`.
        memorization_prompt (`str`, *optional*):
            Stage-1 prompt that follows the image ("Generate the identifier for this image.").
        comprehension_prompt (`str`, *optional*):
            Stage-2 prompt with an `{identifier}` placeholder.
        retrieval_prompt (`str`, *optional*):
            Stage-3 / inference prompt with a `{query}` placeholder.
        captioning_prompt (`str`, *optional*):
            Prompt that follows the image when the model captions it ("Describe this image."): the task of the
            embedded pseudo-query captioner (`training.pseudo_queries`), not one of the paper's three stages.
        max_query_length (`int`, *optional*, defaults to 256):
            Longest tokenised retrieval prompt accepted by `retrieve`; longer queries raise a `ValueError`.
        num_beams (`int`, *optional*, defaults to 10):
            Default beam width of `retrieve` (never below `k`).
        eos_token_id (`int`, *optional*):
            Token that ends the generated identifier (`<|im_end|>` with the Qwen chat template).
        pad_token_id (`int`, *optional*):
            Padding token id.
    """

    model_type = "sigma"
    sub_configs_defaults = {"backbone_config": Qwen2_5_VLConfig}

    backbone_config: dict | PreTrainedConfig | None = None
    identifier_layout: dict | None = None
    identifier_token_offsets: list[int] | None = None
    similarity_hidden_size: int = 256
    lambda_ssp: float | int = 0.1
    memorization_prompt: str = MEMORIZATION_PROMPT
    comprehension_prompt: str = COMPREHENSION_PROMPT
    retrieval_prompt: str = RETRIEVAL_PROMPT
    captioning_prompt: str = CAPTIONING_PROMPT
    max_query_length: int = 256
    num_beams: int = 10
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.identifier_layout is None:
            self.identifier_layout = SigmaIdentifierLayout().to_dict()
        layout = self.layout  # validates the dict
        if self.identifier_token_offsets is not None:
            self.identifier_token_offsets = [int(offset) for offset in self.identifier_token_offsets]
            if len(self.identifier_token_offsets) != layout.length:
                raise ValueError(
                    f"identifier_token_offsets has {len(self.identifier_token_offsets)} entries, "
                    f"the layout has {layout.length} positions"
                )
        if self.lambda_ssp < 0:
            raise ValueError(f"lambda_ssp must be >= 0, got {self.lambda_ssp}")
        super().__post_init__(**kwargs)

    @property
    def layout(self) -> SigmaIdentifierLayout:
        """The identifier layout as a `SigmaIdentifierLayout`."""
        return SigmaIdentifierLayout.from_dict(dict(self.identifier_layout))

    @property
    def identifier_token_range(self) -> tuple[int, int]:
        """Half-open `(first, end)` range of identifier token ids."""
        if self.identifier_token_offsets is None:
            raise ValueError(
                "identifier_token_offsets is not set: add the identifier tokens to the tokenizer first"
            )
        first = self.identifier_token_offsets[0]
        return first, first + self.layout.num_tokens


def register_sigma_config() -> None:
    """Register `SigmaConfig` under `model_type="sigma"` with `AutoConfig` (idempotent).

    Anything that reads a SIGMA `config.json` through `AutoConfig` (the tokenizer and processor loaders, the
    Space) then uses this class instead of asking on stdin whether to run the checkpoint's copy of the code.
    """
    from transformers import AutoConfig

    AutoConfig.register(SigmaConfig.model_type, SigmaConfig, exist_ok=True)


SigmaConfig.register_for_auto_class("AutoConfig")

__all__ = ["SigmaConfig", "register_sigma_config"]
