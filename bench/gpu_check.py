"""What a GPU node gives this project, checked in one go (under 8 minutes on one GPU).

    PYTHONPATH=. python bench/gpu_check.py [--device cuda|cpu] [--tiny] [--out FILE.json] [--keep DIR]

Figures, printed one a line and written to a JSON file (default ./gpu_check.json):
- resnet50 at 224 px, bf16 autocast + channels_last: training images/s, eager and torch.compile;
- FixMatch at 96 px through the engine's own step: steps/s fed by the real loader over a synthetic
  shard set (built with sslrun.data.build, as shards/build.py does) / fed by pre-made batches already
  on the GPU (the target is >= 0.95: the loader must not be what limits a GPU), once with the views
  made per sample in the loader workers (`augment_on=loader`) and once per batch on the GPU
  (`augment_on=trainer`: the workers only decode; what the default `auto` picks for the default
  presets), so one run says which a GPU node wants;
- the batched augmentation's per-sample draws on the GPU equal to the CPU's (and the share of strong
  view pixels that differ);
- NCCL process group of world size 1: init, one all_reduce, shutdown;
- peak GPU memory over the checks of this process;
- a 200-step FixMatch run through jobs/train.py, stopped by SIGTERM half-way and resumed, against the
  same run uninterrupted, both under torch.use_deterministic_algorithms: weights bit-identical, or
  the largest difference of any weight.
Without CUDA it says so and exits 0 (a login node, CI). `--device cpu --tiny` runs every code path
on the CPU with tiny sizes (test_resnet, 32 px, few steps): that is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SIZES = {  # (full, tiny)
    "model": ("resnet50", "test_resnet"), "res_size": (224, 32), "res_batch": (128, 4), "res_steps": (30, 3),
    "fm_size": (96, 32), "fm_batch": (64, 4), "fm_mu": (7, 2), "fm_steps": (30, 3),
    "images": (6000, 200), "classes": (10, 4), "run_steps": (200, 16), "run_batch": (32, 4),
}


def _size(key: str, tiny: bool) -> Any:
    return SIZES[key][1 if tiny else 0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def resnet_rate(device: torch.device, tiny: bool, compiled: bool) -> float:
    """Training images/s of a bare forward + backward + SGD step (bf16 autocast, channels_last)."""
    import timm

    torch.manual_seed(0)
    size, batch, steps = _size("res_size", tiny), _size("res_batch", tiny), _size("res_steps", tiny)
    model = timm.create_model(_size("model", tiny), num_classes=1000).to(device).to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with _autocast(device):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (and compilation)
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def make_shards(work: Path, tiny: bool) -> Path:
    """A synthetic shard set (labeled, val, unlabeled) built by the project's own builder."""
    from make_synthetic_tree import _make_class

    from sslrun.data.build import build_shards

    tree, out = work / "tree", work / "shards"
    if (out / "manifest.json").exists():
        return out
    classes, images = _size("classes", tiny), _size("images", tiny)
    per = images // classes
    for c in range(classes):
        _make_class((str(tree), c, c * per, per, 96 if not tiny else 32))
    build_shards(out, tree / "train", val_per_class=max(2, per // 20), labels_per_class=max(4, per // 10),
                 shard_samples=max(50, images // 8), workers=os.cpu_count() or 1)
    return out


def fixmatch_ratio(data: Path, work: Path, device: torch.device, tiny: bool, augment_on: str) -> dict[str, float]:
    """FixMatch steps/s with the real loader / with pre-made batches already on the device; keys
    `fixmatch_<augment_on>_augments_...`."""
    from throughput import _train_step

    from sslrun.config import Config
    from sslrun.engine import Trainer

    cfg = Config(data=str(data), root=str(work / "runs"), sweep="fm", name=f"fm-{augment_on}", model=_size("model", tiny),
                 image_size=_size("fm_size", tiny), batch_size=_size("fm_batch", tiny), mu=_size("fm_mu", tiny),
                 steps=10**6, device=device.type, strategy="fixmatch", threads=1 if tiny else 0,
                 workers=0 if tiny else -1, augment_on=augment_on)
    tr = Trainer(cfg)
    steps = _size("fm_steps", tiny)
    it = tr._loader(0)
    _train_step(tr, next(it), 0)  # warm-up: worker start-up, cudnn autotuning
    _sync(device)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        _train_step(tr, next(it), s)
    _sync(device)
    loader = steps / (time.perf_counter() - t0)
    premade = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
               for b in itertools.islice(it, 2)]
    del it
    _train_step(tr, premade[0], 0)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        _train_step(tr, premade[s % 2], s)
    _sync(device)
    ready = steps / (time.perf_counter() - t0)
    key = f"fixmatch_{augment_on}_augments"
    return {f"{key}_loader_steps_per_s": loader, f"{key}_premade_steps_per_s": ready,
            f"{key}_loader_ratio": loader / ready, f"{key}_workers": tr.workers}


def draws_check(device: torch.device) -> dict[str, Any]:
    """augment_on=trainer on the device against the CPU: each sample's draws (int64 splitmix64,
    which relies on wrapping products) must be equal, so a sample gets the same pixels whatever
    runs it; the strong views' pixels are compared and the share that differs is reported (float
    ops such as the sharpness convolution may round differently on the GPU)."""
    from sslrun.data.batch_augment import VIEW_STRONG, apply_preset
    from sslrun.data.sample_draws import SampleDraws

    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**62, (256,), generator=g)
    x = torch.randint(0, 256, (256, 3, 32, 32), generator=g, dtype=torch.uint8)
    cpu, dev = SampleDraws(seeds, VIEW_STRONG), SampleDraws(seeds.to(device), VIEW_STRONG)
    same = torch.equal(cpu.bits(8), dev.bits(8).cpu())
    a = apply_preset("randaugment", x, SampleDraws(seeds, VIEW_STRONG))
    b = apply_preset("randaugment", x.to(device), SampleDraws(seeds.to(device), VIEW_STRONG)).cpu()
    return {"draws_equal": same, "strong_pixels_differing": float((a != b).float().mean())}


def nccl_check(device: torch.device) -> dict[str, Any]:
    """Init a process group of world size 1 (NCCL on a GPU, gloo on the CPU), all_reduce, shut down."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    t = torch.ones(4, device=device)
    dist.all_reduce(t)
    _sync(device)
    ok = bool(t.eq(1).all())
    dist.destroy_process_group()
    return {"backend": backend, "init_s": time.perf_counter() - t0, "all_reduce_ok": ok}


_LAUNCH = ("import runpy, sys, torch; torch.use_deterministic_algorithms(True); "
           "sys.argv = ['jobs/train.py', *sys.argv[1:]]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _train(args: list[str], stop_at: int = 0) -> subprocess.CompletedProcess | None:
    """jobs/train.py under deterministic algorithms; with stop_at, SIGTERM once that step is logged."""
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", _LAUNCH, *args]
    if not stop_at:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("root="))) / "r" / "stopped"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(json.loads(ln).get("step", 0) >= stop_at for ln in metrics.read_text().splitlines()
                                    if ln.strip()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=600)
    return None


def resume_check(data: Path, work: Path, device: torch.device, tiny: bool) -> dict[str, Any]:
    """An uninterrupted run and one stopped by SIGTERM half-way then resumed: same final weights?"""
    steps = _size("run_steps", tiny)
    common = [f"data={data}", f"root={work / 'resume'}", "sweep=r", "strategy=fixmatch", f"model={_size('model', tiny)}",
              f"image_size={_size('fm_size', tiny)}", f"batch_size={_size('run_batch', tiny)}",
              f"mu={_size('fm_mu', tiny)}", f"steps={steps}", f"device={device.type}", "log_every=2",
              f"eval_every={steps}", f"ckpt_every={steps}", "lr=0.03"]
    if tiny:
        common += ["workers=0", "threads=1"]
    t0 = time.perf_counter()
    straight = _train([*common, "name=straight"])
    assert straight is not None
    if straight.returncode != 0:
        return {"error": f"uninterrupted run exited {straight.returncode}: {straight.stderr[-500:]}"}
    _train([*common, "name=stopped"], stop_at=steps // 2)
    resumed = _train([*common, "name=stopped"])
    assert resumed is not None
    if resumed.returncode != 0:
        return {"error": f"resumed run exited {resumed.returncode}: {resumed.stderr[-500:]}"}
    root = work / "resume" / "r"
    a = json.loads((root / "straight" / "result.json").read_text())
    b = json.loads((root / "stopped" / "result.json").read_text())
    wa = torch.load(root / "straight" / "ckpt" / "last.pt", weights_only=True, map_location="cpu")["model"]
    wb = torch.load(root / "stopped" / "ckpt" / "last.pt", weights_only=True, map_location="cpu")["model"]
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point())
    return {"steps": steps, "restarts": b["restarts"], "bit_exact": a["weights_sha256"] == b["weights_sha256"],
            "max_abs_weight_diff": diff, "val_acc_straight": a["val_acc"], "val_acc_resumed": b["val_acc"],
            "seconds": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test of the code paths")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file to write (default gpu_check.json)")
    p.add_argument("--keep", type=Path, help="work folder to use and keep (default: a temporary one)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run it on a GPU node, or --device cpu --tiny)")
        return 0
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out = a.out
        t_start = time.perf_counter()
        figures: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                   "torch": torch.__version__, "tiny": a.tiny}

        def show(key: str, value: Any) -> None:
            figures[key] = value
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", flush=True)

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(device)
        show("resnet_images_per_s_eager", resnet_rate(device, a.tiny, compiled=False))
        if device.type == "cuda":  # torch.compile on the CPU needs a C++ toolchain and minutes: GPU only
            show("resnet_images_per_s_compiled", resnet_rate(device, a.tiny, compiled=True))
        data = make_shards(work, a.tiny)
        for augment_on in ("loader", "trainer"):
            for k, v in fixmatch_ratio(data, work, device, a.tiny, augment_on).items():
                show(k, v)
        for k, v in draws_check(device).items():
            show(f"batch_augment_{k}", v)
        for k, v in nccl_check(device).items():
            show(f"ddp_{k}", v)
        if device.type == "cuda":
            show("gpu_memory_peak_gib", torch.cuda.max_memory_allocated(device) / 2**30)
        torch.backends.cudnn.benchmark = False
        for k, v in resume_check(data, work, device, a.tiny).items():
            show(f"resume_{k}", v)
        show("total_s", time.perf_counter() - t_start)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
