"""The report's ablation rehearsed at its real shape on the SLURM test cluster (issue 13).

A script, not a timed test. Steps, each a sub-command (run them in this order):

    python bench/rehearsal.py tree /tmp/rehearsal/u30k --unlabeled 30000 -j 2
        challenge-shaped tree (train/<48 classes>/ 15 JPEGs each, unlabelled/ N loose images
        with id names, test/ loose) + truth CSVs, then its shard set (shards/build.py -j 2)
    python bench/rehearsal.py weights /tmp/rehearsal/weights.pt
        resnet50 and vit_small_patch16_224 (at the rehearsal's 32 px) with a head that is
        confident on the classes' pictures ("pretrained"), saved as one state_dict file, as an
        offline compute node would get it from jobs/prefetch_weights.py --out
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


def write_subset_file(rows: list[dict[str, str]], out: Path) -> Path:
    """The subset's rows as a sweep file (`runs:`, every key as the whole sweep gives it), so
    jobs/submit.py plans exactly them under the whole sweep's own folder names and a later
    whole-sweep submit skips them. A seed laid over the whole sweep instead would plan each
    setting three times, which submit refuses (a sweep never silently plans fewer runs)."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# written by bench/rehearsal.py: a part of sweeps/report-ablation.yaml\n"
                   + yaml.safe_dump({"runs": rows}, sort_keys=False))
    return out


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


def pretrain(name: str, threads: int) -> dict:
    """A backbone with a head that is confident on the classes' pictures at 32 px, as real
    pretrained weights are on real data (random-init weights select nothing over 0.9 in a run
    of six steps: tried). Cheap and deterministic, no SGD: the random-init backbone's BatchNorm
    statistics are set to the pictures' (so training-mode steps barely move them), and the
    head is a ridge regression on its features, scaled until most pictures are over 0.97."""
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
    t0 = time.monotonic()
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the passes below
        model.train()
        for i in range(0, len(x), 256):
            model(x[i:i + 256])
        for m in bns:
            m.momentum = 0.1
        model.eval()
        feats = torch.cat([model.forward_head(model.forward_features(x[i:i + 256]), pre_logits=True)
                           for i in range(0, len(x), 256)]).double()
        mu, sd = feats.mean(0), feats.std(0) + 1e-6
        f = (feats - mu) / sd
        target = torch.nn.functional.one_hot(y, CLASSES).double() - 1.0 / CLASSES
        w = torch.linalg.solve(f.T @ f + 10.0 * torch.eye(f.shape[1], dtype=f.dtype), f.T @ target)  # (d, C)
        weight, bias = (w / sd[:, None]).T, -(mu / sd) @ w  # logits = feats @ weight.T + bias
        head = model.get_classifier()
        for scale in (5, 10, 20, 40, 80, 160, 320):
            p = (feats @ (scale * weight).T + scale * bias).softmax(1)
            conf, pred = p.max(1)
            if (conf > 0.97).float().mean() > 0.6:
                break
        head.weight.copy_((scale * weight).float())
        head.bias.copy_((scale * bias).float())
    print(f"  {name}: {time.monotonic() - t0:.0f} s, head scale {scale}, accuracy on the pictures "
          f"{(pred == y).float().mean():.3f}, share over 0.97: {(conf > 0.97).float().mean():.3f}", flush=True)
    return model.state_dict()


def cmd_weights(a: argparse.Namespace) -> None:
    import torch

    state: dict = {}
    for name in ("resnet50", "vit_small_patch16_224"):
        sd = pretrain(name, a.threads)
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
    sweep_file = a.sweep_file
    if a.subset != "all":
        part = a.subset.replace("=", "-")
        sweep_file = write_subset_file(subset_rows(rows, a.subset), a.root / f".{a.sweep}-subset-{part}.yaml")
    cmd = [sys.executable, str(REPO / "jobs" / "submit.py"), "--sweep-file", str(sweep_file),
           *overrides(a.data, a.root, a.weights, a.steps, a.label_every), f"sweep={a.sweep}", *a.extra,
           "--cluster", "slurm", "--tasks-per-node", "2", "--time", "30", "--signal-delay-s", "30",
           "--partition", a.partition, "--name", "rehearsal",
           "--dry-run" if a.dry_run else "--no-wait" if a.no_wait else "--wait"]
    print("+ " + " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    rc = subprocess.run(cmd, env=env).returncode
    print(f"submit exit {rc} after {time.monotonic() - t0:.0f} s")


def _wait_for(what: str, test, timeout: float, poll: float = 1.0):
    t_end = time.time() + timeout
    while time.time() < t_end:
        got = test()
        if got:
            return got
        time.sleep(poll)
    raise SystemExit(f"error: timed out after {timeout:.0f} s waiting for {what}")


def cmd_figures(a: argparse.Namespace) -> None:
    """One 2-rank run on DATA through jobs/submit.py, USR2 once it has made its first step:
    start-up to the first step, USR2 -> first step after the requeue, per rank; the labeling
    pass (strategy=permanent) when --label-every is given; RSS, fds, checkpoint bytes."""
    from sslrun import run_folder

    sweep = f"figures-{a.tag}"
    label = [f"strategy=permanent", "threshold=0.9", f"extra.label_every={a.label_every}",
             f"extra.label_start={a.label_every}"] if a.label_every else ["strategy=fixmatch", "threshold=0.9"]
    cmd = [sys.executable, str(REPO / "jobs" / "submit.py"), f"name={a.tag}", f"sweep={sweep}", "model=resnet50",
           *[o for o in overrides(a.data, a.root, a.weights, a.steps, a.label_every or a.steps)
             if not o.startswith(("extra.label_every", "extra.local", "extra.pseudo", "extra.retrain"))],
           "frozen=false", *label, "--cluster", "slurm", "--tasks-per-node", "2", "--time", "60",
           "--signal-delay-s", "30", "--partition", a.partition, "--name", "rehearsal", "--no-wait"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    print("+ " + " ".join(cmd), flush=True)
    t_submit = time.time()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    run_dir = a.root / sweep / a.tag
    job = run_folder.submitted_jobs(a.root / sweep)[0][a.tag]["job_id"]

    def starts() -> list[dict]:
        return [r for r in _read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "startup"]

    first = _wait_for("the first step", lambda: starts(), a.timeout)[0]
    _wait_for("a checkpoint", lambda: (run_dir / "ckpt" / "last.pt").exists(), a.timeout)
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR2", str(job)], check=True)
    again = _wait_for("the first step after the requeue", lambda: starts()[1:], a.timeout)[0]
    _wait_for("result.json", lambda: (run_dir / "result.json").exists(), a.timeout * 3, poll=3)
    f = run_figures(run_dir)
    passes = f["labeling"]
    print(f"\n## {a.tag}: {a.data} (job {job})\n")
    print(f"- submit to first step: {first['wall'] - t_submit:.1f} s; process start to first step, per rank: "
          f"{_fmt(per_rank(first, 'first_step_s'))} s")
    print(f"- USR2 to the first step after the requeue: {again['wall'] - t_signal:.1f} s; the requeued process's "
          f"start to its first step, per rank: {_fmt(per_rank(again, 'first_step_s'))} s")
    for p in passes:
        print(f"- labeling pass at step {p['step']}: {int(p['images'])} images, {p['images_per_s']:.0f} images/s, "
              f"seconds per rank {_fmt(per_rank(p, 'pass_s'))}, peak memory MiB per rank "
              f"{_fmt(per_rank(p, 'mem_mb'), 0)}, selected {int(p['selected'])}")
    ranks = f.get("ranks") or []
    print(f"- peak RSS MiB per rank: {_fmt([r['rss_mb'] for r in ranks], 0)}; most open fds per rank: "
          f"{_fmt([r['fds'] for r in ranks], 0)} (at the first step: {_fmt(per_rank(first, 'fds'), 0)}); "
          f"checkpoint {f['ckpt_bytes'] / 2**20:.0f} MiB; ranks' weights agree: {f.get('ranks_agree')}; "
          f"restarts {f.get('restarts')}")


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
    m.add_argument("--dry-run", action="store_true", help="jobs/submit.py --dry-run: the runs' states, nothing sent")
    m.add_argument("--sweep", required=True, help="the sweep folder name under --root")
    m.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="more overrides")
    g = sub.add_parser("figures")
    g.add_argument("data", type=Path)
    g.add_argument("--root", type=Path, required=True)
    g.add_argument("--weights", type=Path, required=True)
    g.add_argument("--tag", required=True)
    g.add_argument("--steps", type=int, default=12)
    g.add_argument("--label-every", type=int, default=0)
    g.add_argument("--partition", default="debug")
    g.add_argument("--timeout", type=float, default=900)
    c = sub.add_parser("check")
    c.add_argument("sweep", type=Path)
    c.add_argument("--seed", type=int, help="only the runs of this seed (a part of the sweep)")
    c.add_argument("--prune", action="store_true", help="first remove prev.pt of finished runs (disk)")
    a = p.parse_args(argv)
    {"tree": cmd_tree, "weights": cmd_weights, "settings": cmd_settings, "submit": cmd_submit, "figures": cmd_figures,
     "check": lambda a: cmd_check(a)}[a.cmd](a)


# ------------------------------------------------------------------------------ checks


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn last line: a writer at work
    return out


def ckpt_bytes(run_dir: Path) -> int:
    """Size of one checkpoint (last.pt): what each save writes."""
    last = run_dir / "ckpt" / "last.pt"
    return last.stat().st_size if last.exists() else 0


def run_figures(run_dir: Path) -> dict:
    """One run's checks and figures from its folder alone (result.json, metrics.jsonl, ckpt/)."""
    from sslrun import run_folder

    cfg = {}
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except OSError:
        pass
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    starts = [r for r in rows if r.get("kind") == "startup"]
    passes = [r for r in rows if r.get("kind") == "labeling"]
    out: dict = {"run": run_dir.name, "state": run_folder.state(run_dir), "strategy": cfg.get("strategy"),
                 "seed": cfg.get("seed"),
                 "model": cfg.get("model"), "frozen": cfg.get("frozen"), "threshold": cfg.get("threshold"),
                 "passes": len(passes), "selected": [int(p["selected"]) for p in passes],
                 "ckpt_bytes": ckpt_bytes(run_dir), "starts": starts, "labeling": passes}
    res_path = run_dir / "result.json"
    if res_path.exists():
        res = json.loads(res_path.read_text())
        ranks = res.get("ranks") or []
        out.update(val_acc=res.get("val_acc"), world=res.get("world_size"), restarts=res.get("restarts"),
                   elapsed_s=res.get("elapsed_s"), ranks=ranks,
                   ranks_agree=bool(ranks) and len(ranks) == res.get("world_size")
                   and all(r["weights_sha256"] == res["weights_sha256"] for r in ranks))
    return out


def per_rank(row: dict, name: str) -> list[float]:
    """A gathered figure's values, rank 0 first (keys `<name>_r<rank>`)."""
    ranks = sorted(int(r) for k in row for base, _, r in [k.rpartition("_r")] if base == name and r.isdigit())
    return [row[f"{name}_r{r}"] for r in ranks]


def check_sweep(sweep: Path, names: list[str] | None = None, seed: int | None = None) -> tuple[list[dict], list[str]]:
    """Every run's figures, and the problems: no result, no pseudo-labels, ranks that differ."""
    dirs = [sweep / n for n in names] if names else sorted(
        d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "report")
    runs, problems = [], []
    for d in dirs:
        f = run_figures(d)
        if seed is not None and f["seed"] != seed:
            continue
        runs.append(f)
        if f["state"] != "done":
            problems.append(f"{d.name}: no result (state {f['state']})")
            continue
        if f["strategy"] in ("permanent", "local") and (not f["selected"] or min(f["selected"]) == 0):
            problems.append(f"{d.name}: a labeling pass selected nothing ({f['selected']})")
        if not f.get("ranks_agree"):
            problems.append(f"{d.name}: ranks' weights differ or are not logged ({f.get('ranks')})")
    return runs, problems


def _fmt(xs: list[float], nd: int = 1) -> str:
    return " / ".join(f"{x:.{nd}f}" for x in xs) if xs else "-"


def table(runs: list[dict]) -> str:
    """Markdown, one line per run: the per-rank figures as r0 / r1."""
    head = ("| strategy | threshold | frozen | model | state | val acc | passes: selected | first step s (r0 / r1) | labeling img/s | "
            "peak RSS MiB (r0 / r1) | max fds (r0 / r1) | ckpt MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in runs:
        first = f["starts"][0] if f["starts"] else {}
        ips = [p["images_per_s"] for p in f["labeling"] if "images_per_s" in p]
        ranks = f.get("ranks") or []
        model = str(f["model"]).replace("vit_small_patch16_224", "vit_s16")
        lines.append(f"| {f['strategy']} | {f['threshold'] if f['strategy'] != 'supervised' else '-'} | "
                     f"{str(f['frozen']).lower()} | {model} | {f['state']} | {f.get('val_acc') or 0:.3f} | {f['passes']}: "
                     f"{','.join(map(str, f['selected'])) or '-'} | {_fmt(per_rank(first, 'first_step_s'))} | "
                     f"{_fmt(ips, 0)} | {_fmt([r['rss_mb'] for r in ranks], 0)} | "
                     f"{_fmt([r['fds'] for r in ranks], 0)} | {f['ckpt_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def prune_finished(sweep: Path) -> int:
    """Remove ckpt/prev.pt of finished runs (result.json written): a finished run never resumes,
    and at ResNet-50 width prev.pt is 270 MiB of the ~700 MiB a run keeps. Returns bytes freed."""
    freed = 0
    for prev in sweep.glob("*/ckpt/prev.pt"):
        if (prev.parent.parent / "result.json").exists():
            freed += prev.stat().st_size
            prev.unlink()
    return freed


def cmd_check(a: argparse.Namespace) -> None:
    if a.prune:
        print(f"pruned prev.pt of finished runs: {prune_finished(a.sweep) / 2**30:.1f} GiB freed")
    runs, problems = check_sweep(a.sweep, seed=a.seed)
    print(table(runs))
    done = [f for f in runs if f["state"] == "done"]
    print(f"\n{len(done)} of {len(runs)} runs finished with a result; {len(problems)} problems")
    labeling = [f for f in done if f["strategy"] in ("permanent", "local")]
    print(f"permanent/local runs: {len(labeling)}, every labeling pass selected > 0 in "
          f"{sum(bool(f['selected']) and min(f['selected']) > 0 for f in labeling)}; "
          f"ranks' weights agree in {sum(bool(f.get('ranks_agree')) for f in done)} of {len(done)}")
    if done:
        ends = [json.loads((a.sweep / f["run"] / "result.json").read_text()) for f in done]
        starts = [r["wall"] - r["first_step_s_r0"] for f in done for r in f["starts"][:1]]
        last = max((a.sweep / f["run"] / "result.json").stat().st_mtime for f in done)
        print(f"first process start to last result: {last - min(starts):.0f} s; run elapsed_s sum "
              f"{sum(r['elapsed_s'] for r in ends):.0f} s, median {sorted(r['elapsed_s'] for r in ends)[len(ends) // 2]:.0f} s")
    for p in problems:
        print(f"  PROBLEM {p}")


if __name__ == "__main__":
    main()
