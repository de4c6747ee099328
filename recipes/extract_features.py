"""Stage 0, step 1 in its own environment: image features of a corpus, for `stage0.py --features_dir`.

jina-embeddings-v4's remote code needs peft, torchvision and transformers < 5.24, which this package does not
use. Run this file in the pinned environment of docs/REPRODUCE.md, with the repository on PYTHONPATH (not
installed: the package itself requires transformers >= 5):

    PYTHONPATH=. .venv-jina/bin/python recipes/extract_features.py --corpus nlphuji/flickr30k \
        --splits train validation test --output_dir outputs/flickr30k/features

It imports only `modeling_sigma.data` and `modeling_sigma.identifiers.{encoders,precomputed}` (argparse, no
HfArgumentParser), so it runs under the older transformers too.
"""

from __future__ import annotations

import argparse
import logging

from modeling_sigma.data.corpus import get_split, load_corpus
from modeling_sigma.identifiers.encoders import load_encoder
from modeling_sigma.identifiers.precomputed import extract_split_features


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="load_corpus name, folder or Hub id")
    parser.add_argument("--encoder", default="jinaai/jina-embeddings-v4", help="load_encoder name or path")
    parser.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    parser.add_argument("--output_dir", required=True, help="the features folder stage 0 reads")
    parser.add_argument("--image_root", default=None, help="COCO Karpathy: local folder of COCO images")
    parser.add_argument("--cache_dir", default="outputs/cache", help="corpus cache (the embedded corpus)")
    parser.add_argument("--batch_size", type=int, default=16, help="images per encoder call")
    return parser


def main(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    extra = {"image_root": args.image_root} if args.image_root else {}
    corpus = load_corpus(args.corpus, cache_dir=args.cache_dir, **extra)
    encoder = load_encoder(args.encoder)
    shapes = {}
    for split in args.splits:
        features = extract_split_features(
            encoder, get_split(corpus, split), args.output_dir, split, args.batch_size
        )
        shapes[split] = features.shape
        print(f"{split}: {features.shape} features from {encoder.name} → {args.output_dir}")
    return shapes


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main(make_parser().parse_args())
