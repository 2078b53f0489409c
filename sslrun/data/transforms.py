"""Image decoding and augmentation on uint8 tensors, one sample at a time.

Everything stays uint8 CHW until the batch reaches the device, where normalisation is one
fused op; that keeps the workers' CPU on decoding and augmenting. Randomness comes from the
torch generator the caller seeds per sample (see loader.py), so the same sample at the same
step gets the same pixels whatever the worker count and across restarts.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np

import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslrun.data.jpeg import jpeg_frame
from sslrun.errors import UserError

MAX_PIXELS = 64 * 1024 * 1024  # a decompression bomb is refused before it fills memory

Transform = Callable[[Tensor], Tensor]


def decode(data: bytes | bytearray, where: str | Callable[[], str] = "image") -> Tensor:
    """Bytes of any format PIL opens -> uint8 RGB (3, H, W), EXIF orientation applied as viewers do.

    The one decoder of the suite (training, evaluation, shards/verify.py): the build keeps each
    image's original bytes, so decoding happens here, at read time, and nowhere else.
    JPEGs with 1 or 3 components take torchvision's libjpeg-turbo path (the bulk, and fast);
    everything else goes through PIL and `to_rgb`. Every failure is a UserError naming `where`
    (a callable is called only then: the loader's name of a sample costs a string per decode).
    """
    frame = jpeg_frame(data)
    if frame is not None and frame[2] in (1, 3):
        w, h, _ = frame
        if w * h > MAX_PIXELS:
            raise UserError(f"{_named(where)}: {w}x{h} pixels is over the {MAX_PIXELS} limit (decompression bomb?)")
        # torchvision's decoder for JPEG only: it is the fast path that matters, and its PNG
        # decoder crashed the process (not an exception) on a corrupt data chunk in our tests.
        buf = data if isinstance(data, bytearray) else bytearray(data)  # frombuffer wants a writable buffer
        try:
            img = _decode_rgb(torch.frombuffer(buf, dtype=torch.uint8))
            if img.dim() == 4:
                img = img[0]
            return img if img.shape[0] == 3 else img[:3]
        except RuntimeError:
            pass  # e.g. progressive oddities: PIL below handles them
    return _decode_pil(data, _named(where))


def _named(where: str | Callable[[], str]) -> str:
    return where() if callable(where) else where


def _public_decode_rgb(encoded: Tensor) -> Tensor:
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call that decoding moves to torchcodec
        warnings.simplefilter("ignore")
        return decode_image(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)


def _fast_decode_rgb() -> Callable[[Tensor], Tensor]:
    """torchvision's registered decode op, called without its Python wrapper, or the public
    function where this torchvision has no such op. Why: the wrapper logs API usage and warns on
    every call, and the warnings filter around it then costs more still; together about a fifth of
    the decode of a 32 px JPEG (bench/RESULTS-throughput.md, issue 16). Same op, same pixels:
    tests/test_decode_modes.py compares the two."""
    try:
        op = torch.ops.image.decode_image
    except (AttributeError, RuntimeError):
        return _public_decode_rgb
    rgb = ImageReadMode.RGB.value
    return lambda encoded: op(encoded, rgb, True)


_decode_rgb = _fast_decode_rgb()


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as the 8-bit RGB a viewer shows, EXIF orientation applied.

    - 16- and 32-bit integer modes (I;16*, I: 16-bit PNG, TIFF) keep their top 8 bits of a
      16-bit range (v / 256, clipped to 0..65535 first); PIL's convert("RGB") clips them to
      255 instead, so a 16-bit PNG came out as two grey levels.
    - F (float) follows PIL: values are taken as 0..255, rounded and clipped.
    - modes with alpha (RGBA, LA, PA, P or L or RGB with a transparency key) are composited
      over white, as a viewer on a white page shows them (convert("RGB") shows whatever
      colour the transparent pixels happen to hold).
    - every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX) is PIL's convert("RGB").
    """
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)
        a = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255)
        a = np.nan_to_num(a, nan=0.0).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _decode_pil(data: bytes | bytearray, where: str) -> Tensor:
    """PIL for everything torchvision's JPEG decoder did not take; every failure is a UserError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise UserError(f"{where}: {w}x{h} pixels is over the {MAX_PIXELS} limit (decompression bomb?)")
                rgb = to_rgb(im)
                w, h = rgb.size
                raw = rgb.tobytes()
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own refusal at twice its pixel limit
        raise UserError(f"{where}: over PIL's pixel limit of {2 * (Image.MAX_IMAGE_PIXELS or 0)} (decompression bomb?)") from None
    except Exception as err:  # noqa: BLE001 - every unreadable file is reported the same way
        msg = str(err).splitlines()[0][:100] if str(err) else ""
        raise UserError(f"{where}: not a readable image ({type(err).__name__}{': ' + msg if msg else ''})") from None
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


class Preset:
    """A preset's steps applied in order. `draws` is False when there are none: the loader then
    neither seeds the generator for this view nor saves and restores it (per sample, that
    plumbing cost more than the decode of a 32 px JPEG on the decode-only path)."""

    def __init__(self, steps: list[Transform]) -> None:
        self.steps = steps
        self.draws = bool(steps)

    def __call__(self, img: Tensor) -> Tensor:
        for t in self.steps:
            img = t(img)
        return img


def draws_random(t: Transform) -> bool:
    """Whether a view may draw from the generator (any callable but a step-less Preset may)."""
    return getattr(t, "draws", True) is not False


def make_transform(preset: str) -> Transform:
    check_preset("augment", preset)
    return Preset(PRESETS[preset]())
