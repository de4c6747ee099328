"""Throughput of open-set indexing: images per second of `open_set.index.add_images` (generate mode) on CPU.

    python benchmarks/bench_index.py --num-images 256 --rounds 3 --threads 1

Builds the embedded tiny SIGMA model with the default identifier layout (64/32/16/32/64), renders `num_images`
TinyShapes images, and times `add_images(model.index, ...)` in batches (then removes them and repeats): image loading, processing, constrained generation of
levels 1..L-1, fresh suffixes and the update of the model's trie. Target: >= 100 images/s. The untrained
model writes few distinct prefixes, so far more than 256 images in one round run out of suffixes (64).
One thread is fastest on a loaded 2-core machine (two threads were 5x slower there).
"""

import argparse
import time

import torch

from modeling_sigma.data.corpus import TinyShapesConfig, generate_tiny_shapes
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.modeling.index import SigmaIndex
from modeling_sigma.open_set.index import add_images, remove_images
from modeling_sigma.training.backbone import build_sigma_model


def measure_insert_throughput(
    num_images: int = 256, rounds: int = 3, batch_size: int = 64, add_size: int = 128, threads: int = 1
) -> dict:
    """Wall and CPU time of `rounds` × (add `num_images` in calls of `add_size`, then remove them)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, _ = build_sigma_model("embedded", SigmaIdentifierLayout())
    model.eval()
    corpus = generate_tiny_shapes(TinyShapesConfig(num_train=1, num_test=num_images, num_unseen=1))
    images, image_ids = corpus["test"]["image"], corpus["test"]["image_id"]
    index = model.index = SigmaIndex.from_model(model)
    add_images(index, model, images[:8], [f"warmup-{i}" for i in range(8)], batch_size=batch_size)
    elapsed = cpu = 0.0
    for _ in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        for first in range(0, len(images), add_size):
            chunk = slice(first, first + add_size)
            add_images(index, model, images[chunk], image_ids[chunk], batch_size=batch_size)
        elapsed, cpu = elapsed + time.perf_counter() - start, cpu + time.process_time() - cpu_start
        distinct = len(set(map(tuple, index.codes[:, :-1].tolist())))
        remove_images(index, image_ids, model=model)
    total = rounds * len(images)
    return {
        "images": total,
        "seconds": elapsed,
        "images_per_second": total / elapsed,
        "images_per_cpu_second": total / cpu,
        "threads": threads,
        "distinct_prefixes_per_round": distinct,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="add all images, remove them, repeat")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--add-size", type=int, default=128, help="images per add_images call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    figures = measure_insert_throughput(
        args.num_images, args.rounds, args.batch_size, args.add_size, args.threads
    )
    print(
        f"indexed {figures['images']} images in {figures['seconds']:.2f} s: {figures['images_per_second']:.1f} images/s"
    )
    # on a shared machine wall time depends on the load; CPU time per image does not (much)
    print(
        f"CPU time over {args.threads} threads: {figures['images_per_cpu_second']:.1f} images per CPU-second"
    )
    print(
        f"{args.num_images} images per round got {figures['distinct_prefixes_per_round']} distinct prefixes"
    )


if __name__ == "__main__":
    main()
