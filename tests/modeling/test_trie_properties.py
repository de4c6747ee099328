"""Property-based tests (hypothesis): the trie against a Python set of identifiers, and identifier parsing."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_sigma.modeling import trie as trie_module
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.trie import SigmaIdentifierTrie

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def trie_programs(draw):
    """Position sizes, and a list of ("insert" | "delete", rows) steps over codes in range."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=5))
    row = st.tuples(*[st.integers(0, size - 1) for size in sizes])
    steps = draw(
        st.lists(st.tuples(st.sampled_from(["insert", "delete"]), st.lists(row, max_size=12)), max_size=6)
    )
    probes = draw(
        st.lists(st.lists(st.integers(-1, 6), min_size=len(sizes), max_size=len(sizes)), max_size=8)
    )
    return sizes, steps, probes


def expected_next(reference: set, prefix: tuple) -> set:
    return {row[len(prefix)] for row in reference if row[: len(prefix)] == prefix}


def check_against(trie: SigmaIdentifierTrie, reference: set, sizes: list, probes: list) -> None:
    assert len(trie) == len(reference) and set(trie) == reference
    rows = [list(row) for row in reference] + probes
    if rows:
        found = trie.contains(torch.tensor(rows)).tolist()
        assert found == [tuple(row) in reference for row in rows]
    prefixes = {row[:depth] for row in reference for depth in range(len(sizes) + 1)}
    prefixes |= {tuple(min(max(code, 0), size - 1) for code, size in zip(p, sizes))[:2] for p in probes}
    for depth in range(len(sizes) + 1):
        batch = sorted(p for p in prefixes if len(p) == depth)
        if not batch:
            continue
        mask = trie.allowed_mask(torch.tensor(batch, dtype=torch.long).view(len(batch), depth))
        for prefix, row in zip(batch, mask.tolist()):
            allowed = {code for code, ok in enumerate(row[:-1]) if ok}
            following = expected_next(reference, prefix) if depth < len(sizes) else set()
            assert allowed == following, (prefix, allowed, following)
            assert row[-1] == (not following)  # end only after a full identifier or off the trie: never empty


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "ragged"])
@SETTINGS
@given(program=trie_programs())
def test_trie_matches_a_reference_set(program, ragged):
    sizes, steps, probes = program
    threshold = trie_module._RAGGED_MIN_CELLS
    trie_module._RAGGED_MIN_CELLS = 0 if ragged else threshold  # the ragged path otherwise needs huge batches
    try:
        trie, reference = SigmaIdentifierTrie(sizes), set()
        for action, rows in steps:
            codes = torch.tensor(rows, dtype=torch.long).view(len(rows), len(sizes))
            if action == "insert":
                trie.insert(codes)
                reference |= set(rows)
            else:
                trie.delete(codes)
                reference -= set(rows)
            check_against(trie, reference, sizes, probes)
        reloaded = SigmaIdentifierTrie.from_state_dict(trie.state_dict())
        check_against(reloaded, reference, sizes, probes)
    finally:
        trie_module._RAGGED_MIN_CELLS = threshold


@st.composite
def layouts(draw):
    values = {name: draw(st.integers(1, 40)) for name in ("k1", "k2", "k3", "k4", "suffix_size")}
    return SigmaIdentifierLayout(num_subspaces=draw(st.integers(1, 3)), **values)


@SETTINGS
@given(layout=layouts(), data=st.data())
def test_identifier_strings_round_trip(layout, data):
    codes = [data.draw(st.integers(0, size - 1)) for size in layout.sizes]
    text = layout.codes_to_string(codes)
    assert layout.string_to_codes(text) == codes
    assert layout.string_to_codes(f"  {text}\n") == codes
    position = data.draw(st.integers(0, layout.length - 1))
    bad = list(codes)
    bad[position] = layout.sizes[position] + data.draw(st.integers(0, 5))
    with pytest.raises(ValueError, match="out of range"):
        layout.codes_to_string(bad)


IDENTIFIER_ALPHABET = st.sampled_from(
    list("<>id_.0123456789 x") + ["<id1_", "<id2_", "<id4.1_", "<id5_", ">"]
)


@SETTINGS
@given(layout=layouts(), pieces=st.lists(IDENTIFIER_ALPHABET, max_size=30))
def test_parsing_accepts_only_canonical_identifiers(layout, pieces):
    """Any string parses to codes whose canonical string is the (stripped) input, or raises `ValueError`."""
    text = "".join(pieces)
    try:
        codes = layout.string_to_codes(text)
    except ValueError:
        return
    assert layout.codes_to_string(codes) == text.strip() or _same_modulo_leading_zeros(layout, codes, text)


def _same_modulo_leading_zeros(layout, codes, text) -> bool:
    """`<id1_007>` reads as code 7: the only non-canonical spelling the pattern lets through."""
    import re

    values = [int(value) for value in re.findall(r"_([0-9]+)>", text)]
    return values == codes


@SETTINGS
@given(layout=layouts(), data=st.data())
def test_parsing_rejects_damaged_identifiers(layout, data):
    text = layout.codes_to_string([data.draw(st.integers(0, size - 1)) for size in layout.sizes])
    damage = data.draw(st.sampled_from(["drop", "duplicate", "space", "garbage", "swap"]))
    tokens = text.replace("><", ">|<").split("|")
    if damage == "drop":
        tokens.pop(data.draw(st.integers(0, len(tokens) - 1)))
    elif damage == "duplicate":
        tokens.insert(0, tokens[0])
    elif damage == "space":
        tokens[0] += " "
    elif damage == "garbage":
        tokens.insert(
            data.draw(st.integers(0, len(tokens))), data.draw(st.sampled_from(["x", "<id>", "<|im_end|>"]))
        )
    else:
        tokens[0], tokens[1] = tokens[1], tokens[0]
    with pytest.raises(ValueError):
        layout.string_to_codes("".join(tokens))
