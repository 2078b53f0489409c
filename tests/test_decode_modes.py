"""Issue 15 class 4: every mode PIL opens decodes to the right 8-bit RGB, EXIF orientation applied.

Each case is checked against a reference made with PIL's own operations (convert, alpha
composite over white, exif_transpose) and, for the high-bit-depth modes, numpy's v >> 8.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from sslrun.data.transforms import decode


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def _got(data: bytes) -> np.ndarray:
    t = decode(data, "test")
    assert t.dtype.is_floating_point is False and t.shape[0] == 3
    return t.permute(1, 2, 0).numpy()


def _white(im: Image.Image) -> np.ndarray:
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(bg, im.convert("RGBA")).convert("RGB"))


RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
A8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
G16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)


def _cases() -> list[tuple[str, bytes, np.ndarray]]:
    c = []
    rgb = Image.fromarray(RGB8, "RGB")
    c.append(("RGB png", _save(rgb, "PNG"), RGB8))
    c.append(("1 png", _save(rgb.convert("1"), "PNG"), np.asarray(rgb.convert("1").convert("RGB"))))
    L = rgb.convert("L")
    c.append(("L png", _save(L, "PNG"), np.asarray(L.convert("RGB"))))
    la = Image.merge("LA", (L, Image.fromarray(A8)))
    c.append(("LA png", _save(la, "PNG"), _white(la)))
    rgba = Image.merge("RGBA", (*rgb.split(), Image.fromarray(A8)))
    c.append(("RGBA png", _save(rgba, "PNG"), _white(rgba)))
    c.append(("RGBA webp lossless", _save(rgba, "WEBP", lossless=True), _white(rgba)))
    p = rgb.quantize(16)
    c.append(("P png", _save(p, "PNG"), np.asarray(p.convert("RGB"))))
    pt = p.copy()
    pt.info["transparency"] = 3
    c.append(("P png with transparency", _save(pt, "PNG", transparency=3), _white(Image.open(io.BytesIO(_save(pt, "PNG", transparency=3))))))
    c.append(("P gif with transparency", _save(pt, "GIF", transparency=3), _white(Image.open(io.BytesIO(_save(pt, "GIF", transparency=3))))))
    g16 = Image.fromarray(G16)  # I;16
    want16 = np.repeat((G16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    c.append(("16-bit grey png (I;16)", _save(g16, "PNG"), want16))
    c.append(("16-bit grey tiff (I;16)", _save(g16, "TIFF"), want16))
    i32 = Image.fromarray(G16.astype(np.int32))
    assert i32.mode == "I"
    c.append(("I tiff", _save(i32, "TIFF"), want16))
    wide = G16.astype(np.int32) * 3 - 70000  # out of the 16-bit range both ways: clipped
    c.append(("I tiff out of range", _save(Image.fromarray(wide), "TIFF"),
              np.repeat((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[..., None], 3, axis=2)))
    f = Image.fromarray(RNG.uniform(-20, 300, (5, 7)).astype(np.float32), "F")
    c.append(("F tiff", _save(f, "TIFF"), np.repeat(np.clip(np.rint(np.asarray(f)), 0, 255).astype(np.uint8)[..., None], 3, axis=2)))
    cmyk = rgb.convert("CMYK")
    c.append(("CMYK tiff", _save(cmyk, "TIFF"), np.asarray(cmyk.convert("RGB"))))
    c.append(("BMP", _save(rgb, "BMP"), RGB8))
    return c


@pytest.mark.parametrize("name,data,want", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_lossless_modes_match_pil_reference(name, data, want):
    got = _got(data)
    assert got.shape == want.shape, name
    assert np.array_equal(got, want), f"{name}: max diff {np.abs(got.astype(int) - want.astype(int)).max()}"


def test_16_bit_png_keeps_its_grey_levels():
    """Regression: PIL's convert clipped a 16-bit ramp to two grey levels (0 and 255)."""
    ramp = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    got = _got(_save(ramp, "PNG"))
    assert len(np.unique(got)) == 256


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_modes_close_to_pil(mode):
    im = Image.fromarray(np.kron(RGB8, np.ones((4, 4, 1), np.uint8)), "RGB").convert(mode)
    data = _save(im, "JPEG", quality=95)
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    got = _got(data).astype(int)
    assert got.shape == want.shape and np.abs(got - want).mean() < 2.0


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_fast_path_gives_the_public_functions_pixels(mode, orientation):
    """decode calls torchvision's registered op without its Python wrapper (issue 16: the
    wrapper's per-call warning cost a fifth of a small decode); the pixels must be exactly those
    of the public torchvision.io.decode_image, for colour and grey JPEGs, rotated or not."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_image

    from sslrun.data import transforms

    assert transforms._decode_rgb is not transforms._public_decode_rgb, "this torchvision has the op: the fast path is on"
    im = Image.fromarray(np.kron(RGB8, np.ones((4, 4, 1), np.uint8)), "RGB").convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(im, "JPEG", quality=90, exif=exif.tobytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)
    got = decode(data, "test")
    assert got.shape == want.shape and got.shape[0] == 3 and torch.equal(got, want)
    assert torch.equal(transforms._public_decode_rgb(torch.frombuffer(bytearray(data), dtype=torch.uint8)), want)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_as_viewers_do(fmt, orientation):
    """An 8x4 image with a bright left column; each EXIF orientation moves it where
    ImageOps.exif_transpose (what viewers do) puts it."""
    a = np.full((4, 8, 3), 20, np.uint8)
    a[:, :2] = 230
    a[:1, :] = 120
    im = Image.fromarray(np.kron(a, np.ones((4, 4, 1), np.uint8)), "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(im, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).astype(int)
    got = _got(data).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 3.0


def test_shrink_keeps_orientation(tmp_path):
    """The build's --max-side re-encode drops EXIF, so it must turn the pixels first."""
    from sslrun.data.images import shrink

    im = Image.fromarray(np.zeros((40, 80, 3), np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a landscape file shown as portrait
    small, _ = shrink(_save(im, "JPEG", exif=exif.tobytes()), "jpg", 20)
    assert tuple(decode(small).shape[1:]) == (20, 10)
