"""The identifier decoding engine (issue 15) side by side with today's retrieve and transformers' reference.

    python benchmarks/bench_decoding.py                                   # every section (about 15 min, 1 thread)
    python benchmarks/bench_decoding.py --sections latency steps          # engine figures only
    python benchmarks/bench_decoding.py --checkpoint outputs/tiny-shapes/stage3 --sections quality

Sections (one run prints them all; `--json` writes the figures):
- latency: p50/p95 query latency at batch 1 and 32 of the engine's exact and restricted modes, today's
  `retrieve(engine="generate")` and transformers' beam search with `PrefixConstrainedLogitsProcessor` over a
  dict-of-dicts trie, interleaved, with 1K to 1M random identifiers installed in the checkpoint (or a freshly
  built embedded model when none is given).
- steps: per decode step constraint cost at 320 beams (32 queries x 10) over 1M identifiers of the paper layout,
  at the tiny and at Qwen's 151,665-token vocabulary: the engine's `expand_beams` (children gather, log-prob
  gather, beam selection) against `PrefixConstrainedLogitsProcessor` + dict trie and `SigmaTrieLogitsProcessor`,
  each followed by the beam selection `generate` runs (top 2 x beams of beams x vocab).
- ann: faiss flat, HNSW and IVF-PQ on clustered synthetic embeddings, search time only (no text tower), with
  recall@10 against exact search and memory per indexed image, next to the engine; crossover sizes.
- quality: Recall@1/5/10 of both scoring modes and of the generate path on the checkpoint's test captions, and
  whether exact mode returns the generate path's identifiers, order and scores on every caption.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

# the sibling bench_*.py modules import as top-level modules (`python benchmarks/bench_decoding.py` puts this
# folder first on sys.path)
import bench_retrieval
import bench_stage0
import numpy as np
import torch
from transformers import PrefixConstrainedLogitsProcessor

from modeling_sigma.modeling.decoding import expand_beams
from modeling_sigma.modeling.trie import SigmaIdentifierTrie, SigmaTrieLogitsProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER_LAYOUT = [64, 32, 16, 32, 64]
QWEN_VOCAB = 151_665


# ------------------------------------------------------------------------------------------------ helpers
def percentiles(samples: list[float]) -> dict:
    values = np.asarray(samples) * 1e3
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def interleaved(calls: dict, repeats: int) -> dict:
    """p50/p95 ms of each call, alternating them every repeat so machine load hits them alike (1 warm-up)."""
    times = {name: [] for name in calls}
    for repeat in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if repeat:
                times[name].append(time.perf_counter() - start)
    return {name: percentiles(samples) for name, samples in times.items()}


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def dict_trie_fn(codes: torch.Tensor, offsets: list[int], prompt_length: int, eos: int):
    """transformers' reference constraint over the identifiers `codes` (a dict trie of their token ids)."""
    root = bench_stage0.build_dict_trie((codes + torch.tensor(offsets)).tolist())
    return bench_stage0.dict_prefix_fn(root, prompt_length, eos)


def load_model(checkpoint: str | None):
    from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval
    from modeling_sigma.training.backbone import build_sigma_model

    if checkpoint:
        model = SigmaForRetrieval.from_pretrained(checkpoint).eval()
        return model, model.processor, f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    layout = SigmaIdentifierLayout()
    model, processor = build_sigma_model("embedded", layout, captions=bench_retrieval.load_captions())
    model.processor = processor
    return model.eval(), processor, "fresh embedded model (untrained)"


def index_bytes(index) -> dict:
    """Bytes of a `SigmaIndex`: trie keys, CSR child tables, the code rows and the sorted key lookup (one key and
    one int64 row per image); the image-id strings are left out, as for every system."""
    trie, codes = index.trie, index.codes
    key_bytes = torch.empty(0, dtype=trie.key_dtype).element_size()
    return {
        "trie": trie.nbytes,
        "children": trie.children_tables().nbytes,
        "codebook": codes.numel() * codes.element_size() + len(index) * (key_bytes + 8),
    }


# ------------------------------------------------------------------------------------------------ latency
def run_latency(model, processor, sizes: list[int], repeats: int) -> dict:
    layout, eos = model.config.layout, model.config.eos_token_id
    queries = [q for q in bench_retrieval.load_captions()[:32]]
    report = {"sizes": sizes, "ms": {}, "bytes_per_image": {}}
    indexes, references = {}, {}
    for size in sizes:
        codes = bench_retrieval.random_identifiers(size, layout.sizes)
        model.set_index(codes, [f"img{i}" for i in range(size)])
        model.index.trie.children_tables()  # built once, as at load time
        indexes[size] = {name: getattr(model, name) for name in bench_retrieval.INDEX_ATTRIBUTES}
        report["bytes_per_image"][size] = {k: v / size for k, v in index_bytes(model.index).items()}
        references[size] = codes
    for batch in (1, 32):
        inputs = processor.process_queries(queries[:batch], prompt=model.config.retrieval_prompt)
        prompt_length, calls = inputs["input_ids"].shape[1], {}
        steps = layout.length + 1
        common = {"num_beams": 10, "num_return_sequences": 10, "max_new_tokens": steps, **inputs}
        for size in sizes:
            install = partial(_install, model, indexes[size])
            fn = dict_trie_fn(references[size], model.config.identifier_token_offsets, prompt_length, eos)
            for name, kwargs in (
                ("engine exact", {}),
                ("engine restricted", {"scoring": "restricted"}),
                ("generate (today)", {"engine": "generate"}),
            ):
                calls[(name, size)] = partial(_retrieve, model, install, queries[:batch], kwargs)
            calls[("PrefixConstrained + dict trie", size)] = partial(_reference, model, install, common, fn)
        figures = interleaved(calls, repeats if batch == 1 else max(3, repeats // 4))
        for (name, size), values in figures.items():
            report["ms"].setdefault(str(batch), {}).setdefault(name, {})[size] = values
        print_latency(report, batch)
    for size, parts in report["bytes_per_image"].items():
        cells = ", ".join(f"{name} {value:.1f}" for name, value in parts.items())
        print(f"SIGMA index at {size:,} ids: {sum(parts.values()):.1f} B per image ({cells})")
    return report


def _install(model, state: dict) -> None:
    for name, value in state.items():
        setattr(model, name, value)


def _retrieve(model, install, queries, kwargs) -> None:
    install()
    model.retrieve(queries, k=10, num_beams=10, **kwargs)


def _reference(model, install, common, fn) -> None:
    install()
    with torch.no_grad():
        model.generate(**common, prefix_allowed_tokens_fn=fn)


def print_latency(report: dict, batch: int) -> None:
    rows = report["ms"][str(batch)]
    sizes = report["sizes"]
    print(f"\n== query latency, batch {batch}, k = 10, 10 beams (ms, p50 / p95) ==")
    print(f"{'method':<32}" + "".join(f"{f'{s:,} ids':>20}" for s in sizes) + f"{'1M/1K p50':>11}")
    base = rows["generate (today)"][sizes[0]]["p50"]
    for name, values in rows.items():
        cells = "".join(f"{values[s]['p50']:>11.1f} / {values[s]['p95']:<6.1f}" for s in sizes)
        flat = values[sizes[-1]]["p50"] / values[sizes[0]]["p50"]
        print(f"{name:<32}{cells}{flat:>10.2f}x   ({values[sizes[0]]['p50'] / base:.2f} of today)")


# -------------------------------------------------------------------------------------------------- steps
def run_steps(
    num_identifiers: int,
    queries: int,
    beams: int,
    repeats: int,
    vocab_sizes: list[int],
    with_processors: bool = True,
    hidden_size: int = 128,
) -> dict:
    """Constraint + beam selection per decode step, per depth, for the engine and the logits processors.

    Also times the LM head each scoring mode needs per step (`hidden_size`-wide states, 320 rows): the level slice
    (`restricted`) and the full vocabulary with its log-softmax (`exact`); they are model cost, not constraint cost.
    With `with_processors=False` only the engine rows are measured (no dict trie is built)."""
    sizes, eos, prompt_length = PAPER_LAYOUT, bench_stage0.EOS_TOKEN_ID, bench_stage0.PROMPT_LENGTH
    codes = bench_stage0.paper_codes(num_identifiers, sizes)
    trie = SigmaIdentifierTrie.from_codes(codes, sizes)
    children = trie.children_tables()
    offsets = [bench_stage0.BASE_VOCAB + sum(sizes[:p]) for p in range(len(sizes))]
    rows = queries * beams
    picked = codes[torch.from_numpy(np.random.default_rng(1).choice(len(codes), rows, replace=False))]
    prompt = torch.full((rows, prompt_length), 5, dtype=torch.long)
    processors = {}
    if with_processors:
        fn = dict_trie_fn(codes, offsets, prompt_length, eos)
        processors["SigmaTrieLogitsProcessor"] = SigmaTrieLogitsProcessor(
            trie, offsets, prompt_length, eos, beams
        )
        processors["PrefixConstrained + dict"] = PrefixConstrainedLogitsProcessor(fn, beams)
    scores = torch.randn(queries, beams).sort(dim=-1, descending=True).values
    report = {"identifiers": num_identifiers, "beams": rows, "ms_per_step": {}}
    for vocab in vocab_sizes:
        vocab = max(vocab, bench_stage0.BASE_VOCAB + sum(sizes))
        per_depth = {"engine expand_beams": [], **{name: [] for name in processors}}
        for depth in range(len(sizes)):
            nodes = trie.prefix_nodes(picked[:, :depth]) if depth else torch.zeros(rows, dtype=torch.long)
            level_log_probs = torch.randn(rows, sizes[depth]).log_softmax(-1)  # what the level slice gives
            step = partial(
                expand_beams, children, depth, nodes.view(queries, beams), scores, level_log_probs, beams
            )
            # the step costs a tenth of a millisecond: many more repeats for a stable median, same work each
            per_depth["engine expand_beams"].append(median_ms(step, max(10 * repeats, 200)))
            input_ids = torch.cat([prompt, picked[:, :depth] + torch.tensor(offsets[:depth])], dim=1)
            logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(depth))
            slow = vocab > 100_000
            for name, processor in processors.items():
                call = partial(_processor_step, processor, input_ids, logits, scores, queries, beams)
                per_depth[name].append(median_ms(call, 3 if slow else max(3, repeats // 5)))
            del logits
        report["ms_per_step"][vocab] = {name: float(np.mean(times)) for name, times in per_depth.items()}
        report["ms_per_step"][vocab].update(lm_head_ms(rows, hidden_size, vocab, sizes, max(repeats, 20)))
        report.setdefault("per_depth", {})[vocab] = per_depth
    print_steps(report)
    return report


def lm_head_ms(rows: int, hidden_size: int, vocab: int, sizes: list[int], repeats: int) -> dict:
    """Per-step LM head of each scoring mode: a `K`-row slice (restricted) or all rows + log-softmax (exact)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, hidden_size, generator=generator) / hidden_size**0.5
    hidden = torch.randn(rows, hidden_size, generator=generator)
    first, size = bench_stage0.BASE_VOCAB, max(sizes)
    restricted = partial(_restricted_head, hidden, weight[first : first + size])
    exact = partial(_exact_head, hidden, weight, first, size)
    return {
        "LM head, level slice (restricted)": median_ms(restricted, repeats),
        "LM head, full + log-softmax (exact)": median_ms(exact, 3 if vocab > 100_000 else repeats),
    }


def _restricted_head(hidden, weight) -> torch.Tensor:
    return torch.log_softmax(torch.nn.functional.linear(hidden, weight), dim=-1)


def _exact_head(hidden, weight, first, size) -> torch.Tensor:
    """What exact mode computes per step: the full LM head and its log-softmax (one fused op; cheaper on CPU
    than a logsumexp), of which the level's tokens are read."""
    logits = torch.nn.functional.linear(hidden, weight)
    return torch.log_softmax(logits, dim=-1)[:, first : first + size]


def _processor_step(processor, input_ids, logits, scores, queries, beams) -> None:
    """One generate beam step after the log-softmax: the logits processor, then the top 2 x beams candidates."""
    processed = processor(input_ids, logits)  # (rows, vocab)
    accumulated = (processed + scores.reshape(-1, 1)).view(queries, -1)
    torch.topk(accumulated, 2 * beams, dim=-1)


def print_steps(report: dict) -> None:
    print(
        f"\n== per-step constraint + beam selection, {report['beams']} beams, {report['identifiers']:,} ids =="
    )
    vocabs = list(report["ms_per_step"])
    print(f"{'method':<30}" + "".join(f"{f'vocab {v:,} (ms)':>22}" for v in vocabs))
    for name in report["ms_per_step"][vocabs[0]]:
        print(f"{name:<30}" + "".join(f"{report['ms_per_step'][v][name]:>22.3f}" for v in vocabs))
    engine = [report["ms_per_step"][v]["engine expand_beams"] for v in vocabs]
    print(f"engine, large / tiny vocabulary: {engine[-1] / engine[0]:.2f}x (target <= 1.2x)")
    if "PrefixConstrained + dict" not in report["ms_per_step"][vocabs[0]]:
        return
    dict_ms = [report["ms_per_step"][v]["PrefixConstrained + dict"] for v in vocabs]
    for vocab, ours, theirs in zip(vocabs, engine, dict_ms):
        print(
            f"engine vs PrefixConstrained + dict trie at {vocab:,}: {theirs / ours:.0f}x faster (target >= 20x)"
        )


# ---------------------------------------------------------------------------------------------------- ann
def build_ann(kind: str, vectors: np.ndarray):
    """A faiss index over unit vectors (inner product), with the search settings used for the timings."""
    import faiss

    num, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 40, 64
    else:  # IVF-PQ: sqrt(N)-ish lists, 8-bit codes of 8 dims each, probe 16 lists
        nlist = int(min(1024, max(16, 2 * np.sqrt(num))))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, dim // 8, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[
            np.random.default_rng(0).choice(num, min(num, max(40 * nlist, 10_000)), replace=False)
        ]
        index.train(sample)
        index.nprobe = 16
    index.add(vectors)
    return index


def _search_one_by_one(index, queries: np.ndarray) -> None:
    for row in range(queries.shape[0]):
        index.search(queries[row : row + 1], 10)


def run_ann(sizes: list[int], dim: int, repeats: int, engine_ms: dict) -> dict:
    """faiss flat / HNSW / IVF-PQ: p50 search ms at batch 1 and 32, recall@10 vs flat, bytes per image."""
    import faiss

    report = {"sizes": sizes, "dim": dim, "ms": {}, "recall@10": {}, "bytes_per_image": {}, "build_s": {}}
    for size in sizes:
        vectors = bench_stage0.synthetic_features(size, dim, seed=0)
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(size, 32)] + 0.05 * rng.standard_normal((32, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = None
        for kind in ("flat", "hnsw", "ivfpq"):
            faiss.omp_set_num_threads(2)
            start = time.perf_counter()
            index = build_ann(kind, vectors)
            report["build_s"].setdefault(kind, {})[size] = time.perf_counter() - start
            faiss.omp_set_num_threads(1)
            _, found = index.search(queries, 10)
            truth = found if truth is None else truth
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
            report["recall@10"].setdefault(kind, {})[size] = float(recall)
            report["bytes_per_image"].setdefault(kind, {})[size] = len(faiss.serialize_index(index)) / size
            single = median_ms(partial(_search_one_by_one, index, queries[:8]), repeats) / 8
            batch = median_ms(partial(index.search, queries, 10), max(3, repeats // 3))
            report["ms"].setdefault(kind, {})[size] = {"1": single, "32": batch}
            print(f"faiss {kind:<6} {size:>9,}: build {report['build_s'][kind][size]:.1f} s", flush=True)
            del index
        del vectors
    report["crossover"] = {
        kind: {
            batch: crossover(sizes, [report["ms"][kind][s][batch] for s in sizes], engine_ms[batch])
            for batch in engine_ms
        }
        for kind in report["ms"]
    }
    print_ann(report, engine_ms)
    return report


def crossover(sizes: list[int], ms: list[float], engine_ms: float) -> dict:
    """Corpus size where the ANN search (least squares `a + b N`) gets slower than the engine (flat in N)."""
    if ms[-1] <= ms[0]:
        return {"corpus_size": None, "measured": False}
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=float), np.asarray(ms), 1)
    size = max(0.0, (engine_ms - intercept) / slope)
    return {"corpus_size": int(size), "measured": bool(min(sizes) <= size <= max(sizes))}


def print_ann(report: dict, engine_ms: dict) -> None:
    sizes = report["sizes"]
    print(f"\n== faiss baselines, dim {report['dim']}, search only (ms p50 batch 1 / batch 32, recall@10) ==")
    print(f"{'method':<10}" + "".join(f"{f'{s:,} ids':>30}" for s in sizes) + f"{'B/image at max':>16}")
    for kind, by_size in report["ms"].items():
        cells = "".join(
            f"{by_size[s]['1']:>9.3f} / {by_size[s]['32']:>7.3f}  R={report['recall@10'][kind][s]:.3f}"
            for s in sizes
        )
        print(f"{kind:<10}{cells}{report['bytes_per_image'][kind][sizes[-1]]:>16.1f}")
    print(
        f"engine (exact, measured above): batch 1 {engine_ms['1']:.1f} ms, batch 32 {engine_ms['32']:.1f} ms"
    )
    for kind, by_batch in report["crossover"].items():
        text = ", ".join(
            f"batch {b}: {c['corpus_size']:,}" + ("" if c["measured"] else " (extrapolated)")
            if c["corpus_size"] is not None
            else f"batch {b}: none (no growth)"
            for b, c in by_batch.items()
        )
        print(f"crossover engine vs {kind}: {text}")


# ------------------------------------------------------------------------------------------------ quality
def run_quality(model, cache_dir: str, batch_size: int) -> dict:
    """Recall@K of both modes and the generate path on the test captions; exact mode == generate, caption by caption."""
    from modeling_sigma.data.corpus import caption_pairs, load_corpus
    from modeling_sigma.evaluation.metrics import recall_at_k
    from modeling_sigma.evaluation.retrieval import index_split

    test = load_corpus("tiny-shapes", cache_dir=cache_dir)["test"]
    queries, owners = caption_pairs(test)
    gallery = index_split(model, test)
    relevant = [test["image_id"][owner] for owner in owners]
    report, hits = {"queries": len(queries), "images": len(gallery)}, {}
    for name, kwargs in (
        ("exact", {}),
        ("restricted", {"scoring": "restricted"}),
        ("generate", {"engine": "generate"}),
    ):
        start = time.perf_counter()
        hits[name] = model.retrieve(queries, k=10, batch_size=batch_size, index=gallery, **kwargs)
        rankings = [[hit["image_id"] for hit in query_hits] for query_hits in hits[name]]
        report[name] = {**recall_at_k(rankings, relevant), "seconds": time.perf_counter() - start}
    same = [
        [h["identifier"] for h in a] == [h["identifier"] for h in b]
        for a, b in zip(hits["exact"], hits["generate"])
    ]
    pairs = [(h, g) for a, b in zip(hits["exact"], hits["generate"]) for h, g in zip(a, b)]
    report["exact_equals_generate"] = {
        "captions_identical": int(sum(same)),
        "max_score_diff": max(abs(h["score"] - g["score"]) for h, g in pairs),
        "max_similarity_diff": max(abs(h["similarity"] - g["similarity"]) for h, g in pairs),
    }
    print(f"\n== quality: {report['queries']:,} test captions, {report['images']} images ==")
    for name in ("exact", "restricted", "generate"):
        figures = " ".join(f"{key}={report[name][key]:.4f}" for key in ("recall@1", "recall@5", "recall@10"))
        print(f"{name:<11} {figures}  ({report[name]['seconds']:.0f} s)")
    check = report["exact_equals_generate"]
    print(
        f"exact vs generate: same identifiers and order on {check['captions_identical']:,} / {len(same):,} "
        f"captions, max |score diff| {check['max_score_diff']:.2e}, max |similarity diff| "
        f"{check['max_similarity_diff']:.2e}"
    )
    return report


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=["quality", "latency", "steps", "ann"])
    parser.add_argument(
        "--checkpoint", default=None, help="an embedded SIGMA checkpoint (default: fresh model)"
    )
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, "outputs", "cache"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--ann-sizes", type=int, nargs="+", default=None, help="default: --sizes")
    parser.add_argument("--dim", type=int, default=128, help="embedding width of the faiss baselines")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--step-identifiers", type=int, default=1_000_000)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[0, QWEN_VOCAB], help="0: tiny vocab")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    report = {}
    if {"quality", "latency"} & set(args.sections):
        model, processor, label = load_model(args.checkpoint)
        print(f"model: {label}, layout {model.config.layout.sizes}")
    if "quality" in args.sections:
        if args.checkpoint is None:
            print("(quality needs --checkpoint; skipped)")
        else:
            report["quality"] = run_quality(model, args.cache_dir, batch_size=64)
    if "latency" in args.sections:
        report["latency"] = run_latency(model, processor, args.sizes, args.repeats)
    if "steps" in args.sections:
        report["steps"] = run_steps(args.step_identifiers, 32, 10, args.repeats, args.vocab_sizes)
    if "ann" in args.sections:
        latency = report.get("latency", {}).get("ms", {})
        engine_ms = {
            batch: statistics.median(v["p50"] for v in rows["engine exact"].values())
            for batch, rows in latency.items()
        } or {"1": float("nan"), "32": float("nan")}
        report["ann"] = run_ann(args.ann_sizes or args.sizes, args.dim, args.repeats, engine_ms)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=str)
    return report


if __name__ == "__main__":
    main()
