"""The one JPEG header walker: frame size and colour components, without decoding.

Why not PIL: opening the header with PIL costs about as much as torchvision's whole decode of
a small JPEG; walking the marker segments to the start-of-frame marker is a few microseconds.
Used by the build (images.py, size checks) and by training's decoder (transforms.py, to send
4-component CMYK/YCCK files to PIL, whose conversion handles Adobe's inverted CMYK).
"""

from __future__ import annotations

# start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_frame(data: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(width, height, components) from the first start-of-frame marker; None when `data` is
    not a JPEG or the marker walk goes wrong (the caller then lets PIL decide)."""
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
        if marker in _SOF:
            if i + 10 > n or length < 8:
                return None
            h, w = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            return (w, h, data[i + 9]) if w > 0 and h > 0 else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / scan before any frame header
            return None
        i += 2 + length
    return None
