# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""Vectorised prefix tree over fixed-length image identifiers (inference, paper appendix B).

The trie is stored level by level: for every depth ``d`` it keeps the sorted, unique mixed-radix keys of all
identifier prefixes of length ``d + 1``. The children of a prefix are a contiguous ``searchsorted`` range of the
next level's keys, so the allowed next codes of a whole batch of beams are found with a handful of tensor
operations and no Python loop per beam. This module imports only torch and the standard library because it
travels with checkpoints as remote code.
"""

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import LogitsProcessor

__all__ = ["SigmaIdentifierTrie", "SigmaTrieLogitsProcessor", "prefix_allowed_tokens_fn"]

_INT32_LIMIT = 2**31 - 1
_INT64_LIMIT = 2**63 - 1


class SigmaIdentifierTrie:
    """Set of fixed-length identifiers with batched "which codes may come next" queries.

    Args:
        sizes (`list[int]`):
            Number of possible codes at each identifier position, e.g. `[K1, K2, K3, K4, suffix_size]`.
    """

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(size) for size in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"`sizes` must be a non-empty list of positive ints, got {sizes}")
        total = math.prod(self.sizes)
        if total > _INT64_LIMIT:
            raise ValueError(f"identifier space {total} does not fit in int64 keys")
        self.key_dtype = torch.int32 if total <= _INT32_LIMIT else torch.int64
        # radix[d] = number of distinct prefixes of length d + 1 = prod(sizes[: d + 1])
        self.keys = [torch.empty(0, dtype=self.key_dtype) for _ in self.sizes]

    @classmethod
    def from_codes(cls, codes: torch.Tensor, sizes: Sequence[int]) -> "SigmaIdentifierTrie":
        """Build a trie from identifier code rows `codes` of shape `(num_identifiers, len(sizes))`."""
        trie = cls(sizes)
        trie.insert(codes)
        return trie

    @property
    def depth(self) -> int:
        return len(self.sizes)

    @property
    def max_size(self) -> int:
        return max(self.sizes)

    # ------------------------------------------------------------------ keys
    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() != 2 or codes.shape[1] != self.depth:
            raise ValueError(f"codes must have shape (N, {self.depth}), got {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise TypeError("codes must be an integer tensor")
        codes = codes.to(torch.int64)
        sizes = torch.tensor(self.sizes, dtype=torch.int64)
        if codes.numel() and ((codes < 0).any() or (codes >= sizes).any()):
            raise ValueError(f"codes out of range for position sizes {self.sizes}")
        return codes

    def _prefix_keys(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Mixed-radix keys of every prefix: entry `d` encodes `codes[:, : d + 1]`."""
        keys, key = [], torch.zeros(codes.shape[0], dtype=torch.int64)
        for d in range(codes.shape[1]):
            key = key * self.sizes[d] + codes[:, d]
            keys.append(key.to(self.key_dtype))
        return keys

    def _members(self, level: int, keys: torch.Tensor) -> torch.Tensor:
        """Boolean mask: which `keys` are stored at `level`."""
        stored = self.keys[level]
        if stored.numel() == 0:
            return torch.zeros(keys.shape, dtype=torch.bool)
        position = torch.searchsorted(stored, keys).clamp_(max=stored.numel() - 1)
        return stored[position] == keys

    # ------------------------------------------------------------- mutation
    def insert(self, codes: torch.Tensor) -> None:
        """Add identifier rows (duplicates and already present rows are ignored)."""
        codes = self._check_codes(codes)
        for level, new_keys in enumerate(self._prefix_keys(codes)):
            self.keys[level] = torch.unique(torch.cat([self.keys[level], new_keys]))

    def delete(self, codes: torch.Tensor) -> None:
        """Remove identifier rows; rows that are not present are ignored. Empty branches are pruned."""
        codes = self._check_codes(codes)
        leaf = self._prefix_keys(codes)[-1]
        stored = self.keys[-1]
        self.keys[-1] = stored[~torch.isin(stored, leaf)]
        for level in range(self.depth - 2, -1, -1):
            # a prefix survives iff at least one child survives; children are sorted so parents are too
            parents = torch.div(self.keys[level + 1], self.sizes[level + 1], rounding_mode="floor")
            self.keys[level] = torch.unique_consecutive(parents)

    # --------------------------------------------------------------- queries
    def __len__(self) -> int:
        return int(self.keys[-1].numel())

    def contains(self, codes: torch.Tensor) -> torch.Tensor:
        """Boolean tensor `(N,)`: which identifier rows are in the trie."""
        codes = torch.as_tensor(codes)
        codes = codes.unsqueeze(0) if codes.dim() == 1 else codes
        sizes = torch.tensor(self.sizes, dtype=torch.int64)
        in_range = ((codes >= 0) & (codes < sizes)).all(dim=-1)
        safe = torch.where(
            in_range[:, None], codes.to(torch.int64), torch.zeros_like(codes, dtype=torch.int64)
        )
        return self._members(self.depth - 1, self._prefix_keys(safe)[-1]) & in_range

    def __contains__(self, codes) -> bool:
        codes = torch.as_tensor(codes)
        if codes.dim() != 1 or codes.shape[0] != self.depth:
            return False
        return bool(self.contains(codes)[0])

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        for row in self.decode_keys(self.keys[-1]).tolist():
            yield tuple(row)

    def decode_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Leaf keys `(N,)` back to code rows `(N, depth)`."""
        remainder, columns = keys.to(torch.int64), []
        for size in reversed(self.sizes):
            columns.append(remainder % size)
            remainder = torch.div(remainder, size, rounding_mode="floor")
        return torch.stack(columns[::-1], dim=-1) if columns else remainder[:, None]

    @property
    def nbytes(self) -> int:
        """Bytes held by the key tensors (the whole trie)."""
        return sum(keys.numel() * keys.element_size() for keys in self.keys)

    def allowed_mask(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Allowed next codes for a batch of prefixes of equal length.

        Args:
            prefixes (`torch.LongTensor` of shape `(batch, depth_so_far)`):
                Codes generated so far; `depth_so_far` may be 0 (root) up to `len(sizes)`.

        Returns:
            `torch.BoolTensor` of shape `(batch, max(sizes) + 1)`: column `v` allows code `v` at the next position,
            the last column allows end-of-identifier. End-of-identifier is allowed (alone) after a complete
            identifier and for prefixes that are not in the trie, so a row is never empty.
        """
        prefixes = torch.as_tensor(prefixes).to(torch.int64)
        batch, depth = prefixes.shape
        mask = torch.zeros(batch, self.max_size + 1, dtype=torch.bool)
        if depth >= self.depth or len(self) == 0:
            mask[:, -1] = True
            return mask
        if depth == 0:
            valid = torch.ones(batch, dtype=torch.bool)
            parent = torch.zeros(batch, dtype=torch.int64)
        else:
            sizes = torch.tensor(self.sizes[:depth], dtype=torch.int64)
            valid = ((prefixes >= 0) & (prefixes < sizes)).all(dim=-1)
            safe = torch.where(valid[:, None], prefixes, torch.zeros_like(prefixes))
            parent = self._prefix_keys(safe)[-1].to(torch.int64)
            valid &= self._members(depth - 1, parent.to(self.key_dtype))
        children, child_valid = self._children(depth, parent)
        child_valid &= valid[:, None]
        # invalid slots write into the end column, which is recomputed right after
        children = torch.where(child_valid, children, torch.full_like(children, self.max_size))
        mask.scatter_(1, children, child_valid)
        mask[:, -1] = ~mask[:, :-1].any(dim=-1)
        return mask

    def _children(self, level: int, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Child codes `(batch, sizes[level])` of parent keys and a validity mask of the same shape."""
        size, stored = self.sizes[level], self.keys[level]
        base = parent * size  # (batch,)
        lo = torch.searchsorted(stored, base.to(self.key_dtype))
        hi = torch.searchsorted(stored, (base + size).to(self.key_dtype))
        index = lo[:, None] + torch.arange(size)  # (batch, size)
        child_valid = index < hi[:, None]
        gathered = stored[index.clamp(max=max(stored.numel() - 1, 0))].to(torch.int64)
        children = torch.where(child_valid, gathered - base[:, None], torch.zeros_like(gathered))
        return children, child_valid

    # ---------------------------------------------------------------- saving
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the trie (safe to write with safetensors)."""
        state = {"sizes": torch.tensor(self.sizes, dtype=torch.int64)}
        state.update({f"keys_{level}": keys.contiguous() for level, keys in enumerate(self.keys)})
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "SigmaIdentifierTrie":
        trie = cls(state["sizes"].tolist())
        trie.keys = [state[f"keys_{level}"].to(trie.key_dtype) for level in range(trie.depth)]
        return trie

    def __repr__(self) -> str:
        return f"SigmaIdentifierTrie(sizes={self.sizes}, identifiers={len(self)}, nbytes={self.nbytes})"


def _as_id_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [int(token_ids)] if isinstance(token_ids, int) else [int(t) for t in token_ids]


def _additive_mask(trie, offsets, generated, eos_token_ids, scores) -> torch.Tensor:
    """`0` for allowed next tokens, `-inf` elsewhere, shaped like `scores` `(batch, vocab)`."""
    depth = generated.shape[1]
    codes = generated - offsets[:depth] if depth < trie.depth else generated[:, : trie.depth]
    code_mask = trie.allowed_mask(codes).to(scores.device)  # (batch, max_size + 1)
    mask = torch.full_like(scores, -math.inf)
    if depth < trie.depth:
        size, start = trie.sizes[depth], int(offsets[depth])
        mask[:, start : start + size].masked_fill_(code_mask[:, :size], 0.0)
    for eos in eos_token_ids:
        mask[:, eos].masked_fill_(code_mask[:, -1], 0.0)
    return mask


class SigmaTrieLogitsProcessor(LogitsProcessor):
    r"""
    Constrains beam search to identifiers stored in a [`SigmaIdentifierTrie`]; once an identifier is complete only
    EOS is allowed. Disallowed scores become `-inf` exactly as in [`PrefixConstrainedLogitsProcessor`], so both
    give the same beams.

    Args:
        trie (`SigmaIdentifierTrie`):
            The identifiers that may be generated.
        token_offsets (`list[int]`):
            Token id of code 0 at every identifier position (`token_id = token_offsets[p] + code`).
        prompt_length (`int`):
            Length of the (left-padded) prompt; generated identifier tokens start after it.
        eos_token_id (`int` or `list[int]`):
            Token(s) allowed after a complete identifier.
        num_beams (`int`, *optional*, defaults to 1):
            Beams per query, used for the all-`-inf` fallback shared with `PrefixConstrainedLogitsProcessor`.
    """

    def __init__(self, trie, token_offsets, prompt_length: int, eos_token_id, num_beams: int = 1):
        self.trie = trie
        self.token_offsets = torch.as_tensor(list(token_offsets), dtype=torch.int64)
        self.prompt_length = int(prompt_length)
        self.eos_token_ids = _as_id_list(eos_token_id)
        if not self.eos_token_ids:
            raise ValueError("SigmaTrieLogitsProcessor needs an eos_token_id")
        self.num_beams = int(num_beams)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].cpu()  # (batch * beams, d)
        mask = _additive_mask(self.trie, self.token_offsets, generated, self.eos_token_ids, scores)
        scores_processed = scores + mask
        batch = scores.shape[0] // self.num_beams
        unsatisfiable = scores_processed.amax(dim=-1).isneginf().view(batch, -1).all(dim=-1, keepdim=True)
        return torch.where(unsatisfiable.repeat_interleave(self.num_beams, dim=0), mask, scores_processed)


def prefix_allowed_tokens_fn(
    trie: SigmaIdentifierTrie, layout, prompt_length: int, eos_token_id, first_token_id: int = 0
) -> Callable[[int, torch.Tensor], list[int]]:
    """GENRE-style `prefix_allowed_tokens_fn(batch_id, sent)` over the same trie, for `generate(...)`.

    Args:
        trie (`SigmaIdentifierTrie`): the identifiers that may be generated.
        layout (`SigmaIdentifierLayout` or `list[int]`):
            The layout (its relative `offsets` are shifted by `first_token_id`) or directly the absolute token id
            of code 0 at every position.
        prompt_length (`int`): length of the left-padded prompt.
        eos_token_id (`int` or `list[int]`): token(s) allowed after a complete identifier.
        first_token_id (`int`, *optional*, defaults to 0): token id of the first identifier token.
    """
    if isinstance(layout, (list, tuple, torch.Tensor)):
        offsets = torch.as_tensor(list(layout), dtype=torch.int64)
    else:
        offsets = torch.as_tensor(layout.offsets, dtype=torch.int64) + int(first_token_id)
    eos_ids = _as_id_list(eos_token_id)
    vocab_size = int(offsets[-1]) + trie.sizes[-1]
    vocab_size = max(vocab_size, max(eos_ids) + 1)

    def allowed_tokens(batch_id: int, sent: torch.Tensor) -> list[int]:
        generated = sent[prompt_length:].cpu()[None]  # (1, d)
        mask = _additive_mask(trie, offsets, generated, eos_ids, torch.zeros(1, vocab_size))[0]
        return (mask == 0).nonzero().flatten().tolist()

    return allowed_tokens
