"""Identifier layout and token strings shared by stage 0, the trie and the model.

This module travels as remote code next to the model: it imports only the standard library (and accepts
torch tensors duck-typed), never scikit-learn or datasets.

An identifier is a fixed-length sequence of codes, one per *position* (see docs/ARCHITECTURE.md):
positions ``1, 2, 3``, then ``4`` when ``num_subspaces == 1`` or ``4.1 … 4.M`` otherwise, then ``5``
(the instance suffix). The token of position ``p`` with value ``v`` is ``<id{p}_{v}>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

_TOKEN_PATTERN = re.compile(r"<id([0-9]+(?:\.[0-9]+)?)_([0-9]+)>")


@dataclass
class SigmaIdentifierLayout:
    """Sizes of the identifier positions.

    Args:
        k1 (`int`): number of semantic anchors (k-means clusters), position `1`.
        k2 (`int`): dominant-component codes (first Semi-NMF), position `2`.
        k3 (`int`): fine-grained group codes (second-order Semi-NMF), position `3`.
        k4 (`int`): residual centroids per product-quantisation subspace (positions `4` / `4.m`).
        num_subspaces (`int`): M, number of product-quantisation subspaces of the residual.
        suffix_size (`int`): number of instance-suffix values, position `5`.
    """

    # the help texts are what `recipes/stage0.py --help` prints for these fields
    k1: int = field(default=64, metadata={"help": "id1: k-means clusters (semantic anchors)"})
    k2: int = field(default=32, metadata={"help": "id2: dominant Semi-NMF components per cluster"})
    k3: int = field(default=16, metadata={"help": "id3: second-order Semi-NMF components"})
    k4: int = field(default=32, metadata={"help": "id4: residual centroids per subspace"})
    num_subspaces: int = field(default=1, metadata={"help": "id4: product-quantisation subspaces (M)"})
    suffix_size: int = field(default=64, metadata={"help": "id5: instance-suffix values"})

    def __post_init__(self) -> None:
        for size_field in fields(SigmaIdentifierLayout):  # a subclass (the builder config) adds other fields
            value = getattr(self, size_field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{type(self).__name__}.{size_field.name} must be a positive int, got {value!r}"
                )

    @property
    def positions(self) -> list[str]:
        """Position names in order, e.g. `["1", "2", "3", "4", "5"]` or `["1", …, "4.1", "4.2", "5"]`."""
        if self.num_subspaces == 1:
            residual = ["4"]
        else:
            residual = [f"4.{m}" for m in range(1, self.num_subspaces + 1)]
        return ["1", "2", "3", *residual, "5"]

    @property
    def sizes(self) -> list[int]:
        """Number of values of each position, aligned with `positions`."""
        return [self.k1, self.k2, self.k3, *([self.k4] * self.num_subspaces), self.suffix_size]

    @property
    def length(self) -> int:
        """Number of codes in one identifier."""
        return 4 + self.num_subspaces

    @property
    def prefix_capacity(self) -> int:
        """Distinct semantic prefixes (all positions but the suffix); the paper's "1,048,576" figure."""
        return math.prod(self.sizes[:-1])

    @property
    def capacity(self) -> int:
        """Distinct identifiers the layout can express, suffix included."""
        return math.prod(self.sizes)

    @property
    def offsets(self) -> list[int]:
        """Index of the first token of each position in `token_strings()`."""
        starts = [0]
        for size in self.sizes[:-1]:
            starts.append(starts[-1] + size)
        return starts

    @property
    def num_tokens(self) -> int:
        """Total number of identifier tokens (the vocabulary the model adds)."""
        return sum(self.sizes)

    def token_strings(self) -> list[str]:
        """All identifier tokens, in position order then value order (contiguous per position)."""
        return [
            _token(position, value)
            for position, size in zip(self.positions, self.sizes)
            for value in range(size)
        ]

    def codes_to_tokens(self, codes: Iterable[Any]) -> list[str]:
        """One token string per code, after checking every code is in range."""
        values = [int(code) for code in codes]
        self.validate_codes(values)
        return [_token(position, value) for position, value in zip(self.positions, values)]

    def codes_to_string(self, codes: Iterable[Any]) -> str:
        """`[12, 3, 7, 21, 0]` → `"<id1_12><id2_3><id3_7><id4_21><id5_0>"` (accepts a 1-d tensor too)."""
        return "".join(self.codes_to_tokens(codes))

    def string_to_codes(self, identifier: str) -> list[int]:
        """Inverse of `codes_to_string`; raises `ValueError` on any malformed or out-of-range string."""
        if not isinstance(identifier, str):
            raise ValueError(f"identifier must be a str, got {type(identifier).__name__}")
        text = identifier.strip()
        matches = list(_TOKEN_PATTERN.finditer(text))
        if "".join(match.group(0) for match in matches) != text:
            raise ValueError(f"malformed identifier {identifier!r}: expected tokens like '<id1_12>' only")
        found = [match.group(1) for match in matches]
        if found != self.positions:
            raise ValueError(
                f"malformed identifier {identifier!r}: positions {found} != expected {self.positions}"
            )
        codes = [int(match.group(2)) for match in matches]
        self.validate_codes(codes)
        return codes

    def validate_codes(self, codes: Sequence[int]) -> None:
        """Raise `ValueError` unless `codes` has one in-range value per position."""
        if len(codes) != self.length:
            raise ValueError(f"expected {self.length} codes ({self.positions}), got {len(codes)}: {codes}")
        for position, size, value in zip(self.positions, self.sizes, codes):
            if not 0 <= value < size:
                raise ValueError(f"code {value} out of range [0, {size}) at position {position}")

    def token_id(self, position_index: int, value: int) -> int:
        """Index of a token in `token_strings()` (add the tokenizer's first identifier id)."""
        return self.offsets[position_index] + value

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable dict; inverse of `from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SigmaIdentifierLayout:
        """Build a layout from `to_dict()` output; unknown keys are an error."""
        unknown = sorted(set(values) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
        return cls(**values)


def _token(position: str, value: int) -> str:
    return f"<id{position}_{value}>"


__all__ = ["SigmaIdentifierLayout"]
