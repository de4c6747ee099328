"""Tests for the identifier beam search (modeling/decoding.py) and the trie's CSR child tables."""

import copy

import pytest
import torch
from sigma_testing_utils import LAYOUT, assert_same_hits, build_tiny_model

from modeling_sigma.modeling.decoding import expand_beams
from modeling_sigma.modeling.trie import SigmaIdentifierTrie

QUERIES = [
    "a red circle",
    "two green squares next to a yellow star on a white background",  # longest: the others are left-padded
    "black cross",
    "an orange triangle above a purple circle",
    "a small black cross left of a white diamond",
]


@pytest.fixture(scope="module")
def tiny():
    model, processor, codes, image_ids = build_tiny_model()
    model.processor = processor
    # a sharper similarity head than the near-constant initial one, so a wrong pooled state shows
    with torch.no_grad():
        for linear in (model.similarity_head.dense_in, model.similarity_head.dense_hidden):
            linear.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return model, codes, image_ids


@pytest.mark.parametrize(
    ("batch_size", "k", "num_beams"),
    [(1, 3, 5), (2, 4, 10), (5, 10, 10), (3, 6, 12)],
)
def test_exact_mode_equals_generate_path(tiny, batch_size, k, num_beams):
    model, _, _ = tiny
    common = dict(k=k, num_beams=num_beams, batch_size=batch_size)
    reference = model.retrieve(QUERIES, engine="generate", **common)
    assert_same_hits(reference, model.retrieve(QUERIES, scoring="exact", **common))
    assert len({hit["similarity"] for hits in reference for hit in hits}) > 1  # the head is not constant


def test_exact_mode_returns_the_whole_corpus(tiny):
    model, _, image_ids = tiny
    size = len(image_ids)
    reference = model.retrieve(QUERIES[:3], k=size, num_beams=size + 7, engine="generate")
    ours = model.retrieve(QUERIES[:3], k=size, num_beams=size + 7)
    assert_same_hits(reference, ours)
    assert all(sorted(hit["image_id"] for hit in hits) == sorted(image_ids) for hits in ours)


def test_exact_mode_with_tied_scores(tiny):
    # generate leaves the order of equal scores to `topk`; the engine breaks ties towards the smaller identifier
    model, codes, _ = tiny
    tied = copy.deepcopy(model)
    first, end = tied.config.identifier_token_range
    with torch.no_grad():  # identifier tokens share one embedding and one logit: all identifiers tie exactly
        tied.backbone.lm_head.weight[first:end] = tied.backbone.lm_head.weight[first]
        embeddings = tied.get_input_embeddings().weight
        embeddings[first:end] = embeddings[first]
    reference = tied.retrieve(QUERIES[:2], k=6, num_beams=8, engine="generate")
    ours = tied.retrieve(QUERIES[:2], k=6, num_beams=8)
    smallest = [LAYOUT.codes_to_string(row) for row in sorted(codes.tolist())[:6]]
    for hits, reference_hits in zip(ours, reference):
        assert [hit["identifier"] for hit in hits] == smallest
        assert len({hit["score"] for hit in hits}) == 1
        torch.testing.assert_close(hits[0]["score"], reference_hits[0]["score"], atol=1e-5, rtol=1e-5)
    # the same order and scores one query at a time (floats to 1e-5: another padding gives other roundings)
    assert_same_hits(ours, tied.retrieve(QUERIES[:2], k=6, num_beams=8, batch_size=1))


def test_restricted_mode_returns_indexed_identifiers(tiny):
    model, codes, image_ids = tiny
    indexed = {LAYOUT.codes_to_string(row.tolist()): image_id for row, image_id in zip(codes, image_ids)}
    results = model.retrieve(QUERIES, k=7, num_beams=9, scoring="restricted", batch_size=2)
    exact = model.retrieve(QUERIES, k=7, num_beams=9)
    for hits, exact_hits in zip(results, exact):
        assert len(hits) == 7 and len({hit["image_id"] for hit in hits}) == 7
        assert all(indexed[hit["identifier"]] == hit["image_id"] for hit in hits)
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)
        # normalised over fewer tokens than the vocabulary: never below the exact log-probability
        exact_scores = {hit["identifier"]: hit["score"] for hit in exact_hits}
        for hit in hits:
            if hit["identifier"] in exact_scores:
                assert hit["score"] >= exact_scores[hit["identifier"]]


def test_bad_scoring_or_engine(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="scoring"):
        model.retrieve(QUERIES[:1], k=2, scoring="approximate")
    with pytest.raises(ValueError, match="engine"):
        model.retrieve(QUERIES[:1], k=2, scoring="restricted", engine="generate")
    with pytest.raises(ValueError, match="engine"):
        model.retrieve(QUERIES[:1], k=2, engine="vllm")


@pytest.mark.parametrize("sizes", [[4, 3, 2, 3, 5], [2, 2, 9]])
def test_children_gather_equals_allowed_mask(sizes):
    generator = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, size, (40,), generator=generator) for size in sizes], dim=1)
    trie = SigmaIdentifierTrie.from_codes(codes, sizes)
    tables = trie.children_tables()
    assert tables.widths[0] == trie.keys[0].numel()
    for depth in range(len(sizes)):
        prefixes = torch.unique(codes[:, :depth], dim=0) if depth else torch.zeros(1, 0, dtype=torch.long)
        parents = trie.prefix_nodes(prefixes) if depth else torch.zeros(1, dtype=torch.long)
        assert (parents >= 0).all()
        child_codes, nodes, valid = tables.gather(depth, parents)
        mask = torch.zeros(prefixes.shape[0], max(sizes) + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(valid, child_codes, max(sizes)), True)
        mask[:, -1] = False
        assert torch.equal(mask, trie.allowed_mask(prefixes) & ~_end_column(trie, prefixes))
        # the gathered node of every child is the node of prefix + child
        extended = torch.cat([prefixes.repeat_interleave(valid.sum(-1), 0), child_codes[valid][:, None]], 1)
        assert torch.equal(trie.prefix_nodes(extended), nodes[valid])


def _end_column(trie, prefixes):
    column = torch.zeros(prefixes.shape[0], trie.max_size + 1, dtype=torch.bool)
    column[:, -1] = True
    return column


def test_children_tables_follow_insert_and_delete():
    trie = SigmaIdentifierTrie.from_codes(torch.tensor([[0, 1], [0, 2]]), [2, 3])
    assert trie.children_tables().widths == [1, 2]
    trie.insert(torch.tensor([[1, 0]]))
    tables = trie.children_tables()
    assert tables.widths == [2, 2] and tables.codes[1].tolist() == [1, 2, 0]
    trie.delete(torch.tensor([[0, 2], [0, 1]]))
    assert trie.children_tables().codes[1].tolist() == [0]
    assert trie.prefix_nodes(torch.tensor([[1], [0], [5]])).tolist() == [0, -1, -1]


def test_expand_beams_selects_like_a_stable_sort():
    """The int64-key topk gives the best candidates in a stable descending sort's order: ties to the smaller
    candidate (beam, then code), `-0.0` tied with `0.0`, `-inf` (no child) last."""
    codes = torch.tensor([[a, b] for a in range(3) for b in range(4) if (a + b) % 3])  # uneven child counts
    trie = SigmaIdentifierTrie.from_codes(codes, [3, 4])
    tables = trie.children_tables()
    nodes = torch.tensor([[0, 1, 2], [2, 2, 0]])  # level-0 nodes of two queries, three beams each
    scores = torch.tensor([[0.0, -0.0, -1.0], [-0.5, -torch.inf, 0.5]])
    log_probs = torch.tensor([[0.0, -0.0, 0.0, -1.0]]).repeat(6, 1)  # ties within and across beams
    kept, parents, child_codes, child_nodes = expand_beams(tables, 1, nodes, scores, log_probs, num_beams=5)
    gathered, gathered_nodes, valid = tables.gather(1, nodes.reshape(-1))
    candidates = torch.where(valid, scores.reshape(-1, 1) + log_probs.gather(1, gathered), -torch.inf)
    expected, order = torch.sort(candidates.view(2, -1), dim=-1, descending=True, stable=True)
    slots = (order[:, :5] + torch.tensor([[0], [3 * gathered.shape[1]]])).view(-1)
    assert torch.equal(kept, expected[:, :5])
    assert torch.equal(parents, slots // gathered.shape[1])
    assert torch.equal(child_codes, gathered.view(-1)[slots])
    assert torch.equal(child_nodes, gathered_nodes.view(-1)[slots])
