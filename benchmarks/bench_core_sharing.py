"""Wall time of two side-by-side stage-3 trainings of unequal length, with and without core sharing.

    python benchmarks/bench_core_sharing.py --long-steps 600 --short-steps 200

The shape of `make e2e`'s last minutes: two workers of `training/job_pool.make_pool` each train a stage 3 (from
the `make e2e` stage-2 checkpoint, `outputs/tiny-shapes/stage2`), one `--long-steps`, the other `--short-steps`;
once the short one ends, the long one runs alone. With sharing (the default) it then takes the second core
(`job_pool.share_cores`); with `OMP_NUM_THREADS=1` it keeps one thread. Both variants run in this one call, one
after the other, and the script prints the wall time of each and of the long training's steps after the short
one ended.
"""

import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")
sys.path.insert(0, RECIPES)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modeling_sigma.training.job_pool import make_pool, timed_call  # noqa: E402
from modeling_sigma.training.recipe_config import run_recipe  # noqa: E402


def train_stage3(config: str, checkpoint: str, output_dir: str, steps: int) -> float:
    """Seconds of a stage-3 training of `steps` steps from `checkpoint` (no checkpoints saved)."""
    flags = ["--config", config, "--model_name_or_path", checkpoint, "--output_dir", output_dir]
    flags += ["--max_steps", str(steps), "--save_strategy", "no", "--disable_tqdm", "true"]
    return run_recipe(os.path.join(RECIPES, "stage3.py"), flags)["train_runtime"]


def side_by_side(config: str, checkpoint: str, long_steps: int, short_steps: int, share: bool) -> dict:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(name, None)
    if not share:
        os.environ["OMP_NUM_THREADS"] = "1"
    import bench_core_sharing

    with tempfile.TemporaryDirectory() as folder, make_pool(2, import_paths=[RECIPES]) as pool:
        long, short = (
            pool.submit(
                timed_call, bench_core_sharing.train_stage3, config, checkpoint, f"{folder}/{n}", steps
            )
            for n, steps in (("long", long_steps), ("short", short_steps))
        )
        (long_train, long_wall), (short_train, _) = long.result(), short.result()
    return {"wall_s": long_wall, "long_train_s": long_train, "short_train_s": short_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(RECIPES, "configs", "tiny-shapes.yaml"))
    parser.add_argument("--checkpoint", default="outputs/tiny-shapes/stage2")
    parser.add_argument("--long-steps", type=int, default=600)
    parser.add_argument("--short-steps", type=int, default=200)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        parser.error(f"no stage-2 checkpoint at {args.checkpoint}: run `make e2e` first")
    print(f"two stage-3 trainings side by side, {args.long_steps} and {args.short_steps} steps, 2 workers")
    print("| cores of the step left alone | wall s | long training s | short training s |")
    print("|---|---|---|---|")
    for share in (True, False):
        times = side_by_side(args.config, args.checkpoint, args.long_steps, args.short_steps, share)
        label = "shared (default)" if share else "one thread (OMP_NUM_THREADS=1)"
        print(
            f"| {label} | {times['wall_s']:.1f} | {times['long_train_s']:.1f} | {times['short_train_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
