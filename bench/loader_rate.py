"""Samples/s of the training loader alone (no model), for whichever sslrun is first on the path.

    PYTHONPATH=<checkout> python bench/loader_rate.py SHARDS [--size 32] [--augment-on loader|trainer]
        [--workers 1] [--steps 60] [--repeats 5] [--in-process]

Why: bench/throughput.py's ratios compare two sides of one checkout; comparing two versions of
the loader needs the same loop run under each checkout, alternated (`PYTHONPATH=/old ...;
PYTHONPATH=/new ...`), so that the machine's load hits both alike. `--in-process` also times the
step's fetch (`__getitems__`) in a forked child at one thread, without a DataLoader: the loader's
figure over that one is what the worker handover costs (the sampler, pickling, shared memory).
Prints one line per repeat and the medians; the clock starts at the second batch (worker start-up
is not throughput).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sslrun.config import Config
from sslrun.data.loader import StepBatches, StepSampler
from sslrun.engine import Trainer


def loader_rate(ds, sampler: StepSampler, workers: int) -> float:
    t0, n = None, 0
    batches = StepBatches(ds, sampler, workers, False)  # as training reads them, `group` steps a handover
    for k, batch in enumerate(batches):
        if k < batches.group:  # the clock starts after the first handover
            t0 = time.perf_counter()
            continue
        n += sum(len(v) for key, v in batch.items() if key in ("y", "u_index"))
    if not n:
        raise SystemExit(f"error: --steps {len(sampler)}: need more than one handover of {batches.group} steps to time")
    assert t0 is not None
    return n / (time.perf_counter() - t0)


def in_process_rate(ds, sampler: StepSampler) -> float:
    """The same steps fetched by a forked child at one thread, as a loader worker runs them."""
    steps = [sampler.items(s) for s in range(sampler.start, sampler.end)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: time the fetches, send the figure, leave without cleanup
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        for items in steps:
            ds.__getitems__(items)
        os.write(w, repr(sum(len(s) for s in steps) / (time.perf_counter() - t0)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        rate = float(f.read())
    os.waitpid(pid, 0)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", type=Path)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--augment-on", choices=("auto", "loader", "trainer"), default="auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--in-process", action="store_true", help="also the fetch alone in a forked child, alternated")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sslrun-loader-rate-"))
    cfg = Config(data=str(a.shards), root=str(root), sweep="b", name="b", model="cifar_cnn", image_size=a.size,
                 batch_size=8, mu=7, steps=10**6, workers=a.workers, amp="off", device="cpu", augment_on=a.augment_on,
                 decode_cache_mb=0)
    try:
        tr = Trainer(cfg)
        it = tr._loader(0)  # the dataset and sampler exactly as training builds them
        ds, base = it.dataset, it.sampler
        del it
        fresh = lambda: StepSampler(base.streams, base.seed, 0, 1, 0, a.steps)  # noqa: E731
        loader, fetch = [], []
        for r in range(a.repeats):
            loader.append(loader_rate(ds, fresh(), a.workers))
            if a.in_process:
                fetch.append(in_process_rate(ds, fresh()))
            print(f"repeat {r}: loader {loader[-1]:.0f} samples/s" + (f", fetch in-process {fetch[-1]:.0f}" if fetch else ""),
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line = f"loader {statistics.median(loader):.0f} samples/s ({a.workers} workers, {tr.augment_on} augments, {a.size} px)"
    if fetch:
        ratio = statistics.median(x / y for x, y in zip(loader, fetch))
        line += f"; fetch in-process {statistics.median(fetch):.0f}; loader/in-process {ratio:.3f}"
    print(line + f"; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

if __name__ == "__main__":
    main()
