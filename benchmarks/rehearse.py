"""Real-scale rehearsal on CPU (`make rehearse`): the paths a GPU cluster run takes, at the shapes that break them.

    python benchmarks/rehearse.py                 # ~10-15 min on 2 cores; prints the table and writes --output
    python benchmarks/rehearse.py --workdir DIR   # keep the workspace (checkpoints, logs) in DIR

1. A Qwen2.5-VL-3B-shaped backbone folder (`rehearse_model.py`: 151,936 tied embedding rows, text hidden 2048,
   vision hidden 1280, the real image processor; 1 decoder layer, 1 vision block) and a corpus of 500×375 JPEGs.
2. Stages 1, 2, 3 under `accelerate launch --multi_gpu --num_processes 2` (two gloo ranks) from that folder with
   bf16 autocast, gradient checkpointing, replayed image rows mixed into text batches, 2 optimiser steps each.
   Plain SGD instead of AdamW: AdamW's two fp32 moments of 446M parameters would add 3.6 GB per rank to a shared
   24 GB machine; the optimiser is not what the rehearsal tests.
3. `AutoModel.from_pretrained(stage3, trust_remote_code=True, dtype=torch.bfloat16)` retrieves.
4. Gradient accumulation 2 equals the doubled batch (tests/training/test_trainer.py, tiny model: an exact check
   needs fp32 without autocast, which at real scale would be only slower).
5. FSDP (v1, FULL_SHARD, sharded state dict) over two gloo ranks saves full weights (tiny backbone: FSDP on CPU
   runs, but is slow). DeepSpeed ZeRO-3 cannot run here: it needs a CUDA/XPU/HPU accelerator.
6. The lazy stage-1 dataset over 30,000 Flickr-sized JPEGs stays under 2 GB (`bench_stage_data.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from rehearse_model import QWEN25_VL_3B_VOCAB, write_jpeg_corpus  # noqa: E402

PYTHON = sys.executable
ACCELERATE = [PYTHON, "-m", "accelerate.commands.launch"]
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "bf16"]
FSDP = [
    "--use_fsdp", "--num_processes", "2", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap", "Qwen2_5_VLDecoderLayer,Qwen2_5_VLVisionBlock",
    "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_use_orig_params", "true",
    "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false", "--mixed_precision", "no",
]  # fmt: skip
# 12 images: a small identifier layout and short solver runs (stage 0 is not what is rehearsed)
SMALL_STAGE0 = dict(k1=4, k2=2, k3=2, k4=2, suffix_size=32, semi_nmf_iterations=5, coefficient_iterations=10)
SMALL_STAGE0["kmeans_batch_size"] = 64
TRAINER = {
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "global_batch_size": 4,
    "max_steps": 2,
    "learning_rate": 1.0e-3,
    "optim": "sgd",
    "bf16": True,
    "gradient_checkpointing": True,
    "use_cpu": True,
    "save_strategy": "no",
    "report_to": [],
    "disable_tqdm": True,
    "logging_steps": 1,
    "seed": 0,
}


def environment(workdir: str) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": os.path.join(workdir, "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


# Runs a command and writes the peak RSS (KiB) of the largest process below it. A fresh small process: Linux
# carries a parent's peak into ru_maxrss across fork + exec, so measuring from this (large) process would not do.
PEAK_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run(command: list[str], workdir: str, log: str, timeout: int = 900) -> tuple[int, str, float, float]:
    """(return code, output, seconds, peak RSS in GB of the largest process it started)."""
    started, peak_file = time.time(), log + ".peak"
    with open(log, "w") as stream:
        code = subprocess.run(
            [PYTHON, "-c", PEAK_WRAPPER, peak_file, *command],
            cwd=ROOT,
            env=environment(workdir),
            stdout=stream,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode
    peak = int(open(peak_file).read()) * 1024 / 1e9 if os.path.isfile(peak_file) else 0.0
    with open(log) as stream:
        return code, stream.read(), time.time() - started, peak


def prepare(workdir: str) -> dict:
    """Corpus of JPEGs, stage-0 identifiers (tiny CLIP features), the 3B-shaped backbone folder, the config."""
    from modeling_sigma.data.corpus import TinyShapesConfig
    from modeling_sigma.identifiers.tiny_clip import TinyClipConfig, get_tiny_clip
    from modeling_sigma.training.recipe_config import run_recipe

    corpus = write_jpeg_corpus(os.path.join(workdir, "data"), {"train": 8, "test": 4, "unseen": 2})
    cache = os.path.join(workdir, "cache")
    encoder = get_tiny_clip(
        cache,
        TinyShapesConfig(num_train=24, num_test=8, num_unseen=4, seed=5),
        TinyClipConfig(hidden_size=32, projection_dim=16, num_layers=1, epochs=1, batch_size=8),
        progress=False,
    )
    from datasets import load_from_disk

    captions = [c for row in load_from_disk(corpus)["train"]["captions"] for c in row]
    backbone = os.path.join(workdir, "qwen2.5-vl-3b-shaped")
    build = [PYTHON, "-c", BUILD_BACKBONE, backbone, corpus]
    code, output, seconds, peak = run(build, workdir, os.path.join(workdir, "backbone.log"))
    if code:
        raise RuntimeError(f"building the 3B-shaped backbone failed: {last_error(output)}")
    out = os.path.join(workdir, "out")
    data = {"corpus": corpus, "cache_dir": cache, "stage0_dir": os.path.join(out, "stage0")}
    config = {
        "stage0": {
            "corpus": corpus,
            "cache_dir": cache,
            "encoder": encoder,
            "output_dir": data["stage0_dir"],
            "fit_splits": ["train", "test"],
            **SMALL_STAGE0,
        },
        "stage1": {**data, **TRAINER, "model_name_or_path": backbone, "train_splits": ["train", "test"]},
        "stage2": {**data, **TRAINER, "model_name_or_path": f"{out}/stage1", "replay_fraction": 0.5},
        "stage3": {
            **data,
            **TRAINER,
            "model_name_or_path": f"{out}/stage2",
            "teacher": encoder,
            "replay_fraction": 0.5,
        },
    }
    for stage in ("stage1", "stage2", "stage3"):
        config[stage]["output_dir"] = os.path.join(out, stage)
    path = os.path.join(workdir, "rehearsal.yaml")
    with open(path, "w") as stream:
        yaml.safe_dump(config, stream)
    run_recipe(os.path.join(ROOT, "recipes", "stage0.py"), ["--config", path])
    return {"config": path, "out": out, "backbone": backbone, "captions": captions, "build": (seconds, peak)}


BUILD_BACKBONE = """
import sys
sys.path.insert(0, "benchmarks")
from datasets import load_from_disk
from rehearse_model import save_backbone_folder
captions = [c for row in load_from_disk(sys.argv[2])["train"]["captions"] for c in row]
save_backbone_folder(sys.argv[1], captions)
"""


def ddp_stage(stage: str, workspace: dict, workdir: str) -> dict:
    log = os.path.join(workdir, f"{stage}-ddp.log")
    command = [*ACCELERATE, *DDP, f"recipes/{stage}.py", "--config", workspace["config"]]
    code, output, seconds, peak = run(command, workdir, log)
    ranks = len(re.findall(r"on 2 process\(es\)", output))
    epochs = re.findall(r"'epoch': ([0-9.]+)\}", output)
    checkpoint = os.path.join(workspace["out"], stage, "model.safetensors")
    passed = code == 0 and ranks == 2 and os.path.isfile(checkpoint)
    epoch = f"{float(epochs[-1]):.3f}" if epochs else "?"
    detail = f"rc {code}, {ranks} ranks logged world size 2, epoch {epoch} after 2 steps of global batch 4"
    if code:
        detail += f": {last_error(output)}"
    return row(f"{stage}: 2 gloo ranks, bf16, checkpointing", passed, detail, seconds, peak)


def last_error(output: str) -> str:
    lines = [line for line in output.splitlines() if "Error" in line or "error" in line]
    return (lines[-1] if lines else output.strip().splitlines()[-1])[-200:]


def row(check: str, passed: bool | None, detail: str, seconds: float = 0.0, peak: float = 0.0) -> dict:
    status = "skip" if passed is None else ("PASS" if passed else "FAIL")
    return {
        "check": check,
        "result": status,
        "detail": detail,
        "seconds": round(seconds),
        "peak_rss_gb": round(peak, 2),
    }


LOAD_CHECK = """
import json, sys, torch
from safetensors import safe_open
from transformers import AutoModel
path, query = sys.argv[1], sys.argv[2]
with safe_open(path + "/model.safetensors", "pt") as f:
    stored = sorted({str(f.get_tensor(k).dtype) for k in list(f.keys())[:8]})
model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16).eval()
hits = model.retrieve([query], k=3, num_beams=4)[0]
print(json.dumps({"stored": stored, "loaded": sorted({str(p.dtype) for p in model.parameters()}),
    "rows": model.get_input_embeddings().weight.shape[0], "hits": [h["image_id"] for h in hits],
    "class": type(model).__name__}))
"""


def load_check(workspace: dict, workdir: str) -> dict:
    path = os.path.join(workspace["out"], "stage3")
    command = [PYTHON, "-c", LOAD_CHECK, path, workspace["captions"][0]]
    code, output, seconds, peak = run(command, workdir, os.path.join(workdir, "load.log"))
    found = re.findall(r"^\{.*\}$", output, flags=re.M)
    if code or not found:
        return row("bf16 checkpoint: AutoModel(trust_remote_code, bf16) retrieves", False, last_error(output))
    report = json.loads(found[-1])
    passed = (
        report["stored"] == ["torch.bfloat16"]
        and report["loaded"] == ["torch.bfloat16"]
        and report["rows"] >= QWEN25_VL_3B_VOCAB
        and len(report["hits"]) == 3
    )
    detail = f"stored {report['stored']}, {report['rows']:,} embedding rows, top-3 {report['hits']}"
    return row("bf16 checkpoint: AutoModel(trust_remote_code, bf16) retrieves", passed, detail, seconds, peak)


def accumulation_check(workdir: str) -> dict:
    command = [
        PYTHON,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/training/test_trainer.py",
        "-k",
        "accumulating",
    ]
    code, output, seconds, peak = run(command, workdir, os.path.join(workdir, "accumulation.log"))
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    return row(
        "accumulation 2 = doubled batch (gradients, SigmaTrainer and Trainer)",
        code == 0,
        summary,
        seconds,
        peak,
    )


def fsdp_check(workspace: dict, workdir: str) -> dict:
    output_dir = os.path.join(workspace["out"], "stage1-fsdp")
    flags = ["--model_name_or_path", "embedded", "--bf16", "false", "--gradient_checkpointing", "false"]
    flags += ["--optim", "adamw_torch", "--output_dir", output_dir]
    command = [*ACCELERATE, *FSDP, "recipes/stage1.py", "--config", workspace["config"], *flags]
    code, output, seconds, peak = run(command, workdir, os.path.join(workdir, "fsdp.log"))
    if code:
        return row(
            "FSDP v1 FULL_SHARD, 2 ranks: final save gathers", False, last_error(output), seconds, peak
        )
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    saved = SigmaForRetrieval.from_pretrained(output_dir)  # strict shapes: a shard would not load
    ranks = len(re.findall(r"on 2 process\(es\)", output))
    detail = f"{ranks} ranks, {saved.num_parameters():,} parameters loaded from the saved folder"
    return row("FSDP v1 FULL_SHARD, 2 ranks: final save gathers", ranks == 2, detail, seconds, peak)


def lazy_dataset_check(workdir: str, images: int, collate_rows: int) -> dict:
    figures_file = os.path.join(workdir, "stage_data.json")
    command = [
        PYTHON,
        "benchmarks/bench_stage_data.py",
        "--images",
        str(images),
        "--collate-rows",
        str(collate_rows),
    ]
    code, output, seconds, peak = run(
        [*command, "--output", figures_file], workdir, os.path.join(workdir, "data.log")
    )
    if code:
        return row("lazy stage-1 dataset RSS < 2 GB", False, last_error(output), seconds, peak)
    with open(figures_file) as stream:
        figures = json.load(stream)
    detail = (
        f"{figures['images']:,} JPEGs, {figures['collated_rows']:,} rows collated: peak {figures['peak_rss_gb']} GB "
        f"(a decoded list would hold {figures['decoded_list_gb']} GB)"
    )
    return row("lazy stage-1 dataset RSS < 2 GB", figures["peak_rss_gb"] < 2.0, detail, seconds, peak)


def table(rows: list[dict]) -> str:
    lines = ["| check | result | detail | s | peak RSS GB |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r['check']} | {r['result']} | {r['detail']} | {r['seconds']} | {r['peak_rss_gb']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", default=None, help="keep the workspace here (default: a temporary folder)"
    )
    parser.add_argument("--images", type=int, default=30_000, help="JPEGs of the lazy-dataset check")
    parser.add_argument(
        "--collate-rows", type=int, default=2_000, help="rows the lazy-dataset check collates"
    )
    parser.add_argument("--output", default=os.path.join(ROOT, "results", "rehearsal.json"))
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="sigma-rehearsal-")
    os.makedirs(workdir, exist_ok=True)
    started = time.time()
    workspace = prepare(workdir)
    rows = [
        row(
            "backbone folder: Qwen2.5-VL-3B shapes, 1+1 layers, bf16",
            True,
            "446M parameters; 151,936 tied rows, hidden 2048 / vision 1280, real image processor",
            *workspace["build"],
        ),
    ]
    for stage in ("stage1", "stage2", "stage3"):
        rows.append(ddp_stage(stage, workspace, workdir))
        print(table(rows[-1:]), flush=True)
    rows.append(load_check(workspace, workdir))
    rows.append(accumulation_check(workdir))
    rows.append(fsdp_check(workspace, workdir))
    rows.append(row("DeepSpeed ZeRO-3 save", None, "not run: DeepSpeed needs a CUDA/XPU/HPU device"))
    rows.append(lazy_dataset_check(workdir, args.images, args.collate_rows))
    print(f"\nRehearsal ({time.time() - started:.0f} s, workspace {workdir})\n\n{table(rows)}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as stream:
        json.dump({"seconds": round(time.time() - started), "rows": rows}, stream, indent=2)
    return 0 if all(r["result"] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
