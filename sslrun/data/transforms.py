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


def jpeg_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None when `data` is not a JPEG we can read.

    Why not PIL: opening the header with PIL costs about as much as torchvision's whole
    decode of a small JPEG; walking the marker segments to the SOF marker is a few microseconds.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            if i + 9 > n or length < 8:
                return None
            h, w = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return (w, h) if w > 0 and h > 0 else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / scan before any frame header
            return None
        i += 2 + length
    return None


def decode(data: bytes | bytearray, where: str = "image") -> Tensor:
    """Bytes of any common format -> uint8 RGB (3, H, W); grayscale, CMYK and alpha become RGB."""
    size = jpeg_size(data)
    if size is not None:
        if size[0] * size[1] > MAX_PIXELS:
            raise UserError(f"{where}: {size[0]}x{size[1]} pixels is over the {MAX_PIXELS} limit (decompression bomb?)")
        # torchvision's decoder for JPEG only: it is the fast path that matters, and its PNG
        # decoder crashed the process (not an exception) on a corrupt data chunk in our tests.
        buf = data if isinstance(data, bytearray) else bytearray(data)  # frombuffer wants a writable buffer
        try:
            img = decode_image(torch.frombuffer(buf, dtype=torch.uint8), mode=ImageReadMode.RGB)
            return img[:3] if img.dim() == 3 else img[0, :3]
        except RuntimeError:
            pass  # e.g. CMYK or progressive oddities: PIL below handles them
    return _decode_pil(data, where)


def _decode_pil(data: bytes | bytearray, where: str) -> Tensor:
    """PIL for everything torchvision's JPEG decoder did not take; every failure is a UserError."""
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{where}: {w}x{h} pixels is over the {MAX_PIXELS} limit (decompression bomb?)")
            raw = im.convert("RGB").tobytes()
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own refusal at twice its pixel limit
        raise UserError(f"{where}: over PIL's pixel limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} (decompression bomb?)") from None
    except Exception as err:  # noqa: BLE001 - every unreadable file is reported the same way
        raise UserError(f"{where}: not a readable image ({type(err).__name__})") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).contiguous()


def fit(img: Tensor, size: int) -> Tensor:
    """Resize the short side to `size` and centre-crop a square (identity when already right)."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


class Translate:
    """Random translation by up to `frac` of the side, reflect-padded, as in FixMatch's weak view.

    The crop of the reflect-padded image is read straight from the uint8 image through a
    reflected index table (two index_selects), with no padded copy and no float round trip:
    the same pixels as pad(mode="reflect") + crop, at a fraction of the cost.
    """

    def __init__(self, frac: float = 0.125) -> None:
        self.frac = frac
        self._tables: dict[tuple[int, int], Tensor] = {}

    def _table(self, n: int, p: int) -> Tensor:
        """Index into a side of n pixels for each position of that side padded by p, reflected."""
        t = self._tables.get((n, p))
        if t is None:
            i = torch.arange(-p, n + p).abs()
            t = self._tables[(n, p)] = torch.where(i >= n, 2 * (n - 1) - i, i)
        return t

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        p = max(1, int(round(self.frac * min(h, w))))
        if p >= min(h, w):  # reflect padding needs p < side; keep pad()'s behaviour (and error) there
            padded = torch.nn.functional.pad(img.unsqueeze(0).float(), (p, p, p, p), mode="reflect")[0]
            dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            return padded[:, dy:dy + h, dx:dx + w].to(img.dtype)
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        out = img if dy == p else img.index_select(-2, self._table(h, p)[dy:dy + h])
        return out if dx == p else out.index_select(-1, self._table(w, p)[dx:dx + w])


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
    """Horizontal flip with probability 1/2 (Tensor.flip: the same pixels as TF.horizontal_flip, half the cost)."""
    return img.flip(-1) if bool(torch.rand(()) < 0.5) else img


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
