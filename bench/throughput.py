"""Throughput ratios of the training pipeline, each measured side by side in one run.

    PYTHONPATH=. python bench/throughput.py SHARDS [--model resnet18] [--size 96] [--batch 8]
        [--mu 7] [--steps 6] [--loader-steps 40] [--label-samples 3000] [--workers -1]
        [--threads 0] [--repeats 3] [--amp off] [--augment-on auto|loader|trainer] [--decode-cache-mb 0]
        [--only P2,P3,P4,L]

Prints one line per figure (medians over --repeats, the two sides interleaved so that the
load of a shared machine hits both alike):
- P2: loader samples/s / the same decode + fit + views applied to in-memory bytes by the same
  number of processes, a step's items at a time, each view made CHW-contiguous as a batch holds
  it (what the plumbing costs: the sampler, pread, the batch's stack, IPC); with `--wids` also the
  same loader reading each sample through `wids.ShardListDataset` over the set's
  `<split>.wids.json` instead of by offset (all three sides alternated in one run), and what
  opening each split costs a process through wids (it scans every tar header of a shard the
  first time a process touches it) against reading the sample index; P2cpu: the same ratio
  per CPU second (workers and main process), which the neighbours' load moves far less;
  P4cpu likewise: training steps per CPU second of the trainer and its loader workers;
- P3: one FixMatch step (normalise, forward of x + weak + strong, loss, backward, SGD) / a bare
  forward + backward + SGD of the model on as many pre-normalised images;
- P4: training steps/s fed by the real loader / fed by pre-made batches in memory (how much
  the loader slows the trainer, e.g. by taking CPU from it);
- L: images/s of the pseudo-labeling pass (loader + no_grad forward) / bare no_grad forward.
Why ratios: absolute rates on a shared 2-core machine move with the neighbours' load; two
sides measured alternately in the same minute mostly do not.

`--augment-on trainer` measures the path where the loader only decodes and the step makes the
views (P4's pre-made batches are then plain decoded images, augmented inside both sides' steps).
`--decode-cache-mb N` gives the trainer the decoded-image cache of a long run (config key
`decode_cache_mb`), warmed before anything is timed by reading every training sample once in the
trainer: a worker forked after that starts with the warm cache, as every worker of a run that has
drawn each image once holds its share of it. P2's in-process side always decodes.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from sslrun.config import Config
from sslrun.data.loader import ShardImages, StepBatches, StepSampler, default_workers
from sslrun.data.manifest import IMAGE_EXTS, wids_file
from sslrun.data.samples import SplitSamples, load_split
from sslrun.data.transforms import decode, fit
from sslrun.engine import Trainer, seed_step
from sslrun.evaluate import labeling_pass
from sslrun.strategies.base import StepInfo



def _median_ratio(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float, float]:
    """Median of a/b over `repeats` rounds, alternating which side runs first."""
    ra, rb = [], []
    for r in range(repeats):
        for f, out in ((a, ra), (b, rb)) if r % 2 == 0 else ((b, rb), (a, ra)):
            out.append(f())
    ratios = sorted(x / y for x, y in zip(ra, rb))
    return statistics.median(ratios), statistics.median(ra), statistics.median(rb)


def _in_turn(sides: list[Callable[[], float]], repeats: int) -> list[list[float]]:
    """Each side's figures over `repeats` rounds, the sides in turn, each one first in its share of rounds."""
    out: list[list[float]] = [[] for _ in sides]
    order = list(range(len(sides)))
    for r in range(repeats):
        for i in order[r % len(sides):] + order[:r % len(sides)]:
            out[i].append(sides[i]())
    return out


# --- P2 ------------------------------------------------------------------------------------
def _cpu() -> float:
    """CPU seconds of this process and its finished children (loader workers, pool processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


_REF: tuple[ShardImages, np.ndarray, list[bytearray], int] | None = None


def _ref_chunk(lo_hi_reads: tuple[int, int, bool]) -> tuple[int, float]:
    """Decode + fit + views of items [lo, hi) from bytes already in memory, or read from their
    shard by offset (`reads`: os.pread, as the loader reads), a step's items at a time as the
    loader takes them (so neither side holds more than a step's images); (count, seconds)."""
    assert _REF is not None
    ds, items, raws, per_step = _REF
    torch.set_num_threads(1)
    lo, hi, reads = lo_hi_reads
    if reads:
        where = items[:, 1:3].tolist()
        data = lambda j: ds.read(*where[j])  # noqa: E731
    else:
        data = raws.__getitem__
    t0 = time.perf_counter()
    for a in range(lo, hi, per_step):
        step = items[a:min(a + per_step, hi)]
        for role in np.unique(step[:, 0]).tolist():
            rows = a + np.flatnonzero(step[:, 0] == role)
            # the loader's own view code, seeding included, each view made CHW-contiguous as a batch
            # holds it (a decoded JPEG is an HWC buffer seen as CHW); left out: stack, handover, and
            # the read unless `reads`
            for views in ds.make_views(role, (fit(decode(data(j)), ds.size) for j in rows.tolist()), items[rows, 4]):
                for v in views:
                    v.contiguous()
    return hi - lo, time.perf_counter() - t0


def _identity(url: str) -> str:
    """wids' `localname`: read local shards where they are (its default copies each one into
    /tmp/_wids_cache first)."""
    return url


class WidsImages(ShardImages):
    """ShardImages reading each sample's image through wids (by the split's wids shard index),
    not by the offset in the sample index; the rest (decode, views, seeds) is the same code."""

    def __init__(self, base: ShardImages, root: Path) -> None:
        super().__init__(base.splits, base.size, base.views)
        self.root = root
        self._wids: dict[int, object] = {}
        self._wids_pid = os.getpid()

    def open(self, split_id: int):
        import wids

        if self._wids_pid != os.getpid():
            self._wids, self._wids_pid = {}, os.getpid()
        ds = self._wids.get(split_id)
        if ds is None:
            n_shards = len(self.splits[split_id].shards)
            ds = self._wids[split_id] = wids.ShardListDataset(
                str(self.root / wids_file(self.splits[split_id].name)), transformations=[], localname=_identity,
                lru_size=max(10, n_shards))
        return ds

    def read(self, split_id: int, index: int) -> bytes:
        sample = self.open(split_id)[index]
        for ext in IMAGE_EXTS:
            v = sample.get("." + ext)
            if v is not None:
                return v.read() if hasattr(v, "read") else v
        raise KeyError(f"no image in wids sample {sample['__key__']}")

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_wids"] = {}
        return state


def _open_costs(ds: ShardImages, root: Path, manifest) -> str:
    """Seconds for one process to be ready to read every sample of each split: wids (open
    every shard: its header scan) against the sample index (load_split)."""
    import contextlib
    import io

    out = []
    for sid, s in enumerate(ds.splits):
        t0 = time.perf_counter()
        load_split(manifest, s.name)
        t_index = time.perf_counter() - t0
        w = WidsImages(ds, root)
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # wids prints a line per dataset
            wd = w.open(sid)
            for k in range(len(s.shards)):  # one sample of each shard opens (and scans) it
                wd[int(sum(wd.lengths[:k]))]
        out.append(f"{s.name} ({len(s)} samples, {len(s.shards)} shards): wids {time.perf_counter() - t0:.3f} s, "
                   f"index {t_index:.3f} s")
    return "; ".join(out)


def p2(tr: Trainer, workers: int, steps: int, repeats: int, with_wids: bool = False) -> None:
    global _REF
    it_loader = tr._loader(0)  # builds the dataset and sampler exactly as training does
    ds: ShardImages = it_loader.dataset
    sampler: StepSampler = it_loader.sampler
    del it_loader
    sampler = StepSampler(sampler.streams, sampler.seed, 0, 1, 0, steps)
    items = np.concatenate([sampler.items(step) for step in range(steps)])
    _REF = (ds, items, [bytearray(ds.read(sid, idx)) for sid, idx in items[:, 1:3].tolist()], len(items) // steps)
    procs = max(1, workers)

    cpu_rates: dict[str, list[float]] = {"loader": [], "ref": []}

    def loader_rate(dataset: ShardImages = ds) -> float:
        n, t0, c0 = 0, None, _cpu()
        batches = StepBatches(dataset, StepSampler(sampler.streams, sampler.seed, 0, 1, 0, steps), workers, False)
        for k, batch in enumerate(batches):  # as training reads them: a worker hands over `group` steps at once
            if k < batches.group:  # start the clock after the first handover: worker start-up is not throughput
                t0 = time.perf_counter()
                continue
            n += len(batch["y"]) + len(batch.get("u_index", ()))
        if not n:
            raise SystemExit(f"error: --loader-steps {steps}: need more than one handover of {batches.group} steps to time")
        rate = n / (time.perf_counter() - t0)
        if dataset is ds:  # all samples, first batch included, over the CPU of the workers and this process
            cpu_rates["loader"].append(len(items) / (_cpu() - c0))
        return rate

    def ref_rate(reads: bool = False) -> float:
        per = len(items) // procs
        chunks = [(i * per, (i + 1) * per, reads) for i in range(procs)]
        c0 = _cpu()
        with mp.get_context("fork").Pool(procs) as pool:
            res = pool.map(_ref_chunk, chunks, chunksize=1)
        if not reads:
            cpu_rates["ref"].append(sum(n for n, _ in res) / (_cpu() - c0))
        return sum(n for n, _ in res) / max(s for _, s in res)

    if not with_wids:
        own, ref, ref_read = _in_turn([loader_rate, ref_rate, lambda: ref_rate(True)], repeats)
        med = statistics.median
        print(f"P2 loader/in-process = {med(a / b for a, b in zip(own, ref)):.3f}  (loader {med(own):.0f} samples/s with "
              f"{workers} workers, in-process {med(ref):.0f} samples/s on {procs} processes from bytes in memory; "
              f"{steps} steps of {len(items) // steps} samples)", flush=True)
        print(f"P2read loader/in-process reading the shards too = {med(a / b for a, b in zip(own, ref_read)):.3f}  "
              f"(in-process {med(ref_read):.0f} samples/s, each sample read from its shard by offset as the loader reads it)",
              flush=True)
        rc = statistics.median(a / b for a, b in zip(cpu_rates["loader"], cpu_rates["ref"]))
        print(f"P2cpu loader/in-process per CPU second = {rc:.3f}  (loader {statistics.median(cpu_rates['loader']):.0f}, "
              f"in-process {statistics.median(cpu_rates['ref']):.0f} samples per CPU second, worker start-up "
              f"included; steadier than P2 when the machine is shared)", flush=True)
        return
    root = Path(tr.cfg.data)
    wds_ds = WidsImages(ds, root)
    for (sid, idx), raw in zip(items[:50, 1:3].tolist(), _REF[2]):  # the same bytes by both roads
        assert wds_ds.read(sid, idx) == bytes(raw), (sid, idx)
    print(f"P2 open cost per process: {_open_costs(ds, root, tr.manifest)}", flush=True)
    own, wid, ref = _in_turn([lambda: loader_rate(), lambda: loader_rate(wds_ds), ref_rate], repeats)
    med = statistics.median
    print(f"P2 own reader loader/in-process = {med(a / c for a, c in zip(own, ref)):.3f}, "
          f"wids reader loader/in-process = {med(b / c for b, c in zip(wid, ref)):.3f}, wids/own = "
          f"{med(b / a for a, b in zip(own, wid)):.3f}  (own {med(own):.0f}, wids {med(wid):.0f}, in-process "
          f"{med(ref):.0f} samples/s; {workers} workers, {procs} processes; {steps} steps of {len(items) // steps} "
          f"samples; medians of {repeats})", flush=True)


# --- P3 / P4 ----------------------------------------------------------------------------------
def _autocast(tr: Trainer):
    return torch.autocast(tr.device.type, dtype=tr.amp_dtype) if tr.amp_dtype else nullcontext()


def _train_step(tr: Trainer, raw: dict[str, Tensor], step: int) -> None:
    """The hot path of Trainer.fit for one step (no logging, evaluation or checkpoints)."""
    seed_step(tr.cfg.seed, step, 0)
    batch = tr._batch(raw)
    with _autocast(tr):
        loss, _ = tr.strategy.compute_loss(tr.net, batch, StepInfo(step, 0.0))
    flags = torch.cat([torch.full((1,), 0.0), (~torch.isfinite(loss.detach())).float().reshape(1)]).tolist()
    assert flags[1] == 0
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt.step()
    tr.sched.step()
    if tr.ema is not None:
        tr.ema.update(tr.model, step=step)


def _bare_step(tr: Trainer, x: Tensor, y: Tensor) -> None:
    with _autocast(tr):
        loss = F.cross_entropy(tr.net(x), y)
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt.step()


def p3_p4(tr: Trainer, steps: int, repeats: int, only: set[str] = frozenset({"P3", "P4"})) -> None:
    premade = list(itertools.islice(tr._loader(0), 2))
    # augment_on=trainer: the loader hands one plain copy of each unlabeled image (u_weak), the step makes both views
    keys = ("x", "u_weak", "u_strong") if "u_strong" in premade[0] else ("x", "u_weak", "u_weak")
    n_img = sum(premade[0][k].shape[0] for k in keys)
    x = torch.cat([tr.prepare(premade[0][k]) for k in keys])
    y = torch.randint(0, tr.manifest.num_classes, (n_img,))

    def timed(fn: Callable[[int], None], n: int) -> float:
        fn(0)  # warm-up step, not timed
        t0 = time.perf_counter()
        for s in range(1, n + 1):
            fn(s)
        return n / (time.perf_counter() - t0)

    if "P3" in only:
        p3(tr, premade, x, y, n_img, timed, steps, repeats)
    if "P4" not in only:
        return
    p4(tr, premade, timed, steps, repeats)


def p3(tr: Trainer, premade: list, x: Tensor, y: Tensor, n_img: int, timed: Callable, steps: int, repeats: int) -> None:
    r, a, b = _median_ratio(lambda: timed(lambda s: _train_step(tr, premade[s % 2], s), steps),
                            lambda: timed(lambda s: _bare_step(tr, x, y), steps), repeats)
    print(f"P3 fixmatch step/bare fwd+bwd = {1 / r:.3f} (time ratio; fixmatch {a:.3f} steps/s, bare {b:.3f} steps/s, "
          f"{n_img} images a step)", flush=True)


def p4(tr: Trainer, premade: list, timed: Callable, steps: int, repeats: int) -> None:
    cpu: dict[str, list[float]] = {"loader": [], "premade": []}

    def with_loader() -> float:
        c0 = _cpu()
        it = tr._loader(0)
        _train_step(tr, next(it), 0)  # warm-up: worker start-up and the first batches
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            _train_step(tr, next(it), s)
        rate = steps / (time.perf_counter() - t0)
        del it  # joins the workers: their CPU is counted below
        cpu["loader"].append((steps + 1) / (_cpu() - c0))
        return rate

    def with_premade() -> float:
        c0 = _cpu()
        rate = timed(lambda s: _train_step(tr, premade[s % 2], s), steps)
        cpu["premade"].append((steps + 1) / (_cpu() - c0))
        return rate

    r, a, b = _median_ratio(with_loader, with_premade, repeats)
    print(f"P4 steps/s real loader/pre-made = {r:.3f}  (loader {a:.3f} steps/s with {tr.workers} workers, "
          f"pre-made {b:.3f} steps/s)", flush=True)
    rc = statistics.median(x / y for x, y in zip(cpu["loader"], cpu["premade"]))
    print(f"P4cpu steps per CPU second, real loader (trainer + workers, start-up included)/pre-made = {rc:.3f}  "
          f"({statistics.median(cpu['loader']):.3f} vs {statistics.median(cpu['premade']):.3f})", flush=True)


def _head(s: SplitSamples, n: int) -> SplitSamples:
    """The first n samples of a split (a labeling pass over all of CIFAR's takes minutes here)."""
    return SplitSamples(s.name, s.shards, s.shard[:n], s.offset[:n], s.size[:n], s.label[:n], s.hidden[:n], s.ids[:n])


def labeling(tr: Trainer, samples: int, repeats: int) -> None:
    assert tr.unlabeled is not None
    model = tr.model
    split = _head(tr.unlabeled, samples)
    bs = tr.cfg.batch_size * 4
    x = tr.prepare(torch.randint(0, 256, (bs, 3, tr.cfg.image_size, tr.cfg.image_size), dtype=torch.uint8))
    n_batches = max(1, len(split) // bs)

    def real() -> float:
        t0 = time.perf_counter()
        with _autocast(tr):
            labeling_pass(model, split, tr.prepare, tr.cfg.image_size, bs, tr.workers, tr.info, tr.device)
        return len(split) / (time.perf_counter() - t0)

    @torch.no_grad()
    def bare() -> float:
        was = model.training
        model.eval()
        t0 = time.perf_counter()
        with _autocast(tr):
            for _ in range(n_batches):
                torch.softmax(model(x).float(), dim=1)
        model.train(was)
        return n_batches * bs / (time.perf_counter() - t0)

    r, a, b = _median_ratio(real, bare, repeats)
    print(f"L labeling pass/bare inference = {r:.3f}  (pass {a:.0f} img/s over {len(split)} samples incl. worker "
          f"start-up, bare {b:.0f} img/s, batch {bs})", flush=True)


def warm_cache(tr: Trainer) -> str:
    """Fill the trainer's decoded-image cache with every training sample it will draw (what a
    long run's cache holds after its first pass), and say how much it holds."""
    cache = tr.decode_cache
    if cache is None:
        return "off"
    it = tr._loader(0)
    ds: ShardImages = it.dataset
    del it
    t0 = time.perf_counter()
    for split_id, split in enumerate(ds.splits):
        for index in range(len(split)):
            ds.image(split_id, index)
    return (f"{len(cache)} images, {cache.bytes / 2**20:.0f} of {cache.max_bytes / 2**20:.0f} MiB, warmed in "
            f"{time.perf_counter() - t0:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", type=Path)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mu", type=int, default=7)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--loader-steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", default="off")  # the engine's CPU default; bf16 was 8-20x slower at 32 px here
    p.add_argument("--augment-on", choices=("auto", "loader", "trainer"), default="auto")
    p.add_argument("--decode-cache-mb", type=int, default=0, help="the decoded-image cache, warmed before timing (0: off)")
    p.add_argument("--label-samples", type=int, default=3000)
    p.add_argument("--only", default="P2,P3,P4,L")
    p.add_argument("--wids", action="store_true", help="P2 also through a wids-backed reader, side by side")
    a = p.parse_args()
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "sslrun-bench-throughput"
    cfg = Config(data=str(a.shards), root=str(root), sweep="b", name="b", model=a.model, image_size=a.size,
                 batch_size=a.batch, mu=a.mu, steps=10**6, workers=a.workers, threads=a.threads, amp=a.amp,
                 channels_last="on" if a.amp == "bf16" else "auto", device="cpu", ema_decay=0.999,
                 augment_on=a.augment_on, decode_cache_mb=a.decode_cache_mb)
    tr = Trainer(cfg)
    warm = warm_cache(tr)
    print(f"# {a.shards} model={a.model} size={a.size} batch={a.batch} mu={a.mu} amp={a.amp} workers={tr.workers} "
          f"(default_workers()={default_workers()[0]}) torch threads={torch.get_num_threads()} "
          f"augment_on={a.augment_on} ({tr.augment_on}) decode cache {warm} "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    only = set(a.only.split(","))
    if "P2" in only:
        p2(tr, tr.workers, a.loader_steps, a.repeats, a.wids)
    if only & {"P3", "P4"}:
        p3_p4(tr, a.steps, a.repeats, only)
    if "L" in only:
        labeling(tr, a.label_samples, a.repeats)
    print(f"# load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
