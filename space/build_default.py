"""Builds the Space's default model: stages 0–3 of the embedded job (`make e2e`), without its evaluations.

    python space/build_default.py    # from anywhere; writes outputs/tiny-shapes/stage0 … stage3

The app runs this in a child process (`build_embedded_default`) when `outputs/tiny-shapes/stage3` is missing
and shows its log lines. The recipes and `recipes/configs/tiny-shapes.yaml` are the ones `make e2e` runs, so
the checkpoint is the same; a killed build resumes from the last complete checkpoint when rerun. Two builds
never run at once (a lock file), and a build started by the app stops when the app dies.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
# in a clone the repository root is the parent of space/; on a Space the package and recipes sit beside this file
ROOT = HERE.parent if (HERE.parent / "modeling_sigma").is_dir() else HERE
DEFAULT_MODEL = ROOT / "outputs" / "tiny-shapes" / "stage3"  # where `make e2e` writes the final checkpoint
CONFIG = os.path.join("recipes", "configs", "tiny-shapes.yaml")
STAGES = ("stage0", "stage1", "stage2", "stage3")
LOCK_FILE = os.path.join("outputs", "tiny-shapes", ".build.lock")
BUILD_IDLE_SECONDS = 300  # an output folder written to more recently is taken to be in use by another run


def is_complete_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))


def last_write(folder: Path) -> float:
    """Newest modification time of `folder` and the files two levels below it (0 when it does not exist)."""
    paths = [folder, *folder.glob("*"), *folder.glob("*/*")] if folder.exists() else []
    return max((path.stat().st_mtime for path in paths if path.exists()), default=0.0)


def build_embedded_default(progress: Callable[[str], None], idle_seconds: float = BUILD_IDLE_SECONDS) -> None:
    """Run this file in a child process (the app calls this), passing its log lines to `progress`.

    If another run (e.g. `make e2e`) wrote into the output folder recently, wait for it to finish, or to stay
    idle for `idle_seconds`, instead of training into the same folders at the same time.
    """
    folder = DEFAULT_MODEL.parent
    while time.time() - last_write(folder) < idle_seconds:
        if is_complete_checkpoint(DEFAULT_MODEL):
            return
        progress(f"another run is writing {folder} (make e2e?); waiting for it to finish")
        time.sleep(10)
    if is_complete_checkpoint(DEFAULT_MODEL):
        return
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--exit-with-parent"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        for line in child.stdout:
            if line.strip():
                progress(line.rstrip())
    if child.returncode != 0:
        raise RuntimeError(f"building the embedded default failed (exit status {child.returncode})")


def exit_with_parent() -> None:
    """Stop when the process that started this one is gone (orphans are adopted by another pid)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the starting process dies")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the YAML's output and cache folders are relative to the repository root
    sys.path.insert(0, str(ROOT))
    from modeling_sigma.training.recipe_config import run_recipe

    if args.exit_with_parent:
        exit_with_parent()
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    lock = open(LOCK_FILE, "w")  # held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"=== another build holds {LOCK_FILE}; waiting for it", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete_checkpoint(DEFAULT_MODEL):
            print("=== the other build wrote the model", flush=True)
            return
    start = time.time()
    for number, stage in enumerate(STAGES, start=1):
        flags = [] if stage == "stage0" else ["--disable_tqdm", "true"]
        print(
            f"=== step {number} of {len(STAGES)}: {stage} ({time.time() - start:.0f} s elapsed)", flush=True
        )
        run_recipe(os.path.join("recipes", f"{stage}.py"), ["--config", CONFIG, *flags])
    print(f"=== done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
