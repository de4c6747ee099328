"""The markdown tables of the end-to-end job: Recall@K per system, paired bootstrap intervals of the differences,
and Recall@K per caption type."""

from __future__ import annotations

from modeling_sigma.evaluation.statistics import paired_bootstrap, recall_by_caption_type


def table_rows(results: dict[str, dict]) -> list[dict]:
    """One flat row per figure set of `main`'s results: `system`, `queries_on`, `gallery` (with its size),
    `reranked` and `R@1/5/10` in %. Nested re-ranked and joint-gallery figures become rows of their own."""
    rows = []

    def add(system: str, figures: dict, reranked: bool, defaults: dict) -> None:
        queries_on = figures.get("queries_on", defaults.get("queries_on", "test"))
        gallery = figures.get("gallery", defaults.get("gallery", queries_on))
        size = figures.get("images", defaults.get("images"))
        recall = {f"R@{k}": round(100 * figures[f"recall@{k}"], 1) for k in (1, 5, 10)}
        gallery_label = f"{gallery} ({size})" if size else gallery
        rows.append(
            {
                "system": system,
                "queries_on": queries_on,
                "gallery": gallery_label,
                "reranked": reranked,
                **recall,
            }
        )

    for system, metrics in results.items():
        add(system, metrics, False, {})
        if metrics.get("reranked"):
            add(system, metrics["reranked"], True, metrics)
        for figures in metrics.get("joint_gallery", {}).values():
            add(system, figures, False, {})
    return rows


def format_table(results: dict[str, dict], chance: float) -> str:
    lines = ["| system | queries on | gallery | R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|"]
    for row in table_rows(results):
        label = f"{row['system']} + re-ranking" if row["reranked"] else row["system"]
        cells = " | ".join(str(row[f"R@{k}"]) for k in (1, 5, 10))
        lines.append(f"| {label} | {row['queries_on']} | {row['gallery']} | {cells} |")
    lines.append(
        f"| chance (1 / test images) | test | test | {100 * chance:.1f} | {500 * chance:.1f} | {1000 * chance:.1f} |"
    )
    return "\n".join(lines)


def open_set_summary(results: dict[str, dict]) -> str:
    """The open-set check in one line per mode: unseen R@10 as a share of test R@10 in the same gallery."""
    lines = []
    for system, metrics in results.items():
        joint = metrics.get("joint_gallery")
        if joint:
            unseen, test = (100 * joint[split]["recall@10"] for split in ("unseen", "test"))
            share = f"{100 * unseen / test:.0f} %" if test else "n/a"
            lines.append(
                f"open set, {system}: R@10 {unseen:.1f} on unseen queries vs {test:.1f} on test queries, "
                f"same gallery of {joint['test']['images']} images ({share})"
            )
    return "\n".join(lines)


def comparison_rows(
    results: dict[str, dict], comparisons: list[tuple[str, str]], groups: list, seed: int = 0
) -> list[dict]:
    """Paired bootstrap (resampling images, `groups` = each query's image) of `a − b` for each `(a, b)` pair of
    systems in `results` that both hold per-query `ranks`; differences in recall points (%)."""
    rows = []
    for a, b in comparisons:
        if a not in results or b not in results:
            continue
        ranks_a, ranks_b = results[a]["ranks"], results[b]["ranks"]
        count = min(len(ranks_a), len(ranks_b))  # a smoke run evaluates the first 64 queries only
        figures = paired_bootstrap(ranks_a[:count], ranks_b[:count], groups=groups[:count], seed=seed)
        row = {"a": a, "b": b}
        for k in (1, 5, 10):
            value = figures[f"recall@{k}"]
            row[f"R@{k}"] = {name: round(100 * value[name], 1) for name in ("difference", "low", "high")}
        rows.append(row)
    return rows


def pooled_comparison_rows(
    results: dict[str, dict], comparisons: list[tuple[str, str]], groups: list, tags: list[str], seed: int = 0
) -> list[dict]:
    """`comparison_rows` of systems trained once per seed, the seeds pooled: system `name` is the queries of
    every `name + tag` one after another (a name no tag was appended to, a baseline trained once, is repeated),
    and an image's queries of all seeds are resampled together. The difference is the mean over seeds; the
    interval covers the choice of queries, not the spread between seeds. Pairs some seed lacks are skipped."""
    label = f" (seeds pooled: {len(tags)})"
    runs = {}
    for a, b in comparisons:
        for system in (a, b):
            runs[system] = [results.get(system + tag) or results.get(system) for tag in tags]
    runs = {name: seeds for name, seeds in runs.items() if all(run and "ranks" in run for run in seeds)}
    if not runs:
        return []
    count = min(len(groups), *(len(run["ranks"]) for seeds in runs.values() for run in seeds))
    # a system trained per seed is renamed; a baseline trained once keeps its name
    names = {name: name + label if name + tags[0] in results else name for name in runs}
    pooled = {
        names[name]: {"ranks": [r for run in seeds for r in run["ranks"][:count]]}
        for name, seeds in runs.items()
    }
    pairs = [(names[a], names[b]) for a, b in comparisons if a in runs and b in runs]
    return comparison_rows(pooled, pairs, list(groups[:count]) * len(tags), seed=seed)


def format_comparisons(rows: list[dict]) -> str:
    lines = [
        "| difference (paired bootstrap over images, 95 % interval) | ΔR@1 | ΔR@5 | ΔR@10 |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(
            "{difference:+.1f} [{low:+.1f}, {high:+.1f}]".format(**row[f"R@{k}"]) for k in (1, 5, 10)
        )
        lines.append(f"| {row['a']} − {row['b']} | {cells} |")
    return "\n".join(lines)


def caption_type_rows(results: dict[str, dict], systems: list[str], caption_types: list[str]) -> dict:
    """`{system: {caption type: recall@k figures}}` for the systems that hold per-query `ranks`."""
    table = {}
    for system in systems:
        if system in results and "ranks" in results[system]:
            ranks = results[system]["ranks"]
            table[system] = recall_by_caption_type(ranks, caption_types[: len(ranks)])
    return table


def format_caption_types(table: dict) -> str:
    if not table:
        return ""
    types = list(next(iter(table.values())))
    header = " | ".join(f"{name} R@1 / R@10" for name in types)
    lines = [f"| system | {header} |", "|---|" + "---|" * len(types)]
    for system, figures in table.items():
        cells = " | ".join(
            f"{100 * figures[name]['recall@1']:.1f} / {100 * figures[name]['recall@10']:.1f}"
            for name in types
        )
        lines.append(f"| {system} | {cells} |")
    return "\n".join(lines)


__all__ = [
    "caption_type_rows",
    "comparison_rows",
    "format_caption_types",
    "format_comparisons",
    "format_table",
    "open_set_summary",
    "pooled_comparison_rows",
    "table_rows",
]
