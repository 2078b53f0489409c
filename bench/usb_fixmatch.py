"""USB's FixMatch (PyPI `semilearn` 0.3.2) on the same shard set, net and wall-clock budget as sslrun.

    PYTHONPATH=. /tmp/usbvenv/bin/python bench/usb_fixmatch.py --data /tmp/cifar10-bench/shards-test10k \
        [--budget-min 15] [--steps 1000] [--seed 42] [--batch 32] [--uratio 7] [--threads 1] [--workers 1] \
        [--model cifar_cnn] [--amp off|bf16] [--channels-last] [--out DIR]

Runs in its own venv, never the shared one, and is no dependency of sslrun. The venv used here:

    python3 -m venv /tmp/usbvenv
    echo <shared venv>/lib/python3.11/site-packages > /tmp/usbvenv/lib/python3.11/site-packages/shared_torch.pth
    /tmp/usbvenv/bin/pip install --no-deps semilearn==0.3.2 && /tmp/usbvenv/bin/pip install ruamel.yaml progress scikit-image

(torch, torchvision, timm come from the shared venv through the .pth line, read after the venv's own
packages). semilearn imports torchaudio, transformers, wandb and aim at import time for its audio and
text data sets and its loggers; no torchaudio wheel matches torch 2.14, so those four are stubbed
with empty modules before the import (none of them is touched by an image FixMatch run).

What is USB's and what is the harness's: the algorithm object (FixMatch: its train_step, its loss,
its pseudo-labels and mask, its SGD and cos(7 pi k / 16 K) schedule over --steps, its ParamUpdateHook
and EMAHook) and its data set class and CIFAR transforms (pad-crop 32 with reflect, flip,
RandAugment(3, 5)) are USB's. The harness feeds them the sslrun shard set's labeled, unlabeled and
test images (decoded once to uint8 arrays), drives the step loop itself with a wall-clock stop
(USB's own Trainer insists on CUDA; its batches go through `.cuda()`, replaced here by a CPU
pass-through), and scores the EMA model on the test split. The net is sslrun's `cifar_cnn`
(registered with timm; `--model cifar_cnn_wide` for the wide one), wrapped to return USB's
{'logits', 'feat'}.

`--amp bf16 --channels-last` give USB what sslrun's bench runs with where the CPU has bf16 units:
each train step (USB's forward and loss) under `torch.autocast("cpu", bfloat16)`, the nets and
their inputs channels_last, the logits returned in float32 (as sslrun's losses take them). USB's
own `amp` switch is CUDA's autocast and GradScaler, which do nothing on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import json
import sys
import time
import types
from inspect import signature
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STUBBED = ("torchaudio", "transformers", "wandb", "aim")


class _Stub(types.ModuleType):
    """A module whose every attribute is another stub: enough for import-time `from x import y`."""

    def __getattr__(self, name: str) -> _Stub:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Stub(f"{self.__name__}.{name}")
        setattr(self, name, sub)
        return sub

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return self


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return _Stub(spec.name)

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        module.__path__ = []


def _arrays(data: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A split of the shard set as uint8 HWC images and their (true) classes."""
    from sslrun.data.loader import ShardImages
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split

    s = load_split(read_manifest(data), split)
    reader = ShardImages([s], size, {})
    images = np.stack([reader.image(0, i).permute(1, 2, 0).numpy() for i in range(len(s))])
    labels = np.where(s.label >= 0, s.label, s.hidden)
    return images, labels.astype(np.int64)


class UsbNet(nn.Module):
    """sslrun's timm model in USB's interface: forward returns {'logits', 'feat'}."""

    def __init__(self, model: str, num_classes: int, channels_last: bool = False) -> None:
        super().__init__()
        import timm

        import sslrun.cifar_cnn  # noqa: F401  (registers cifar_cnn with timm)

        self.backbone = timm.create_model(model, num_classes=num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: object):
        if only_fc:
            return self.backbone.get_classifier()(x).float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feat = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        if only_feat:
            return feat.float()
        return {"logits": self.backbone.get_classifier()(feat).float(), "feat": feat.float()}


def _forever(loader: torch.utils.data.DataLoader):
    while True:
        yield from loader


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an sslrun shard set with train, unlabeled and test (or val)")
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--steps", type=int, default=1000, help="USB's num_train_iter: the length of its cosine")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--model", default="cifar_cnn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--amp", choices=("off", "bf16"), default="off", help="bf16: each train step under CPU bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="the nets and their inputs in channels_last")
    p.add_argument("--out", type=Path, default=Path("/tmp/usb-fixmatch"))
    a = p.parse_args()
    if not (a.data / "manifest.json").exists():
        p.error(f"--data {a.data}: expected an sslrun shard set folder (no manifest.json there)")
    sys.meta_path.insert(0, _StubFinder())
    from semilearn import get_config
    from semilearn.algorithms import get_algorithm
    from semilearn.datasets.augmentation import RandAugment
    from semilearn.datasets.cv_datasets.datasetbase import BasicDataset
    from torchvision import transforms

    from sslrun.data.manifest import read_manifest

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    manifest = read_manifest(a.data)
    eval_split = "test" if "test" in manifest.splits else "val"
    t0 = time.time()
    x_lb, y_lb = _arrays(a.data, "train", a.size)
    x_ulb, y_ulb = _arrays(a.data, "unlabeled", a.size)
    x_ev, y_ev = _arrays(a.data, eval_split, a.size)
    decode_s = time.time() - t0
    num_classes = manifest.num_classes
    cfg = get_config({
        "algorithm": "fixmatch", "net": a.model, "use_pretrain": False, "amp": False, "dataset": "custom",
        "num_train_iter": a.steps, "num_eval_iter": 10**9, "num_log_iter": 10**9, "epoch": 1,
        "optim": "SGD", "lr": a.lr, "momentum": 0.9, "weight_decay": 5e-4, "layer_decay": 1.0,
        "batch_size": a.batch, "uratio": a.uratio, "eval_batch_size": 256, "ema_m": a.ema,
        "num_labels": len(y_lb), "num_classes": num_classes, "img_size": a.size, "crop_ratio": 0.875,
        "p_cutoff": 0.95, "T": 0.5, "hard_label": True, "ulb_loss_ratio": 1.0, "seed": a.seed,
        "gpu": None, "world_size": 1, "distributed": False, "num_workers": a.workers,
        "save_dir": str(a.out), "save_name": f"usb-fixmatch-seed{a.seed}", "overwrite": True,
    })
    alg = get_algorithm(cfg, lambda num_classes, **kw: UsbNet(a.model, num_classes, a.channels_last), tb_log=None, logger=None)
    params = set(signature(alg.train_step).parameters)
    alg.process_batch = lambda input_args=None, **kw: {k: v for k, v in kw.items() if k in params and v is not None}
    # USB's CIFAR transforms (semilearn/datasets/cv_datasets/cifar.py), ImageNet mean/std as there for cifar10
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    pad = int(a.size * (1 - 0.875))
    weak = transforms.Compose([transforms.RandomCrop(a.size, padding=pad, padding_mode="reflect"),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    strong = transforms.Compose([transforms.RandomCrop(a.size, padding=pad, padding_mode="reflect"),
                                 transforms.RandomHorizontalFlip(), RandAugment(3, 5), transforms.ToTensor(), norm])
    lb = BasicDataset("fixmatch", x_lb, y_lb, num_classes, weak, is_ulb=False)
    ulb = BasicDataset("fixmatch", x_ulb, y_ulb, num_classes, weak, is_ulb=True, strong_transform=strong)

    def loader(ds: BasicDataset, batch: int) -> torch.utils.data.DataLoader:
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**8,
                                                 generator=torch.Generator().manual_seed(a.seed))
        return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=a.workers,
                                           drop_last=True, persistent_workers=a.workers > 0)

    it_lb, it_ulb = _forever(loader(lb, a.batch)), _forever(loader(ulb, a.batch * a.uratio))
    alg.call_hook("before_run", "EMAHook")
    alg.model.train()
    budget_s = a.budget_min * 60
    t_start = time.time()
    steps = 0
    amp = torch.autocast("cpu", torch.bfloat16) if a.amp == "bf16" else contextlib.nullcontext()
    while steps < a.steps and time.time() - t_start < budget_s:
        batch = alg.process_batch(**next(it_lb), **next(it_ulb))
        with amp:
            out, _ = alg.train_step(**batch)
        alg.out_dict = out
        alg.call_hook("after_train_step", "ParamUpdateHook")
        alg.call_hook("after_train_step", "EMAHook")
        alg.it += 1
        steps += 1
    train_s = time.time() - t_start
    model = alg.ema_model.eval()
    ev = torch.stack([norm(torch.from_numpy(img).permute(2, 0, 1).float() / 255) for img in x_ev])
    with torch.no_grad(), amp:
        pred = torch.cat([model(ev[i:i + 512])["logits"].argmax(1) for i in range(0, len(ev), 512)])
    acc = float((pred.numpy() == y_ev).mean())
    result = {"impl": "usb-semilearn-0.3.2-fixmatch", "seed": a.seed, "model": a.model, "amp": a.amp,
              "channels_last": a.channels_last, "threads": a.threads, "workers": a.workers, f"{eval_split}_acc": acc,
              "steps": steps, "num_train_iter": a.steps, "train_s": round(train_s, 1), "decode_s": round(decode_s, 1),
              "images_per_s": round(steps * a.batch * (1 + 2 * a.uratio) / max(train_s, 1e-9), 1),
              "eval_images": len(y_ev)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"result-seed{a.seed}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
