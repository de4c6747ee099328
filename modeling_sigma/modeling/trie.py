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

__all__ = ["SigmaIdentifierTrie", "SigmaTrieChildren", "SigmaTrieLogitsProcessor", "prefix_allowed_tokens_fn"]

_INT32_LIMIT = 2**31 - 1
# torch runs `searchsorted` over more than 200 values as an OpenMP parallel region; on an oversubscribed CPU each
# region can wait a whole scheduler tick for a descheduled worker, so decode-step batches are searched in chunks
_SEARCH_CHUNK = 192
# next codes are listed row by row instead of as a padded (batch, widest row) table above this many table cells,
# when the padding would at least double the work
_RAGGED_MIN_CELLS = 16384
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
        # keys[d]: sorted unique mixed-radix keys of the stored prefixes of length d + 1
        self.keys = [torch.empty(0, dtype=self.key_dtype) for _ in self.sizes]
        # per prefix length d: mixed-radix weights (key = codes[:, :d] @ weights) and the code bounds
        self._weights, self._lower, self._upper = [], [], []
        for d in range(self.depth + 1):
            weights = [math.prod(self.sizes[p + 1 : d]) for p in range(d)]
            self._weights.append(torch.tensor(weights, dtype=torch.int64))
            self._lower.append(torch.zeros(d, dtype=torch.int64))
            self._upper.append(torch.tensor(self.sizes[:d], dtype=torch.int64) - 1)
        self._children: SigmaTrieChildren | None = None

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

    def identifier_keys(self, codes: torch.Tensor) -> torch.Tensor:
        """Mixed-radix key `(N,)` of each complete identifier row of `codes` `(N, len(sizes))`, which must be
        in range; distinct identifiers have distinct keys, ordered as the rows sort."""
        return self._prefix_keys(self._check_codes(codes))[-1]

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
        self._children = None

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
        self._children = None

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
        if batch == 0:
            return mask
        codes, has_child, rows = self._next_codes(prefixes)
        if rows is not None:
            mask.view(-1).index_fill_(0, rows * mask.shape[1] + codes, True)
            mask[:, -1] = ~has_child
            return mask
        if depth == 0:  # every row is the root: fill one row and broadcast it
            row = torch.zeros(self.max_size + 1, dtype=torch.bool)
            row[codes[0]] = True
            return mask.copy_(row.expand_as(mask))
        # rows without children write only the end column
        mask.scatter_(1, torch.where(has_child[:, None], codes, self.max_size), True)
        return mask

    def _next_codes(self, prefixes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Compact form of `allowed_mask` for prefixes shorter than `len(sizes)`.

        Args:
            prefixes (`torch.LongTensor` of shape `(batch, depth_so_far)`), `depth_so_far < len(sizes)`.

        Returns:
            `(codes, has_child, rows)`. `has_child` (`torch.BoolTensor` `(batch,)`) marks the rows that are
            prefixes of a stored identifier. When `rows` is `None`, `codes` (`(batch, width)`, `width >= 1`)
            holds every row's allowed next codes padded by repeating its last one, `width` being the largest child
            count in the batch (not `sizes[depth_so_far]`); rows without children hold meaningless codes.
            When child counts are very uneven (crowded suffixes) the padding would dominate, and `codes` `(total,)`
            lists the children of all rows back to back, row `rows[i]` owning `codes[i]`.
        """
        batch, depth = prefixes.shape
        stored, size = self.keys[depth], self.sizes[depth]
        if stored.numel() == 0:
            return torch.zeros(batch, 1, dtype=torch.int64), torch.zeros(batch, dtype=torch.bool), None
        if depth == 0:  # the root's children are the level-0 keys themselves
            codes = stored.to(torch.int64)
            return codes.expand(batch, -1), torch.ones(batch, dtype=torch.bool), None
        safe = torch.clamp(prefixes, self._lower[depth], self._upper[depth])
        valid = (safe == prefixes).all(dim=-1)
        base = (safe * self._weights[depth]).sum(dim=-1) * size  # key of the first possible child
        # children of a prefix are the contiguous run of next-level keys in [base, base + size); a prefix that
        # is not stored has an empty run, so no separate membership test is needed
        bounds = _searchsorted(stored, torch.stack([base, base + size]).to(self.key_dtype))
        counts = (bounds[1] - bounds[0]).mul_(valid)
        width, total = max(int(counts.max()), 1), int(counts.sum())
        if batch * width > max(_RAGGED_MIN_CELLS, 2 * total):
            rows = torch.repeat_interleave(counts)  # (total,) row of every child
            first = (counts.cumsum(0) - counts).index_select(0, rows)  # where each row's children start
            index = torch.arange(total).sub_(first).add_(bounds[0].index_select(0, rows))
            children = stored.index_select(0, index).to(torch.int64)
            return children.sub_(base.index_select(0, rows)), counts > 0, rows
        step = torch.minimum(torch.arange(width), (counts - 1).clamp_(min=0)[:, None])
        index = (bounds[0][:, None] + step).clamp_(max=stored.numel() - 1)
        # index_select, unlike stored[index], runs small batches without an OpenMP region
        children = stored.index_select(0, index.view(-1)).view(index.shape).to(torch.int64)
        return children - base[:, None], counts > 0, None

    # ----------------------------------------------------------- child tables
    def children_tables(self) -> "SigmaTrieChildren":
        """CSR child tables of the trie (built on first use, rebuilt after `insert` / `delete`)."""
        if self._children is None or self._children.keys_seen is not self.keys[-1]:
            self._children = SigmaTrieChildren.from_trie(self)
        return self._children

    def prefix_nodes(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Node index of every prefix in its level of `children_tables()` (`-1` where it is not stored).

        Args:
            prefixes (`torch.LongTensor` of shape `(batch, depth_so_far)`), `1 <= depth_so_far <= len(sizes)`.
        """
        prefixes = torch.as_tensor(prefixes).to(torch.int64)
        depth = prefixes.shape[1]
        if not 1 <= depth <= self.depth:
            raise ValueError(f"prefixes must hold 1 to {self.depth} codes, got {depth}")
        safe = torch.clamp(prefixes, self._lower[depth], self._upper[depth])
        valid = (safe == prefixes).all(dim=-1)
        keys = self._prefix_keys(torch.cat([safe, safe.new_zeros(len(safe), self.depth - depth)], 1))
        keys = keys[depth - 1]
        found = self._members(depth - 1, keys) & valid
        position = torch.searchsorted(self.keys[depth - 1], keys)
        return torch.where(found, position, torch.full_like(position, -1))

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


class SigmaTrieChildren:
    """Children of every trie node as CSR tables, for decoding without a vocabulary-wide mask.

    Level `d` lists the stored prefixes of length `d + 1` in key order (its nodes). The children of node `i` of
    level `d - 1` are the nodes `offsets[d][i] : offsets[d][i + 1]` of level `d`; level 0 hangs below one root
    (node 0 of a virtual level -1, `offsets[0] = [0, len(level 0)]`). `codes[d]` holds the code of each node at
    position `d` and `widths[d]` the largest child count, so one gather of static width lists the children of a
    whole batch of beams.

    Args:
        codes (`list[torch.IntTensor]`): per level, the code of every node (`(num_nodes_d,)`).
        offsets (`list[torch.IntTensor]`): per level, `(num_nodes_{d-1} + 1,)` start of each parent's children.
        widths (`list[int]`): per level, the largest number of children of one parent.
        sizes (`list[int]`): number of possible codes at each position (the trie's `sizes`).
    """

    def __init__(self, codes: list[torch.Tensor], offsets: list[torch.Tensor], widths: list[int], sizes):
        self.codes, self.offsets, self.widths = codes, offsets, [int(width) for width in widths]
        self.sizes = [int(size) for size in sizes]
        self.keys_seen = None
        self._by_device: dict = {}
        self._aranges: dict[int, torch.Tensor] = {}

    @classmethod
    def from_trie(cls, trie: SigmaIdentifierTrie) -> "SigmaTrieChildren":
        """Build the tables from a trie's sorted level keys (one `searchsorted` per level)."""
        codes, offsets, widths, num_parents = [], [], [], 1
        for level, keys in enumerate(trie.keys):
            keys = keys.to(torch.int64)
            if level == 0:
                parents = torch.zeros_like(keys)
            else:
                parent_keys = torch.div(keys, trie.sizes[level], rounding_mode="floor")
                parents = torch.searchsorted(trie.keys[level - 1].to(torch.int64), parent_keys)
            counts = torch.bincount(parents, minlength=num_parents)  # (num_parents,)
            offsets.append(torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32))
            codes.append((keys % trie.sizes[level]).to(torch.int32))
            widths.append(max(int(counts.max()) if counts.numel() else 0, 1))
            num_parents = keys.numel()
        tables = cls(codes, offsets, widths, trie.sizes)
        tables.keys_seen = trie.keys[-1]
        return tables

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (on top of the trie's keys)."""
        return sum(t.numel() * t.element_size() for t in (*self.codes, *self.offsets))

    def to(self, device) -> "SigmaTrieChildren":
        """The same tables on `device` (copied once per device, then reused)."""
        device = torch.device(device)
        if device == self.codes[0].device:
            return self
        if device not in self._by_device:
            moved = SigmaTrieChildren(
                [t.to(device) for t in self.codes],
                [t.to(device) for t in self.offsets],
                self.widths,
                self.sizes,
            )
            moved.keys_seen = self.keys_seen
            self._by_device[device] = moved
        return self._by_device[device]

    def gather(
        self, level: int, parents: torch.Tensor, checked: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Children at `level` of parent nodes of `level - 1` (`parents` of any shape; the root is node 0 of -1).

        Args:
            level (`int`): the level of the children.
            parents (`torch.LongTensor`): node indices at `level - 1`.
            checked (`bool`, *optional*, defaults to `True`): clamp `parents` into the level's node range first;
                `False` (the beam search, whose nodes come from these tables) saves that op, and an index out of
                range then raises.

        Returns:
            `(codes, nodes, valid)`, each of shape `parents.shape + (widths[level],)`: the child codes in increasing
            order, their node indices at `level`, and which of the `widths[level]` slots hold a child. Padding slots
            repeat a valid node index (or 0) so that they can be gathered safely.
        """
        width, flat = self.widths[level], parents.reshape(-1)
        if checked:
            flat = flat.clamp(0, self.offsets[level].numel() - 2)
        bounds = self._bounds(level).index_select(0, flat).long()  # (n, 2): first child, end of the children
        start, end = bounds[:, :1], bounds[:, 1:]
        nodes = start + self.arange(width)  # (n, width)
        valid = nodes < end
        nodes = torch.minimum(nodes, end - 1).clamp_(min=0)  # padding repeats the last child (or node 0)
        shape = (*parents.shape, width)
        codes = torch.take(self.codes[level], nodes).long()
        return codes.view(shape), nodes.view(shape), valid.view(shape)

    def arange(self, size: int) -> torch.Tensor:
        """`torch.arange(size)` (int64) on the tables' device, built once per size: no per-step allocation."""
        cached = self._aranges.get(size)
        if cached is None:
            with torch.inference_mode(False):  # usable inside and outside inference mode
                cached = torch.arange(size, device=self.codes[0].device)
            self._aranges[size] = cached
        return cached

    def _bounds(self, level: int) -> torch.Tensor:
        """`(num_parents, 2)` view of `offsets[level]`: every parent's first child and end in one row."""
        return self.offsets[level].unfold(0, 2, 1)


def _searchsorted(stored: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`torch.searchsorted(stored, values)` for a 1-D `stored`, in chunks that stay single-threaded."""
    flat = values.reshape(-1)
    if flat.numel() <= _SEARCH_CHUNK:
        return torch.searchsorted(stored, values)
    chunks = [torch.searchsorted(stored, chunk) for chunk in flat.split(_SEARCH_CHUNK)]
    return torch.cat(chunks).view(values.shape)


def _as_id_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    return [int(token_ids)] if isinstance(token_ids, int) else [int(t) for t in token_ids]


def _allowed_token_ids(trie, offsets, generated, eos_token_ids) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Allowed next token ids on the CPU, as `(ids, rows)`.

    Code `v` at position `p` is token `offsets[p] + v`; rows that completed an identifier, or left the trie,
    allow only `eos_token_ids` (`torch.LongTensor` `(num_eos,)`). With `rows=None`, `ids` is `(batch, width)`,
    each row padded by repeating one of its ids; otherwise `ids` `(total,)` pairs with row indices `rows`.
    """
    batch, depth = generated.shape
    if depth >= trie.depth or len(trie) == 0 or batch == 0:
        return eos_token_ids.expand(batch, -1), None
    codes, has_child, rows = trie._next_codes(generated - offsets[:depth])
    tokens = codes + offsets[depth]
    if rows is not None:
        stuck = (~has_child).nonzero().view(-1)  # rows that may only end
        rows = torch.cat([rows, stuck.repeat_interleave(eos_token_ids.numel())])
        return torch.cat([tokens, eos_token_ids.repeat(stuck.numel())]), rows
    if depth == 0:  # root: no row can be missing from the trie
        return tokens, None
    width = max(tokens.shape[1], eos_token_ids.numel())
    tokens = _pad_repeat_last(tokens, width)
    return torch.where(has_child[:, None], tokens, _pad_repeat_last(eos_token_ids[None], width)), None


def _pad_repeat_last(ids: torch.Tensor, width: int) -> torch.Tensor:
    if ids.shape[1] >= width:
        return ids
    return ids[:, torch.arange(width).clamp_(max=ids.shape[1] - 1)]


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
        self._eos = torch.tensor(self.eos_token_ids, dtype=torch.int64)
        self.num_beams = int(num_beams)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Bit-for-bit the output of `PrefixConstrainedLogitsProcessor`, without its (batch, vocab) float mask:
        # disallowed entries are `scores + (-inf)`, allowed ones `scores + 0`, written by a scatter over the
        # (batch, width) allowed ids only.
        generated = input_ids[:, self.prompt_length :].cpu()  # (batch * beams, d)
        ids, rows = _allowed_token_ids(self.trie, self.token_offsets, generated, self._eos)
        ids = ids.to(scores.device)
        processed = scores + (-math.inf)  # -inf, or NaN where scores are NaN / +inf, as in the reference
        if rows is None:
            allowed = scores.gather(1, ids) + 0.0
            processed.scatter_(1, ids, allowed)
            live = ~allowed.isneginf().all(dim=-1)
        else:  # uneven rows, listed back to back
            rows = rows.to(scores.device)
            if scores.is_contiguous() and processed.is_contiguous():
                flat = rows * scores.shape[1] + ids
                allowed = scores.view(-1).index_select(0, flat) + 0.0
                processed.view(-1).index_copy_(0, flat, allowed)
            else:
                allowed = scores[rows, ids] + 0.0
                processed[rows, ids] = allowed
            live = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
            live[rows[~allowed.isneginf()]] = True
        # a query whose beams have only -inf left is forced onto its allowed tokens with score 0
        batch = scores.shape[0] // self.num_beams
        candidate = (~live).view(batch, -1).all(dim=-1)
        if candidate.any():  # rare: confirm on the full rows, then write the reference's mask (0 / -inf)
            stuck = candidate.clone()
            full_rows = candidate.repeat_interleave(self.num_beams)
            stuck[candidate] = (
                processed[full_rows].amax(dim=-1).isneginf().view(-1, self.num_beams).all(dim=-1)
            )
            force = stuck.repeat_interleave(self.num_beams)
            if rows is None:
                processed[force] = processed[force].scatter_(1, ids[force], 0.0)
            else:
                pick = force[rows]
                processed[rows[pick], ids[pick]] = 0.0
        return processed


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
    eos_ids = torch.tensor(_as_id_list(eos_token_id), dtype=torch.int64)
    if eos_ids.numel() == 0:
        raise ValueError("prefix_allowed_tokens_fn needs an eos_token_id")

    def allowed_tokens(batch_id: int, sent: torch.Tensor) -> list[int]:
        generated = sent[prompt_length:].cpu()[None]  # (1, d)
        return sorted(set(_allowed_token_ids(trie, offsets, generated, eos_ids)[0].view(-1).tolist()))

    return allowed_tokens
