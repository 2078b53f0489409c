"""Augmentation of a whole step's batch at once, in the training process (`augment_on=trainer`).

Why: augmenting one sample at a time in loader workers made FixMatch loader-bound on a 2-core
node (bench/RESULTS-throughput.md: P4 0.61 at 32 px, the trainer waited 39 % of its time for 15
augmented views per labeled image). The same work on the whole uint8 batch is a few dozen
tensor ops a step, on the device the batch is going to anyway (the GPU on a GPU node); the
workers only decode. Every random number is drawn from the sample's own seed
(sslrun/data/sample_draws.py): a sample gets the same pixels on any rank, in any batch, in a
resumed run, and when its strong view is made later for the kept rows only.

The strong view is FixMatch's RandAugment as its authors and USB run it: two ops a sample, each
drawn from the 14 below with its own uniform magnitude, then a grey Cutout of half the side (the
loader path's `randaugment` preset is torchvision's, at a fixed magnitude).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from sslrun.data.sample_draws import SampleDraws
from sslrun.errors import UserError

# which of a sample's streams a view draws from (sslrun/data/sample_draws.py)
VIEW_LABELED, VIEW_WEAK, VIEW_STRONG = 0, 1, 2
FILL = 128.0  # what a geometric op shows where the image moved away (FixMatch's fill colour)
GREY = 127  # Cutout's square, as the loader path's Cutout


def flip(x: Tensor, r: SampleDraws) -> Tensor:
    """Horizontal flip of each image with probability 1/2."""
    keep = r.uniform()[0] < 0.5
    return torch.where(keep.view(-1, 1, 1, 1), x, x.flip(-1))


def _reflect(i: Tensor, n: int) -> Tensor:
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def translate(x: Tensor, r: SampleDraws, frac: float = 0.125) -> Tensor:
    """FixMatch's weak shift: each image cropped at a random place from itself reflect-padded by
    `frac` of its side (the pixels of pad(mode="reflect") + crop, read through index tables)."""
    n, c, h, w = x.shape
    p = max(1, int(round(frac * min(h, w))))
    if p >= min(h, w):
        raise UserError(f"image_size={min(h, w)}: too small for a {p}-pixel reflect shift")
    dy, dx = r.integers(2 * p + 1, 2).unsqueeze(-1)  # (n, 1) each
    rows = _reflect(torch.arange(h, device=x.device) + dy - p, h)  # (n, h)
    cols = _reflect(torch.arange(w, device=x.device) + dx - p, w)  # (n, w)
    out = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def cutout(x: Tensor, r: SampleDraws, frac: float = 0.5) -> Tensor:
    """A grey square of `frac` of the side at a random place in each image."""
    n, _, h, w = x.shape
    s = max(1, int(frac * min(h, w)))
    y0 = r.integers(h - s + 1)[0].unsqueeze(-1)  # (n, 1)
    x0 = r.integers(w - s + 1)[0].unsqueeze(-1)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y = (ys >= y0) & (ys < y0 + s)  # (n, h)
    in_x = (xs >= x0) & (xs < x0 + s)  # (n, w)
    square = (in_y.view(n, 1, h, 1) & in_x.view(n, 1, 1, w))
    return x.masked_fill(square, GREY)


# --- RandAugment's ops: float (n, 3, h, w) in 0..255 and a magnitude per image -> the same ---------

def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _grey(x: Tensor) -> Tensor:
    """PIL's L conversion (ITU-R 601-2 luma), kept as one channel."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate)."""
    return degenerate + _col(factor) * (x - degenerate)


def identity(x: Tensor, v: Tensor) -> Tensor:
    return x


def brightness(x: Tensor, v: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x), v)


def color(x: Tensor, v: Tensor) -> Tensor:
    return _blend(x, _grey(x).expand_as(x), v)


def contrast(x: Tensor, v: Tensor) -> Tensor:
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).round().expand_as(x), v)


def sharpness(x: Tensor, v: Tensor) -> Tensor:
    """PIL's SHARPEN-style smoothing kernel as the degenerate image, border pixels left as they are."""
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    smooth = F.conv2d(x, k.expand(3, 1, 3, 3).to(x.dtype), groups=3).round()
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(x, degenerate, v)


def autocontrast(x: Tensor, v: Tensor) -> Tensor:
    """Each channel stretched to 0..255 (a flat channel left as it is)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) * (255.0 / span.clamp(min=1e-6)), x)


def equalize(x: Tensor, v: Tensor) -> Tensor:
    return TF.equalize(x.round().clamp(0, 255).to(torch.uint8)).to(x.dtype)


def posterize(x: Tensor, v: Tensor) -> Tensor:
    """Keep the top 4 to 8 bits (v in [4, 8], floored)."""
    bits = v.floor().clamp(1, 8).to(torch.int64)
    mask = ((0xFF << (8 - bits)) & 0xFF).to(torch.uint8)
    return (x.round().clamp(0, 255).to(torch.uint8) & _col(mask)).to(x.dtype)


def solarize(x: Tensor, v: Tensor) -> Tensor:
    """Invert every pixel at or above the threshold v (in [0, 256])."""
    return torch.where(x >= _col(v), 255.0 - x, x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample through per-image affine maps (output -> input, normalised coordinates), nearest,
    with FILL where the source lies outside the image."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - FILL, grid, mode="nearest", padding_mode="zeros", align_corners=False) + FILL


def _theta(v: Tensor, a: float, b: float, c: float, d: float, e: float, f: float) -> Tensor:
    t = torch.zeros(v.shape[0], 2, 3, device=v.device, dtype=torch.float32)
    t[:, 0, 0], t[:, 0, 1], t[:, 0, 2], t[:, 1, 0], t[:, 1, 1], t[:, 1, 2] = a, b, c, d, e, f
    return t


def rotate(x: Tensor, v: Tensor) -> Tensor:
    """Rotate by v degrees about the centre."""
    r = v * (math.pi / 180)
    t = _theta(v, 0, 0, 0, 0, 0, 0)
    t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = r.cos(), -r.sin(), r.sin(), r.cos()
    return _affine(x, t)


def shear_x(x: Tensor, v: Tensor) -> Tensor:
    t = _theta(v, 1, 0, 0, 0, 1, 0)
    t[:, 0, 1] = v
    return _affine(x, t)


def shear_y(x: Tensor, v: Tensor) -> Tensor:
    t = _theta(v, 1, 0, 0, 0, 1, 0)
    t[:, 1, 0] = v
    return _affine(x, t)


def translate_x(x: Tensor, v: Tensor) -> Tensor:
    """Shift by v of the width (normalised coordinates span 2)."""
    t = _theta(v, 1, 0, 0, 0, 1, 0)
    t[:, 0, 2] = 2 * v
    return _affine(x, t)


def translate_y(x: Tensor, v: Tensor) -> Tensor:
    t = _theta(v, 1, 0, 0, 0, 1, 0)
    t[:, 1, 2] = 2 * v
    return _affine(x, t)


Op = Callable[[Tensor, Tensor], Tensor]
# (op, low, high): the magnitude is uniform in [low, high] for each image (USB's ranges).
RANDAUGMENT_OPS: list[tuple[Op, float, float]] = [
    (autocontrast, 0, 1), (brightness, 0.05, 0.95), (color, 0.05, 0.95), (contrast, 0.05, 0.95),
    (equalize, 0, 1), (identity, 0, 1), (posterize, 4, 8.999), (rotate, -30, 30), (sharpness, 0.05, 0.95),
    (shear_x, -0.3, 0.3), (shear_y, -0.3, 0.3), (solarize, 0, 256), (translate_x, -0.3, 0.3), (translate_y, -0.3, 0.3),
]


def randaugment(x: Tensor, r: SampleDraws, num_ops: int = 2) -> Tensor:
    """`num_ops` rounds; in each, every image gets one op drawn uniformly, at its own magnitude.
    Images are grouped by op (one host sync a round, for the group sizes)."""
    out = x.float()
    for _ in range(num_ops):
        op = r.integers(len(RANDAUGMENT_OPS))[0]
        u = r.uniform()[0]
        order = torch.argsort(op, stable=True)
        counts = torch.bincount(op, minlength=len(RANDAUGMENT_OPS)).tolist()
        at = 0
        for (fn, lo, hi), k in zip(RANDAUGMENT_OPS, counts):
            if k:
                idx = order[at:at + k]
                out[idx] = fn(out[idx], lo + (hi - lo) * u[idx]).clamp(0, 255)
                at += k
    return out.round().to(torch.uint8)


BatchTransform = Callable[[Tensor, SampleDraws], Tensor]
BATCH_PRESETS: dict[str, list[BatchTransform]] = {
    "none": [],
    "flip": [flip],
    "weak": [flip, translate],
    "randaugment": [flip, translate, randaugment, cutout],
}


def check_batch_preset(key: str, name: str) -> None:
    if name not in BATCH_PRESETS:
        raise UserError(f"{key}={name}: no batched version for augment_on=trainer "
                        f"(expected one of {', '.join(BATCH_PRESETS)}, or augment_on=loader)")


def apply_preset(name: str, x: Tensor, r: SampleDraws) -> Tensor:
    """uint8 (n, 3, h, w) -> uint8, through the preset's steps in order, row i drawing from
    stream i of `r`."""
    if len(r) != x.shape[0]:
        raise ValueError(f"apply_preset: {x.shape[0]} images, {len(r)} streams")
    for step in BATCH_PRESETS[name]:
        x = step(x, r)
    return x


def resolve_augment_on(augment_on: str, augment: str, strong: str) -> str:
    """`auto` (the default): `trainer` where both presets have a batched version, `loader`
    otherwise. Why trainer first: the workers then only decode (FixMatch's 15 views a labeled
    image stop being the CPU cost that bounds a GPU node, or a 2-core one: P4 0.64 -> 0.95 at
    32 px, bench/RESULTS-throughput.md), and it is the path bench/RESULTS-accuracy.md's figures
    come from."""
    if augment_on != "auto":
        return augment_on
    return "trainer" if augment in BATCH_PRESETS and strong in BATCH_PRESETS else "loader"


def check_presets(augment: str, strong: str, augment_on: str) -> None:
    """The labeled and strong presets exist where they will run: the workers' or the batch's."""
    if resolve_augment_on(augment_on, augment, strong) == "trainer":
        check_batch_preset("augment", augment)
        check_batch_preset("strong", strong)
    else:
        from sslrun.data.transforms import check_preset

        check_preset("augment", augment)
        check_preset("strong", strong)
