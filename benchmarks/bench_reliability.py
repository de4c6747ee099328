"""Reliability suite: what hostile or careless use does to SIGMA, in figures.

    python benchmarks/bench_reliability.py                                    # full run, tiny in-process model
    python benchmarks/bench_reliability.py --model outputs/tiny-shapes/stage3 # the e2e checkpoint (copied first)
    python benchmarks/bench_reliability.py --short                            # the CI size (tests/test_reliability.py)

Checks, each printed as one row of a Markdown table (`--json PATH` writes every figure):
- fuzzed queries through `model.retrieve(..., truncate=True, on_invalid="skip")`: crashes, invalid identifiers
  returned, and prompts holding control tokens the user typed (special, chat-markup or identifier tokens);
- the 27 kinds of malformed image through `open_set.index.add_images`: crashes, and whether the index is unchanged after
  every refusal;
- kill -9 of `sigma index add` at random moments: failed loads of the index folder, acknowledged images lost;
- concurrent writers: `sigma index add` in parallel processes on one index folder: acknowledged adds lost;
- the Space under load on loopback (`gradio_client`): errors, "busy" answers, latency p50/p95, index unchanged;
- determinism: two fresh loads of the checkpoint give identical identifiers and results.
The model is the checkpoint given by `--model` (copied to a temp folder: the original is never written) or a tiny
model built in-process. Subprocess checks run the installed `sigma` CLI (`python -m modeling_sigma.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_inputs import fuzzed_queries, malformed_images  # noqa: E402

FULL = {
    "queries": 10_000,
    "kills": 100,
    "writers": 4,
    "writer_rounds": 25,
    "space_clients": 50,
    "space_requests": 20,
}
SHORT = {
    "queries": 200,
    "kills": 2,
    "writers": 2,
    "writer_rounds": 1,
    "space_clients": 3,
    "space_requests": 3,
}
CI = {"queries": 64, "kills": 1, "writers": 2, "writer_rounds": 1, "space_clients": 2, "space_requests": 2}
ORDINARY = ["a small red circle at the left", "a large blue star on a sand background", "two green squares"]


# --------------------------------------------------------------------------------------------------- model
def tiny_checkpoint(folder: Path) -> Path:
    """A tiny untrained SIGMA model with 64 indexed identifiers and room for 512 images per prefix."""
    from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
    from modeling_sigma.training.backbone import build_sigma_model

    torch.manual_seed(0)
    layout = SigmaIdentifierLayout(k1=8, k2=4, k3=4, k4=4, num_subspaces=1, suffix_size=512)
    generator = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, size, (64,), generator=generator) for size in layout.sizes], 1)
    codes = torch.unique(codes, dim=0)
    captions = [f"a {size} {color} {shape}" for size in ("small", "large") for color in ("red", "blue", "green")
                for shape in ("circle", "square", "star")]  # fmt: skip
    model, _ = build_sigma_model(
        "embedded", layout, codes, [f"img{i:03d}" for i in range(len(codes))], captions,
        similarity_hidden_size=32, hidden_size=64, num_layers=2, num_heads=4, vision_hidden_size=32, vision_depth=2,
    )  # fmt: skip
    model.config.num_beams = 5
    model.save_pretrained(folder)
    return folder


def load_model(path: Path):
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    return SigmaForRetrieval.from_pretrained(path).eval()


def image_files(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` distinct TinyShapes images (the unseen split) as PNG files."""
    from modeling_sigma.data.corpus import TinyShapesConfig, generate_tiny_shapes

    folder.mkdir(parents=True, exist_ok=True)
    corpus = generate_tiny_shapes(TinyShapesConfig(num_train=1, num_test=1, num_unseen=count, seed=seed))
    paths = [str(folder / f"image-{i:04d}.png") for i in range(count)]
    for path, image in zip(paths, corpus["unseen"]["image"]):
        image.save(path)
    return paths


# -------------------------------------------------------------------------------------------- in-process
def check_fuzzed_queries(model, count: int, batch_size: int = 32, seed: int = 0) -> dict:
    processor, layout, limit = model.processor, model.config.layout, model.config.max_query_length
    added = set(processor.tokenizer.added_tokens_encoder.values())
    template_controls = sum(token in added for token in processor.query_prompt_ids("a"))
    queries = fuzzed_queries(layout, count, seed)
    figures = {"queries": count, "crashes": 0, "invalid_identifiers": 0, "user_control_tokens": 0}
    figures.update(refused=0, truncated=0, answered=0)
    for query in queries:
        try:
            ids = processor.query_prompt_ids(query)
        except ValueError:  # not valid Unicode: retrieve refuses it too
            continue
        figures["user_control_tokens"] += sum(token in added for token in ids) != template_controls
        figures["truncated"] += len(ids) > limit
    for start in range(0, count, batch_size):
        batch = queries[start : start + batch_size]
        try:
            results = model.retrieve(batch, k=5, num_beams=5, truncate=True, on_invalid="skip")
        except Exception:  # count the queries that crash on their own
            results = [_retrieve_one(model, query, figures) for query in batch]
        for hits in results:
            figures["refused"] += not hits  # empty, whitespace or invalid Unicode: every valid query has hits
            figures["answered"] += bool(hits)
            figures["invalid_identifiers"] += sum(not _valid_hit(model, hit) for hit in hits)
    return figures


def _retrieve_one(model, query, figures) -> list:
    try:
        return model.retrieve([query], k=5, num_beams=5, truncate=True, on_invalid="skip")[0]
    except Exception:
        figures["crashes"] += 1
        return []


def _valid_hit(model, hit) -> bool:
    try:
        return model.index.image_id_of(hit["identifier"]) == hit["image_id"]
    except (KeyError, ValueError):
        return False


def check_malformed_images(model, folder: Path) -> dict:
    from modeling_sigma.open_set.index import add_images, remove_images

    index = model.index.copy()
    kinds = malformed_images(folder)
    outcomes, changed = {}, []
    for number, (kind, value) in enumerate(kinds.items()):
        before = (list(index.image_ids), index.codes.clone(), len(index.trie))
        image_id = f"malformed-{number}"
        try:
            add_images(index, model, [value], [image_id])
            outcomes[kind] = "added"
            remove_images(index, [image_id], model=model)
        except ValueError as error:
            outcomes[kind] = f"refused: {str(error)[:90]}"
        except Exception as error:  # anything else is a crash
            outcomes[kind] = f"CRASH {type(error).__name__}: {str(error)[:90]}"
        after = (list(index.image_ids), index.codes, len(index.trie))
        if before[0] != after[0] or not torch.equal(before[1], after[1]) or before[2] != after[2]:
            changed.append(kind)
    crashes = sum(outcome.startswith("CRASH") for outcome in outcomes.values())
    added = sum(outcome == "added" for outcome in outcomes.values())
    return {"kinds": len(kinds), "crashes": crashes, "added": added, "refused": len(kinds) - added - crashes,
            "index_changed_after": changed, "outcomes": outcomes}  # fmt: skip


def check_determinism(checkpoint: Path, image_folder: Path, count: int = 50) -> dict:
    from modeling_sigma.open_set.index import add_images

    queries = ORDINARY + [
        q for q in fuzzed_queries(load_model(checkpoint).config.layout, count, 7) if q.strip()
    ]
    images = image_files(image_folder, 4, seed=3)
    runs = []
    for _ in range(2):
        model = load_model(checkpoint)
        results = model.retrieve(queries, k=5, num_beams=5, truncate=True)
        codes = add_images(model.index.copy(), model, images, [f"d{i}" for i in range(len(images))])
        runs.append((results, codes.tolist()))
    identifiers = [[[hit["identifier"] for hit in hits] for hits in run[0]] for run in runs]
    return {"runs": 2, "queries": len(queries), "identical_identifiers": identifiers[0] == identifiers[1],
            "identical_results": runs[0][0] == runs[1][0], "identical_added_identifiers": runs[0][1] == runs[1][1]}  # fmt: skip


# ------------------------------------------------------------------------------------------ subprocesses
def sigma_add(checkpoint: Path, index: Path, image: str, image_id: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "modeling_sigma.cli", "index", "add", image, "--ids", image_id,
               "--model", str(checkpoint), "--index", str(index)]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def indexed_ids(index: Path) -> set[str] | None:
    """Image ids of the index folder, `None` when it does not load."""
    from modeling_sigma.modeling.index import SigmaIndex

    try:
        return set(SigmaIndex.load(index).image_ids)
    except Exception:
        return None


def check_kill_loop(checkpoint: Path, workdir: Path, kills: int, seed: int = 0) -> dict:
    """`sigma index add` runs killed with SIGKILL at random moments until `kills` were killed (at most 3 × `kills`
    runs); after each, the folder must load and hold every image an earlier run acknowledged (exit status 0)."""
    rng, index = random.Random(seed), workdir / "kill-index"
    images = image_files(workdir / "kill-images", 3 * kills + 1, seed=1)
    start = time.perf_counter()
    first = sigma_add(checkpoint, index, images[0], "kill-0")
    first.communicate()
    shortest = time.perf_counter() - start  # the delay is drawn below the shortest complete run seen so far
    acknowledged = {"kill-0"} if first.returncode == 0 else set()
    figures = {"kills": 0, "finished_first": 0, "failed_loads": 0, "acknowledged": 0, "lost": 0}
    for i in range(1, 3 * kills + 1):
        if figures["kills"] == kills:
            break
        start, process = time.perf_counter(), sigma_add(checkpoint, index, images[i], f"kill-{i}")
        time.sleep(rng.uniform(0.2, 1.0) * shortest)  # mostly late: loading the model is most of a run
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            figures["kills"] += 1
        else:
            shortest = min(shortest, time.perf_counter() - start)
        process.communicate()
        if process.returncode == 0:
            acknowledged.add(f"kill-{i}")
            figures["finished_first"] += 1
        present = indexed_ids(index)
        figures["failed_loads"] += present is None
        figures["lost"] = len(acknowledged - (present or set()))
    figures.update(acknowledged=len(acknowledged), shortest_run_seconds=round(shortest, 2))
    return figures


def check_concurrent_writers(checkpoint: Path, workdir: Path, writers: int, rounds: int) -> dict:
    index = workdir / "writers-index"
    images = image_files(workdir / "writer-images", writers * rounds, seed=2)
    acknowledged, errors = set(), {}
    for round_number in range(rounds):
        ids = [f"w{round_number}-{i}" for i in range(writers)]
        jobs = [
            sigma_add(checkpoint, index, images[round_number * writers + i], ids[i]) for i in range(writers)
        ]
        for image_id, job in zip(ids, jobs):
            _, err = job.communicate()
            if job.returncode == 0:
                acknowledged.add(image_id)
            else:
                line = (err.strip().splitlines() or ["(no message)"])[-1][:120]
                errors[line] = errors.get(line, 0) + 1
    present = indexed_ids(index)
    lost = acknowledged - (present or set())
    return {"writers": writers, "rounds": rounds, "acknowledged": len(acknowledged), "lost": len(lost),
            "refused": sum(errors.values()), "errors": errors, "final_load_failed": present is None}  # fmt: skip


# -------------------------------------------------------------------------------------------------- space
def check_space_load(
    checkpoint: Path, workdir: Path, clients: int, requests: int, queue_size: int | None
) -> dict:
    import importlib.util
    import socket

    import gradio_client

    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "gradio"))
    spec = importlib.util.spec_from_file_location("sigma_space_app", ROOT / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    options = {} if queue_size is None else {"queue_size": queue_size}
    demo = app.build_demo(model_path=checkpoint, corpus="none", **options)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    space = demo.sigma_space
    if not space.wait_until_ready(300):
        raise RuntimeError(f"the Space did not start: {space.status_markdown()}")
    before = list(space.index.image_ids)
    url, outcomes, lock = f"http://127.0.0.1:{port}/", [], threading.Lock()

    def client_loop(number: int) -> None:
        client = gradio_client.Client(url, verbose=False, download_files=False)
        for request in range(requests):
            query = ORDINARY[(number + request) % len(ORDINARY)]
            start = time.perf_counter()
            try:
                client.predict(query, 5, api_name="/search")
                outcome = "ok"
            except (gradio_client.exceptions.AppError, gradio_client.utils.QueueError) as error:
                outcome = (
                    "busy" if "busy" in str(error) or "Queue is full" in str(error) else f"error: {error}"
                )
            except Exception as error:
                outcome = f"error: {type(error).__name__}: {error}"
            with lock:
                outcomes.append((outcome, time.perf_counter() - start))
        client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    demo.close()
    latencies = sorted(seconds for outcome, seconds in outcomes if outcome == "ok")
    errors = [outcome for outcome, _ in outcomes if outcome.startswith("error")]
    return {"clients": clients, "requests_per_client": requests, "answered": len(latencies),
            "busy": sum(outcome == "busy" for outcome, _ in outcomes), "errors": len(errors), "error_samples": errors[:3],
            "p50_s": _quantile(latencies, 0.5), "p95_s": _quantile(latencies, 0.95), "seconds": round(elapsed, 1),
            "index_unchanged": list(space.index.image_ids) == before}  # fmt: skip


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1], 3)


# --------------------------------------------------------------------------------------------------- main
def run_checks(sizes: dict, model_path: str | None, workdir: Path, only: set[str] | None = None) -> dict:
    """Run the checks (all, or those in `only`) with the given sizes; returns the figures of each."""
    checkpoint = workdir / "model"
    if model_path:
        shutil.copytree(model_path, checkpoint)
    else:
        tiny_checkpoint(checkpoint)
    wanted = only or {"fuzz", "images", "kill", "writers", "space", "determinism"}
    model = load_model(checkpoint) if wanted & {"fuzz", "images"} else None
    checks = {
        "fuzz": lambda: check_fuzzed_queries(model, sizes["queries"], seed=sizes.get("seed", 0)),
        "images": lambda: check_malformed_images(model, workdir / "malformed"),
        "kill": lambda: check_kill_loop(checkpoint, workdir, sizes["kills"]),
        "writers": lambda: check_concurrent_writers(
            checkpoint, workdir, sizes["writers"], sizes["writer_rounds"]
        ),
        "space": lambda: check_space_load(
            checkpoint, workdir, sizes["space_clients"], sizes["space_requests"], sizes.get("space_queue")
        ),
        "determinism": lambda: check_determinism(checkpoint, workdir / "determinism"),
    }
    report = {}
    for name, check in checks.items():
        if name in wanted:
            start = time.perf_counter()
            report[name] = check()
            report[name]["check_seconds"] = round(time.perf_counter() - start, 1)
            print(f"{name}: done in {report[name]['check_seconds']} s", file=sys.stderr, flush=True)
    return report


TABLE_ROWS = {  # report key → (check, figures: a str.format template over that part of the report)
    "fuzz": ("fuzzed queries", "{queries:,} queries: {crashes} crashes, {invalid_identifiers} invalid identifiers, "
             "{user_control_tokens} prompts with user-typed control tokens; {refused} refused (empty or invalid "
             "text), {truncated} truncated, {answered} answered"),
    "images": ("malformed images", "{kinds} kinds: {crashes} crashes, {refused} refused, {added} added; index "
               "changed after a failure: {changed}"),
    "kill": ("kill -9 `sigma index add`", "{kills} kills ({finished_first} runs finished first): {failed_loads} "
             "failed loads, {acknowledged} acknowledged, {lost} lost"),
    "writers": ("concurrent writers", "{writers} processes × {rounds} rounds: {acknowledged} acknowledged, {lost} "
                "lost, {refused} refused"),
    "space": ("Space load", "{clients} clients × {requests_per_client} searches: {errors} errors, {busy} busy, "
              "{answered} answered, p50 {p50_s} s, p95 {p95_s} s, {seconds} s in all; index unchanged: "
              "{index_unchanged}"),
    "determinism": ("determinism", "{runs} runs × {queries} queries: identical identifiers "
                    "{identical_identifiers}, identical results {identical_results}, identical added identifiers "
                    "{identical_added_identifiers}"),
}  # fmt: skip


def table(report: dict) -> str:
    rows = ["| check | figures |", "|---|---|"]
    for key, (check, template) in TABLE_ROWS.items():
        part = report.get(key)
        if part:
            figures = template.format_map({**part, "changed": len(part.get("index_changed_after", []))})
            rows.append(f"| {check} | {figures} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="SIGMA checkpoint folder (copied; default: tiny in-process)"
    )
    parser.add_argument("--short", action="store_true", help="the CI sizes: " + json.dumps(SHORT))
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    parser.add_argument(
        "--space-queue", type=int, default=None, help="Space queue size (default: the Space's)"
    )
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["fuzz", "images", "kill", "writers", "space", "determinism"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzzed queries")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("modeling_sigma").setLevel(logging.ERROR)  # truncation warnings: counted, not printed
    transformers.utils.logging.disable_progress_bar()
    sizes = dict(SHORT if args.short else FULL)
    sizes.update({name: getattr(args, name) for name in FULL if getattr(args, name) is not None})
    sizes.update(space_queue=args.space_queue, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="sigma-reliability-") as workdir:
        report = run_checks(sizes, args.model, Path(workdir), set(args.only) if args.only else None)
    report["command"] = "python benchmarks/bench_reliability.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
