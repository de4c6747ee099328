# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The forward passes of the identifier beam search: a lean text-only path and the backbone's own forward.

On a small backbone most of a decoding step is not the matrix products but what the generic forward does
around them on every call: mrope position ids, the 4-D attention mask rebuilt from the 2-D one,
output-capturing hooks, cache objects and output dataclasses. `SigmaTextDecoder` runs the same modules
(embeddings, norms, projections and MLPs, so adapters such as LoRA still apply) with transformers' own rotary
embedding and SDPA attention function, and does the rest once per call:

- text-only prompts have equal positions on the three mrope sections, so cos/sin come from the model's rotary
  embedding once, for every position the call uses, and are indexed per step;
- the attention mask is built once (none at all when no prompt is padded, e.g. at batch 1);
- the key/value cache is one plain tensor; after the first step only its identifier positions follow the
  beams' parents (the prompt part is the same for all beams of a query);
- with plain linears, the projections are fused (q/k/v with the half-swapped q/k rows, so rotating needs no
  flip; gate/up) and the norms, `o_proj` and `down_proj` run as functions (`fused_projections`).

`SigmaModelDecoder` calls the backbone's forward with its cache object: the path for backbones the lean one
does not cover (`SigmaTextDecoder.supports`: another attention implementation, sliding windows, other layer
modules). Both give the last-layer state of the last position of every row. This module imports only torch and
transformers because it travels with checkpoints as remote code.
"""

import functools
import weakref

import torch
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

from .fused_projections import (
    clear_fused_weights,
    fused_weights,
    global_hooks_installed,
    is_plain_layer,
    is_unhooked,
    tensor_state,
)

__all__ = ["SigmaModelDecoder", "SigmaTextDecoder", "clear_fused_weights", "make_decoder"]

# per rotary embedding: (device, dtype, inverse-frequency state), cos, signed sin of positions 0 … n - 1
_ROTARY_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Text positions of left-padded prompts (padding at 0), as `SigmaForRetrieval.forward` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, prompt)


class SigmaTextDecoder:
    """Text-only forward passes of a Qwen2.5-VL language model for one beam search call.

    Rows are the prompts at prefill, then `batch * num_beams` beams, beam `r` belonging to query `r //
    num_beams` (the beam search keeps every query's beams in its own block), so positions and padding are
    fixed per row. The cache of all layers is one tensor `(layers, 2, rows, kv_heads, prompt + steps,
    head_dim)`; after the first step only its identifier positions follow the beams' parents
    (`_follow_parents`).

    Args:
        language_model (`Qwen2_5_VLTextModel`): the text model (`backbone.model.language_model`).
        attention_mask (`torch.Tensor` of shape `(batch, prompt)`): mask of the left-padded prompts.
        num_beams (`int`): beams per query after the first step.
        num_steps (`int`): identifier tokens the call will write (one `step` each).
    """

    def __init__(self, language_model, attention_mask: torch.Tensor, num_beams: int, num_steps: int):
        self.model, self.layers = language_model, list(language_model.layers)
        batch, prompt = attention_mask.shape
        device = attention_mask.device
        row_query = torch.arange(batch, device=device).repeat_interleave(num_beams)  # (rows,)
        lengths = attention_mask.long().sum(-1)  # (batch,) first identifier position of each query
        step_positions = lengths[row_query, None] + torch.arange(num_steps, device=device)  # (rows, steps)
        cos, signed_sin = _rotary_table(language_model, prompt + num_steps, device)  # (positions, head_dim)
        positions = _prompt_positions(attention_mask)  # (batch, prompt)
        # (rows, seq, 1, head_dim): broadcast over the heads of `(rows, seq, heads, head_dim)` states
        self.prefill_rope = (cos[positions][:, :, None], signed_sin[positions][:, :, None])
        self.step_rope = (cos[step_positions][:, :, None], signed_sin[step_positions][:, :, None])
        self.prefill_mask = self.step_mask = None  # no padding: causal prefill, unmasked steps
        if not bool(attention_mask.bool().all()):
            keys = attention_mask.bool()  # (batch, prompt)
            causal = torch.ones(prompt, prompt, dtype=torch.bool, device=device).tril()
            # a padding position attends to itself only, so its (unused) state stays finite
            diagonal = torch.eye(prompt, dtype=torch.bool, device=device)
            # (batch, 1, prompt, prompt)
            self.prefill_mask = ((causal & keys[:, None, :]) | diagonal)[:, None]
            steps = keys.new_ones(batch * num_beams, num_steps)
            self.step_mask = torch.cat([keys[row_query], steps], dim=1)[:, None, None]  # (rows, 1, 1, total)
        norms = [self.model.norm]
        for layer in self.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        # the norms as one fused op where that is the module's own float32 computation
        fused_norms = self.model.embed_tokens.weight.dtype == torch.float32 and all(
            hasattr(norm, "variance_epsilon") and hasattr(norm, "weight") for norm in norms
        )
        self.norms = [_norm_function(norm, fused_norms) for norm in norms]  # final, then two per layer
        self.fused = [fused_weights(layer) for layer in self.layers]
        embed = self.model.embed_tokens
        plain = type(embed) is torch.nn.Embedding and is_unhooked(embed) and embed.max_norm is None
        self.embed_weight = embed.weight if plain else None  # looked up functionally when plain
        self.prompt_length, self.num_steps, self.cache, self.layer_cache = prompt, num_steps, None, []

    @staticmethod
    def supports(language_model) -> bool:
        """Whether the lean path computes what `language_model`'s forward computes: SDPA and full attention
        only, Qwen2.5-VL's own layer, attention and norm modules, and no hook on a module the lean path does
        not call (the decoder layers, their attention, MLP and norms: a hook there would be silently
        skipped)."""
        config = getattr(language_model, "config", None)
        layers = getattr(language_model, "layers", None)
        if config is None or layers is None or getattr(config, "_attn_implementation", None) != "sdpa":
            return False
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ["?"]):
            return False
        if language_model.training and getattr(config, "attention_dropout", 0.0):
            return False
        if global_hooks_installed() or not all(
            hasattr(language_model, n) for n in ("embed_tokens", "norm", "rotary_emb")
        ):
            return False
        return is_unhooked(language_model.norm, Qwen2_5_VLRMSNorm) and all(
            is_plain_layer(layer) for layer in layers
        )

    def prefill(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Encode the prompts; `(batch, hidden)` last-layer state of their last position."""
        hidden = self._forward(input_ids, self.prefill_rope, self.prefill_mask, step=None)
        return hidden[:, -1]

    def step(self, tokens: torch.LongTensor, parents: torch.LongTensor, level: int) -> torch.Tensor:
        """Write `tokens` (`(rows,)`) after the beams' parent rows `parents`; `(rows, hidden)` last-layer
        states."""
        self._follow_parents(parents, level)
        rope = tuple(table[:, level] for table in self.step_rope)  # (rows, 1, head_dim) each
        mask = None if self.step_mask is None else self.step_mask[..., : self.prompt_length + level + 1]
        # one position per row: 2-D states, so every product is a single matrix multiply
        return self._forward(tokens, rope, mask, step=level)

    def _follow_parents(self, parents: torch.LongTensor, level: int) -> None:
        """Give each beam its parent's cache. The first step spreads each prompt over its query's beams; after
        that a beam's parent is in its own query's block, whose prompt part is the same for all its rows, so
        only the `level` identifier positions written so far move (not the whole prompt, every step)."""
        if level == 0:
            self.cache = self.cache.index_select(2, parents)
            # per layer: keys and values `(rows, kv_heads, total, head_dim)`, views written in place
            self.layer_cache = [
                (self.cache[index, 0], self.cache[index, 1]) for index in range(len(self.layers))
            ]
            return
        written = slice(self.prompt_length, self.prompt_length + level)
        self.cache[..., written, :] = self.cache[..., written, :].index_select(2, parents)

    def _forward(self, input_ids, rope, mask, step: int | None) -> torch.Tensor:
        if self.embed_weight is None:
            hidden = self.model.embed_tokens(input_ids)  # (rows, seq, hidden)
        else:
            hidden = F.embedding(input_ids, self.embed_weight)
        last = len(self.layers) - 1
        for index, (layer, fused) in enumerate(zip(self.layers, self.fused)):
            query, key, value = _project(layer, fused, self.norms[2 * index + 1](hidden), rope)
            if step is None:
                # the prefill's last layer only needs the last position (the others are in the cache)
                queries = slice(-1, None) if index == last else slice(None)
                attended = self._prefill_attention(
                    index, layer.self_attn, query[:, queries], key, value, mask
                )
                attended = _output(layer.self_attn, fused, attended)
                hidden = hidden[:, queries]
            else:
                attended = _output(
                    layer.self_attn, fused, self._step_attention(index, query, key, value, mask, step)
                )
            hidden = hidden + attended
            normed = self.norms[2 * index + 2](hidden)
            if fused is None:
                hidden = hidden + layer.mlp(normed)
                continue
            gate, up = F.linear(normed, fused.gate_up).chunk(2, dim=-1)  # (rows, seq, inner) each
            hidden = hidden + F.linear(fused.activation(gate) * up, fused.down_proj)
        return self.norms[0](hidden)  # (rows, seq or 1, hidden)

    def _prefill_attention(self, index, attention, query, key, value, mask) -> torch.Tensor:
        """Attention of the prompts (`(rows, seq, heads, head_dim)` states); the cache starts with their
        keys."""
        rows, length = query.shape[:2]
        key, value = key.transpose(1, 2), value.transpose(1, 2)  # (rows, kv_heads, prompt, head_dim)
        if self.cache is None:
            total = self.prompt_length + self.num_steps
            self.cache = key.new_empty(len(self.layers), 2, rows, key.shape[1], total, key.shape[-1])
        self.cache[index, 0, :, :, : self.prompt_length] = key
        self.cache[index, 1, :, :, : self.prompt_length] = value
        mask = None if mask is None else mask[:, :, -length:]
        output, _ = sdpa_attention_forward(
            attention, query.transpose(1, 2), key, value, mask, scaling=attention.scaling
        )  # (rows, seq, heads, head_dim)
        return output.reshape(rows, length, -1)  # (rows, seq, heads * head_dim)

    def _step_attention(self, index, query, key, value, mask, step: int) -> torch.Tensor:
        """One new position per row; its heads grouped by key/value head, as transformers packs them."""
        rows, heads, head_dim = query.shape
        position, (keys, values) = self.prompt_length + step, self.layer_cache[index]
        keys[:, :, position], values[:, :, position] = key, value
        kv_heads = keys.shape[1]
        output = F.scaled_dot_product_attention(
            query.reshape(rows, kv_heads, heads // kv_heads, head_dim),
            keys[:, :, : position + 1],
            values[:, :, : position + 1],
            attn_mask=mask,
            scale=self.layers[index].self_attn.scaling,
        )  # (rows, kv_heads, groups, head_dim)
        return output.reshape(rows, -1)  # (rows, heads * head_dim)


def _output(attention, fused, attended: torch.Tensor) -> torch.Tensor:
    """The attention's output projection (`o_proj` called functionally when the layer is fused)."""
    return attention.o_proj(attended) if fused is None else F.linear(attended, fused.o_proj)


def _norm_function(norm, fused: bool):
    """`norm` as a function of the states: one `rms_norm` op (the module's own float32 computation) when
    `fused`."""
    if not fused:
        return norm
    return functools.partial(
        torch.rms_norm, normalized_shape=norm.weight.shape, weight=norm.weight, eps=norm.variance_epsilon
    )


def _project(layer, fused, hidden: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotated queries and keys and the values of normed states `(rows, seq, hidden)`, each `(rows, seq,
    heads, head_dim)`. Rotating is `x * cos + swap_halves(x) * signed_sin` (`_rotary_table`); with fused
    weights the matrix product also writes the half-swapped queries and keys (their rows permuted), so nothing
    is flipped."""
    attention, (cos, signed_sin) = layer.self_attn, rope
    heads, head_dim = attention.num_heads, attention.head_dim
    if fused is not None and hidden.dim() == 2:  # a decoding step: the product swaps too
        states = F.linear(hidden, fused.qkv_weight, fused.qkv_bias)  # (rows, [q k | v | swapped q k])
        width = fused.width
        pairs = states[..., :width].unflatten(-1, (-1, head_dim))  # (rows, heads + kv, d)
        value, swapped = states[..., width:-width], states[..., -width:].unflatten(-1, (-1, head_dim))
    else:  # the prompts: flipping costs less than a third wider product over every prompt position
        if fused is None:
            query, key, value = attention.q_proj(hidden), attention.k_proj(hidden), attention.v_proj(hidden)
            pairs = torch.cat([query, key], dim=-1)
        else:
            plain = fused.qkv_weight.shape[0] - fused.width
            states = F.linear(
                hidden, fused.qkv_weight[:plain], fused.qkv_bias[:plain]
            )  # (rows, seq, [q k | v])
            pairs, value = states[..., : fused.width], states[..., fused.width :]
        pairs = pairs.unflatten(-1, (-1, head_dim))  # (rows, seq, heads + kv, d)
        swapped = pairs.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # second half first
    rotated = pairs * cos + swapped * signed_sin
    return rotated[..., :heads, :], rotated[..., heads:, :], value.unflatten(-1, (-1, head_dim))


def _rotary_table(language_model, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin `(length, head_dim)` of positions `0 … length - 1` from the model's rotary
    embedding.

    Text positions are equal on the three mrope sections. The sin's first half is negated so that rotating is
    `x * cos + swap_halves(x) * signed_sin`, the same products as transformers' `rotate_half` form. Each
    position's values do not depend on the others (with the default rope type; dynamic ones rescale with the
    length), so one table, a power of two long, serves every shorter call."""
    rotary, weight = language_model.rotary_emb, language_model.embed_tokens.weight
    frequencies = getattr(rotary, "inv_freq", None)
    state = (torch.device(device), weight.dtype, None if frequencies is None else tensor_state(frequencies))
    shared = getattr(rotary, "rope_type", None) == "default"
    cached = _ROTARY_TABLES.get(rotary)
    if cached is None or cached[0] != state or cached[1].shape[0] < length or not shared:
        size = max(256, 1 << (length - 1).bit_length()) if shared else length
        positions = torch.arange(size, device=device).view(1, 1, -1).expand(3, 1, -1)  # (3, 1, size)
        with torch.no_grad():
            cos, sin = rotary(weight, positions)  # (1, size, head_dim) each
        half = sin.shape[-1] // 2
        cached = _ROTARY_TABLES[rotary] = (
            state,
            cos[0],
            torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1),
        )
    return cached[1][:length], cached[2][:length]


class SigmaModelDecoder:
    """The same interface over the backbone's own forward and cache object (any backbone `generate` supports).

    Args:
        backbone (`Qwen2_5_VLForConditionalGeneration`): the language model; its `model` is called.
        attention_mask (`torch.Tensor` of shape `(batch, prompt)`): mask of the left-padded prompts.
        num_steps (`int`): identifier tokens the call will write.
        cache_name (`str`): keyword of the key/value cache in the installed transformers release.
    """

    def __init__(self, backbone, attention_mask: torch.Tensor, num_steps: int, cache_name: str):
        self.backbone, self.cache_name, self.cache = backbone, cache_name, None
        batch = attention_mask.shape[0]
        self.mask = torch.cat([attention_mask, attention_mask.new_ones(batch, num_steps)], dim=1)
        self.prompt_mask, self.prompt_length = attention_mask, attention_mask.shape[1]
        self.next_position = attention_mask.long().sum(-1, keepdim=True)  # (batch, 1)

    def prefill(self, input_ids: torch.LongTensor) -> torch.Tensor:
        return self._forward(input_ids, self.prompt_mask, _prompt_positions(self.prompt_mask))

    def step(self, tokens: torch.LongTensor, parents: torch.LongTensor, level: int) -> torch.Tensor:
        # the first step spreads each query's prompt cache over its beams; later ones follow the parents
        self.cache.reorder_cache(parents)
        if level == 0:
            self.mask, self.next_position = self.mask[parents], self.next_position[parents]
        mask = self.mask[:, : self.prompt_length + level + 1]
        return self._forward(tokens[:, None], mask, self.next_position + level)

    def _forward(self, input_ids, attention_mask, positions) -> torch.Tensor:
        outputs = self.backbone.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.cache = getattr(outputs, self.cache_name)
        return outputs.last_hidden_state[:, -1]  # (rows, hidden)


def make_decoder(
    backbone, attention_mask, num_beams: int, num_steps: int, cache_name: str, lean: bool = True
):
    """`SigmaTextDecoder` when `lean` and the backbone's text model supports it, else `SigmaModelDecoder`."""
    language_model = getattr(getattr(backbone, "model", None), "language_model", None)
    if lean and language_model is not None and SigmaTextDecoder.supports(language_model):
        return SigmaTextDecoder(language_model, attention_mask, num_beams, num_steps)
    return SigmaModelDecoder(backbone, attention_mask, num_steps, cache_name)
