"""Memory of a stage-1 dataset over Flickr-sized JPEGs: examples name images by row, the collator decodes them.

    python benchmarks/bench_stage_data.py                      # 30,000 images, every row collated (~10 min)
    python benchmarks/bench_stage_data.py --collate-rows 2000  # the dataset over 30,000, 2,000 rows collated

Writes `--distinct` different 500×375 JPEGs (quality 90, photo-like noise, ~100 KB each) and hard-links them to
`--images` files, so the folder holds 30,000 image files on disk at the cost of a few; every file is opened and
decoded on its own. Builds the corpus split over those paths, the stage-1 examples, the training dataset
(`to_dataset`) and iterates `SigmaCollator` over it with the real Qwen2.5-VL image processor, batch 8. Prints the
peak resident memory (VmHWM) after each phase and what a list of decoded images would hold.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rehearse_model import FLICKR_SIZE, draw_jpeg, real_image_processor  # noqa: E402

from modeling_sigma.modeling.configuration_sigma import SigmaConfig  # noqa: E402
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout  # noqa: E402
from modeling_sigma.modeling.processing_sigma import SigmaProcessor  # noqa: E402
from modeling_sigma.training.backbone import add_identifier_tokens, build_tokenizer  # noqa: E402
from modeling_sigma.training.collator import SigmaCollator  # noqa: E402
from modeling_sigma.training.examples import memorization_examples, to_dataset  # noqa: E402


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries a parent's peak into it across
    fork + exec, so a benchmark started by a large process would report that process's peak."""
    with open("/proc/self/status") as stream:
        kib = next(int(line.split()[1]) for line in stream if line.startswith("VmHWM:"))
    return kib * 1024 / 1e9


def write_images(folder: str, count: int, distinct: int) -> list[str]:
    rng, originals = random.Random(0), []
    for index in range(distinct):
        path = os.path.join(folder, f"original-{index:03d}.jpg")
        draw_jpeg(path, rng.choice(["red", "green", "blue"]), rng.choice(["circle", "square"]), rng)
        originals.append(path)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"{index:06d}.jpg")
        os.link(originals[index % distinct], path)
        paths.append(path)
    return paths


def measure(folder: str, count: int, distinct: int, collate_rows: int | None, batch: int = 8) -> dict:
    started, figures = time.time(), {"images": count, "distinct_jpegs": distinct}
    paths = write_images(folder, count, distinct)
    figures["jpeg_bytes_mean"] = sum(os.path.getsize(p) for p in paths[:distinct]) // distinct
    split = datasets.Dataset.from_dict(
        {"image": paths, "image_id": [f"{i:06d}" for i in range(count)]}
    ).cast_column("image", datasets.Image())
    layout = SigmaIdentifierLayout(k1=64, k2=32, k3=16, k4=32, num_subspaces=1, suffix_size=64)
    identifiers = {image_id: "<id1_0><id2_0><id3_0><id4_0><id5_0>" for image_id in split["image_id"]}
    examples = memorization_examples([split], identifiers)
    dataset = to_dataset(examples)
    figures["peak_rss_gb_after_dataset"] = round(peak_rss_gb(), 3)
    tokenizer = build_tokenizer(["a photo of a red circle"] * 10)
    add_identifier_tokens(tokenizer, layout)
    processor = SigmaProcessor(image_processor=real_image_processor(), tokenizer=tokenizer)
    collator = SigmaCollator(
        processor, SigmaConfig(identifier_layout=layout.to_dict()), image_sources=[split]
    )
    rows = len(dataset) if collate_rows is None else min(collate_rows, len(dataset))
    tokens = 0
    for start in range(0, rows, batch):
        tokens += collator([dataset[i] for i in range(start, min(start + batch, rows))])["input_ids"].numel()
    figures.update(
        collated_rows=rows,
        collated_tokens=tokens,
        peak_rss_gb=round(peak_rss_gb(), 3),
        decoded_list_gb=round(count * FLICKR_SIZE[0] * FLICKR_SIZE[1] * 3 / 1e9, 2),
        seconds=round(time.time() - started, 1),
    )
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--collate-rows", type=int, default=None, help="rows to collate (default: all)")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sigma-jpegs-") as folder:
        figures = measure(folder, args.images, args.distinct, args.collate_rows)
    for name, value in figures.items():
        print(f"{name:28s} {value}")
    if args.output:
        with open(args.output, "w") as stream:
            json.dump(figures, stream, indent=2)
    return figures


if __name__ == "__main__":
    main()
