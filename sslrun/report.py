"""A sweep's report: per-setting table over seeds (Markdown + CSV), plots, and what it cost.

Everything comes from the run folders alone, read through `run_folder` (config.yaml,
result.json, metrics.jsonl, restarts.jsonl, ckpt/last.pt, failure.json), so a report can be
made at any time, also while the sweep is still running; submitit's pickles are never opened.
A run that is not finished is shown with its state (partial, started, failed, damaged), never
dropped: a mean over the seeds that happened to finish would otherwise look like a mean over
all of them. Runs are pooled only when every key but the seed (and the keys that do not change
what is learned: workers, eval cadence...) is equal, data included; runs that differ in a key
outside --by get an "other keys" column that tells them apart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslrun.checkpoint import atomic_write_bytes, atomic_write_text
from sslrun import run_folder
from sslrun.config import ALIASES, Config
from sslrun.errors import UserError
from sslrun.results import collect
from sslrun.tb import confusion_figure

log = logging.getLogger(__name__)

DEFAULT_BY = ("strategy", "threshold", "frozen", "model")
# Keys that name or place a run, or only change how it is run, not what it learns: never split a setting.
NOT_SETTING = ("seed", "name", "sweep", "root", "workers", "threads", "decode_cache_mb", "device", "eval_every", "log_every",
               "ckpt_every", "verify_shards")
OTHER = "other keys"


@dataclass
class Run:
    name: str
    dir: Path
    state: str  # done | partial | started | failed | damaged
    setting: tuple[str, ...]
    seed: int
    result: dict[str, Any]
    steps: int
    elapsed_s: float
    ranks: int
    device: str  # cuda | cpu | ? (a partial run does not record where it ran)
    redone_steps: int = 0
    redone_s: float = 0.0
    failure: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hours(self) -> float:
        """Device-hours: wall time (including work redone after restarts) times ranks."""
        return (self.elapsed_s + self.redone_s) * self.ranks / 3600


def _value(cfg: dict[str, Any], key: str) -> str:
    v = cfg.get(key)
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _restarts(run_dir: Path) -> tuple[int, float]:
    steps, secs = 0, 0.0
    for row in run_folder.read_jsonl(run_dir / run_folder.RESTARTS).records:
        try:
            steps += int(row.get("redone_steps", 0))
            secs += float(row.get("redone_s", 0.0))
        except (ValueError, TypeError, OverflowError):
            continue
    return steps, secs


def _seed(cfg: dict[str, Any]) -> int:
    v = cfg.get("seed")
    return v if isinstance(v, int) and not isinstance(v, bool) else -1


def _identity(cfg: dict[str, Any], by: tuple[str, ...]) -> dict[str, str]:
    """Every key outside --by that defines what the run learns, as text (data as a resolved path)."""
    out = {}
    for key, value in cfg.items():
        if key in NOT_SETTING or key in by:
            continue
        if key == "data" and isinstance(value, str) and value:
            value = str(Path(value).expanduser().resolve())
        out[str(key)] = json.dumps(value, sort_keys=True, default=str)
    return out


def _others(identities: list[dict[str, str]]) -> list[str]:
    """Per run, the keys outside --by whose values differ between runs ("" for all when none do)."""
    keys = sorted({k for ident in identities for k in ident})
    vary = [k for k in keys if len({ident.get(k) for ident in identities}) > 1]
    return [" ".join(f"{k}={json.loads(ident[k]) if k in ident else '-'}" for k in vary) for ident in identities]


def gather(sweep_dir: Path, by: tuple[str, ...] = DEFAULT_BY) -> list[Run]:
    """Every run folder of the sweep with its state, setting, cost and metrics.

    A damaged run is a row of its own with the file named; it never stops the others."""
    known = set(Config.__dataclass_fields__)
    by = tuple(ALIASES.get(k, k) for k in by)
    for key in by:
        if key not in known:
            raise UserError(f"--by {key}: not a config key (known: {', '.join(sorted(known))})")
    rows = collect(sweep_dir, checkpoints=True)
    others = _others([_identity(row["config"], by) for row in rows])
    runs = []
    for row, other in zip(rows, others):
        view: run_folder.RunView = row["view"]
        cfg, result = view.config, view.result
        if view.state == "done":
            ranks = result.get("world_size") if isinstance(result.get("world_size"), int) else 1
            device = str(result.get("device", "?")).split(":")[0]
        else:
            ranks, device = 1, cfg.get("device") if cfg.get("device") in ("cpu", "cuda") else "?"
        redone_steps, redone_s = _restarts(view.dir)
        setting = tuple(_value(cfg, k) for k in by) + ((other,) if any(others) else ())
        runs.append(Run(view.name, view.dir, view.state, setting, _seed(cfg), result, view.step, view.elapsed_s,
                        max(1, ranks), device, redone_steps, redone_s, view.damage or view.failure, view.metrics))
    return runs


def _groups(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    groups: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.setting].append(r)
    return dict(groups)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _num(v: Any, scale: float, fmt: str) -> str:
    return "-" if v is None else f"{scale * v:{fmt}}"


def setting_rows(runs: list[Run], by: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-setting table: acc and loss per seed, then mean and std."""
    seeds = sorted({r.seed for r in runs})
    header = [*by]
    for s in seeds:
        header += [f"acc % s{s}", f"loss s{s}"]
    header += ["acc % mean", "acc % std", "loss mean", "loss std", "test acc % mean", "test acc % std", "done",
               "GPU-h", "CPU-h", "lost to restarts s"]
    unknown = any(r.device not in ("cuda", "cpu") for r in runs)
    if unknown:
        header.insert(-1, "unknown-device h")
    rows = []
    for setting, group in sorted(_groups(runs).items()):
        line = list(setting)
        by_seed = {r.seed: r for r in group}
        for s in seeds:
            r = by_seed.get(s)
            if r is None:
                line += ["", ""]
            elif r.state != "done":
                line += [r.state, r.state]
            else:
                line += [_num(r.result.get("val_acc"), 100, ".2f"), _num(r.result.get("val_loss"), 1, ".4f")]
        done = [r for r in group if r.state == "done" and r.result.get("val_acc") is not None]
        for key, scale, fmt in (("val_acc", 100, ".2f"), ("val_loss", 1, ".4f"), ("test_acc", 100, ".2f")):
            mean, std = _mean_std([scale * r.result[key] for r in done if r.result.get(key) is not None])
            line += ["-" if mean is None else f"{mean:{fmt}}", "-" if std is None else f"{std:{fmt}}"]
        line += [f"{len(done)}/{len(group)}", f"{sum(r.hours for r in group if r.device == 'cuda'):.4f}",
                 f"{sum(r.hours for r in group if r.device == 'cpu'):.4f}"]
        if unknown:
            line.append(f"{sum(r.hours for r in group if r.device not in ('cuda', 'cpu')):.4f}")
        line.append(f"{sum(r.redone_s for r in group):.1f}")
        rows.append(line)
    return _with_gain(header, rows, by, seeds)


GAIN = "acc gain vs supervised (points)"


def _with_gain(header: list[str], rows: list[list[str]], by: tuple[str, ...],
               seeds: list[int]) -> tuple[list[str], list[list[str]]]:
    """Add what semi-supervised learning bought: a setting's mean val accuracy minus that of the
    supervised setting equal in every other --by key (threshold aside: supervised ignores it)."""
    if "strategy" not in by:
        return header, rows
    si = by.index("strategy")
    ignore = {si} | ({by.index("threshold")} if "threshold" in by else set())
    mean_col = len(by) + 2 * len(seeds)

    def rest(line: list[str]) -> tuple[str, ...]:
        return tuple(v for i, v in enumerate(line[: len(by)]) if i not in ignore)

    base = {rest(line): line[mean_col] for line in rows if line[si] == "supervised" and line[mean_col] != "-"}
    if not base:
        return header, rows
    for line in rows:
        ref = base.get(rest(line))
        gain = "-" if ref is None or line[mean_col] == "-" else f"{float(line[mean_col]) - float(ref):+.2f}"
        line.append(gain)
    return [*header, GAIN], rows


def run_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "seed", "state", "steps", "val acc %", "val loss", "test acc %", "device", "ranks", "elapsed s",
              "device-h", "restarts", "redone steps", "redone s", "why"]
    rows = []
    for r in runs:
        res = r.result

        def pct(k: str, res: dict[str, Any] = res) -> str:
            return f"{100 * res[k]:.2f}" if res.get(k) is not None else "-"

        rows.append([r.name, str(r.seed), r.state, str(r.steps), pct("val_acc"),
                     f"{res['val_loss']:.4f}" if res.get("val_loss") is not None else "-", pct("test_acc"), r.device,
                     str(r.ranks), f"{r.elapsed_s:.2f}", f"{r.hours:.4f}", str(res.get("restarts", "-")),
                     str(r.redone_steps), f"{r.redone_s:.1f}", r.failure])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# --- plots -------------------------------------------------------------------------------
def _labels(runs: list[Run], by: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """Legend text per setting: only the keys that differ between settings (all when one)."""
    settings = sorted({r.setting for r in runs})
    vary = [i for i in range(len(by)) if len({s[i] for s in settings}) > 1] or list(range(len(by)))
    return {s: " ".join(f"{by[i]}={s[i]}" for i in vary) for s in settings}


def _curve(runs: list[Run], kind: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean, min and max over the runs of a setting; each step over the runs that logged it."""
    per_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for m in r.metrics:
            if m.get("kind") == kind and isinstance(m.get(key), (int, float)):
                per_step[int(m["step"])].append(float(m[key]))
    if not per_step:
        return None
    steps = np.array(sorted(per_step))
    vals = [np.array(per_step[s]) for s in steps]
    return steps, np.array([v.mean() for v in vals]), np.array([v.min() for v in vals]), np.array([v.max() for v in vals])


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list[Run], by: tuple[str, ...], path: Path) -> bool:
    """Validation accuracy vs step per setting: the mean over seeds, a band from min to max."""
    plt = _pyplot()
    labels = _labels(runs, by)
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for setting, group in sorted(_groups(runs).items()):
        curve = _curve(group, "val", "acc")
        if curve is None:
            continue
        steps, mean, lo, hi = curve
        states = {r.state for r in group}
        note = "" if states == {"done"} else f" ({', '.join(sorted(states))})"
        (line,) = ax.plot(steps, 100 * mean, marker="o", ms=3, label=f"{labels[setting]} n={len(group)}{note}")
        ax.fill_between(steps, 100 * lo, 100 * hi, color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("validation accuracy: mean over seeds, band min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_pseudo_labels(runs: list[Run], by: tuple[str, ...], path: Path) -> bool:
    """Mask rate and pseudo-label accuracy over time, for settings that pseudo-label."""
    plt = _pyplot()
    labels = _labels(runs, by)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    drawn = False
    for setting, group in sorted(_groups(runs).items()):
        for ax, key in zip(axes, ("mask_rate", "pl_acc")):
            curve = _curve(group, "train", key)
            if curve is None:
                continue
            steps, mean, lo, hi = curve
            (line,) = ax.plot(steps, mean, label=labels[setting])
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, title in zip(axes, ("mask rate (share of unlabeled kept)", "pseudo-label accuracy of kept samples")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged (no pseudo-label kept yet)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    _save(fig, path)
    return True


def best_run(runs: list[Run]) -> Run | None:
    done = [r for r in runs if r.state == "done" and r.result.get("val_acc") is not None]
    return max(done, key=lambda r: (r.result["val_acc"], -(r.result.get("val_loss") or 0.0)), default=None)


def plot_confusion(run: Run, path: Path) -> bool:
    """The best run's final validation confusion matrix (stored in its result.json) with class names."""
    matrix, classes = run.result.get("val_confusion"), run.result.get("classes")
    if not matrix or not classes or not isinstance(classes, list) or not isinstance(matrix, list):
        return False
    n = len(classes)
    if len(matrix) != n or not all(isinstance(row, list) and len(row) == n and
                                   all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
                                   for row in matrix):
        return False  # a hand-edited or damaged result.json: no plot rather than a traceback
    fig = confusion_figure(matrix, classes,
                           f"{run.name}\nval acc {100 * run.result['val_acc']:.2f}% (final EMA weights)")
    _save(fig, path)
    return True


def make_report(sweep_dir: Path, by: tuple[str, ...] = DEFAULT_BY, out: Path | None = None) -> tuple[str, list[Path]]:
    """Write CSVs and PNGs to `out` (default SWEEP/report/); return the Markdown and the files."""
    sweep_dir = Path(sweep_dir)
    runs = gather(sweep_dir, by)
    by = tuple(ALIASES.get(k, k) for k in by)
    if runs and len(runs[0].setting) > len(by):
        by = (*by, OTHER)
    out = Path(out) if out else run_folder.report_dir(sweep_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; expected a folder for the report's CSV and PNG files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the folder ({err.strerror or err})") from None
    s_header, s_rows = setting_rows(runs, by)
    r_header, r_rows = run_rows(runs)
    files = [out / "settings.csv", out / "runs.csv"]
    atomic_write_text(files[0], csv_text(s_header, s_rows))
    atomic_write_text(files[1], csv_text(r_header, r_rows))
    notes = []
    if plot_curves(runs, by, out / "val_acc.png"):
        files.append(out / "val_acc.png")
    best = best_run(runs)
    if best is not None and plot_confusion(best, out / "confusion_best.png"):
        files.append(out / "confusion_best.png")
    elif best is not None:
        notes.append(f"no confusion matrix for {best.name}: its result.json predates val_confusion")
    if plot_pseudo_labels(runs, by, out / "pseudo_labels.png"):
        files.append(out / "pseudo_labels.png")
    counts = defaultdict(int)
    for r in runs:
        counts[r.state] += 1
    total_h = sum(r.hours for r in runs)
    lost = sum(r.redone_s for r in runs)
    text = [f"# {sweep_dir.name}: {len(runs)} runs (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")",
            "", "Validation accuracy and loss of the final (EMA) weights per seed; mean and std over done runs.", "",
            markdown(s_header, s_rows), "", "## Runs", "", markdown(r_header, r_rows), "",
            f"cost: {total_h:.4f} device-hours in all (GPU-h or CPU-h: wall time incl. redone work x ranks); "
            f"{lost:.1f} s of wall time was work redone after restarts"]
    if best is not None:
        text.append(f"best run: {best.name} (val acc {100 * best.result['val_acc']:.2f}%)")
    text += notes
    text.append("files: " + ", ".join(str(f) for f in files))
    return "\n".join(text), files
