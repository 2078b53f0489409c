"""CIFAR-10 with 250 labels at a fixed CPU wall-clock budget: supervised vs semi-supervised.

    python bench/accuracy.py [--budget-min 15] [--seeds 42,43,44] [--strategies supervised,classical,local,fixmatch]
                             [--parallel 3] [key=value ...]

Extracts ../shared/data/cifar10-train-jpg.tar (50,000 JPEGs in train/<class>/) to --work,
renames files to <class>_<name> (ids must be unique across classes), moves a seeded 1,000
images per class to test/<class>/ (10,000 test images that no run sees: disjoint from the
labeled, validation and unlabeled images by construction, since the files are moved), and
builds a shard set from the other 40,000 with 25 labels per class, a validation split (100 per
class by default), the rest unlabeled, and that test split. Runs are scored on the test split
(result.json's `test_acc`, EMA weights). Every run gets the same wall-clock budget (`budget_s`;
the run stops at the first step boundary after it and evaluates) and a cosine schedule sized to
it (sslrun/budget.py: the step count is estimated from the measured step rate), and the same
small backbone at 32 px (`--model auto`: `cifar_cnn_wide` under bf16 where the CPU has bf16 units,
`cifar_cnn` in fp32 elsewhere; sslrun/cifar_cnn.py). Budget-stopped runs are not
bit-reproducible: a benchmark only.
Each run is its own `jobs/train.py` process; `--parallel N` runs N side by side, a strategy's
seeds together, so that every strategy meets the same contention (on 2 cores, FixMatch on
cifar_cnn ran 540-590 images/s a run with 3 side by side against 1,250 alone: each run gets
0.45x, the machine does 1.35x). Figures: bench/RESULTS-accuracy.md.
Prints a Markdown table of the test accuracy (EMA weights), mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TAR = REPO.parent / "shared" / "data" / "cifar10-train-jpg.tar"  # ../shared beside the checkout

# cifar_cnn, not test_resnet: test_resnet ends a 32 px image as one pixel. FixMatch on it was at 34-38 %
# (argmax on the unlabeled set) at step 1,700 for seeds 42-44, pseudo-labels over 0.95 about 50 % right;
# on cifar_cnn, 41 % validation accuracy at step 600 (seed 42) against 36 % for test_resnet.
# The backbone by precision: where bf16 runs natively, cifar_cnn_wide's step is 1.8x cifar_cnn's
# (258 against 144 ms a 480-image step); in fp32 it is 3.1-3.3x, and steps were worth more than width.
MODEL_AUTO = {"bf16": "cifar_cnn_wide", "off": "cifar_cnn"}
COMMON = ["image_size=32", "lr=0.03", "nesterov=true", "schedule=cosine", "ema_decay=0.99",
          # channels_last helps cifar_cnn: a step of 480 images 397 ms against 625 ms (2 threads, AVX2 CPU),
          # 158 FixMatch steps in 90 s against 151.
          # augment_on=trainer: the loader only decodes, the trainer augments the batch (34 ms beside a 397 ms
          # step), so the trainer's 2 threads get both cores: 186 steps in 90 s with no loader worker, 158 with
          # one, 112 at 1 thread and 1 worker, 100 with the loader augmenting (1 thread, 1 worker).
          "channels_last=on", "augment_on=trainer", "steps=1000000", "eval_every=1000000", "ckpt_every=1000000",
          "log_every=50", "threshold=0.95"]
PER_STRATEGY = {
    "supervised": ["batch_size=64"],
    "classical": ["batch_size=32", "mu=7"],
    "fixmatch": ["batch_size=32", "mu=7"],
    "flexmatch": ["batch_size=32", "mu=7"],
    "freematch": ["batch_size=32", "mu=7"],
    "permanent": ["batch_size=64", "extra.label_every=300"],
    # phases in steps, sized for about ten rounds in 20 minutes at a third of the machine (4-5 steps/s)
    "local": ["batch_size=64", "extra.local_warmup=500", "extra.pseudo_steps=400", "extra.retrain_steps=100"],
}


TEST_PER_CLASS = 1000


def carve_test(tree: Path, test: Path, per_class: int = TEST_PER_CLASS, seed: int = 0) -> None:
    """Move a seeded `per_class` images of every class from tree/<class>/ to test/<class>/.

    The choice is made from the union of both folders' names, so a carve killed half-way
    finishes with the same selection when run again."""
    import random

    for d in sorted(p for p in tree.iterdir() if p.is_dir()):
        dest = test / d.name
        dest.mkdir(parents=True, exist_ok=True)
        names = sorted({f.name for f in d.iterdir()} | {f.name for f in dest.iterdir()})
        if len(names) <= per_class:
            raise SystemExit(f"accuracy: class {d.name} has {len(names)} images, not more than the {per_class} for test")
        for name in random.Random(f"{seed}:{d.name}").sample(names, per_class):
            if (d / name).exists():
                (d / name).rename(dest / name)


def prepare(work: Path, val_per_class: int) -> Path:
    """The shard set under `work`, built once."""
    from sslrun.data.build import build_shards

    shards = work / "shards-test10k"
    if (shards / "manifest.json").exists():
        return shards
    tree = work / "train"
    if not tree.exists():
        if not TAR.exists():
            raise SystemExit(f"accuracy: {TAR} not found (the CIFAR-10 tar belongs in ../shared/data beside the checkout)")
        with tarfile.open(TAR) as tar:
            tar.extractall(work, filter="data")
    for d in sorted(p for p in tree.iterdir() if p.is_dir()):
        for f in d.iterdir():
            if not f.name.startswith(d.name + "_"):
                f.rename(d / f"{d.name}_{f.name}")
    carve_test(tree, work / "test")
    build_shards(shards, labeled=tree, test=work / "test", val_per_class=val_per_class, labels_per_class=25, seed=0,
                 workers=2)
    return shards


def mean_images_per_s(run_dir: Path) -> float | None:
    """Training images per second (every view through the net: 32 + 2 x 7 x 32 a FixMatch step) over
    the run's train log lines, the first left out: it holds the warm-up."""
    from sslrun import run_folder

    speeds = [float(rec["images_per_s"]) for rec in run_folder.read_jsonl(run_dir / run_folder.METRICS).records
              if rec.get("kind") == "train" and isinstance(rec.get("images_per_s"), (int, float))]
    return statistics.mean(speeds[1:]) if len(speeds) > 1 else (speeds[0] if speeds else None)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU's own units (AVX512-BF16 or AMX). Why it decides the
    precision: with them, bf16 autocast makes a 480-image cifar_cnn step 1.35x and a cifar_cnn_wide
    step 2.4x cheaper (channels_last, 2 threads); without them (an AVX2 EPYC), bf16 made a
    test_resnet step 6x slower (1.34 s against 0.22 s)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_auto(args: argparse.Namespace) -> None:
    """`--amp auto` -> bf16 where the CPU has bf16 units, else off; `--model auto` -> MODEL_AUTO[amp]."""
    if args.amp == "auto":
        args.amp = "bf16" if cpu_has_bf16() else "off"
    if args.model == "auto":
        args.model = MODEL_AUTO[args.amp]


def run_group(jobs: list[tuple[str, int]], args: argparse.Namespace, shards: Path) -> list[dict]:
    """Run `jobs` side by side, each as its own `jobs/train.py` process; a finished run's folder
    answers with its result.json at once, so an interrupted benchmark picks up where it stopped."""
    sweep = f"budget{args.budget_min:g}min-x{args.parallel}-t{args.threads}w{args.workers}-{args.model}-{args.amp}"
    if args.extra:  # runs with other settings are other runs, not finished ones to answer from
        sweep += "," + ",".join(args.extra).replace("/", "_")
    logs = args.work / "logs" / sweep
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for strategy, seed in jobs:
        name = f"{strategy},seed={seed}"
        items = [f"model={args.model}", f"amp={args.amp}", *COMMON, *PER_STRATEGY.get(strategy, []), f"strategy={strategy}", f"seed={seed}",
                 f"budget_s={args.budget_min * 60}", f"threads={args.threads}", f"workers={args.workers}", *args.extra,
                 f"data={shards}", f"root={args.work / 'runs'}", f"sweep={sweep}", f"name={name}"]
        log_path = logs / f"{name}.log"
        with open(log_path, "a") as log_file:  # "a": a rerun answering from result.json keeps the log it trained with
            started.append((log_path, subprocess.Popen([sys.executable, str(REPO / "jobs" / "train.py"), *items],
                                                       stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)))
    results = []
    for (strategy, seed), (log_path, proc) in zip(jobs, started):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"accuracy: {strategy} seed {seed} exited {proc.returncode}; see {log_path}")
        result = json.loads(out)
        result["images_per_s"] = mean_images_per_s(args.work / "runs" / sweep / f"{strategy},seed={seed}")
        results.append(result)
        print(json.dumps({"strategy": strategy, "seed": seed, "test_acc": result["test_acc"], "val_acc": result["val_acc"],
                          "steps": result["steps"], "budget_steps": result.get("budget_steps"),
                          "images_per_s": result["images_per_s"], "elapsed_s": result["elapsed_s"]}), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=15.0, help="wall-clock minutes per run")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--strategies", default="supervised,classical,local,fixmatch")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs side by side (in order: a strategy's seeds together, so each strategy meets the same contention)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cifar10-bench"))
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=0,
                        help="loader worker processes per run (0: decode in the trainer, which then has both cores)")
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                        help="auto: bf16 where the CPU has bf16 units (AVX512-BF16, AMX), else fp32")
    parser.add_argument("--model", default="auto", help=f"auto: {MODEL_AUTO['bf16']} under bf16, {MODEL_AUTO['off']} in fp32")
    parser.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds}: expected integers separated by commas, e.g. 42,43,44")
    if args.parallel < 1 or args.budget_min <= 0:
        parser.error("--parallel and --budget-min: expected positive numbers")
    from sslrun.strategies import STRATEGIES

    unknown = [s for s in args.strategies.split(",") if s not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown '{unknown[0]}' (expected some of {', '.join(sorted(STRATEGIES))})")
    resolve_auto(args)
    print(f"accuracy: model={args.model} amp={args.amp} threads={args.threads} workers={args.workers}", flush=True)
    shards = prepare(args.work, args.val_per_class)
    jobs = [(strategy, seed) for strategy in args.strategies.split(",") for seed in seeds]
    rows: dict[str, list[dict]] = {}
    t0 = time.time()
    for i in range(0, len(jobs), args.parallel):
        group = jobs[i:i + args.parallel]
        for (strategy, _), result in zip(group, run_group(group, args, shards)):
            rows.setdefault(strategy, []).append(result)
    print(f"\nCIFAR-10, 250 labels, 10,000 test images, {args.budget_min:g} min per run, "
          f"{args.parallel} run(s) at a time, seeds {args.seeds}, {(time.time() - t0) / 60:.0f} min in all")
    print("| strategy | test acc % (mean +- std) | per seed | steps (mean) | images/s (mean) |")
    print("|---|---|---|---|---|")
    means = {}
    for strategy, results in rows.items():
        accs = [100 * (r["test_acc"] if r["test_acc"] is not None else float("nan")) for r in results]
        means[strategy] = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        steps = statistics.mean(r["steps"] for r in results)
        speeds = [r["images_per_s"] for r in results if r.get("images_per_s") is not None]
        speed = f"{statistics.mean(speeds):.0f}" if speeds else "-"
        print(f"| {strategy} | {means[strategy]:.2f} +- {std:.2f} | {' / '.join(f'{a:.1f}' for a in accs)} | {steps:.0f} | {speed} |")
    if "supervised" in means:
        for strategy, mean in means.items():
            if strategy != "supervised":
                print(f"{strategy} - supervised: {mean - means['supervised']:+.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
