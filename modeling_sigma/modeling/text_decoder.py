# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""The forward passes of the identifier beam search: a lean text-only path and the backbone's own forward.

On a small backbone most of a decoding step is not the matrix products but what the generic forward does around
them on every call: mrope position ids, the 4-D attention mask rebuilt from the 2-D one, output-capturing hooks,
cache objects and output dataclasses. `SigmaTextDecoder` runs the same modules (embeddings, norms, projections and
MLPs, so adapters such as LoRA still apply) with transformers' own rotary embedding and SDPA attention function,
and does the rest once per call:

- text-only prompts have equal positions on the three mrope sections, so cos/sin come from the model's rotary
  embedding once, for every position the call uses, and are indexed per step;
- the attention mask is built once (none at all when no prompt is padded, e.g. at batch 1);
- the key/value cache is one pair of plain tensors per layer, reordered by beam parent with one `index_select`.

`SigmaModelDecoder` calls the backbone's forward with its cache object: the path for backbones the lean one does
not cover (`SigmaTextDecoder.supports`: another attention implementation, sliding windows, other layer modules).
Both give the last-layer state of the last position of every row. This module imports only torch and transformers
because it travels with checkpoints as remote code.
"""

import weakref

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2MLP

__all__ = ["SigmaModelDecoder", "SigmaTextDecoder", "make_decoder"]

_LAYER_MODULES = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
# per decoder layer: (weight versions, fused projection weights); entries go with the layers
_FUSED_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Text positions of left-padded prompts (padding at 0), as `SigmaForRetrieval.forward` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, prompt)


class SigmaTextDecoder:
    """Text-only forward passes of a Qwen2.5-VL language model for one beam search call.

    Rows are the prompts at prefill, then `batch * num_beams` beams, beam `r` belonging to query `r // num_beams`
    (the beam search keeps every query's beams in its own block), so positions and padding are fixed per row. The
    cache of all layers is one tensor `(rows, layers, 2, kv_heads, prompt + steps, head_dim)`: one `index_select`
    per step follows the beams' parents.

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
        cos, signed_sin = self._rotary_table(prompt + num_steps, device)  # (positions, head_dim) each
        positions = _prompt_positions(attention_mask)  # (batch, prompt)
        self.prefill_rope = (cos[positions][:, None], signed_sin[positions][:, None])  # (batch, 1, prompt, d)
        self.step_rope = (cos[step_positions][:, None], signed_sin[step_positions][:, None])  # (rows, 1, steps, d)
        self.prefill_mask = self.step_mask = None  # no padding: causal prefill, unmasked steps
        if not bool(attention_mask.bool().all()):
            keys = attention_mask.bool()  # (batch, prompt)
            causal = torch.ones(prompt, prompt, dtype=torch.bool, device=device).tril()
            # a padding position attends to itself only, so its (unused) state stays finite
            diagonal = torch.eye(prompt, dtype=torch.bool, device=device)
            self.prefill_mask = ((causal & keys[:, None, :]) | diagonal)[:, None]  # (batch, 1, prompt, prompt)
            steps = keys.new_ones(batch * num_beams, num_steps)
            self.step_mask = torch.cat([keys[row_query], steps], dim=1)[:, None, None]  # (rows, 1, 1, total)
        # the norms as one fused op where that is the module's own float32 computation
        self.fused_norms = self.model.embed_tokens.weight.dtype == torch.float32 and all(
            hasattr(norm, "variance_epsilon") and hasattr(norm, "weight")
            for norm in (self.model.norm, *(m for l in self.layers for m in (l.input_layernorm, l.post_attention_layernorm)))
        )
        self.fused = [_fused_weights(layer) for layer in self.layers]
        self.prompt_length, self.num_steps, self.cache = prompt, num_steps, None

    @staticmethod
    def supports(language_model) -> bool:
        """Whether the lean path computes what `language_model`'s forward computes (SDPA, full attention only)."""
        config = getattr(language_model, "config", None)
        layers = getattr(language_model, "layers", None)
        if config is None or layers is None or getattr(config, "_attn_implementation", None) != "sdpa":
            return False
        if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ["?"]):
            return False
        attention_names = (*_ATTENTION_MODULES, "num_heads", "head_dim", "scaling")
        return all(hasattr(language_model, name) for name in ("embed_tokens", "norm", "rotary_emb")) and all(
            all(hasattr(layer, name) for name in _LAYER_MODULES)
            and all(hasattr(layer.self_attn, name) for name in attention_names)
            for layer in layers
        )

    def _rotary_table(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin of positions `0 … length - 1` from the model's rotary embedding.

        Text positions are equal on the three mrope sections. The sin's first half is negated so that rotating is
        `x * cos + swap_halves(x) * signed_sin`, the same products as transformers' `rotate_half` form."""
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)  # (3, 1, length)
        cos, sin = self.model.rotary_emb(self.model.embed_tokens.weight, positions)  # (1, length, head_dim)
        half = sin.shape[-1] // 2
        return cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    def prefill(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Encode the prompts; `(batch, hidden)` last-layer state of their last position."""
        hidden = self._forward(input_ids, self.prefill_rope, self.prefill_mask, step=None)
        return hidden[:, -1]

    def step(self, tokens: torch.LongTensor, parents: torch.LongTensor, level: int) -> torch.Tensor:
        """Write `tokens` (`(rows,)`) after the beams' parent rows `parents`; `(rows, hidden)` last-layer states."""
        self.cache = self.cache.index_select(0, parents)  # each beam continues its parent's cache
        rope = tuple(table[:, :, level : level + 1] for table in self.step_rope)  # (rows, 1, 1, head_dim) each
        mask = None if self.step_mask is None else self.step_mask[..., : self.prompt_length + level + 1]
        return self._forward(tokens[:, None], rope, mask, step=level)[:, 0]

    def _norm(self, norm, hidden: torch.Tensor) -> torch.Tensor:
        if self.fused_norms:
            return torch.nn.functional.rms_norm(hidden, hidden.shape[-1:], norm.weight, norm.variance_epsilon)
        return norm(hidden)

    def _forward(self, input_ids, rope, mask, step: int | None) -> torch.Tensor:
        hidden = self.model.embed_tokens(input_ids)  # (rows, seq, hidden)
        last = len(self.layers) - 1
        for index, (layer, fused) in enumerate(zip(self.layers, self.fused)):
            # the prefill's last layer only needs the last position: the earlier ones are in the cache already
            queries = slice(-1, None) if step is None and index == last else slice(None)
            attended = self._attention(index, layer, fused, hidden, rope, mask, step, queries)
            hidden = hidden[:, queries] + attended
            normed = self._norm(layer.post_attention_layernorm, hidden)
            if fused is None:
                hidden = hidden + layer.mlp(normed)
                continue
            gate, up = torch.nn.functional.linear(normed, fused[2]).chunk(2, dim=-1)  # (rows, seq, inner) each
            hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return self._norm(self.model.norm, hidden)  # (rows, seq or 1, hidden)

    def _attention(self, index, layer, fused, hidden, rope, mask, step, queries: slice) -> torch.Tensor:
        attention, (cos, signed_sin) = layer.self_attn, rope
        heads, head_dim = attention.num_heads, attention.head_dim
        hidden = self._norm(layer.input_layernorm, hidden)
        if fused is None:
            projections = [attention.q_proj(hidden), attention.k_proj(hidden), attention.v_proj(hidden)]
            states = torch.cat(projections, dim=-1)
        else:
            states = torch.nn.functional.linear(hidden, fused[0], fused[1])  # (rows, seq, (heads + 2 kv) d)
        rows, length, _ = hidden.shape
        states = states.view(rows, length, -1, head_dim).transpose(1, 2)  # (rows, heads + 2 kv, seq, d)
        kv_heads = (states.shape[1] - heads) // 2
        rotated = _rotate(states[:, : heads + kv_heads], cos, signed_sin)  # queries and keys, one rotation
        query, key = rotated[:, :heads, queries], rotated[:, heads:]  # (rows, heads, q, d), (rows, kv, seq, d)
        value = states[:, heads + kv_heads :]  # (rows, kv_heads, seq, head_dim)
        if step is None:  # prefill: the cache starts with the prompts
            if self.cache is None:
                total = self.prompt_length + self.num_steps
                self.cache = key.new_empty(rows, len(self.layers), 2, kv_heads, total, head_dim)
            self.cache[:, index, 0, :, : self.prompt_length] = key
            self.cache[:, index, 1, :, : self.prompt_length] = value
        else:
            end = self.prompt_length + step + 1
            self.cache[:, index, 0, :, end - 1 : end] = key
            self.cache[:, index, 1, :, end - 1 : end] = value
            key, value = self.cache[:, index, 0, :, :end], self.cache[:, index, 1, :, :end]  # (rows, kv, end, d)
        mask = None if mask is None else mask[:, :, queries]
        output, _ = sdpa_attention_forward(attention, query, key, value, mask, scaling=attention.scaling)
        return attention.o_proj(output.reshape(rows, query.shape[2], -1))  # (rows, q, hidden)


def _fused_weights(layer) -> tuple | None:
    """`(qkv weight, qkv bias, gate_up weight)` of a layer of plain linears (concatenated once per weight version,
    so a trained or reloaded weight is picked up), or `None`: then the layer's modules are called one by one."""
    attention, mlp = layer.self_attn, layer.mlp
    linears = [getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj")]
    linears += [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    plain = all(
        type(linear) is torch.nn.Linear and not linear._forward_hooks and not linear._forward_pre_hooks
        for linear in linears
    )
    biases = [linear.bias for linear in linears[:3]]
    if not plain or type(mlp).forward is not Qwen2MLP.forward or any(b is None for b in biases):
        return None
    if any(linear.bias is not None for linear in linears[3:5]):
        return None
    parameters = [*(linear.weight for linear in linears[:5]), *biases]
    version = tuple((parameter.data_ptr(), parameter._version) for parameter in parameters)
    cached = _FUSED_WEIGHTS.get(layer)
    if cached is None or cached[0] != version:
        weights = [linear.weight for linear in linears]
        fused = (torch.cat(weights[:3]), torch.cat(biases), torch.cat(weights[3:5]))
        cached = _FUSED_WEIGHTS[layer] = (version, fused)
    return cached[1]


def _rotate(states: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `(rows, heads, seq, head_dim)` states (`cos`, `signed_sin` from `_rotary_table`)."""
    swapped = states.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # second half first
    return states * cos + swapped * signed_sin


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


def make_decoder(backbone, attention_mask, num_beams: int, num_steps: int, cache_name: str, lean: bool = True):
    """`SigmaTextDecoder` when `lean` and the backbone's text model supports it, else `SigmaModelDecoder`."""
    language_model = getattr(getattr(backbone, "model", None), "language_model", None)
    if lean and language_model is not None and SigmaTextDecoder.supports(language_model):
        return SigmaTextDecoder(language_model, attention_mask, num_beams, num_steps)
    return SigmaModelDecoder(backbone, attention_mask, num_steps, cache_name)
