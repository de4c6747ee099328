"""The benchmark suite: every quality and efficiency figure of the README, as JSON, Markdown tables and PNG plots.

    make bench                                        # = python benchmarks/run_suite.py (about 1 h 40 min on 2 CPU cores)
    python benchmarks/run_suite.py --reuse            # keep stage folders an identical earlier run finished
    python benchmarks/run_suite.py --skip-quality     # efficiency only (about 20 min)
    python benchmarks/run_suite.py --plots-only       # redraw plots and tables from results/benchmarks.json

Quality (`recipes/run_embedded.py --ablations --rerank --seeds 2`, TinyShapes, Recall@1/5/10): the two-tower
baseline (alone and with the pseudo-queries), SIGMA-tiny (with pseudo-queries and paper-faithful), its four
ablations (no stage 1, no stage 2, no soft labels, random identifiers), each trained with two seeds, with and
without similarity-head re-ranking, and the paired bootstrap interval of every difference; `test` queries (images indexed at training) and `unseen` queries (images
added after training by stage-1 generation or by the stage-0 quantiser), each searched in its own gallery, and
for generation-assigned images also in one test + unseen gallery, where old and new images compete.

Efficiency (1 thread, synthetic identifiers in the paper layout 64/32/16/32/64):
- query latency against corpus size 1K → 1M, batch 1 and 32, interleaved: the tiny SIGMA model through the
  decoding engine (exact and restricted scoring), through transformers' `generate` (the path before the engine)
  and through transformers' beam search with `PrefixConstrainedLogitsProcessor` over a dict trie, against a
  two-tower with exact faiss search (tiny-CLIP text tower + `IndexFlatIP`, at the tiny CLIP width and at 512-d, a
  CLIP ViT-B width), and where the curves cross; bytes per indexed image of the SIGMA index;
- faiss flat, HNSW and IVF-PQ, search only (`--ann-dim`, default 128-d), with recall@10 against flat, bytes per
  image and the crossover against the engine (benchmarks/suite_engine.py);
- constraint cost per decode step: transformers' beam search with and without the trie, and at 320 beams over
  1M identifiers, at the tiny and at Qwen's 151,665-token vocabulary, the engine's `expand_beams` against
  `SigmaTrieLogitsProcessor` and `PrefixConstrainedLogitsProcessor` + dict trie, each followed by its beam
  selection;
- stage-0 build time (k-means + Semi-NMF + residual product quantiser) on synthetic 512-d features;
- open-set insert throughput (`open_set.index.add_images`, generation mode).

Outputs: results/benchmarks.json, results/BENCHMARKS.md, results/quality.png, results/latency.png,
results/efficiency.png; the tables between the `<!-- benchmarks:start -->` / `<!-- benchmarks:end -->` markers of
README.md and model_card.md are replaced with the new ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from functools import partial

# The sibling bench_*.py modules import as top-level modules: `python benchmarks/run_suite.py` puts this folder
# first on sys.path (and pytest's `pythonpath` setting does for the tests).
import bench_decoding
import bench_index
import bench_retrieval
import bench_stage0
import numpy as np
import suite_engine
import torch

from modeling_sigma.evaluation.tables import format_caption_types, format_comparisons, table_rows
from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.training.backbone import build_sigma_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESULTS = os.path.join(ROOT, "results")
MARKERS = ("<!-- benchmarks:start -->", "<!-- benchmarks:end -->")
PAPER_LAYOUT = [64, 32, 16, 32, 64]
QUERIES = [
    f"a {colour} {shape}"
    for colour in ("red", "green", "blue", "yellow")
    for shape in "circle square triangle star cross diamond star circle".split()
]


# ------------------------------------------------------------------------------------------------ quality
def run_quality(reuse: bool) -> dict:
    """Trains and evaluates every system of the quality table (recipes/run_embedded.py)."""
    run_embedded = _load_recipe("run_embedded")
    argv = [
        "--ablations",
        "--rerank",
        "--seeds",
        "2",
        "--results",
        os.path.join(RESULTS, "embedded-bench.json"),
    ]
    report = run_embedded.main(argv + (["--reuse"] if reuse else []))
    rows = table_rows(report["results"])
    return {
        "command": "recipes/run_embedded.py " + " ".join(argv),
        "rows": rows,
        "differences": report["differences"],
        "by_caption_type": report["by_caption_type"],
        "seconds": report["seconds"],
        "wall_time_s": report["wall_time_s"],
    }


def _load_recipe(name: str):
    """Import `recipes/{name}.py` by its path (recipes are scripts, not an installed package). It is registered
    under `name`, so `run_embedded.py --jobs 2` can send its functions to worker processes by reference."""
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(ROOT, "recipes", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------- efficiency
p50_ms = bench_decoding.median_ms  # median ms after one warm-up call


def interleaved_p50_ms(calls: list, repeats: int) -> list[float]:
    """Median ms of each call, alternating them every repeat so that machine load hits them alike."""
    times = [[] for _ in calls]
    for repeat in range(repeats + 1):
        for call, samples in zip(calls, times):
            start = time.perf_counter()
            call()
            if repeat:  # the first round is warm-up
                samples.append(time.perf_counter() - start)
    return [statistics.median(samples) * 1e3 for samples in times]


def generate_ids(model, kwargs: dict) -> None:
    with torch.no_grad():
        model.generate(**kwargs)


def crossover(sizes: list[int], flat_ms: list[float], generative_ms: float) -> dict:
    """Corpus size where exact search (linear in N: least squares `a + b N`) gets slower than generation."""
    if flat_ms[-1] <= flat_ms[0]:  # no growth with N (noise only): no crossing to speak of
        return {"corpus_size": None, "measured": False}
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(flat_ms), 1)
    size = max(0.0, (generative_ms - intercept) / slope)
    return {"corpus_size": int(size), "measured": bool(min(sizes) <= size <= max(sizes))}


def flat_search(encoder, index, projection, queries: list[str]) -> None:
    """One two-tower query batch: the text tower (part of every query's cost), then exact search."""
    features = encoder.encode_texts(queries)
    if projection is not None:  # a wider embedding space than the tiny CLIP's
        features = np.ascontiguousarray(features @ projection)
    index.search(features, 10)


def run_latency(sizes: list[int], repeats: int, dims: list[int]) -> dict:
    """p50 query latency (batch 1 and batch 32) of the tiny SIGMA model and of faiss flat search, per size."""
    import faiss

    from modeling_sigma.identifiers.encoders import load_encoder

    faiss.omp_set_num_threads(1)
    torch.manual_seed(0)
    layout = SigmaIdentifierLayout()
    model, processor = build_sigma_model("embedded", layout, captions=bench_retrieval.load_captions())
    model.eval()
    engine = suite_engine.run_engine_latency(model, processor, sizes, repeats)
    del model

    encoder = load_encoder("tiny-clip", cache_dir=os.path.join(ROOT, "outputs", "cache"))
    tiny_dim = int(encoder.encode_texts(QUERIES[:1]).shape[1])
    flat = {}
    for dim in sorted({tiny_dim, *dims}):
        flat[dim] = {1: [], 32: []}
        rng = np.random.default_rng(0)
        projection = rng.standard_normal((tiny_dim, dim)).astype(np.float32) if dim != tiny_dim else None
        for size in sizes:
            index = faiss.IndexFlatIP(dim)
            for start in range(0, size, 100_000):  # random unit vectors, 100K at a time
                block = rng.standard_normal((min(100_000, size - start), dim)).astype(np.float32)
                index.add(block / np.linalg.norm(block, axis=1, keepdims=True))
            for batch in (1, 32):
                search = partial(flat_search, encoder, index, projection, QUERIES[:batch])
                flat[dim][batch].append(p50_ms(search, repeats if batch == 1 else 3))
            del index
    report = {"sizes": sizes, "tiny_clip_dim": tiny_dim, **engine, "faiss_flat_ms": {}, "crossover": {}}
    for batch in (1, 32):  # string keys, as they come back from the JSON file
        typical = statistics.median(report["generative_ms"][str(batch)])  # flat in N
        for dim, times in flat.items():
            report["faiss_flat_ms"].setdefault(str(dim), {})[str(batch)] = times[batch]
            report["crossover"].setdefault(str(dim), {})[str(batch)] = crossover(sizes, times[batch], typical)
    return report


def run_constraint(num_identifiers: int, repeats: int) -> dict:
    """Constraint cost per decode step in transformers' beam search (the `generate` path), with and without the trie."""
    torch.manual_seed(0)
    layout = SigmaIdentifierLayout()
    model, processor = build_sigma_model("embedded", layout, captions=bench_retrieval.load_captions())
    model.eval()
    model.set_index(
        bench_stage0.paper_codes(num_identifiers, PAPER_LAYOUT), [f"img{i}" for i in range(num_identifiers)]
    )
    steps = layout.length + 1
    report = {"identifiers": num_identifiers, "steps": steps, "model_ms_per_step": {}}
    for batch in (1, 32):
        inputs = processor.process_queries(QUERIES[:batch], prompt=model.config.retrieval_prompt)
        common = {"num_beams": 10, "num_return_sequences": 10, "max_new_tokens": steps, **inputs}

        constrained = partial(generate_ids, model, common)
        free = partial(generate_ids, model, {**common, "use_trie": False, "min_new_tokens": steps})
        trie_ms, free_ms = interleaved_p50_ms([constrained, free], repeats)
        report["model_ms_per_step"][str(batch)] = {
            "with_trie": trie_ms / steps,
            "without_trie": free_ms / steps,
            "overhead": (trie_ms - free_ms) / steps,
        }
    trie = model.index.trie
    report["trie"] = {"bytes_per_identifier": trie.nbytes / len(trie)}
    return report


def run_stage0_build(sizes: list[int], dim: int) -> dict:
    """Seconds to fit all stage-0 levels on synthetic clustered features."""
    from modeling_sigma.identifiers.builder import SigmaIdentifierBuilder, SigmaIdentifierBuilderConfig

    seconds = []
    for size in sizes:
        features = bench_stage0.synthetic_features(size, dim)
        builder = SigmaIdentifierBuilder(SigmaIdentifierBuilderConfig(suffix_size=4096))
        start = time.perf_counter()
        builder.fit(features, [str(i) for i in range(size)])
        seconds.append(time.perf_counter() - start)
        print(f"stage-0 build, {size:,} x {dim}: {seconds[-1]:.1f} s", flush=True)
        del features, builder
    return {"sizes": sizes, "dim": dim, "seconds": seconds}


def run_efficiency(args) -> dict:
    torch.set_num_threads(1)
    report, start = {}, time.time()
    print("\n=== insert throughput", flush=True)
    report["insert"] = bench_index.measure_insert_throughput(num_images=256, rounds=3)
    print(json.dumps(report["insert"], indent=2))
    print("\n=== constraint overhead", flush=True)
    report["constraint"] = run_constraint(max(args.sizes), args.repeats)
    print("\n=== per-step constraint + beam selection (engine, logits processors)", flush=True)
    report["steps"] = suite_engine.run_engine_steps(max(args.sizes), 20)
    print("\n=== latency vs corpus size", flush=True)
    report["latency"] = run_latency(args.sizes, args.repeats, args.faiss_dims)
    print(json.dumps(report["latency"], indent=2))
    print("\n=== faiss flat / HNSW / IVF-PQ, search only", flush=True)
    report["ann"] = suite_engine.run_engine_ann(
        args.ann_sizes or args.sizes, args.ann_dim, args.repeats, report["latency"]
    )
    print("\n=== stage-0 build time", flush=True)
    report["stage0"] = run_stage0_build(args.stage0_sizes, 512)
    report["seconds"] = round(time.time() - start, 1)
    return report


# ------------------------------------------------------------------------------------------ tables, plots
def quality_table(quality: dict) -> str:
    lines = [
        "| system | queries on | gallery | re-ranked | R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in quality["rows"]:
        rerank = "yes" if row["reranked"] else "no"
        recall = " | ".join(str(row[f"R@{k}"]) for k in (1, 5, 10))
        lines.append(f"| {row['system']} | {row['queries_on']} | {row['gallery']} | {rerank} | {recall} |")
    if quality.get("differences"):  # runs before the bootstrap intervals had none
        lines += ["", format_comparisons(quality["differences"])]
        lines += ["", format_caption_types(quality.get("by_caption_type", {}))]
    return "\n".join(lines)


def efficiency_tables(efficiency: dict) -> str:
    latency = efficiency["latency"]
    dims = list(latency["faiss_flat_ms"])
    header = " | ".join(f"faiss flat {dim}-d, b{b} (ms)" for b in (1, 32) for dim in dims)
    extra = [(key, label) for key, label in suite_engine.LATENCY_COLUMNS if key in latency]  # newer reports
    extra_header = "".join(f" {label}, b1 (ms) | b32 (ms) |" for _, label in extra)
    lines = [
        f"| corpus size | SIGMA-tiny, b1 (ms) | SIGMA-tiny, b32 (ms) |{extra_header} {header} |",
        "|---" * (3 + 2 * len(extra) + 2 * len(dims)) + "|",
    ]
    for i, size in enumerate(latency["sizes"]):
        cells = [f"{latency['generative_ms'][b][i]:.1f}" for b in ("1", "32")]
        cells += [f"{latency[key][b][i]:.1f}" for key, _ in extra for b in ("1", "32")]
        cells += [f"{latency['faiss_flat_ms'][dim][b][i]:.1f}" for b in ("1", "32") for dim in dims]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    lines.append("")
    for dim in dims:
        for batch in (1, 32):
            cross = latency["crossover"][dim][str(batch)]
            where = "within the measured range" if cross["measured"] else "extrapolated with a linear fit"
            size = f"N ≈ {cross['corpus_size']:,}, {where}" if cross["corpus_size"] is not None else "none"
            lines.append(f"- crossover, faiss flat {dim}-d vs SIGMA-tiny, batch {batch}: {size}")
    constraint = efficiency["constraint"]
    lines += [
        "",
        f"Constraint overhead per decode step of transformers' beam search (`generate` path, "
        f"{constraint['identifiers']:,} identifiers, 10 beams):",
        "",
        "| batch | beam search with trie (ms/step) | without (ms/step) | overhead (ms/step) |",
        "|---|---|---|---|",
    ]
    for batch, step in constraint["model_ms_per_step"].items():
        lines.append(
            f"| {batch} | {step['with_trie']:.2f} | {step['without_trie']:.2f} | {step['overhead']:.2f} |"
        )
    if "steps" in efficiency:
        lines += ["", *suite_engine.steps_table(efficiency["steps"])]
    else:  # reports written before the decoding engine: the logits processors alone
        lines += ["", "| vocabulary | method | ms per step (32 queries × 10 beams) |", "|---|---|---|"]
        for vocab, methods in constraint["processor_ms_per_step"].items():
            for method, ms in methods.items():
                lines.append(f"| {int(vocab):,} | {method} | {ms:.3f} |")
    if "ann" in efficiency:
        lines += ["", *suite_engine.ann_table(efficiency["ann"], latency.get("sigma_bytes_per_image"))]
    stage0, insert = efficiency["stage0"], efficiency["insert"]
    builds = ", ".join(f"{size:,}: {sec:.1f} s" for size, sec in zip(stage0["sizes"], stage0["seconds"]))
    lines += [
        "",
        f"- stage-0 build, synthetic {stage0['dim']}-d features: {builds}",
        f"- trie: {constraint['trie']['bytes_per_identifier']:.1f} bytes per identifier at "
        f"{constraint['identifiers']:,}",
        f"- open-set insert (generation mode): {insert['images_per_second']:.0f} images/s "
        f"({insert['images']} images, {insert['threads']} thread)",
    ]
    return "\n".join(lines)


def set_output_dir(folder: str) -> None:
    global RESULTS
    RESULTS = os.path.abspath(folder)


def draw_plots(report: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "quality" in report:
        rows = report["quality"]["rows"]
        short = {", unseen images added after training (": ", unseen added by "}  # keeps the labels legible
        labels = []
        for row in rows:
            name = row["system"]
            for long, brief in short.items():
                name = name.replace(long, brief).rstrip(")") if long in name else name
            where = f" [{row['queries_on']} q. / {row['gallery']}]"
            labels.append(f"{name}{' + re-rank' if row['reranked'] else ''}{where}")
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.2))
        y = np.arange(len(rows))
        for offset, k in zip((-0.27, 0, 0.27), (1, 5, 10)):
            ax.barh(y + offset, [r[f"R@{k}"] for r in rows], height=0.26, label=f"R@{k}")
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("Recall (%) on TinyShapes")
        ax.set_title("Text→image retrieval quality (make bench)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        written.append(_save(fig, "quality.png"))
    if "efficiency" in report:
        latency = report["efficiency"]["latency"]
        sizes = latency["sizes"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, batch in zip(axes, (1, 32)):
            batch_key = str(batch)
            ax.plot(sizes, latency["generative_ms"][batch_key], "o-", label="SIGMA-tiny (decoding engine)")
            suite_engine.plot_latency_rows(ax, sizes, latency, report["efficiency"].get("ann"), batch_key)
            for dim, times in latency["faiss_flat_ms"].items():
                ax.plot(sizes, times[batch_key], "s--", label=f"two-tower, faiss flat {dim}-d")
                cross = latency["crossover"][dim][batch_key]
                if cross["measured"]:
                    ax.axvline(cross["corpus_size"], color="gray", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("indexed images")
            ax.set_ylabel("p50 latency per batch (ms)")
            ax.set_title(f"query latency, batch {batch} (1 CPU thread)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, "latency.png"))

        efficiency = report["efficiency"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        stage0 = efficiency["stage0"]
        axes[0].plot(stage0["sizes"], stage0["seconds"], "o-")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("images")
        axes[0].set_ylabel("seconds")
        axes[0].set_title(f"stage-0 build ({stage0['dim']}-d features)")
        steps = efficiency["constraint"]["model_ms_per_step"]
        batches = list(steps)
        x = np.arange(len(batches))
        axes[1].bar(x - 0.2, [steps[b]["without_trie"] for b in batches], 0.4, label="free beam search")
        axes[1].bar(x + 0.2, [steps[b]["with_trie"] for b in batches], 0.4, label="trie-constrained")
        axes[1].set_xticks(x, [f"batch {b}" for b in batches])
        axes[1].set_ylabel("ms per decode step")
        axes[1].set_title(f"generate path: trie overhead ({efficiency['constraint']['identifiers']:,} ids)")
        axes[1].legend(fontsize=7)
        if "steps" in efficiency:
            suite_engine.plot_steps(axes[2], efficiency["steps"])
        else:  # reports written before the decoding engine
            processor = efficiency["constraint"]["processor_ms_per_step"]
            vocab = max(processor, key=int)
            names = [name for name in processor[vocab] if "vocab" not in name and "only" not in name]
            axes[2].bar(range(len(names)), [processor[vocab][n] for n in names])
            axes[2].set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
            axes[2].set_ylabel("ms per step (320 beams)")
            axes[2].set_title(f"logits processor, vocab {int(vocab):,}")
        fig.tight_layout()
        written.append(_save(fig, "efficiency.png"))
    return written


def _save(fig, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(RESULTS, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(report: dict) -> str:
    parts = [f"Regenerate with `{report['command']}` ({report['machine']}).", *_part_times(report), ""]
    if "quality" in report:
        parts += [
            "#### Quality",
            "",
            quality_table(report["quality"]),
            "",
            "![quality](results/quality.png)",
            "",
        ]
    if "efficiency" in report:
        parts += ["#### Efficiency", "", efficiency_tables(report["efficiency"]), ""]
        parts += ["![latency](results/latency.png)", "", "![efficiency](results/efficiency.png)", ""]
    return "\n".join(parts).rstrip() + "\n"


def _part_times(report: dict) -> list[str]:
    """One line with the wall time of each part (a `--skip-quality` run keeps the earlier quality part)."""
    times = []
    for part in ("quality", "efficiency"):
        part_report = report.get(part, {})
        seconds = part_report.get("wall_time_s", part_report.get("seconds"))
        if isinstance(seconds, dict):  # a quality part of before its wall time was kept: the systems' sum
            seconds = sum(seconds.values())  # (too high: `--jobs 2` runs steps side by side)
        if seconds is not None:
            times.append(f"{part} {seconds / 60:.0f} min")
    if not times:
        return []
    return [
        "",
        f"Wall time per part: {', '.join(times)}; `--skip-quality` reruns the efficiency part alone and keeps "
        "the quality part of `results/benchmarks.json`.",
    ]


def replace_marked(path: str, text: str) -> bool:
    """Replace what lies between the benchmark markers of `path` (written atomically); False if no markers."""
    with open(path) as stream:
        content = stream.read()
    start, end = (content.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        return False
    content = content[: start + len(MARKERS[0])] + "\n" + text + content[end:]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as stream:
        stream.write(content)
    os.replace(tmp, path)
    return True


def write_outputs(report: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "benchmarks.json")
    with open(f"{path}.tmp", "w") as stream:
        json.dump(report, stream, indent=2)
    os.replace(f"{path}.tmp", path)
    for plot in draw_plots(report):
        print(f"wrote {plot}")
    markdown = render_markdown(report)
    with open(os.path.join(RESULTS, "BENCHMARKS.md"), "w") as stream:
        stream.write("# Benchmarks\n\n" + markdown.replace("](results/", "]("))
    documents = ("README.md", "model_card.md") if RESULTS == os.path.join(ROOT, "results") else ()
    for document in documents:
        if replace_marked(os.path.join(ROOT, document), markdown):
            print(f"updated the benchmark section of {document}")
    print(markdown)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip-quality", action="store_true", help="keep the quality part of benchmarks.json"
    )
    parser.add_argument("--skip-efficiency", action="store_true", help="keep the efficiency part")
    parser.add_argument("--plots-only", action="store_true", help="redraw from results/benchmarks.json")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse stage folders of an identical earlier run"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--stage0-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--faiss-dims", type=int, nargs="+", default=[512], help="besides the tiny CLIP width"
    )
    parser.add_argument(
        "--ann-sizes", type=int, nargs="+", default=None, help="faiss ANN sizes (default --sizes)"
    )
    parser.add_argument("--ann-dim", type=int, default=128, help="embedding width of the faiss ANN baselines")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--output-dir", default=RESULTS, help="where JSON and plots go; README/model card only for results/"
    )
    args = parser.parse_args(argv)
    set_output_dir(args.output_dir)
    path = os.path.join(RESULTS, "benchmarks.json")
    previous = {}
    if os.path.exists(path):
        with open(path) as stream:
            previous = json.load(stream)
    if args.plots_only:
        write_outputs(previous)
        return previous
    report = {
        "command": "make bench",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
    }
    start = time.time()
    for part, skip, run in (
        ("quality", args.skip_quality, lambda: run_quality(args.reuse)),
        ("efficiency", args.skip_efficiency, lambda: run_efficiency(args)),
    ):
        if skip:
            if part in previous:
                report[part] = previous[part]
        else:
            report[part] = run()
    report["wall_time_s"] = round(time.time() - start, 1)
    write_outputs(report)
    return report


if __name__ == "__main__":
    main()
