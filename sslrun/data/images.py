"""Cheap checks of image files before they go into a shard, and the optional shrink.

Why not decode everything: a full decode costs 70-140 us per 96 px JPEG, several times the
whole budget per file for packing at tar's speed. Instead the format is told by its magic
bytes, the size is read from the header (JPEG SOF marker, PNG IHDR), and truncation is
caught by the end marker (JPEG EOI, PNG IEND). Only when that fast path is unsure, and for
the rarer formats (WebP, GIF, BMP, TIFF), does PIL open and fully decode the file.
`shards/verify.py` decodes every sample afterwards for those who want certainty.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps

from sslrun.data.jpeg import jpeg_frame

_TAIL = 64


class BadImage(Exception):
    """A file that cannot go into a shard; the message is the reason written to rejects.tsv."""


def sniff(data: bytes) -> str | None:
    """The image format from the magic bytes, as the member extension; None if unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    frame = jpeg_frame(data)
    return None if frame is None else (frame[0], frame[1])


def _check_pixels(w: int, h: int) -> None:
    if w <= 0 or h <= 0:
        raise BadImage(f"image has no pixels ({w}x{h})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise BadImage(f"decompression bomb: {w}x{h} pixels is over PIL's limit of {limit}")


def _pil_check(data: bytes) -> tuple[int, int]:
    """Open and fully decode with PIL (size checked first, so a bomb is never decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                _check_pixels(w, h)
                im.load()
    except BadImage:
        raise
    except Image.DecompressionBombError as err:
        raise BadImage(f"decompression bomb: {err}") from None
    except Exception as err:  # PIL raises many types for broken files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadImage(f"cannot decode: {msg}"[:200]) from None
    return w, h


def check_image(data: bytes) -> tuple[str, int, int]:
    """(extension, width, height) of a good image; BadImage with the reason otherwise."""
    if not data:
        raise BadImage("empty file")
    ext = sniff(data)
    if ext is None:
        raise BadImage("not an image (unknown format)")
    size = None
    if ext == "jpg" and b"\xff\xd9" in data[-_TAIL:]:
        size = _jpeg_size(data)
    elif ext == "png" and b"IEND" in data[-_TAIL:] and data[12:16] == b"IHDR":
        size = struct.unpack_from(">II", data, 16)
    if size is None:  # unsure, or a rarer format: let PIL decide
        size = _pil_check(data)
    else:
        _check_pixels(*size)
    return ext, size[0], size[1]


def shrink(data: bytes, ext: str, max_side: int) -> tuple[bytes, str]:
    """Re-encode an image whose longer side is over `max_side`: JPEG stays JPEG (quality 95),
    anything else becomes PNG (lossless). Deterministic: same input, same bytes."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # the re-encoded file carries no EXIF: turn the pixels now
        w, h = im.size
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if im.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "I;16", "I", "F"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode in ("PA",) else "RGB")
        small = im.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if ext == "jpg" and small.mode in ("RGB", "L", "CMYK"):
        small.save(out, format="JPEG", quality=95)
        return out.getvalue(), "jpg"
    if small.mode == "CMYK":
        small = small.convert("RGB")
    small.save(out, format="PNG")
    return out.getvalue(), "png"
