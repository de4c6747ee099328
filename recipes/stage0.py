"""Stage 0: corpus → frozen-encoder features → hierarchical identifiers → codebook folder.

    python recipes/stage0.py --config recipes/configs/tiny-shapes.yaml
    python recipes/stage0.py --config recipes/configs/tiny-shapes.yaml --k1 16 --output_dir outputs/k16

The YAML holds one section per stage; this recipe reads `stage0:`. Flags override the YAML, and unknown
keys or flags are an error. With `--features_dir` (written by `recipes/extract_features.py`, e.g. with
jina-embeddings-v4 in its own environment) the encoder is not loaded. The output folder (see `modeling_sigma/identifiers/storage.py`) holds the codebook
dataset, the quantizer and `stage0_config.json` with the statistics printed at the end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
from transformers import HfArgumentParser

from modeling_sigma.data.corpus import COLOURS, EMBEDDED_CORPUS_NAME, SHAPES, get_split, load_corpus
from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig
from modeling_sigma.identifiers.encoders import encode_split, load_encoder
from modeling_sigma.identifiers.precomputed import load_split_features
from modeling_sigma.training.recipe_config import parse_recipe_args

SECTION = "stage0"
logger = logging.getLogger(__name__)


@dataclass
class Stage0Arguments:
    """Data and output settings of stage 0 (the identifier settings are `SigmaIdentifierBuilderConfig`)."""

    corpus: str = field(default=EMBEDDED_CORPUS_NAME, metadata={"help": "load_corpus name, folder or Hub id"})
    encoder: str = field(default="tiny-clip", metadata={"help": "load_encoder name or path (frozen)"})
    cache_dir: str = field(default="outputs/cache", metadata={"help": "corpus, encoder and feature cache"})
    image_root: str | None = field(
        default=None, metadata={"help": "COCO Karpathy: local folder of COCO images"}
    )
    fit_splits: list[str] = field(
        default_factory=lambda: ["train", "test"], metadata={"help": "indexed at fit"}
    )
    assign_splits: list[str] = field(
        default_factory=list, metadata={"help": "added afterwards with assign()"}
    )
    features_dir: str | None = field(
        default=None,
        metadata={
            "help": "precomputed image features (recipes/extract_features.py); the encoder is not loaded"
        },
    )
    output_dir: str = field(default="outputs/tiny-shapes/stage0", metadata={"help": "stage-0 folder"})
    random_identifiers: bool = field(
        default=False, metadata={"help": "ablation: shuffle the identifiers across images (no semantics)"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "upload the folder to hub_repo_id"})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Hub dataset repo for push_to_hub"})


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((Stage0Arguments, SigmaIdentifierBuilderConfig))


def parse_args(argv: list[str] | None = None) -> tuple[Stage0Arguments, SigmaIdentifierBuilderConfig]:
    """`--config file.yaml` (its `stage0:` section) gives defaults; other flags override them."""
    return parse_recipe_args(make_parser(), SECTION, argv)


def caption_attributes(captions: list[list[str]]) -> list[set[str]]:
    """Shape and colour words named in an image's captions (TinyShapes), for the coherence statistic."""
    vocabulary = set(SHAPES) | set(COLOURS)
    return [
        {word for caption in image for word in caption.lower().split() if word in vocabulary}
        for image in captions
    ]


def split_features(script_args: Stage0Arguments, corpus, encoder, splits: list[str]):
    """Stacked features, image ids and captions of several splits."""
    features, image_ids, captions = [], [], []
    for split in splits:
        dataset = get_split(corpus, split)
        if script_args.features_dir:
            features.append(load_split_features(script_args.features_dir, split, dataset["image_id"]))
        else:
            features.append(
                encode_split(encoder, dataset, script_args.corpus, split, cache_dir=script_args.cache_dir)
            )
        image_ids.extend(dataset["image_id"])
        captions.extend(dataset["captions"])
    return np.concatenate(features), image_ids, captions


def main(script_args: Stage0Arguments, builder_config: SigmaIdentifierBuilderConfig) -> dict:
    # ----- data and features -----
    extra = {"image_root": script_args.image_root} if script_args.image_root else {}
    corpus = load_corpus(script_args.corpus, cache_dir=script_args.cache_dir, **extra)
    encoder = None
    if not script_args.features_dir:  # tiny-clip: the one trained on this corpus (cached by its content)
        encoder = load_encoder(
            script_args.encoder, cache_dir=script_args.cache_dir, corpus=script_args.corpus
        )
    features, image_ids, captions = split_features(script_args, corpus, encoder, script_args.fit_splits)
    source = f"features in {script_args.features_dir}" if encoder is None else encoder.name
    print(f"encoded {len(image_ids)} images from {script_args.fit_splits} with {source}: {features.shape}")

    # ----- identifiers -----
    attributes = caption_attributes(captions) if script_args.corpus == EMBEDDED_CORPUS_NAME else None
    builder = SigmaIdentifierBuilder(builder_config)
    builder.fit(features, image_ids, attributes=attributes)
    if script_args.assign_splits:
        new_features, new_ids, _ = split_features(script_args, corpus, encoder, script_args.assign_splits)
        builder.assign(new_features, new_ids)

    if script_args.random_identifiers:
        permutation = np.random.default_rng(builder_config.seed).permutation(len(builder.codes))
        builder.codes = builder.codes[permutation]
        print("ablation: identifiers shuffled across images")

    # ----- save / push -----
    builder.save(script_args.output_dir)
    statistics = builder.statistics()
    print(json.dumps(statistics, indent=2))
    print(f"stage-0 folder: {script_args.output_dir}")
    if script_args.push_to_hub:
        if not script_args.hub_repo_id:
            raise ValueError("--push_to_hub needs --hub_repo_id")
        builder.push_to_hub(script_args.hub_repo_id)
    return statistics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(*parse_args())
