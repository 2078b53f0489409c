"""CIFAR-10 with 250 labels at a fixed CPU wall-clock budget: supervised vs semi-supervised.

    python bench/accuracy.py [--budget-min 15] [--seeds 42,43,44] [--strategies supervised,classical,local,fixmatch]

Extracts /work/shared/data/cifar10-train-jpg.tar (50,000 JPEGs in train/<class>/) to --work,
renames files to <class>_<name> (ids must be unique across classes), and builds a shard set
with 25 labels per class and a validation split carved from the training images (100 per
class by default). Every run gets the same wall-clock budget (`budget_s`; the run stops at
the first step boundary after it and evaluates), a constant learning rate (the step count a
budget allows is not known in advance, so a cosine schedule could not end on time), and the
same small backbone at 32 px. Budget-stopped runs are not bit-reproducible: a benchmark only.
Prints mean +- std of the final validation accuracy (EMA weights) per strategy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TAR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-train-jpg.tar"  # ../shared beside the checkout

COMMON = ["model=test_resnet", "image_size=32", "lr=0.03", "nesterov=true", "schedule=constant", "ema_decay=0.99",
          # fp32: bf16 autocast + channels_last made a test_resnet FixMatch step (480 images, 32 px) 6x
          # slower on this 2-core CPU (1.34 s against 0.22 s), whatever it does for bigger nets
          "amp=off", "channels_last=off", "steps=1000000", "eval_every=1000000", "ckpt_every=1000000",
          "log_every=50", "threshold=0.95"]
PER_STRATEGY = {
    "supervised": ["batch_size=64"],
    "classical": ["batch_size=32", "mu=7"],
    "fixmatch": ["batch_size=32", "mu=7"],
    "flexmatch": ["batch_size=32", "mu=7"],
    "permanent": ["batch_size=64", "extra.label_every=300"],
    # phases in steps, sized for a few minutes on 2 busy cores (about 2-3 steps/s); scale them with the budget
    "local": ["batch_size=64", "extra.local_warmup=150", "extra.pseudo_steps=100", "extra.retrain_steps=50"],
}


def prepare(work: Path, val_per_class: int) -> Path:
    """The shard set under `work`, built once."""
    from sslrun.data.build import build_shards

    shards = work / "shards"
    if (shards / "manifest.json").exists():
        return shards
    tree = work / "train"
    if not tree.exists():
        with tarfile.open(TAR) as tar:
            tar.extractall(work, filter="data")
    for d in sorted(p for p in tree.iterdir() if p.is_dir()):
        for f in d.iterdir():
            if not f.name.startswith(d.name + "_"):
                f.rename(d / f"{d.name}_{f.name}")
    build_shards(shards, labeled=tree, val_per_class=val_per_class, labels_per_class=25, seed=0, workers=2)
    return shards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=15.0, help="wall-clock minutes per run")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--strategies", default="supervised,classical,local,fixmatch")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cifar10-bench"))
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the loader gets the other cores)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = parser.parse_args()

    from sslrun.config import make_config, parse_overrides
    from sslrun.engine import run

    shards = prepare(args.work, args.val_per_class)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[float]] = {}
    for strategy in args.strategies.split(","):
        for seed in seeds:
            items = [*COMMON, *PER_STRATEGY.get(strategy, []), f"strategy={strategy}", f"seed={seed}",
                     f"budget_s={args.budget_min * 60}", f"threads={args.threads}", f"workers={args.workers}",
                     *args.extra]
            cfg = make_config({**parse_overrides(items), "data": str(shards), "root": str(args.work / "runs"),
                               "sweep": f"budget{args.budget_min:g}min",
                               "name": f"{strategy},seed={seed}"})
            t0 = time.time()
            result = run(cfg)
            rows.setdefault(strategy, []).append(100 * result["val_acc"])
            print(json.dumps({"strategy": strategy, "seed": seed, "val_acc": result["val_acc"], "steps": result["steps"],
                              "elapsed_s": result["elapsed_s"], "wall_s": round(time.time() - t0, 1)}), flush=True)
    print(f"\nCIFAR-10, 250 labels, {args.val_per_class * 10} validation images, {args.budget_min:g} min per run, "
          f"seeds {args.seeds}")
    print(f"{'strategy':<12} {'val acc %':>14}  runs")
    for strategy, accs in rows.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{strategy:<12} {statistics.mean(accs):7.2f} +- {std:4.2f}  {len(accs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
