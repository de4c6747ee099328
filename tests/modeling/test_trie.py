"""Tests for the vectorised identifier trie and its logits processor."""

import math

import pytest
import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from modeling_sigma.modeling.trie import (
    SigmaIdentifierTrie,
    SigmaTrieLogitsProcessor,
    prefix_allowed_tokens_fn,
)

SIZES = [4, 3, 2, 3, 5]


def random_codes(num: int, sizes=SIZES, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, size, (num,), generator=generator) for size in sizes], dim=1)


def reference_mask(rows: set, prefixes: torch.Tensor, sizes=SIZES) -> torch.Tensor:
    """Brute force: allowed next codes from the explicit set of identifier tuples."""
    mask = torch.zeros(prefixes.shape[0], max(sizes) + 1, dtype=torch.bool)
    depth = prefixes.shape[1]
    for i, prefix in enumerate(prefixes.tolist()):
        if depth == len(sizes):
            mask[i, -1] = True
            continue
        for row in rows:
            if list(row[:depth]) == prefix:
                mask[i, row[depth]] = True
        if not mask[i].any():
            mask[i, -1] = True
    return mask


def all_prefixes(depth: int, sizes=SIZES) -> torch.Tensor:
    """Every possible prefix of length `depth`, plus out-of-range rows."""
    if depth == 0:
        return torch.zeros(3, 0, dtype=torch.long)
    grids = torch.meshgrid(*[torch.arange(size) for size in sizes[:depth]], indexing="ij")
    prefixes = torch.stack([grid.flatten() for grid in grids], dim=1)
    invalid = torch.full((2, depth), -1, dtype=torch.long)
    invalid[1] = torch.tensor(sizes[:depth]) + 7
    return torch.cat([prefixes, invalid])


def assert_matches_reference(trie: SigmaIdentifierTrie, rows: set):
    for depth in range(len(SIZES) + 1):
        prefixes = all_prefixes(depth)
        mask = trie.allowed_mask(prefixes)
        assert torch.equal(mask, reference_mask(rows, prefixes)), f"depth {depth}"
        assert mask.any(dim=-1).all()


@pytest.mark.parametrize("num", [1, 17, 90])
def test_mask_matches_brute_force(num):
    codes = random_codes(num, seed=num)
    trie = SigmaIdentifierTrie.from_codes(codes, SIZES)
    rows = {tuple(row) for row in codes.tolist()}
    assert len(trie) == len(rows)
    assert_matches_reference(trie, rows)


def test_insert_delete_and_membership():
    codes = random_codes(60, seed=3)
    trie = SigmaIdentifierTrie.from_codes(codes[:30], SIZES)
    trie.insert(codes[30:])
    rows = {tuple(row) for row in codes.tolist()}
    assert set(trie) == rows
    removed = codes[::3]
    trie.delete(removed)
    rows -= {tuple(row) for row in removed.tolist()}
    assert set(trie) == rows and len(trie) == len(rows)
    assert_matches_reference(trie, rows)
    assert not trie.contains(removed).any()
    kept = torch.tensor(sorted(rows))
    assert trie.contains(kept).all()
    assert tuple(kept[0].tolist()) in trie
    assert [99, 0, 0, 0, 0] not in trie
    trie.delete(kept)
    assert len(trie) == 0
    assert torch.equal(trie.allowed_mask(kept[:2, :2])[:, -1], torch.ones(2, dtype=torch.bool))


def test_end_only_after_complete_identifier():
    codes = random_codes(20)
    trie = SigmaIdentifierTrie.from_codes(codes, SIZES)
    mask = trie.allowed_mask(codes)
    assert mask[:, -1].all() and mask.sum(dim=-1).eq(1).all()
    partial = trie.allowed_mask(codes[:, :4])
    assert not partial[:, -1].any()


def test_rejects_bad_codes():
    with pytest.raises(ValueError):
        SigmaIdentifierTrie.from_codes(torch.tensor([[0, 0, 0, 0, 5]]), SIZES)
    with pytest.raises(ValueError):
        SigmaIdentifierTrie.from_codes(torch.tensor([[0, 0, 0]]), SIZES)


def test_memory_report_and_state_dict_round_trip():
    sizes = [64, 32, 16, 32, 64]
    codes = random_codes(20_000, sizes, seed=1)
    trie = SigmaIdentifierTrie.from_codes(codes, sizes)
    assert trie.nbytes <= 64 * len(trie)
    restored = SigmaIdentifierTrie.from_state_dict(trie.state_dict())
    assert restored.sizes == sizes and set(restored) == set(trie)
    prefixes = codes[:50, :3]
    assert torch.equal(restored.allowed_mask(prefixes), trie.allowed_mask(prefixes))


def test_logits_processor_matches_prefix_constrained_processor():
    codes = random_codes(40, seed=5)
    trie = SigmaIdentifierTrie.from_codes(codes, SIZES)
    offsets = [10 + sum(SIZES[:p]) for p in range(len(SIZES))]
    eos, prompt_length, num_beams, vocab = 2, 3, 2, 40
    fn = prefix_allowed_tokens_fn(trie, offsets, prompt_length, eos)
    prompt = torch.full((4, prompt_length), 5)
    token_rows = codes[:4] + torch.tensor(offsets)
    for depth in range(len(SIZES) + 1):
        input_ids = torch.cat([prompt, token_rows[:, :depth]], dim=1)
        input_ids[3, prompt_length:] = 1 if depth else input_ids[3, prompt_length:]  # invalid beam
        scores = torch.randn(4, vocab)
        ours = SigmaTrieLogitsProcessor(trie, offsets, prompt_length, eos, num_beams=num_beams)(
            input_ids, scores
        )
        reference = PrefixConstrainedLogitsProcessor(fn, num_beams)(input_ids, scores)
        assert torch.equal(ours, reference)
        assert torch.isfinite(ours).any(dim=-1).all()
        if depth == len(SIZES):
            assert torch.isfinite(ours).sum(dim=-1).eq(1).all() and torch.isfinite(ours[:, eos]).all()
    assert not math.isinf(ours[0, eos])
