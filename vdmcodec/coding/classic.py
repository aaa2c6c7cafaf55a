"""Classic lossless codes for row strips: the seed of an image's first rows, and the fallback.

The smallest of zlib on raw bytes, PNG and WebP lossless, behind a one-byte tag.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

TAG_ZLIB, TAG_PNG, TAG_WEBP = 0, 1, 2
NAMES = {TAG_ZLIB: "zlib", TAG_PNG: "png", TAG_WEBP: "webp"}
WEBP_MAX_SIDE = 16383
WEBP_MAX_PIXELS = 1 << 16  # WebP at method 6 takes ~10 s per Kodak image: only for small strips


def _to_pil(x: np.ndarray) -> Image.Image:
    c = x.shape[0]
    return Image.fromarray(x[0] if c == 1 else np.ascontiguousarray(x.transpose(1, 2, 0)), "L" if c == 1 else "RGB")


def encode_rows(x: np.ndarray, webp_max_pixels: int = WEBP_MAX_PIXELS) -> tuple[str, bytes]:
    """x: (C, H, W) uint8 with C in {1, 3}.  Returns (codec name, tagged bytes)."""
    c, h, w = x.shape
    cands = [bytes([TAG_ZLIB]) + zlib.compress(np.ascontiguousarray(x).tobytes(), 9)]
    im = _to_pil(x)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    cands.append(bytes([TAG_PNG]) + buf.getvalue())
    if c == 3 and max(h, w) <= WEBP_MAX_SIDE and h * w <= webp_max_pixels:
        buf = io.BytesIO()
        im.save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
        cands.append(bytes([TAG_WEBP]) + buf.getvalue())
    best = min(cands, key=len)
    return NAMES[best[0]], best


def decode_rows(data: bytes, channels: int, height: int, width: int) -> np.ndarray:
    """Inverse of encode_rows; raises ValueError on anything that does not fit."""
    if not data or data[0] not in NAMES:
        raise ValueError("unknown classic codec tag")
    body = data[1:]
    try:
        if data[0] == TAG_ZLIB:
            return np.frombuffer(zlib.decompress(body), dtype=np.uint8).reshape(channels, height, width)
        with Image.open(io.BytesIO(body)) as im:
            im.load()
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, zlib.error, ValueError, SyntaxError) as exc:  # PIL's errors on damaged data
        raise ValueError(f"classic strip does not decode ({type(exc).__name__})") from None
    if arr.shape[:2] != (height, width):
        raise ValueError("classic strip has the wrong size")
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))
