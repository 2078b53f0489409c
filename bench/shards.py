"""Benchmark shards/build.py against GNU tar over the same image tree, warm and cold; or,
with --startup, what a training start pays to index a built shard set.

    python bench/shards.py TREE --work /tmp/shards-bench [--labels-per-class 25] [-j 2]
        [--repeat 3] [--modes warm,cold] [--shard-samples 10000]
    python bench/shards.py --startup SHARDSET [--repeat 3] [--modes warm,cold]

--startup times samples.load_split over every split of SHARDSET, read from the sample
index the build wrote against scanning every tar header (samples.scan_split, what every
rank did at every start before the index), in one run, medians over the repeats; "cold"
evicts the shards and index files from the page cache before each try.

TREE holds `train/<class>/<images>` (e.g. the CIFAR-10 JPEG tree or one made by
bench/make_synthetic_tree.py). Each repeat runs `tar cf` and the builder one after the other
on the same files; "cold" first evicts every input file from the page cache with
posix_fadvise(POSIX_FADV_DONTNEED) (inodes and directories stay cached, for both). Prints
files/s of both, their ratio, and output bytes against tar's. Medians over the repeats.
Why in one run: this machine is shared, so only same-run ratios mean something.
The builder fsyncs every shard (durability on shared storage); tar does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _files(tree: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(tree):
        out += [os.path.join(dirpath, n) for n in names]
    return out


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (what a cold start on a big tree looks like)."""
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            fh.read()


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system of the command and its children). CPU time
    says what the work costs when other jobs share the machine and wall times swing."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(root: Path, repeat: int, modes: list[str]) -> None:
    """Seconds to index every split of the shard set at `root`: sample index vs tar scan."""
    sys.path.insert(0, str(REPO))
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split, scan_split

    m = read_manifest(root)
    if any(s.index is None for s in m.splits.values()):
        sys.exit(f"{root} has no sample index: rerun its shards/build.py command first")
    files = [str(p) for p in root.iterdir() if p.suffix in (".tar", ".npz")]
    n = sum(s.count for s in m.splits.values())
    print(f"shard set {root}: {n} samples in {sum(len(s.shards) for s in m.splits.values())} shards; "
          f"index files {sum(root.joinpath(s.index.file).stat().st_size for s in m.splits.values()) / 1e6:.1f} MB; "
          f"load {os.getloadavg()[0]:.1f}")
    for mode in modes:
        times: dict[str, list[float]] = {"index": [], "scan": []}
        for rep in range(repeat):
            for name, load in (("index", load_split), ("scan", scan_split)):
                (evict if mode == "cold" else warm)(files)
                t0 = time.perf_counter()
                for split in m.splits:
                    load(m, split)
                times[name].append(time.perf_counter() - t0)
                print(f"  {mode} #{rep + 1} {name:5s} {times[name][-1]:7.3f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
        ti, ts = statistics.median(times["index"]), statistics.median(times["scan"])
        print(f"{mode}: index {ti:.3f} s, scan {ts:.3f} s, scan/index {ts / ti:.0f}x (medians of {repeat})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", type=Path, nargs="?")
    p.add_argument("--startup", type=Path, metavar="SHARDSET", help="time the start-up indexing of a built shard set")
    p.add_argument("--work", type=Path, help="scratch folder for outputs (made, then emptied)")
    p.add_argument("--labels-per-class", type=int, default=25)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", default="warm,cold")
    p.add_argument("--shard-samples", type=int, default=10000)
    a = p.parse_args()
    if a.startup is not None:
        startup(a.startup, a.repeat, a.modes.split(","))
        return
    if a.tree is None or a.work is None:
        p.error("give TREE and --work (or --startup SHARDSET)")
    files = _files(a.tree)
    n = len(files)
    in_bytes = sum(os.path.getsize(f) for f in files)
    a.work.mkdir(parents=True, exist_ok=True)
    tar_out, shard_out = a.work / "tree.tar", a.work / "shards"
    tar_cmd = ["tar", "cf", str(tar_out), "-C", str(a.tree.resolve().parent), a.tree.resolve().name]
    build_cmd = [sys.executable, str(REPO / "shards" / "build.py"), "--labeled", str(a.tree / "train"),
                 "--out", str(shard_out), "--labels-per-class", str(a.labels_per_class),
                 "--shard-samples", str(a.shard_samples), "-j", str(a.workers), "--no-progress"]
    print(f"tree {a.tree}: {n} files, {in_bytes / 1e6:.1f} MB; {os.cpu_count()} cpus; load {os.getloadavg()[0]:.1f}")
    print("tar:   " + " ".join(tar_cmd))
    print("build: " + " ".join(build_cmd))
    sizes: dict[str, int] = {}
    for mode in a.modes.split(","):
        times: dict[str, list[float]] = {"tar": [], "build": []}
        cpus: dict[str, list[float]] = {"tar": [], "build": []}
        for rep in range(a.repeat):
            for name, cmd in (("tar", tar_cmd), ("build", build_cmd)):
                tar_out.unlink(missing_ok=True)
                shutil.rmtree(shard_out, ignore_errors=True)
                os.sync()
                (evict if mode == "cold" else warm)(files)
                dt, cpu = _timed(cmd)
                times[name].append(dt)
                cpus[name].append(cpu)
                if name == "tar":
                    sizes["tar"] = tar_out.stat().st_size
                else:
                    sizes["shards"] = sum(f.stat().st_size for f in shard_out.glob("*.tar"))
                    sizes["all"] = sum(f.stat().st_size for f in shard_out.iterdir())
                print(f"  {mode} #{rep + 1} {name:5s} {dt:6.2f} s  {n / dt:8.0f} files/s  cpu {cpu:6.2f} s"
                      f"  (load {os.getloadavg()[0]:.1f})", flush=True)
        t_tar, t_build = statistics.median(times["tar"]), statistics.median(times["build"])
        print(f"{mode}: tar {n / t_tar:.0f} files/s, build {n / t_build:.0f} files/s, "
              f"ratio build/tar {t_tar / t_build:.2f}x (medians of {a.repeat}); cpu s tar "
              f"{statistics.median(cpus['tar']):.2f}, build {statistics.median(cpus['build']):.2f}")
    print(f"bytes: tar {sizes['tar']}, shards {sizes['shards']} ({sizes['shards'] / sizes['tar']:.3f}x tar), "
          f"with manifest/_info/rejects {sizes['all']} ({sizes['all'] / sizes['tar']:.3f}x)")
    tar_out.unlink(missing_ok=True)
    shutil.rmtree(shard_out, ignore_errors=True)


if __name__ == "__main__":
    main()
