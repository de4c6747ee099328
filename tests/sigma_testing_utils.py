"""Tiny SIGMA model shared by the modeling and processing tests (no downloads)."""

from pathlib import Path

import torch

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.training.backbone import build_sigma_model

REPO_ROOT = Path(__file__).resolve().parent.parent

CAPTIONS = [
    "a red circle on a blue background",
    "two green squares next to a yellow star",
    "a small black cross left of a white diamond",
    "an orange triangle above a purple circle",
] * 3
LAYOUT = SigmaIdentifierLayout(k1=4, k2=3, k3=2, k4=3, num_subspaces=1, suffix_size=3)
TINY_SIZES = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vision_hidden_size": 32, "vision_depth": 2}


def tiny_codes(num: int = 30, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, size, (num,), generator=generator) for size in LAYOUT.sizes], dim=1)
    return torch.unique(codes, dim=0)


def build_tiny_model(lambda_ssp: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    codes = tiny_codes()
    image_ids = [f"img{i:03d}" for i in range(codes.shape[0])]
    model, processor = build_sigma_model(
        "embedded",
        LAYOUT,
        codes,
        image_ids,
        CAPTIONS,
        similarity_hidden_size=32,
        lambda_ssp=lambda_ssp,
        **TINY_SIZES,
    )
    return model.eval(), processor, codes, image_ids


def assert_same_hits(expected, actual):
    """Same identifiers and image ids in the same order, and the same scores and similarities (to 1e-5)."""
    assert len(expected) == len(actual)
    for reference, hits in zip(expected, actual):
        assert [hit["identifier"] for hit in hits] == [hit["identifier"] for hit in reference]
        assert [hit["image_id"] for hit in hits] == [hit["image_id"] for hit in reference]
        for name in ("score", "similarity"):
            torch.testing.assert_close(
                torch.tensor([hit[name] for hit in hits]),
                torch.tensor([hit[name] for hit in reference]),
                atol=1e-5,
                rtol=1e-5,
            )
