# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Which modules of a Qwen2.5-VL text model the lean decoder (`text_decoder.SigmaTextDecoder`) may run piece
by piece, and the fused projection weights it multiplies with (concatenated once per weight state).

This module imports only torch and transformers because it travels with checkpoints as remote code.
"""

import weakref
from typing import NamedTuple

import torch
from torch.nn import functional as F
from transformers.activations import SiLUActivation
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLAttention,
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLRMSNorm,
    Qwen2MLP,
)

__all__ = [
    "SigmaFusedProjections",
    "clear_fused_weights",
    "fused_weights",
    "global_hooks_installed",
    "is_plain_layer",
    "is_unhooked",
    "tensor_state",
]

_LAYER_MODULES = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
_OUTPUT_CAPTURE_MODULE = "transformers.utils.output_capturing"
# per decoder layer: (parameter references, their (data_ptr, version), fused weights); entries go with the
# layers
_FUSED_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def global_hooks_installed() -> bool:
    """Whether a global module hook (`torch.nn.modules.module.register_module_forward_hook`) is installed."""
    module = torch.nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def is_unhooked(module, cls=None) -> bool:
    """`module` runs `cls.forward` (default: its own class's) unchanged, with no forward hook except
    transformers' output capture (inactive unless a caller asks for hidden states or attentions, which the
    lean path never does)."""
    cls = type(module) if cls is None else cls
    if type(module).forward is not cls.forward or "forward" in vars(module) or module._forward_pre_hooks:
        return False
    return all(
        getattr(hook, "__module__", None) == _OUTPUT_CAPTURE_MODULE for hook in module._forward_hooks.values()
    )


def is_plain_layer(layer) -> bool:
    """A Qwen2.5-VL decoder layer whose modules the lean path may run piece by piece (the projections and the
    MLP may be anything: they are called as modules unless `fused_weights` finds plain linears)."""
    attention = getattr(layer, "self_attn", None)
    if not all(hasattr(layer, name) for name in _LAYER_MODULES) or not is_unhooked(
        layer, Qwen2_5_VLDecoderLayer
    ):
        return False
    if not is_unhooked(attention, Qwen2_5_VLAttention):
        return False
    if not all(
        hasattr(attention, name) for name in (*_ATTENTION_MODULES, "num_heads", "head_dim", "scaling")
    ):
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return all(is_unhooked(norm, Qwen2_5_VLRMSNorm) for norm in norms) and is_unhooked(layer.mlp)


def fused_weights(layer) -> tuple | None:
    """The fused projections of a layer of plain linears (`_fuse`), or `None`: then its modules are called one
    by one. Concatenated once per weight state: a parameter replaced (`load_state_dict(assign=True)`,
    `.to()`) or written in place (an optimiser step, `load_state_dict`) is picked up on the next call; writes
    through `.data` bypass PyTorch's version counter and need `clear_fused_weights()`."""
    attention, mlp = layer.self_attn, layer.mlp
    linears = [getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj")]
    linears += [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    linears.append(getattr(attention, "o_proj", None))
    plain = all(type(linear) is torch.nn.Linear and is_unhooked(linear) for linear in linears)
    if not plain or type(mlp).forward is not Qwen2MLP.forward or "forward" in vars(mlp):
        return None
    biases = [linear.bias for linear in linears[:3]]
    if any(bias is None for bias in biases) or any(linear.bias is not None for linear in linears[3:]):
        return None
    parameters = [*(linear.weight for linear in linears), *biases]
    state = [tensor_state(parameter) for parameter in parameters]
    cached = _FUSED_WEIGHTS.get(layer)
    if cached is None or cached[1] != state or any(ref() is not p for ref, p in zip(cached[0], parameters)):
        cached = _FUSED_WEIGHTS[layer] = ([weakref.ref(p) for p in parameters], state, _fuse(layer, linears))
    return cached[2]


@torch.no_grad()
def _fuse(layer, linears) -> tuple:
    """`(weight, bias)` of [q, k, v, half-swapped q, half-swapped k] (the swapped ones: rows permuted within
    each head, so their outputs are `swap_halves` of the queries' and keys'), the gate/up weight and the q + k
    width."""
    head_dim, (query, key, value, gate, up) = layer.self_attn.head_dim, linears[:5]

    def swap(tensor):  # (heads * head_dim, ...) rows, the two halves of every head exchanged
        return tensor.unflatten(0, (-1, 2, head_dim // 2)).flip(1).flatten(0, 2)

    pairs = [torch.cat([query.weight, key.weight]), torch.cat([query.bias, key.bias])]
    weight = torch.cat([pairs[0], value.weight, swap(pairs[0])])
    bias = torch.cat([pairs[1], value.bias, swap(pairs[1])])
    mlp = layer.mlp
    activation = F.silu if is_unhooked(mlp.act_fn, SiLUActivation) else mlp.act_fn
    gate_up = torch.cat([gate.weight, up.weight])
    down, output = linears[5], linears[6]
    return SigmaFusedProjections(
        weight, bias, gate_up, pairs[0].shape[0], output.weight, down.weight, activation
    )


class SigmaFusedProjections(NamedTuple):
    """A layer's fused projections, and the weights of its (bias-free) `o_proj` and `down_proj`."""

    qkv_weight: torch.Tensor  # (q + k + v + q + k, hidden): q, k, v, then the half-swapped q and k rows
    qkv_bias: torch.Tensor
    gate_up: torch.Tensor  # (2 inner, hidden)
    width: int  # q + k rows
    o_proj: torch.Tensor
    down_proj: torch.Tensor
    activation: object


def clear_fused_weights() -> None:
    """Forget every fused projection weight (they are rebuilt on the next beam search), e.g. after writing
    weights through `.data` (peft's `merge_and_unload` does), which PyTorch's version counter does not see."""
    _FUSED_WEIGHTS.clear()


def tensor_state(tensor: torch.Tensor) -> tuple:
    """`(data_ptr, version)`: changes when the tensor is replaced, moved or written in place (not via
    `.data`)."""
    return tensor.data_ptr(), tensor._version
