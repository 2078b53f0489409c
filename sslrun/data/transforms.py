"""Image decoding and augmentation on uint8 tensors, one sample at a time.

Everything stays uint8 CHW until the batch reaches the device, where normalisation is one
fused op; that keeps the workers' CPU on decoding and augmenting. Randomness comes from the
torch generator the caller seeds per sample (see loader.py), so the same sample at the same
step gets the same pixels whatever the worker count and across restarts.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslrun.errors import UserError

MAX_PIXELS = 64 * 1024 * 1024  # a decompression bomb is refused before it fills memory

Transform = Callable[[Tensor], Tensor]


def decode(data: bytes, where: str = "image") -> Tensor:
    """Bytes of any common format -> uint8 RGB (3, H, W); grayscale, CMYK and alpha become RGB."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            w, h = probe.size
            fmt = probe.format
    except Image.DecompressionBombError:  # PIL's own refusal at twice its pixel limit
        raise UserError(f"{where}: over PIL's pixel limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} (decompression bomb?)") from None
    except Exception as err:  # noqa: BLE001 - every unreadable file is reported the same way
        raise UserError(f"{where}: not a readable image ({type(err).__name__})") from None
    if w * h > MAX_PIXELS:
        raise UserError(f"{where}: {w}x{h} pixels is over the {MAX_PIXELS} limit (decompression bomb?)")
    # torchvision's decoder for JPEG only: it is the fast path that matters, and its PNG
    # decoder crashed the process (not an exception) on a corrupt data chunk in our tests.
    if fmt == "JPEG":
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            return img[:3] if img.dim() == 3 else img[0, :3]
        except RuntimeError:
            pass  # e.g. CMYK or progressive oddities: PIL below handles them
    with Image.open(io.BytesIO(data)) as im:
        arr = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
        return arr.view(h, w, 3).permute(2, 0, 1).contiguous()


def fit(img: Tensor, size: int) -> Tensor:
    """Resize the short side to `size` and centre-crop a square (identity when already right)."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


class Translate:
    """Random translation by up to `frac` of the side, reflect-padded, as in FixMatch's weak view."""

    def __init__(self, frac: float = 0.125) -> None:
        self.frac = frac

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        p = max(1, int(round(self.frac * min(h, w))))
        padded = torch.nn.functional.pad(img.unsqueeze(0).float(), (p, p, p, p), mode="reflect")[0]
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        return padded[:, dy:dy + h, dx:dx + w].to(img.dtype)


class Cutout:
    """A grey square of half the side at a random place (FixMatch's strong view adds this)."""

    def __init__(self, frac: float = 0.5) -> None:
        self.frac = frac

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        s = max(1, int(self.frac * min(h, w)))
        y = int(torch.randint(0, max(1, h - s + 1), ()))
        x = int(torch.randint(0, max(1, w - s + 1), ()))
        img = img.clone()
        img[:, y:y + s, x:x + s] = 127
        return img


def _flip(img: Tensor) -> Tensor:
    return TF.horizontal_flip(img) if bool(torch.rand(()) < 0.5) else img


PRESETS: dict[str, Callable[[], list[Transform]]] = {
    "none": lambda: [],
    "flip": lambda: [_flip],
    "weak": lambda: [_flip, Translate()],
    "rotate": lambda: [_flip, v2.RandomRotation(15)],
    "jitter": lambda: [_flip, Translate(), v2.ColorJitter(0.4, 0.4, 0.4, 0.1)],
    "report": lambda: [_flip, v2.RandomAffine(degrees=15, translate=(0.1, 0.1)), v2.ColorJitter(0.4, 0.4, 0.4, 0.1)],
    "randaugment": lambda: [_flip, Translate(), v2.RandAugment(num_ops=2, magnitude=10), Cutout()],
}


def check_preset(key: str, name: str) -> None:
    if name not in PRESETS:
        raise UserError(f"{key}={name}: unknown augmentation (expected one of {', '.join(PRESETS)})")


def make_transform(preset: str) -> Transform:
    check_preset("augment", preset)
    steps = PRESETS[preset]()

    def apply(img: Tensor) -> Tensor:
        for t in steps:
            img = t(img)
        return img

    return apply
