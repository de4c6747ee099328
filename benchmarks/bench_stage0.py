"""Stage-0 and trie benchmark on synthetic features (CPU).

    python benchmarks/bench_stage0.py                       # trie section, then stage-0 at 100K and 1M (~10 min)
    python benchmarks/bench_stage0.py --trie-only           # trie section alone (1M identifiers, < 2 min)
    python benchmarks/bench_stage0.py --sizes 20000 --dim 64 --skip-trie  # quick stage-0 run

Trie section (issue 3): `--trie-identifiers` unique identifiers generated directly (seeded) in the paper layout
64/32/16/32 + suffix 64 (distinct prefixes, suffixes 0, 1, ... per prefix as stage 0 assigns them), plus a
crowded large-suffix case (suffix 4096, up to 1393 identifiers per prefix, like the synthetic stage-0 build).
For `--queries` × `--beams` prefixes at every decode depth it times `SigmaTrieLogitsProcessor`, the raw
`allowed_mask`, and transformers' `PrefixConstrainedLogitsProcessor` over a Python dict-of-dicts trie (GENRE
style; its prefix function alone is shown too) on a tiny vocabulary and a Qwen-sized one (`--vocab-sizes`).
Times are per-call medians per depth; "mean" is their mean over all `len(sizes) + 1` decode steps.

Stage-0 section: for every `--sizes` it prints the stage-0 build time (fit of all levels), trie build time, trie
bytes per identifier, and the same processor comparison on the built identifiers.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import numpy as np
import torch
from transformers import PrefixConstrainedLogitsProcessor

from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig
from modeling_sigma.modeling.trie import SigmaIdentifierTrie, SigmaTrieLogitsProcessor

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


def dict_prefix_fn(root: dict, prompt_length: int = PROMPT_LENGTH, eos: int = EOS_TOKEN_ID):
    """transformers' reference constraint: a GENRE-style dict trie behind `prefix_allowed_tokens_fn`."""

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for token in sent[prompt_length:].tolist():
            node = node.get(token)
            if node is None:
                return [eos]
        return list(node) if node else [eos]

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


def paper_codes(num: int, sizes: list[int], seed: int = 0) -> torch.Tensor:
    """`num` unique identifiers: 90% distinct random prefixes, the rest as extra suffixes 1, 2, ... of them."""
    rng = np.random.default_rng(seed)
    prefix_space = int(np.prod(sizes[:-1]))
    num_prefixes = min(prefix_space, max(1, (num * 9) // 10))
    prefixes = rng.choice(prefix_space, num_prefixes, replace=False)
    counts = 1 + np.bincount(rng.integers(0, num_prefixes, num - num_prefixes), minlength=num_prefixes)
    return _rows(prefixes, np.minimum(counts, sizes[-1]), sizes)


def crowded_codes(num: int, sizes: list[int], longest: int = 1393, seed: int = 0) -> torch.Tensor:
    """`num` unique identifiers on heavy-tailed prefix sizes (median 2, longest `longest` suffixes)."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(longest, (rng.pareto(1.1, num) * 1.5).astype(np.int64) + 1)
    counts[0] = longest
    stop = int(np.searchsorted(np.cumsum(counts), num))
    counts = counts[: stop + 1]
    counts[-1] -= int(counts.sum()) - num
    prefixes = rng.choice(int(np.prod(sizes[:-1])), counts.size, replace=False)
    return _rows(prefixes, counts, sizes)


def _rows(prefixes: np.ndarray, counts: np.ndarray, sizes: list[int]) -> torch.Tensor:
    """Code rows for prefix keys `prefixes`, each with suffixes `0 .. counts - 1`."""
    keys = np.repeat(prefixes, counts)
    suffix = np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = [suffix]
    for size in reversed(sizes[:-1]):
        columns.append(keys % size)
        keys = keys // size
    return torch.from_numpy(np.stack(columns[::-1], axis=1)).long()


CLOCK = time.perf_counter  # `--clock cpu` switches to process CPU time (robust on a loaded machine)


def _median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = CLOCK()
        call()
        times.append(CLOCK() - start)
    return float(np.median(times)) * 1e3


def _call_rows(prefix_fn, input_ids: torch.Tensor) -> None:
    for row in input_ids:
        prefix_fn(0, row)


def bench_trie(codes: torch.Tensor, sizes: list[int], label: str, args: argparse.Namespace) -> dict:
    """Per decode depth: SigmaTrieLogitsProcessor and allowed_mask vs the dict-trie PrefixConstrained processor.

    Prints the table and returns `{"bytes_per_identifier", "build_s", "dict_build_s", "ms_per_step": {vocab:
    {method: mean ms over the decode steps}}}`."""
    num, length = codes.shape
    start = time.perf_counter()
    trie = SigmaIdentifierTrie.from_codes(codes, sizes)
    trie_s = time.perf_counter() - start
    assert len(trie) == num, "identifiers must be unique"
    offsets = torch.tensor([sum(sizes[:p]) for p in range(length)]) + BASE_VOCAB
    start = time.perf_counter()
    dict_trie = build_dict_trie((codes + offsets).tolist())
    dict_s = time.perf_counter() - start

    batch = args.queries * args.beams
    picked = codes[torch.from_numpy(np.random.default_rng(1).choice(num, batch, replace=False))]
    prompt = torch.full((batch, PROMPT_LENGTH), 5, dtype=torch.long)
    depths = range(length + 1)
    input_ids = [torch.cat([prompt, (picked + offsets)[:, :depth]], dim=1) for depth in depths]
    sigma = SigmaTrieLogitsProcessor(
        trie, offsets.tolist(), PROMPT_LENGTH, EOS_TOKEN_ID, num_beams=args.beams
    )
    prefix_fn = dict_prefix_fn(dict_trie)
    reference = PrefixConstrainedLogitsProcessor(prefix_fn, num_beams=args.beams)

    print(f"\n== trie: {num:,} identifiers, layout {sizes} ({label}), {args.queries}x{args.beams} beams ==")
    print(f"build: SigmaIdentifierTrie {trie_s:.2f} s, dict-of-dicts {dict_s:.2f} s")
    print(f"trie bytes per identifier: {trie.nbytes / num:.1f} B (total {trie.nbytes / 2**20:.1f} MiB)")
    header = " ".join(f"{f'd{depth}':>7}" for depth in depths)
    print(f"{'vocab':>8}  {'method':<32} {'mean ms':>8}  {header}  speed-up vs dict processor")
    mask_ms = [_median_ms(partial(trie.allowed_mask, picked[:, :depth]), args.repeats) for depth in depths]
    fn_ms = [_median_ms(partial(_call_rows, prefix_fn, ids), max(3, args.repeats // 10)) for ids in input_ids]
    figures = {"bytes_per_identifier": trie.nbytes / num, "build_s": trie_s, "dict_build_s": dict_s}
    figures["ms_per_step"] = {}
    for vocab in args.vocab_sizes:
        vocab = max(vocab, BASE_VOCAB + sum(sizes))
        sigma_ms, dict_ms = [], []
        for ids in input_ids:
            scores = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0))
            assert torch.equal(sigma(ids, scores), reference(ids, scores)), "processors disagree"
            slow = vocab > 100_000
            sigma_ms.append(_median_ms(partial(sigma, ids, scores), 5 if slow else args.repeats))
            dict_repeats = 3 if slow else max(3, args.repeats // 10)
            dict_ms.append(_median_ms(partial(reference, ids, scores), dict_repeats))
            del scores
        base = float(np.mean(dict_ms))
        rows = [
            ("SigmaTrieLogitsProcessor", sigma_ms),
            ("allowed_mask (no vocab)", mask_ms),
            ("dict prefix fn only (no vocab)", fn_ms),
            ("PrefixConstrained + dict trie", dict_ms),
        ]
        for name, times in rows:
            mean = float(np.mean(times))
            cells = " ".join(f"{t:7.3f}" for t in times)
            ratio = " ".join(f"{d / t:.0f}" for d, t in zip(dict_ms, times))
            print(f"{vocab:>8,}  {name:<32} {mean:8.3f}  {cells}  {base / mean:6.1f}x  (per depth {ratio})")
            figures["ms_per_step"].setdefault(vocab, {})[name] = mean
    return figures


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
    parser.add_argument("--trie-only", action="store_true", help="run only the trie section (< 2 min)")
    parser.add_argument("--skip-trie", action="store_true", help="run only the stage-0 section")
    parser.add_argument("--trie-identifiers", type=int, default=1_000_000)
    parser.add_argument(
        "--vocab-sizes", type=int, nargs="+", default=[0, 151_665], help="0: identifier tokens + 1000 only"
    )
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time")
    parser.add_argument("--no-crowded", action="store_true", help="skip the large-suffix trie case")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.clock} clock"
    )
    if not args.skip_trie:
        paper = [64, 32, 16, 32, 64]
        bench_trie(paper_codes(args.trie_identifiers, paper), paper, "paper", args)
        if not args.no_crowded:
            crowded = [64, 32, 16, 32, 4096]
            codes = crowded_codes(args.trie_identifiers, crowded)
            bench_trie(codes, crowded, "crowded suffixes, stage-0-like", args)
    if args.trie_only:
        return
    for num in args.sizes:
        bench_size(num, args)


if __name__ == "__main__":
    main()
