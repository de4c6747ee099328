"""Query latency of constrained retrieval against the size of the identifier index.

    python benchmarks/bench_retrieval.py --sizes 1000 100000 1000000 --repeats 15

Builds the embedded tiny SIGMA model (default identifier layout 64/32/16/32/64), installs 1K / 100K / 1M random
identifiers and times `model.retrieve(queries, k=10)` for batch 1 and batch 32. Target: p50 at 1M <= 1.1 x p50
at 1K (the trie lookup must not grow with the index). `--engine generate` times transformers' beam search path
instead of the identifier engine, `--scoring restricted` the engine's restricted mode; the side-by-side table of
every path is `benchmarks/bench_decoding.py`.
"""

import argparse
import statistics
import time

import torch

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.training.backbone import build_sigma_model

FALLBACK_CAPTIONS = [
    "a red circle on a blue background",
    "two green squares next to a yellow star",
    "a small black cross left of a white diamond",
    "an orange triangle above a purple circle",
]


def random_identifiers(num: int, sizes: list[int], seed: int = 0) -> torch.Tensor:
    """`num` distinct random identifiers (rows of codes)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, len(sizes), dtype=torch.long)
    while codes.shape[0] < num:
        extra = torch.stack([torch.randint(0, s, (num,), generator=generator) for s in sizes], dim=1)
        codes = torch.unique(torch.cat([codes, extra]), dim=0)
    return codes[torch.randperm(codes.shape[0], generator=generator)[:num]]


def load_captions() -> list[str]:
    try:
        from modeling_sigma.data.corpus import load_corpus

        captions = load_corpus("tiny-shapes")["train"]["captions"]
        return [caption for image_captions in captions for caption in image_captions]
    except Exception as error:  # the corpus module is optional for this benchmark
        print(f"(TinyShapes unavailable: {error}; using built-in captions)")
        return FALLBACK_CAPTIONS


INDEX_ATTRIBUTES = ("index",)  # what `set_index` installs on the model (one `SigmaIndex`)


def interleaved_p50(
    model, indexes: dict, queries: list[str], repeats: int, k: int, **retrieve_kwargs
) -> dict[int, float]:
    """Median latency (ms) per index size; sizes alternate every repeat so machine load hits them all alike.

    `retrieve_kwargs` go to `model.retrieve` (e.g. `engine="generate"` or `scoring="restricted"`)."""
    timings = {size: [] for size in indexes}
    for repeat in range(repeats + 1):
        for size, state in indexes.items():
            for name, value in state.items():
                setattr(model, name, value)
            start = time.perf_counter()
            model.retrieve(queries, k=k, batch_size=len(queries), **retrieve_kwargs)
            if repeat:  # the first round is warm-up
                timings[size].append(time.perf_counter() - start)
    return {size: statistics.median(values) * 1000 for size, values in timings.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", choices=["sigma", "generate"], default="sigma")
    parser.add_argument("--scoring", choices=["exact", "restricted"], default="exact")
    args = parser.parse_args()
    options = {"engine": args.engine, "scoring": args.scoring}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = SigmaIdentifierLayout()
    model, _ = build_sigma_model("embedded", layout, captions=load_captions())
    model.eval()
    queries = [
        f"a {colour} {shape}"
        for colour in ("red", "green", "blue", "yellow")
        for shape in "circle square triangle star cross diamond star circle".split()
    ]
    indexes, bytes_per_id = {}, {}
    for size in args.sizes:
        model.set_index(random_identifiers(size, layout.sizes), [f"img{i}" for i in range(size)])
        indexes[size] = {name: getattr(model, name) for name in INDEX_ATTRIBUTES}
        bytes_per_id[size] = model.index.trie.nbytes / size
    single = interleaved_p50(model, indexes, queries[:1], args.repeats, args.k, **options)
    batch = interleaved_p50(model, indexes, queries[:32], max(3, args.repeats // 3), args.k, **options)
    rows = [(size, bytes_per_id[size], single[size], batch[size]) for size in args.sizes]
    print(f"\nretrieve(engine={args.engine!r}, scoring={args.scoring!r})")
    print(f"\n{'identifiers':>12} | {'trie B/id':>9} | {'p50 batch 1 (ms)':>16} | {'p50 batch 32 (ms)':>17}")
    print("-" * 65)
    for size, bytes_per_id, single, batch in rows:
        print(f"{size:>12,} | {bytes_per_id:>9.1f} | {single:>16.1f} | {batch:>17.1f}")
    base = rows[0]
    for size, _, single, batch in rows[1:]:
        print(
            f"ratio {size:,} / {base[0]:,}: batch 1 {single / base[2]:.2f}x, batch 32 {batch / base[3]:.2f}x"
        )


if __name__ == "__main__":
    main()
