# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Constrained beam search for fixed-length identifiers (the retrieval decoding engine).

An identifier has `L` positions and the tokens of position `p` are the contiguous ids `offsets[p] + code`, so
decoding needs far less than transformers' generic beam search:

- the prompt is encoded once per query and its key/value cache is repeated across the beams afterwards;
- at level `p` the beams can only continue with children of their trie node: the children are gathered from the
  trie's CSR tables (`SigmaTrieChildren`), with a static width per level, instead of masking the vocabulary;
- the logits of level `p` are needed only for that level's `K_p` identifier tokens (a slice of the LM head);
- the last-layer states of the written identifier tokens are summed while decoding, so the similarity head reads
  their mean without a second forward pass.

Two scoring modes:

- `"exact"`: log-probabilities normalised over the full vocabulary plus the end-of-sequence step, divided by
  `(L + 1) ** length_penalty` exactly like `generate(num_beams=...)` under `SigmaTrieLogitsProcessor`: same
  identifiers, order and scores as the `generate` path (ties excepted: `generate` leaves their order to `topk`,
  the engine gives them to the smaller identifier), as long as the generation config adds no logits processor of
  its own (e.g. a `repetition_penalty`, which `generate` would apply and the engine does not). Costs one full
  LM-head row per beam and step.
- `"restricted"`: log-softmax over the level's `K_p` identifier tokens only (the end token then has probability
  one), divided by the same `(L + 1) ** length_penalty`. Never computes the full LM head, so its cost does not
  depend on the vocabulary size.

The loop runs `L + 1` forward passes (prefill + one per identifier token) with no host synchronisation: the trie
widths are Python ints fixed when the tables are built. This module imports only torch and its siblings because
it travels with checkpoints as remote code.
"""

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .fused_projections import is_unhooked
from .text_decoder import make_decoder
from .trie import SigmaTrieChildren

__all__ = ["SCORING_MODES", "SigmaBeamSearchOutput", "expand_beams", "sigma_beam_search"]

SCORING_MODES = ("exact", "restricted")


@dataclass
class SigmaBeamSearchOutput:
    """Beams of a constrained identifier search, best first per query.

    Args:
        codes (`torch.LongTensor` of shape `(batch, num_beams, length)`): identifier codes of each beam.
        scores (`torch.FloatTensor` of shape `(batch, num_beams)`): length-normalised beam log-probabilities;
            `-inf` for slots that hold no identifier (fewer identifiers than beams).
        valid (`torch.BoolTensor` of shape `(batch, num_beams)`): which slots hold an indexed identifier.
        pooled (`torch.FloatTensor` of shape `(batch, num_beams, hidden)`): mean last-layer state of the
            identifier tokens of each beam (the input of the similarity head).
    """

    codes: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    pooled: torch.Tensor


class _LevelScorer:
    """Log-probabilities of one level's identifier tokens from the last hidden states."""

    def __init__(self, lm_head: nn.Linear, offsets: list[int], sizes: list[int], scoring: str, eos_token_id):
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
        self.lm_head, self.offsets, self.sizes, self.scoring = lm_head, offsets, sizes, scoring
        self.eos_token_id = eos_token_id
        if type(lm_head) is nn.Linear and is_unhooked(lm_head):  # a plain head runs as one function call
            self.full = functools.partial(nn.functional.linear, weight=lm_head.weight, bias=lm_head.bias)
        else:
            self.full = lm_head

    def level(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """`(rows, K_level)` float32 log-probabilities of the level's tokens (code order)."""
        first, size = self.offsets[level], self.sizes[level]
        if self.scoring == "exact":  # generate's log-softmax: one fused op, cheaper than a logsumexp on CPU
            return torch.log_softmax(self.full(hidden).float(), dim=-1)[:, first : first + size]
        weight = self.lm_head.weight[first : first + size]  # (K_level, hidden)
        bias = None if self.lm_head.bias is None else self.lm_head.bias[first : first + size]
        return torch.log_softmax(nn.functional.linear(hidden, weight, bias).float(), dim=-1)

    def end(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(rows,)` log-probability of the end-of-sequence token after a complete identifier."""
        if self.scoring == "restricted":  # the only allowed token: probability one
            return hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
        return torch.log_softmax(self.full(hidden).float(), dim=-1)[:, self.eos_token_id]


def _top_beams(scores: torch.Tensor, num_beams: int, arange) -> tuple[torch.Tensor, torch.Tensor]:
    """Best `num_beams` of `(batch, candidates)` (padded with `-inf` when there are fewer candidates).

    Ties go to the smaller candidate index (beam, then code), so to the smaller identifier whatever the batch or
    device, as a stable descending sort would give them, but with one `topk` (a tenth of a full sort on CPU): `topk`
    alone leaves the order of ties unspecified, so it runs over unique int64 keys, the score's order-preserving
    32-bit image in the high half (`-0.0` and `0.0` map alike) and the reversed candidate index in the low half.
    `arange(n)` gives `torch.arange(n)` on the scores' device (a cached buffer).
    """
    if scores.shape[1] < num_beams:
        scores = nn.functional.pad(scores, (0, num_beams - scores.shape[1]), value=-torch.inf)
    candidates = scores.shape[1]
    bits = scores.view(torch.int32)
    sign = bits >> 31  # 0 for non-negative floats, -1 for negative ones
    ordered = ((bits & 0x7FFFFFFF) ^ sign) - sign  # +-magnitude: the float order, as int32
    keys = (ordered.long() << 32) | (candidates - 1 - arange(candidates))  # (batch, candidates), all distinct
    choice = torch.topk(keys, num_beams, dim=-1).indices  # (batch, num_beams), best first
    return scores.gather(1, choice), choice


@torch.inference_mode()
def expand_beams(
    children: SigmaTrieChildren,
    level: int,
    nodes: torch.Tensor,
    scores: torch.Tensor,
    level_log_probs: torch.Tensor,
    num_beams: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One constrained beam step: the best `num_beams` children of the current beams (the whole constraint cost).

    Args:
        children (`SigmaTrieChildren`): CSR child tables, on the device of the other tensors.
        level (`int`): identifier position being written.
        nodes (`torch.LongTensor` of shape `(batch, beams)`): trie node of every beam at `level - 1` (0: root);
            node indices out of the level's range raise.
        scores (`torch.FloatTensor` of shape `(batch, beams)`): running sums of log-probabilities (`-inf`: empty).
        level_log_probs (`torch.FloatTensor` of shape `(batch * beams, K_level)`): log-probabilities of the
            level's identifier tokens, in code order.
        num_beams (`int`): beams to keep.

    Returns:
        `(scores, parents, codes, nodes)`: `(batch, num_beams)` new running scores, and per kept beam
        (`(batch * num_beams,)`) its parent row in `level_log_probs`, its code at `level` and its trie node
        (inference-mode tensors: the step runs under `torch.inference_mode`, which spares every op autograd's
        bookkeeping).
    """
    batch, beams = nodes.shape
    codes, child_nodes, valid = children.gather(level, nodes.reshape(-1), checked=False)  # (rows, width) each
    width = codes.shape[1]
    candidates = torch.where(valid, level_log_probs.gather(1, codes).add_(scores.reshape(-1, 1)), -torch.inf)
    scores, choice = _top_beams(candidates.view(batch, beams * width), num_beams, children.arange)
    if beams * width < num_beams:
        choice = choice.clamp(max=beams * width - 1)  # empty padding slots point at a real candidate
    if batch > 1:  # into the flattened (batch * beams, width)
        choice = choice + children.arange(batch * beams * width)[:: beams * width, None]
    slot = choice.view(-1)  # (batch * num_beams,)
    parents = torch.div(slot, width, rounding_mode="floor")
    return scores, parents, torch.take(codes, slot), torch.take(child_nodes, slot)


@torch.inference_mode()
def sigma_beam_search(
    backbone,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    children: SigmaTrieChildren,
    token_offsets: list[int],
    num_beams: int,
    scoring: str = "exact",
    eos_token_id: int | None = None,
    length_penalty: float = 1.0,
    cache_name: str = "cache",
    lean: bool = True,
) -> SigmaBeamSearchOutput:
    """Constrained beam search over the identifiers of a trie, for text-only left-padded prompts.

    Args:
        backbone (`Qwen2_5_VLForConditionalGeneration`): the language model (its `model` and `lm_head`).
        input_ids (`torch.LongTensor` of shape `(batch, prompt)`): left-padded prompts.
        attention_mask (`torch.Tensor` of shape `(batch, prompt)`): their attention mask.
        children (`SigmaTrieChildren`): CSR child tables of the indexed identifiers (`trie.children_tables()`).
        token_offsets (`list[int]`): token id of code 0 at every identifier position.
        num_beams (`int`): beams per query.
        scoring (`str`, *optional*, defaults to `"exact"`): `"exact"` or `"restricted"` (see the module doc).
        eos_token_id (`int`, *optional*): end token scored after the identifier in `"exact"` mode.
        length_penalty (`float`, *optional*, defaults to 1.0): scores are divided by `(length + 1) ** length_penalty`.
        cache_name (`str`, *optional*): keyword of the key/value cache in the installed transformers release.
        lean (`bool`, *optional*, defaults to `True`): run the forward passes with `SigmaTextDecoder` where the
            backbone allows it (`text_decoder.make_decoder`); `False` always calls the backbone's own forward.
    """
    if scoring == "exact" and eos_token_id is None:
        raise ValueError("exact scoring needs the eos_token_id")
    device, length = input_ids.device, len(token_offsets)
    children = children.to(device)
    lm_head = backbone.get_output_embeddings()
    scorer = _LevelScorer(lm_head, list(token_offsets), children.sizes, scoring, eos_token_id)
    batch = input_ids.shape[0]
    decoder = make_decoder(backbone, attention_mask, num_beams, length, cache_name, lean=lean)
    hidden = decoder.prefill(input_ids)  # (batch, hidden)
    # every query starts as one beam at the trie root
    scores = hidden.new_zeros(batch, 1, dtype=torch.float32)
    node = torch.zeros(batch, 1, dtype=torch.long, device=device)
    history = torch.zeros(batch, 0, dtype=torch.long, device=device)
    state_sum = torch.zeros_like(hidden)  # (batch, hidden)
    for level in range(length):
        level_log_probs = scorer.level(hidden, level)  # (rows, K_level)
        scores, parent, code, node = expand_beams(children, level, node, scores, level_log_probs, num_beams)
        history = torch.cat([history.index_select(0, parent), code[:, None]], dim=1)  # (rows, level + 1)
        state_sum = state_sum.index_select(0, parent)
        node = node.view(batch, num_beams)
        hidden = decoder.step(code + token_offsets[level], parent, level)  # (rows, hidden)
        state_sum = state_sum + hidden  # last-layer state of the identifier token just written

    rows = batch * num_beams
    final = (scores.reshape(rows) + scorer.end(hidden)).view(batch, num_beams) / (
        length + 1
    ) ** length_penalty
    final, order = torch.sort(final, dim=-1, descending=True, stable=True)  # (batch, beams)
    pick = (torch.arange(batch, device=device)[:, None] * num_beams + order).view(-1)  # (rows,)
    pooled = (state_sum / length).index_select(0, pick).view(batch, num_beams, -1)
    return SigmaBeamSearchOutput(
        codes=history.index_select(0, pick).view(batch, num_beams, length),
        scores=final,
        valid=torch.isfinite(final),
        pooled=pooled,
    )
