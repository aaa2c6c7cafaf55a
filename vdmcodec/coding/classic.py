"""Classic lossless codes for row strips: the seed of an image's first rows, and the fallback.

The smallest of zlib on raw bytes, PNG, WebP lossless, (format 10) JPEG XL lossless and
(format 11, whole images) vdmcodec's own least-squares code (coding.lsq; from format 15 its
mixed model, coding.lsqcm; from 16 with its pointer contexts), or (format 12) the same code
of a JPEG decode's own YCbCr planes (coding.ycc), behind a one-byte tag.
JPEG XL codes a photograph's seed strip about 11% smaller than WebP
at method 6 (12 training photographs, strips of 18-64 rows of 768 pixels), in a fraction of
a second; its lossless decode is exact by the standard, whatever libjxl decodes it.
"""

from __future__ import annotations

import io
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import imagecodecs
import numpy as np
from PIL import Image

from . import lsq, ycc
from .jpegxl import JxlSettings, encode_lossless

TAG_ZLIB, TAG_PNG, TAG_WEBP, TAG_JXL, TAG_LSQ, TAG_YCC, TAG_LSQ_MIXED, TAG_LSQ_POINTERS = 0, 1, 2, 3, 4, 5, 6, 7
NAMES = {TAG_ZLIB: "zlib", TAG_PNG: "png", TAG_WEBP: "webp", TAG_JXL: "jxl", TAG_LSQ: "lsq", TAG_YCC: "lsq-ycc",
         TAG_LSQ_MIXED: "lsq-mixed", TAG_LSQ_POINTERS: "lsq-pointers"}
# the own code's tags by its model
LSQ_TAGS = {TAG_LSQ: lsq.MODEL_LOGISTIC, TAG_LSQ_MIXED: lsq.MODEL_MIXED, TAG_LSQ_POINTERS: lsq.MODEL_POINTERS}
# the own code (coding.lsq) takes about 10 us per pixel to encode on two threads and 17 us to
# decode on one (a 768x512 photograph: 4 s and 7 s); its mixed model (format 15) adds about
# 7.5 us per pixel to each, single-threaded (2.5 us a sample, measured on a 512x512 scan;
# Kodak decodes in 13 s; a 1088x612 training photo encodes in 13 s, decodes in 21 s; a
# 4 MP one so would take about 3.5 min to compress with its check); its pointer contexts
# (format 16) another 13 us per pixel (the 512x512 scan decodes in 13.9 s, not 10.6; Kodak
# in 15.6 s; a 4.1 MP mosaic of training photos compresses with its check in 5.8 min and
# decompresses in 2.9 min, peak 2.0 GB: results/large_4mp_s27.json): whole images up to
# this many pixels
LSQ_MAX_PIXELS = 1 << 22
WEBP_MAX_SIDE = 16383
WEBP_MAX_PIXELS = 1 << 16  # WebP at method 6 takes ~10 s per Kodak image: only for small strips
# JPEG XL's settings by pixel count: (at most this many pixels, settings), the first that fits.
# Strips (the seed): effort 9, about 0.2 s on 768 x 64.  A whole image (the fallback, where a
# classic file beats bits-back): on 768x512 training photographs effort 7 / 9 / 10 give 2.4505
# / 2.4077 / 2.3951 bpd in 0.35 / 1.4 / 3.6 s; a 12 MP mosaic takes 10 s at effort 7, with
# 0.1 GB of memory (session 15).  Since compress decides before the chain (coding.estimate),
# a large photo stored classic no longer pays for a chain first, so it gets effort 9: the
# 12 MP mosaic 2.1797 / 2.1667 / 2.1625 bpd at effort 7 / 8 / 9 in 9.5 / 31 / 46 s, the 24 MP
# one 2.1628 at effort 9 in 93 s and 0.15 GB; a 2 MP one 2.1527 / 2.1387 at effort 9 / 10
# in 11 / 23 s, so effort 10 up to 4 MP (session 16).  Session 21: libjxl's modular settings
# (coding.jpegxl) at effort 9, groups of 1024, trees learnt on every pixel and reading the
# earlier channels, code 12 768x512 training photographs 1.3% smaller than effort 10 in
# the same time, and their first 64 rows 1.9% smaller than effort 9 in 0.26 against 0.15 s
# (benchmarks.experiments.jxl_settings); the 12 / 24 MP mosaics 3.2 / 3.1% smaller than
# effort 9, in 50 / 102 s on two threads (22 / 45 s) and 0.9 / 1.5 GB.
MODULAR_BEST = dict(group_size=3, tree_percent=100, prev_channels=3)
JXL_STRIP_SETTINGS = ((1 << 18, JxlSettings(9, **MODULAR_BEST)), (None, JxlSettings(7)))
JXL_IMAGE_SETTINGS = ((1 << 25, JxlSettings(9, **MODULAR_BEST)), (None, JxlSettings(8)))


def jxl_settings(pixels: int, table: tuple = JXL_STRIP_SETTINGS) -> JxlSettings:
    """JPEG XL's encoder settings for an image of this many pixels.

    >>> jxl_settings(768 * 64).effort, jxl_settings(768 * 512, JXL_IMAGE_SETTINGS).group_size
    (9, 3)
    >>> jxl_settings(40_000_000, JXL_IMAGE_SETTINGS)
    JxlSettings(effort=8, group_size=-1, tree_percent=-1, prev_channels=-1, predictor=-1)
    """
    return next(s for most, s in table if most is None or pixels <= most)


def _to_pil(x: np.ndarray) -> Image.Image:
    c = x.shape[0]
    return Image.fromarray(x[0] if c == 1 else np.ascontiguousarray(x.transpose(1, 2, 0)), "L" if c == 1 else "RGB")


def encode_rows(x: np.ndarray, webp_max_pixels: int = WEBP_MAX_PIXELS,
                jxl_table: tuple = JXL_STRIP_SETTINGS, threads: int = 1,
                lsq_max_pixels: int = 0) -> tuple[str, bytes]:
    """x: (C, H, W) uint8 with C in {1, 3}.  Returns (codec name, tagged bytes).
    jxl_table: JXL_IMAGE_SETTINGS for a whole image (slower, smaller); threads > 1: JPEG XL
    on that many threads while the other codes run beside it (a 12 MP mosaic at effort 9:
    45 s on one thread, 22 s on two, the same bytes; its PNG and zlib codes another 12 s).
    lsq_max_pixels: rows of at most this many pixels are also tried with the own code: of
    their libjpeg YCbCr planes where they are a JPEG decode (coding.ycc), else of the pixels."""
    c, h, w = x.shape
    pixels = x[0] if c == 1 else np.ascontiguousarray(x.transpose(1, 2, 0))
    settings = jxl_settings(h * w, jxl_table)

    def jxl() -> bytes:
        return bytes([TAG_JXL]) + encode_lossless(pixels, settings, threads)

    with ThreadPoolExecutor(max_workers=1) if threads > 1 else nullcontext() as pool:
        jxl_code = pool.submit(jxl) if pool is not None else None
        cands = [bytes([TAG_ZLIB]) + zlib.compress(np.ascontiguousarray(x).tobytes(), 9)]
        im = _to_pil(x)
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        cands.append(bytes([TAG_PNG]) + buf.getvalue())
        if h * w <= webp_max_pixels and (webp := webp_rows(x)) is not None:
            cands.append(webp)
        if h * w <= lsq_max_pixels:
            cands.append(_own_code(pixels.reshape(h, w, c), max(1, threads)))
        cands.append(jxl_code.result() if jxl_code is not None else jxl())
    best = min(cands, key=len)
    return NAMES[best[0]], best


def _own_code(x: np.ndarray, threads: int) -> bytes:
    """The own least-squares code of pixels (H, W, C), tagged: in the JPEG decoder's YCbCr
    where the pixels are a JPEG decode (a quarter smaller there), else of the pixels."""
    if x.shape[2] == 3 and (code := ycc.encode(x, threads)) is not None:
        return bytes([TAG_YCC]) + code
    return bytes([TAG_LSQ_POINTERS]) + lsq.encode(x, threads=threads, model=lsq.MODEL_POINTERS)


def describe(data: bytes) -> str:
    """The code inside tagged classic rows, in words.

    >>> describe(bytes([TAG_YCC, ycc.HALF])), describe(bytes([TAG_YCC, ycc.HALF_ROWS]))[-27:], describe(bytes([TAG_JXL]))
    ('lsq-ycc: libjpeg YCbCr, chroma at half resolution', 'half resolution in the rows', 'jxl')
    >>> describe(bytes([TAG_YCC, ycc.HALF | ycc.COEF_LUMA | ycc.COEF_CHROMA]))[24:]
    'chroma at half resolution, luma and chroma as JPEG DCT coefficients'
    >>> describe(bytes([TAG_YCC, ycc.HALF | ycc.MODE_BITS]))[-34:]
    'as JPEG DCT coefficients (model 2)'
    >>> describe(bytes([TAG_YCC, ycc.HALF | ycc.LSQ_MIXED]))[-32:], describe(bytes([TAG_LSQ_MIXED]))
    ('least squares in the mixed model', 'lsq-mixed')
    >>> describe(bytes([TAG_YCC, ycc.HALF | ycc.LSQ_POINTERS]))[-58:], describe(bytes([TAG_LSQ_POINTERS]))
    ('least squares in the mixed model with its pointer contexts', 'lsq-pointers')
    """
    if not data or data[0] not in NAMES:
        return "unknown"
    name = NAMES[data[0]]
    chroma = {ycc.WHOLE: "full resolution", ycc.HALF: "half resolution", ycc.HALF_ROWS: "half resolution in the rows"}
    if data[0] == TAG_YCC and len(data) > 1:
        name += ": libjpeg YCbCr, chroma at " + chroma.get(data[1] & 3, "an unknown resolution")
        coefs = [part for bit, part in ((ycc.COEF_LUMA, "luma"), (ycc.COEF_CHROMA, "chroma")) if data[1] & bit]
        if coefs:
            name += ", " + " and ".join(coefs) + " as JPEG DCT coefficients"
            name += " (model 2)" if data[1] & ycc.COEF_MODEL2 else ""
        if data[1] & ycc.LSQ_BITS and len(coefs) < 2:
            name += ", least squares in the mixed model"
            name += " with its pointer contexts" if data[1] & ycc.LSQ_POINTERS else ""
    return name


def webp_rows(x: np.ndarray) -> bytes | None:
    """WebP lossless at method 6 of RGB rows x (3, H, W), tagged as encode_rows tags it (None
    for grey rows, or rows too wide for WebP).  The slowest candidate: about 10 s per Kodak
    image."""
    c, h, w = x.shape
    if c != 3 or max(h, w) > WEBP_MAX_SIDE:
        return None
    buf = io.BytesIO()
    _to_pil(x).save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
    return bytes([TAG_WEBP]) + buf.getvalue()


def decode_rows(data: bytes, channels: int, height: int, width: int) -> np.ndarray:
    """Inverse of encode_rows; raises ValueError on anything that does not fit."""
    if not data or data[0] not in NAMES:
        raise ValueError("unknown classic codec tag")
    body = data[1:]
    try:
        if data[0] == TAG_ZLIB:
            return np.frombuffer(zlib.decompress(body), dtype=np.uint8).reshape(channels, height, width)
        if data[0] == TAG_JXL:
            arr = imagecodecs.jpegxl_decode(body)
        elif data[0] in LSQ_TAGS:
            arr = lsq.decode(body, height, width, channels, model=LSQ_TAGS[data[0]])
            arr = arr[:, :, 0] if channels == 1 else arr
        elif data[0] == TAG_YCC:
            if channels != 3:
                raise ValueError("a YCbCr code needs three channels")
            arr = ycc.decode(body, height, width)
        else:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    # PIL's and libjxl's errors on damaged data (imagecodecs.JpegxlError is a RuntimeError)
    except (OSError, zlib.error, ValueError, SyntaxError, RuntimeError) as exc:
        raise ValueError(f"classic strip does not decode ({type(exc).__name__})") from None
    if arr.dtype != np.uint8 or arr.shape != ((height, width) if channels == 1 else (height, width, 3)):
        raise ValueError("classic strip has the wrong size")
    return arr[None] if channels == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))
