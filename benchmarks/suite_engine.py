"""The decoding engine's part of `make bench` (benchmarks/run_suite.py): measurements from bench_decoding.py, in
the suite's report format, and their Markdown tables.

- latency: the engine's exact and restricted modes, `retrieve(engine="generate")` (the path before the engine)
  and transformers' beam search with `PrefixConstrainedLogitsProcessor` over a dict trie, interleaved, batch 1
  and 32, with the SIGMA index's bytes per image;
- steps: constraint + beam selection per decode step at 320 beams over 1M identifiers, at the tiny and at
  Qwen's 151,665-token vocabulary (`bench_decoding.run_steps`: every method followed by its beam selection);
- ann: faiss flat, HNSW and IVF-PQ search on synthetic embeddings, recall@10 against flat, bytes per image, and
  the corpus size where each gets slower than the engine (`bench_decoding.run_ann`).
"""

from __future__ import annotations

import json
import statistics

import bench_decoding

ENGINE_ROWS = {  # report key: bench_decoding method name
    "generative_ms": "engine exact",
    "restricted_ms": "engine restricted",
    "generate_path_ms": "generate (today)",
    "prefix_constrained_ms": "PrefixConstrained + dict trie",
}
LATENCY_COLUMNS = (  # (report key, column label) after the engine's exact mode, when the report has them
    ("generate_path_ms", "SIGMA-tiny via generate"),
    ("restricted_ms", "SIGMA-tiny restricted"),
    ("prefix_constrained_ms", "PrefixConstrained + dict trie"),
)
DICT_ROW, ENGINE_ROW = "PrefixConstrained + dict", "engine expand_beams"


def run_engine_latency(model, processor, sizes: list[int], repeats: int) -> dict:
    """p50 ms per batch and size of the four SIGMA paths (interleaved), and the index's bytes per image."""
    measured = bench_decoding.run_latency(model, processor, sizes, repeats)
    report = {key: {} for key in ENGINE_ROWS}
    for batch, rows in measured["ms"].items():
        for key, name in ENGINE_ROWS.items():
            report[key][str(batch)] = [rows[name][size]["p50"] for size in sizes]
    report["sigma_bytes_per_image"] = {
        str(size): parts for size, parts in measured["bytes_per_image"].items()
    }
    return report


def run_engine_steps(num_identifiers: int, repeats: int) -> dict:
    """Per-step constraint + beam selection of the engine and both logits processors, tiny and Qwen vocabulary."""
    steps = bench_decoding.run_steps(num_identifiers, 32, 10, repeats, [0, bench_decoding.QWEN_VOCAB])
    return {
        "identifiers": steps["identifiers"],
        "beams": steps["beams"],
        "ms_per_step": {str(vocab): methods for vocab, methods in steps["ms_per_step"].items()},
        "per_depth": {str(vocab): methods for vocab, methods in steps["per_depth"].items()},
    }


def run_engine_ann(sizes: list[int], dim: int, repeats: int, latency: dict) -> dict:
    """faiss flat / HNSW / IVF-PQ (search only), with crossovers against the engine's median exact latency."""
    engine_ms = {batch: statistics.median(times) for batch, times in latency["generative_ms"].items()}
    report = bench_decoding.run_ann(sizes, dim, repeats, engine_ms)
    return json.loads(json.dumps(report))  # string keys, as read back from benchmarks.json


# ------------------------------------------------------------------------------------------------- tables
def steps_table(steps: dict) -> list[str]:
    """Per-step table: ms at both vocabularies, large / tiny ratio, and speed-up over the dict-trie processor."""
    vocabs = list(steps["ms_per_step"])
    tiny, large = vocabs[0], vocabs[-1]
    table = steps["ms_per_step"]
    lines = [
        f"Constraint + beam selection per decode step ({steps['beams']} beams = 32 queries × 10, "
        f"{steps['identifiers']:,} identifiers; every method followed by its beam selection; LM-head rows "
        "are model cost, for scale):",
        "",
        f"| method | vocab {int(tiny):,} (ms) | vocab {int(large):,} (ms) | large / tiny | "
        f"vs {DICT_ROW} at {int(tiny):,} | at {int(large):,} |",
        "|---|---|---|---|---|---|",
    ]
    for method in table[tiny]:
        ms_tiny, ms_large = table[tiny][method], table[large][method]
        if method.startswith("LM head"):
            speedups = "– | –"
        else:
            speedups = f"{table[tiny][DICT_ROW] / ms_tiny:.0f}× | {table[large][DICT_ROW] / ms_large:.0f}×"
        lines.append(
            f"| {method} | {ms_tiny:.3f} | {ms_large:.3f} | {ms_large / ms_tiny:.2f}× | {speedups} |"
        )
    return lines


def ann_table(ann: dict, sigma_bytes: dict | None) -> list[str]:
    """faiss search time (batch 1 / 32), recall@10 against flat and bytes per image at every size."""
    sizes = ann["sizes"]
    lines = [
        f"faiss baselines, search only (no text tower), {ann['dim']}-d synthetic clustered embeddings, "
        "1 thread (ms p50 batch 1 / batch 32, recall@10 against flat):",
        "",
        "| index | " + " | ".join(f"{size:,} ids" for size in sizes) + " | bytes per image (largest) |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    for kind, by_size in ann["ms"].items():
        cells = [
            f"{by_size[str(s)]['1']:.3f} / {by_size[str(s)]['32']:.2f}, R {ann['recall@10'][kind][str(s)]:.3f}"
            for s in sizes
        ]
        memory = ann["bytes_per_image"][kind][str(sizes[-1])]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {memory:.0f} |")
    if sigma_bytes:
        largest = max(sigma_bytes, key=int)
        parts = ", ".join(f"{name} {value:.1f}" for name, value in sigma_bytes[largest].items())
        total = sum(sigma_bytes[largest].values())
        lines.append(f"| SIGMA index ({int(largest):,} ids) | see latency table | | {total:.1f} ({parts}) |")
    lines.append("")
    for kind, by_batch in ann["crossover"].items():
        for batch, cross in by_batch.items():
            if cross["corpus_size"] is None:
                where = "none (no growth with N)"
            else:
                how = "within the measured range" if cross["measured"] else "extrapolated with a linear fit"
                where = f"N ≈ {cross['corpus_size']:,}, {how}"
            lines.append(
                f"- crossover, faiss {kind} (search only) vs SIGMA-tiny engine, batch {batch}: {where}"
            )
    return lines


# -------------------------------------------------------------------------------------------------- plots
def plot_latency_rows(ax, sizes: list[int], latency: dict, ann: dict | None, batch: str) -> None:
    """The other SIGMA paths and the faiss search-only curves on a latency axis (log-log)."""
    for (key, label), marker in zip(LATENCY_COLUMNS, "^vD"):
        if key in latency:
            ax.plot(sizes, latency[key][batch], f"{marker}-", label=label, ms=4)
    if ann:
        for kind, by_size in ann["ms"].items():
            times = [by_size[str(size)][batch] for size in ann["sizes"]]
            ax.plot(ann["sizes"], times, "x:", label=f"faiss {kind} {ann['dim']}-d, search only")


def plot_steps(ax, steps: dict) -> None:
    """Grouped bars (log scale): per-step constraint + selection of each method at both vocabularies."""
    import numpy as np

    vocabs = list(steps["ms_per_step"])
    names = [name for name in steps["ms_per_step"][vocabs[0]] if not name.startswith("LM head")]
    x = np.arange(len(names))
    for offset, vocab in zip((-0.2, 0.2), vocabs):
        values = [steps["ms_per_step"][vocab][name] for name in names]
        ax.bar(x + offset, values, 0.4, label=f"vocab {int(vocab):,}")
    ax.set_xticks(
        x, [name.replace(" + ", "\n+ ").replace(" expand", "\nexpand") for name in names], fontsize=7
    )
    ax.set_yscale("log")
    ax.set_ylabel(f"ms per step ({steps['beams']} beams)")
    ax.set_title(f"constraint + beam selection ({steps['identifiers']:,} ids)")
    ax.legend(fontsize=7)
