"""Per-rank process figures for the logs: start-up time, peak memory, open file descriptors.

Why: at the report's scale the costs that hurt are per rank and per process start (a requeue
is a new process): seconds from the process's start to its first step, peak RSS, descriptors
left open (a leak grows them with every loader rebuild). Each rank measures its own; the
numbers are gathered with one collective that every rank makes at the same point, so every
rank logs the same keys (`<name>_r<rank>`) and DDP logging stays in step.
"""

from __future__ import annotations

import os
import resource
import time

import torch

from sslrun import distributed


def process_start_wall() -> float:
    """Unix time this process started (Linux /proc; time of import elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime "))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def open_fds() -> int:
    """Descriptors open in this process now (-1 where /proc/self/fd cannot be listed)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Vitals:
    """One rank's figures; `sample()` is cheap (a listdir), call it at every log step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = process_start_wall()
        self.max_fds = open_fds()

    def sample(self) -> None:
        self.max_fds = max(self.max_fds, open_fds())

    def peak_mem_mb(self) -> float:
        """GPU peak allocated memory on CUDA, else the process's peak RSS."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()

    def gathered(self, values: dict[str, float]) -> dict[str, float]:
        """`values` of every rank, as `<name>_r<rank>`: a collective, every rank must call it."""
        self.sample()
        names = sorted(values)
        mine = torch.tensor([[float(values[k]) for k in names]], dtype=torch.float64, device=self.device)
        every = distributed.all_gather_cat(mine).cpu().tolist()
        return {f"{k}_r{r}": round(row[i], 3) for r, row in enumerate(every) for i, k in enumerate(names)}

    def common(self) -> dict[str, float]:
        """What every gather carries: peak RSS (and GPU memory) and the most descriptors seen
        (sampled now: the caller builds the gather's values before gathered() runs)."""
        self.sample()
        out = {"rss_mb": peak_rss_mb(), "fds": float(self.max_fds)}
        if self.device.type == "cuda":
            out["gpu_mb"] = self.peak_mem_mb()
        return out
