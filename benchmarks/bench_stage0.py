"""Stage-0 and trie benchmark on synthetic features (CPU).

    python benchmarks/bench_stage0.py                      # 100K and 1M identifiers, 512-d (about 10 min)
    python benchmarks/bench_stage0.py --sizes 20000 --dim 64 # quick run

For every size it prints: stage-0 build time (fit of all levels), trie build time, trie bytes per identifier,
and the constrained-decoding mask time per step for `--queries` × `--beams` prefixes, comparing
`SigmaTrieLogitsProcessor` (and the raw `allowed_mask`) with transformers' `PrefixConstrainedLogitsProcessor`
over a Python dict-of-dicts trie (GENRE style), both in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from transformers import PrefixConstrainedLogitsProcessor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_sigma.stage0_identifiers import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig  # noqa: E402
from modeling_sigma.trie import SigmaIdentifierTrie, SigmaTrieLogitsProcessor  # noqa: E402

BASE_VOCAB = 1000  # identifier tokens start after a pretend text vocabulary
EOS_TOKEN_ID = 2
PROMPT_LENGTH = 8


def synthetic_features(num: int, dim: int, seed: int = 0) -> np.ndarray:
    """Hierarchical topics (64 × 32 sub-topics) plus 256 shared styles and noise, L2-normalised, float32."""
    rng = np.random.default_rng(seed)

    def directions(count: int) -> np.ndarray:
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    topics, subtopics, styles = directions(64), directions(64 * 32), directions(256)
    features = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, 100_000):
        size = min(100_000, num - start)
        topic, sub, style = rng.integers(0, 64, size), rng.integers(0, 32, size), rng.integers(0, 256, size)
        chunk = topics[topic] + 0.6 * subtopics[topic * 32 + sub] + 0.4 * styles[style]
        chunk += (0.6 / np.sqrt(dim)) * rng.standard_normal((size, dim)).astype(np.float32)
        features[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return features


def build_dict_trie(token_rows: list[list[int]]) -> dict:
    """GENRE-style nested dict trie over token ids."""
    root: dict = {}
    for row in token_rows:
        node = root
        for token in row:
            node = node.setdefault(token, {})
    return root


def dict_prefix_fn(root: dict):
    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for token in sent[PROMPT_LENGTH:].tolist():
            node = node.get(token)
            if node is None:
                return [EOS_TOKEN_ID]
        return list(node) if node else [EOS_TOKEN_ID]

    return allowed


def time_per_step(processor, input_ids_by_depth: list[torch.Tensor], vocab: int, repeats: int) -> list[float]:
    """Seconds of one processor call at every decode depth."""
    seconds = []
    for input_ids in input_ids_by_depth:
        scores = torch.zeros(input_ids.shape[0], vocab)
        processor(input_ids, scores)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            processor(input_ids, scores)
        seconds.append((time.perf_counter() - start) / repeats)
    return seconds


def bench_size(num: int, args: argparse.Namespace) -> None:
    features = synthetic_features(num, args.dim)
    config = SigmaIdentifierBuilderConfig(
        suffix_size=args.suffix_size, semi_nmf_iterations=args.semi_nmf_iterations
    )
    builder = SigmaIdentifierBuilder(config)
    start = time.perf_counter()
    codes = builder.fit(features, [str(i) for i in range(num)])
    build_s = time.perf_counter() - start
    del features
    stats = builder.statistics()
    layout = builder.layout

    codes_t = torch.from_numpy(codes)
    start = time.perf_counter()
    trie = SigmaIdentifierTrie.from_codes(codes_t, layout.sizes)
    trie_s = time.perf_counter() - start

    offsets = torch.tensor(layout.offsets) + BASE_VOCAB
    token_rows = (codes_t + offsets).tolist()
    start = time.perf_counter()
    dict_trie = build_dict_trie(token_rows)
    dict_s = time.perf_counter() - start

    rng = np.random.default_rng(1)
    batch = args.queries * args.beams
    picked = codes_t[torch.from_numpy(rng.choice(num, batch, replace=False))] + offsets  # (batch, L)
    prompt = torch.full((batch, PROMPT_LENGTH), 5, dtype=torch.long)
    input_ids_by_depth = [torch.cat([prompt, picked[:, :depth]], dim=1) for depth in range(layout.length + 1)]
    vocab = BASE_VOCAB + layout.num_tokens

    sigma = SigmaTrieLogitsProcessor(
        trie, offsets.tolist(), PROMPT_LENGTH, EOS_TOKEN_ID, num_beams=args.beams
    )
    reference = PrefixConstrainedLogitsProcessor(dict_prefix_fn(dict_trie), num_beams=args.beams)
    for input_ids in input_ids_by_depth:  # both must allow exactly the same tokens
        scores = torch.zeros(batch, vocab)
        assert torch.equal(sigma(input_ids, scores), reference(input_ids, scores)), "processors disagree"
    sigma_step = time_per_step(sigma, input_ids_by_depth, vocab, args.repeats)
    dict_step = time_per_step(reference, input_ids_by_depth, vocab, max(1, args.repeats // 5))
    mask_step = np.mean(
        [_time_mask(trie, picked - offsets, depth, args.repeats) for depth in range(layout.length)]
    )
    per_depth = " ".join(f"{a * 1e3:.1f}/{b * 1e3:.1f}" for a, b in zip(sigma_step, dict_step))
    sigma_step, dict_step = float(np.mean(sigma_step)), float(np.mean(dict_step))

    print(f"\n== {num:,} identifiers, dim {args.dim}, layout {layout.sizes} ==")
    print(f"stage-0 build (fit all levels)       : {build_s:8.1f} s")
    print(
        f"distinct prefixes / longest suffix   : {stats['distinct_prefixes']:,} / {stats['longest_suffix']}"
    )
    print(f"SigmaIdentifierTrie build            : {trie_s:8.3f} s   (dict-of-dicts: {dict_s:.2f} s)")
    print(
        f"trie bytes per identifier            : {trie.nbytes / num:8.1f} B   (total {trie.nbytes / 2**20:.1f} MiB)"
    )
    print(f"mask per decode step, {args.queries}x{args.beams} beams:")
    print(f"  SigmaTrieLogitsProcessor           : {sigma_step * 1e3:8.3f} ms")
    print(f"  allowed_mask only                  : {mask_step * 1e3:8.3f} ms")
    print(f"  PrefixConstrained + dict trie      : {dict_step * 1e3:8.3f} ms")
    print(f"  speed-up (processor vs processor)  : {dict_step / sigma_step:8.1f} x")
    print(f"  per depth 0..{layout.length}, ms sigma/dict     : {per_depth}")


def _time_mask(trie: SigmaIdentifierTrie, codes: torch.Tensor, depth: int, repeats: int) -> float:
    prefixes = codes[:, :depth]
    trie.allowed_mask(prefixes)
    start = time.perf_counter()
    for _ in range(repeats):
        trie.allowed_mask(prefixes)
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--suffix_size", type=int, default=4096, help="synthetic data crowds some prefixes")
    parser.add_argument("--semi_nmf_iterations", type=int, default=20)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for num in args.sizes:
        bench_size(num, args)


if __name__ == "__main__":
    main()
