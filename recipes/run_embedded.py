"""The embedded end-to-end job: everything runs offline on 2 CPU cores, nothing is downloaded.

    python recipes/run_embedded.py            # README command 1 runs this through `make e2e`
    python recipes/run_embedded.py --smoke    # a very small corpus, for a quick check

Steps: TinyShapes corpus → tiny CLIP encoder → two-tower baseline → results table
(printed, and written to `results/embedded.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_sigma.corpus import EMBEDDED_CORPUS_NAME, TinyShapesConfig, caption_pairs, load_corpus  # noqa: E402
from modeling_sigma.encoders import encode_split, load_encoder  # noqa: E402
from modeling_sigma.tiny_clip import TinyClipConfig, get_tiny_clip  # noqa: E402
from modeling_sigma.two_tower import evaluate_two_tower  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/embedded", help="checkpoints, caches, codebooks")
    parser.add_argument("--results", default="results/embedded.json", help="where the results table is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny corpus and schedules, for a quick check")
    return parser.parse_args(argv)


def format_table(rows: dict[str, dict[str, float]], chance: float) -> str:
    lines = ["| system | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for name, metrics in rows.items():
        cells = " | ".join(f"{100 * metrics[f'recall@{k}']:.1f}" for k in (1, 5, 10))
        lines.append(f"| {name} | {cells} |")
    lines.append(f"| chance (1/test images) | {100 * chance:.1f} | {500 * chance:.1f} | {1000 * chance:.1f} |")
    return "\n".join(lines)


def run_two_tower(corpus, encoder_name: str, cache_dir: str) -> dict[str, float]:
    encoder = load_encoder(encoder_name)
    test = corpus["test"]
    image_features = encode_split(encoder, test, EMBEDDED_CORPUS_NAME, "test", cache_dir)
    query_features = encode_split(encoder, test, EMBEDDED_CORPUS_NAME, "test", cache_dir, kind="captions")
    _, owners = caption_pairs(test)
    ids = test["image_id"]
    return evaluate_two_tower(image_features, ids, query_features, [ids[o] for o in owners])


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    cache_dir = os.path.join(args.output_dir, "cache")
    corpus_config = TinyShapesConfig(seed=args.seed)
    clip_config = TinyClipConfig(seed=args.seed)
    if args.smoke:
        corpus_config = TinyShapesConfig(num_train=200, num_test=50, num_unseen=20, seed=args.seed)
        clip_config = TinyClipConfig(epochs=2, batch_size=32, seed=args.seed)

    print(f"[1/3] corpus: TinyShapes {corpus_config}")
    corpus = load_corpus(EMBEDDED_CORPUS_NAME, cache_dir=cache_dir, tiny_shapes=corpus_config)
    print(f"[2/3] encoder: tiny CLIP {clip_config}")
    encoder_path = get_tiny_clip(cache_dir, corpus_config, clip_config)
    print("[3/3] two-tower baseline on the test captions")
    rows = {"two-tower (tiny CLIP + faiss)": run_two_tower(corpus, encoder_path, cache_dir)}

    chance = 1 / len(corpus["test"])
    table = format_table(rows, chance)
    print(f"\nText→image retrieval on TinyShapes test ({len(corpus['test'])} images, "
          f"{5 * len(corpus['test'])} queries)\n{table}")
    report = {
        "corpus": vars(corpus_config),
        "test_images": len(corpus["test"]),
        "chance_recall@1": chance,
        "results": rows,
        "wall_time_s": round(time.time() - start, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as stream:
        json.dump(report, stream, indent=2)
    print(f"\nwrote {args.results} in {report['wall_time_s']} s")
    return report


if __name__ == "__main__":
    main()
