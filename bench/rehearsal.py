"""The report's ablation rehearsed at its real shape on the SLURM test cluster (issue 13).

A script, not a timed test. Steps, each a sub-command (run them in this order):

    python bench/rehearsal.py tree /tmp/rehearsal/u30k --unlabeled 30000 -j 2
        challenge-shaped tree (train/<48 classes>/ 15 JPEGs each, unlabelled/ N loose images
        with id names, test/ loose) + truth CSVs, then its shard set (shards/build.py -j 2)
    python bench/rehearsal.py weights /tmp/rehearsal/weights.pt
        resnet50 and vit_small_patch16_224 (at the rehearsal's 32 px) fitted for a few minutes
        on the classes' pictures ("pretrained"), saved as one state_dict file, as an offline
        compute node would get it from jobs/prefetch_weights.py --out
    python bench/rehearsal.py settings [--subset hour|all]
        the sweep's runs: `hour` = every distinct setting once (seed 42), `all` = all 204
    python bench/rehearsal.py submit DATA --root R [--subset hour|all|seed=43 ...]
        jobs/submit.py --sweep-file sweeps/report-ablation.yaml on the test cluster, 2 ranks a job
    python bench/rehearsal.py check R/<sweep> [--subset ...]
        every run has a result; every permanent/local run selected pseudo-labels at every
        labeling pass; ranks agree; the per-rank figures (start-up, requeue, labeling pass,
        RSS, fds, checkpoint bytes) as Markdown tables

Why one weights file for both models: the sweep file gives `pretrained: timm` to every row and
a command-line override lays one value over all rows, so an offline `pretrained=FILE` cannot
differ per model; the state_dicts of resnet50 and the ViT have disjoint key names, and
`load_backbone_weights` takes the tensors whose name and shape match.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool

import numpy as np
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.make_synthetic_tree import VARIANTS, _variants, _with_comment  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SWEEP_FILE = REPO / "sweeps" / "report-ablation.yaml"
CLASSES = 48
LABELED_PER_CLASS = 15
SIDES = (64, 80, 96)  # the tree's JPEGs are 64-96 px, a few per class and side
IMAGE_SIZE = 32  # the rehearsal's input size, both models (ViT: a multiple of its patch 16)


# ------------------------------------------------------------------------------- the tree


def class_name(cls: int) -> str:
    return f"class_{cls:02d}"


def _pictures(cls: int) -> list[bytes]:
    """A class's pre-encoded JPEGs: its own pattern (make_synthetic_tree._variants) at each side."""
    return [jpeg for side in SIDES for jpeg in _variants(cls, side)]


def _owners(n: int, seed: int) -> np.ndarray:
    """The true class of each of n loose images: drawn once from the seed, the same in every worker."""
    return np.random.default_rng(seed).integers(0, CLASSES, n)


def _write_class(args: tuple[str, int, int, int, int]) -> list[tuple[str, str, str]]:
    """Write class `cls`'s labeled images and its share of the loose ones; return truth rows."""
    root, cls, n_unl, n_test, seed = args
    pics = _pictures(cls)
    out = Path(root)
    folder = out / "train" / class_name(cls)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(LABELED_PER_CLASS):
        (folder / f"{k:04d}.jpg").write_bytes(_with_comment(pics[(k * 37 + 5) % len(pics)], b"train %d %d" % (cls, k)))
    truth = []
    for split, folder_name, n in (("unlabeled", "unlabelled", n_unl), ("test", "test", n_test)):
        loose = out / folder_name
        for i in np.flatnonzero(_owners(n, seed + (split == "test")) == cls).tolist():
            fid = f"{i:07d}"
            (loose / f"{fid}.jpg").write_bytes(_with_comment(pics[(i * 37) % len(pics)], b"%s %d" % (split.encode(), i)))
            truth.append((split, fid, class_name(cls)))
    return truth


def make_tree(root: Path, n_unlabeled: int, n_test: int, workers: int, seed: int = 0) -> dict[str, int]:
    """The challenge's layout with hidden truth beside it: unlabelled_truth.csv, test_truth.csv."""
    for name in ("unlabelled", "test"):
        (root / name).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), c, n_unlabeled, n_test, seed) for c in range(CLASSES)]
    rows: list[tuple[str, str, str]] = []
    with Pool(max(1, workers)) as pool:
        for part in pool.imap_unordered(_write_class, jobs):
            rows += part
    for split, file in (("unlabeled", "unlabelled_truth.csv"), ("test", "test_truth.csv")):
        with open(root / file, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "class"])
            w.writerows(sorted((fid, cls) for s, fid, cls in rows if s == split))
    return {"train": CLASSES * LABELED_PER_CLASS, "unlabeled": n_unlabeled, "test": n_test}


def build_shards(root: Path, out: Path, workers: int, val_per_class: int = 5) -> float:
    """shards/build.py on the tree, the unlabeled truth kept in the manifest; returns seconds."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "shards" / "build.py"), "--labeled", str(root / "train"),
                    "--unlabeled", str(root / "unlabelled"), "--test", str(root / "test"),
                    "--unlabeled-truth", str(root / "unlabelled_truth.csv"), "--val-per-class", str(val_per_class),
                    "--out", str(out), "-j", str(workers), "--no-progress"], check=True)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------- the settings


SETTING_KEYS = ("strategy", "threshold", "frozen", "model")


def sweep_rows(sweep_file: Path = SWEEP_FILE) -> list[dict[str, str]]:
    from sslrun.sweeps import read_sweep_file

    return read_sweep_file(sweep_file)


def setting_of(row: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What a run tests, without its seed (and without the keys every row shares)."""
    return tuple(sorted((k, v) for k, v in row.items() if k != "seed"))


def subset_rows(rows: list[dict[str, str]], subset: str) -> list[dict[str, str]]:
    """`all`: every row; `hour`: the first seed's rows, every distinct setting once;
    `seed=N`: that seed's rows (a part of the whole sweep)."""
    if subset == "all":
        return rows
    if subset == "hour":
        seen: set[tuple[tuple[str, str], ...]] = set()
        out = []
        for row in rows:
            if setting_of(row) not in seen:
                seen.add(setting_of(row))
                out.append(row)
        return out
    key, _, value = subset.partition("=")
    if key != "seed" or not value:
        raise SystemExit(f"error: --subset {subset!r}: expected hour, all or seed=N")
    return [r for r in rows if r.get("seed") == value]


def subset_overrides(subset: str, rows: list[dict[str, str]]) -> list[str]:
    """Command-line overrides that make jobs/submit.py plan exactly `subset_rows`: a seed laid
    over every row plans each setting once (runs written twice are planned once), under the
    same folder names as in the whole sweep, so a later whole-sweep submit skips them."""
    if subset == "all":
        return []
    if subset == "hour":
        return [f"seed={rows[0]['seed']}"]
    return [subset]


def overrides(data: Path, root: Path, weights: Path, steps: int, label_every: int) -> list[str]:
    """A minute or so a run on CPU: few steps, small batches, 32 px, one thread a rank."""
    return [f"data={data}", f"root={root}", f"pretrained={weights}", f"image_size={IMAGE_SIZE}",
            f"steps={steps}", "batch_size=8", "mu=2", "threads=1", "workers=0", "device=cpu",
            "log_every=1", f"eval_every={steps}", "ckpt_every=2", f"extra.label_every={label_every}",
            f"extra.local_warmup={label_every}", f"extra.pseudo_steps={label_every}",
            f"extra.retrain_steps={label_every}", "epoch_steps=2"]


# ------------------------------------------------------------------------------ commands


def cmd_tree(a: argparse.Namespace) -> None:
    t0 = time.monotonic()
    counts = make_tree(a.out / "tree", a.unlabeled, a.test, a.workers)
    t_tree = time.monotonic() - t0
    t_build = build_shards(a.out / "tree", a.out / "shards", a.workers)
    print(f"{a.out}: tree {counts} in {t_tree:.1f} s, shards in {t_build:.1f} s")


def _pretraining_set() -> tuple:
    """Every class's pictures, decoded at the rehearsal's size: what the weights are fitted on."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    xs, ys = [], []
    for cls in range(CLASSES):
        for jpeg in _pictures(cls):
            img = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            xs.append(np.asarray(img))
            ys.append(cls)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
    return x, torch.tensor(ys)


def pretrain(name: str, steps: int, threads: int) -> dict:
    """A backbone fitted (AdamW, plain supervised) on the classes' pictures at 32 px, so that
    pseudo-labeling has confident predictions in a run of a few steps, as with real pretrained
    weights; random-init weights select nothing over 0.9 in six steps (tried)."""
    import timm
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    kw = {"img_size": IMAGE_SIZE} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)
    cfg = timm.data.resolve_data_config({}, model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255
    x, y = _pretraining_set()
    x = (x - mean) / std
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.monotonic()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  {name} step {step} loss {loss.item():.3f} ({time.monotonic() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        p = torch.cat([model(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)])
    conf, pred = p.max(1)
    print(f"  {name}: train acc {(pred == y).float().mean():.3f}, confidence > 0.95 on {(conf > 0.95).float().mean():.3f}")
    return model.state_dict()


def cmd_weights(a: argparse.Namespace) -> None:
    import torch

    state: dict = {}
    for name in ("resnet50", "vit_small_patch16_224"):
        sd = pretrain(name, a.steps, a.threads)
        clash = set(sd) & set(state)
        assert not clash, f"{name}: key names shared with the other model: {sorted(clash)[:3]}"
        state.update(sd)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, a.out)
    print(f"{a.out}: {len(state)} tensors, {a.out.stat().st_size / 2**20:.0f} MiB")


def cmd_settings(a: argparse.Namespace) -> None:
    rows = sweep_rows(a.sweep_file)
    sub = subset_rows(rows, a.subset)
    print(f"{len(rows)} runs in {a.sweep_file}, {len({setting_of(r) for r in rows})} distinct settings; "
          f"subset {a.subset}: {len(sub)} runs")
    for r in sub:
        print("  " + ",".join(f"{k}={v}" for k, v in r.items()))


def cmd_submit(a: argparse.Namespace) -> None:
    rows = sweep_rows(a.sweep_file)
    cmd = [sys.executable, str(REPO / "jobs" / "submit.py"), "--sweep-file", str(a.sweep_file),
           *subset_overrides(a.subset, rows),
           *overrides(a.data, a.root, a.weights, a.steps, a.label_every), *a.extra,
           "--cluster", "slurm", "--tasks-per-node", "2", "--time", "30", "--signal-delay-s", "30",
           "--partition", a.partition, "--name", "rehearsal", "--no-wait" if a.no_wait else "--wait"]
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    rc = subprocess.run(cmd, env=env).returncode
    print(f"submit exit {rc} after {time.monotonic() - t0:.0f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tree")
    t.add_argument("out", type=Path)
    t.add_argument("--unlabeled", type=int, default=30_000)
    t.add_argument("--test", type=int, default=2_000)
    t.add_argument("-j", "--workers", type=int, default=2)
    w = sub.add_parser("weights")
    w.add_argument("out", type=Path)
    w.add_argument("--steps", type=int, default=150)
    w.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("settings")
    s.add_argument("--subset", default="hour")
    s.add_argument("--sweep-file", type=Path, default=SWEEP_FILE)
    m = sub.add_parser("submit")
    m.add_argument("data", type=Path)
    m.add_argument("--root", type=Path, required=True)
    m.add_argument("--weights", type=Path, required=True)
    m.add_argument("--subset", default="hour")
    m.add_argument("--sweep-file", type=Path, default=SWEEP_FILE)
    m.add_argument("--steps", type=int, default=6)
    m.add_argument("--label-every", type=int, default=2)
    m.add_argument("--partition", default="debug")
    m.add_argument("--no-wait", action="store_true")
    m.add_argument("extra", nargs="*", help="more key=value overrides")
    c = sub.add_parser("check")
    c.add_argument("sweep", type=Path)
    c.add_argument("--subset", default="hour")
    c.add_argument("--sweep-file", type=Path, default=SWEEP_FILE)
    a = p.parse_args(argv)
    {"tree": cmd_tree, "weights": cmd_weights, "settings": cmd_settings, "submit": cmd_submit,
     "check": lambda a: cmd_check(a)}[a.cmd](a)


def cmd_check(a: argparse.Namespace) -> None:
    raise SystemExit("error: check is not written yet")


if __name__ == "__main__":
    main()
