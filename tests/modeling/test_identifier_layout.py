import pytest
import torch

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout


def test_positions_sizes_and_capacity():
    layout = SigmaIdentifierLayout()
    assert layout.positions == ["1", "2", "3", "4", "5"]
    assert layout.sizes == [64, 32, 16, 32, 64]
    assert layout.prefix_capacity == 1_048_576  # the paper's figure (appendix E)
    assert layout.capacity == 1_048_576 * 64
    multi = SigmaIdentifierLayout(k1=4, k2=3, k3=2, k4=5, num_subspaces=3, suffix_size=2)
    assert multi.positions == ["1", "2", "3", "4.1", "4.2", "4.3", "5"]
    assert multi.sizes == [4, 3, 2, 5, 5, 5, 2]
    assert multi.length == 7


def test_token_strings_are_contiguous_per_position():
    layout = SigmaIdentifierLayout(k1=3, k2=2, k3=2, k4=2, num_subspaces=2, suffix_size=2)
    tokens = layout.token_strings()
    assert len(tokens) == layout.num_tokens == 3 + 2 + 2 + 2 + 2 + 2
    assert tokens[:4] == ["<id1_0>", "<id1_1>", "<id1_2>", "<id2_0>"]
    assert tokens[layout.token_id(3, 1)] == "<id4.1_1>"
    assert tokens[layout.offsets[-1]] == "<id5_0>"
    assert len(set(tokens)) == len(tokens)


def test_round_trip_and_tensor_input():
    layout = SigmaIdentifierLayout()
    text = layout.codes_to_string(torch.tensor([12, 3, 7, 21, 0]))
    assert text == "<id1_12><id2_3><id3_7><id4_21><id5_0>"
    assert layout.string_to_codes(text) == [12, 3, 7, 21, 0]
    multi = SigmaIdentifierLayout(k4=4, num_subspaces=2)
    assert multi.string_to_codes(multi.codes_to_string([1, 2, 3, 0, 3, 5])) == [1, 2, 3, 0, 3, 5]


@pytest.mark.parametrize(
    "text, match",
    [
        ("<id1_12><id2_3><id3_7><id4_21>", "positions"),
        ("<id1_12> <id2_3><id3_7><id4_21><id5_0>", "malformed"),
        ("<id1_12><id3_7><id2_3><id4_21><id5_0>", "positions"),
        ("<id1_64><id2_3><id3_7><id4_21><id5_0>", "out of range"),
        ("<id1_x><id2_3><id3_7><id4_21><id5_0>", "malformed"),
        ("hello", "malformed"),
    ],
)
def test_malformed_strings_raise(text, match):
    with pytest.raises(ValueError, match=match):
        SigmaIdentifierLayout().string_to_codes(text)


def test_dict_round_trip_and_validation():
    layout = SigmaIdentifierLayout(k1=8, num_subspaces=2)
    assert SigmaIdentifierLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="unknown"):
        SigmaIdentifierLayout.from_dict({"k1": 8, "k5": 2})
    with pytest.raises(ValueError, match="positive int"):
        SigmaIdentifierLayout(k2=0)
    with pytest.raises(ValueError, match="expected 5 codes"):
        layout = SigmaIdentifierLayout()
        layout.codes_to_string([1, 2, 3])
