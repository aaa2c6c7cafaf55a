"""Classic lossless codecs for the benchmark, each checked for an exact round trip.

Every ``encode_*`` function takes a uint8 array of shape (H, W, C) with C in 1..4 (grey,
grey+alpha, RGB, RGBA), encodes it, decodes the result again, raises NotLosslessError unless
the decoded pixels equal the input exactly, and returns ``CodecRun(data, encode_s, decode_s)``
(a tuple: encoded bytes, encode seconds, decode seconds).

Pillow gives PNG and WebP; imagecodecs (the ``bench`` extra) gives JPEG XL, JPEG-LS and JPEG 2000.
A codec whose library is missing is reported by ``available_codecs`` with the reason, so the
benchmark records it as unavailable instead of failing.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, features

try:  # optional: the ``bench`` extra
    import imagecodecs
except ImportError:  # pragma: no cover - depends on the environment
    imagecodecs = None


class NotLosslessError(AssertionError):
    """A codec's decoded pixels differ from its input."""


class CodecUnavailableError(RuntimeError):
    """The library behind a codec is not installed or lacks the codec."""


class UnsupportedInputError(ValueError):
    """The codec cannot represent this kind of image (e.g. JPEG-LS and grey+alpha)."""


class CodecRun(NamedTuple):
    data: bytes
    encode_s: float
    decode_s: float


@dataclass(frozen=True)
class ClassicCodec:
    key: str  # command-line name
    label: str  # table row
    func: Callable[..., CodecRun]
    library: str


# ----------------------------------------------------------------------------- helpers


def as_hwc(pixels: np.ndarray) -> np.ndarray:
    """Canonical benchmark input: C-contiguous uint8 (H, W, C), C in 1..4."""
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8 or a.ndim != 3 or not 1 <= a.shape[2] <= 4 or a.shape[0] * a.shape[1] == 0:
        raise ValueError(f"expected a non-empty uint8 (H, W, C) array with C in 1..4, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def check_lossless(codec: str, original: np.ndarray, decoded: np.ndarray) -> None:
    """Raise NotLosslessError unless ``decoded`` equals ``original`` (both (H, W, C))."""
    decoded = np.asarray(decoded)
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    if decoded.shape != original.shape or decoded.dtype != original.dtype:
        raise NotLosslessError(
            f"{codec}: decoded {decoded.dtype} {decoded.shape}, expected {original.dtype} {original.shape}"
        )
    if not np.array_equal(decoded, original):
        bad = int(np.count_nonzero(decoded != original))
        raise NotLosslessError(f"{codec}: {bad} of {original.size} samples differ after decoding")


def _to_pil(a: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 -> L / LA / RGB / RGBA."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    return Image.frombytes(mode, (a.shape[1], a.shape[0]), a.tobytes())


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


def _grey_to_rgb(a: np.ndarray) -> np.ndarray:
    """WebP has no grey mode: L -> RGB and LA -> RGBA with R = G = B."""
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 2:
        return np.ascontiguousarray(np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2))
    return a


def _timed(encode: Callable[[], bytes], decode: Callable[[bytes], np.ndarray]) -> tuple[bytes, float, np.ndarray, float]:
    t0 = time.perf_counter()
    data = bytes(encode())
    t1 = time.perf_counter()
    out = decode(data)
    t2 = time.perf_counter()
    return data, t1 - t0, out, t2 - t1


def _need_imagecodecs(name: str) -> None:
    if imagecodecs is None:
        raise CodecUnavailableError("imagecodecs is not installed (pip install imagecodecs)")
    attr = {"jpegxl": "JPEGXL", "jpegls": "JPEGLS", "jpeg2k": "JPEG2K"}[name]
    codec = getattr(imagecodecs, attr, None)
    if codec is None or not getattr(codec, "available", False) or not hasattr(imagecodecs, f"{name}_encode"):
        raise CodecUnavailableError(f"this imagecodecs build has no {attr} codec")


# ----------------------------------------------------------------------------- codecs


def encode_png(pixels: np.ndarray) -> CodecRun:
    """PNG through Pillow with optimize=True (zlib level 9 plus filter search)."""
    a = as_hwc(pixels)

    def enc() -> bytes:
        buf = io.BytesIO()
        _to_pil(a).save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    data, te, out, td = _timed(enc, _pil_decode)
    check_lossless("png", a, out)
    return CodecRun(data, te, td)


def encode_webp(pixels: np.ndarray) -> CodecRun:
    """WebP lossless through Pillow: method 6 (slowest, smallest), quality 100 (maximum
    effort in lossless mode), exact=True (keep RGB under transparent pixels)."""
    if not features.check("webp"):
        raise CodecUnavailableError("Pillow was built without WebP")
    a = as_hwc(pixels)
    src = _grey_to_rgb(a)

    def enc() -> bytes:
        buf = io.BytesIO()
        _to_pil(src).save(buf, format="WEBP", lossless=True, quality=100, method=6, exact=True)
        return buf.getvalue()

    data, te, out, td = _timed(enc, _pil_decode)
    if a.shape[2] <= 2 and out.ndim == 3 and out.shape[2] == src.shape[2]:
        if not (np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 0], out[:, :, 2])):
            raise NotLosslessError("webp: grey image decoded with R, G, B not all equal")
        out = out[:, :, [0]] if a.shape[2] == 1 else out[:, :, [0, 3]]
    check_lossless("webp", a, out)
    return CodecRun(data, te, td)


def encode_jxl(pixels: np.ndarray, effort: int = 7, threads: int | None = None) -> CodecRun:
    """JPEG XL lossless (libjxl through imagecodecs): distance 0 and lossless=True.
    (distance=0 alone is *not* lossless with imagecodecs: lossless=True is required.)"""
    _need_imagecodecs("jpegxl")
    a = as_hwc(pixels)
    src = a[:, :, 0] if a.shape[2] == 1 else a
    kw = {} if threads is None else {"numthreads": threads}
    data, te, out, td = _timed(
        lambda: imagecodecs.jpegxl_encode(src, effort=effort, distance=0, lossless=True, **kw),
        lambda d: imagecodecs.jpegxl_decode(d, **kw),
    )
    check_lossless(f"jxl-e{effort}", a, out)
    return CodecRun(data, te, td)


def encode_jxl_e7(pixels: np.ndarray, threads: int | None = None) -> CodecRun:
    return encode_jxl(pixels, 7, threads)


def encode_jxl_e9(pixels: np.ndarray, threads: int | None = None) -> CodecRun:
    return encode_jxl(pixels, 9, threads)


def encode_jpegls(pixels: np.ndarray) -> CodecRun:
    """JPEG-LS lossless (CharLS through imagecodecs; near-lossless level 0, no colour transform)."""
    _need_imagecodecs("jpegls")
    a = as_hwc(pixels)
    if a.shape[2] == 2:
        raise UnsupportedInputError("jpegls: imagecodecs cannot encode grey+alpha (2 components)")
    src = a[:, :, 0] if a.shape[2] == 1 else a
    data, te, out, td = _timed(lambda: imagecodecs.jpegls_encode(src, level=0), imagecodecs.jpegls_decode)
    check_lossless("jpegls", a, out)
    return CodecRun(data, te, td)


def encode_jpeg2k(pixels: np.ndarray, threads: int | None = None) -> CodecRun:
    """JPEG 2000 lossless (OpenJPEG through imagecodecs): reversible 5/3 wavelet with the
    reversible colour transform, level=0 (no rate target), raw J2K codestream (no JP2 boxes)."""
    _need_imagecodecs("jpeg2k")
    a = as_hwc(pixels)
    src = a[:, :, 0] if a.shape[2] == 1 else a
    kw = {} if threads is None else {"numthreads": threads}
    data, te, out, td = _timed(
        lambda: imagecodecs.jpeg2k_encode(src, level=0, reversible=True, codecformat="J2K", **kw),
        lambda d: imagecodecs.jpeg2k_decode(d, **kw),
    )
    check_lossless("jpeg2k", a, out)
    return CodecRun(data, te, td)


CODECS: dict[str, ClassicCodec] = {
    c.key: c
    for c in (
        ClassicCodec("png", "PNG (Pillow, optimize)", encode_png, "pillow"),
        ClassicCodec("webp", "WebP lossless (m6)", encode_webp, "pillow"),
        ClassicCodec("jxl-e7", "JPEG XL lossless (e7)", encode_jxl_e7, "imagecodecs"),
        ClassicCodec("jxl-e9", "JPEG XL lossless (e9)", encode_jxl_e9, "imagecodecs"),
        ClassicCodec("jpegls", "JPEG-LS", encode_jpegls, "imagecodecs"),
        ClassicCodec("jpeg2k", "JPEG 2000 lossless", encode_jpeg2k, "imagecodecs"),
    )
}
_THREADED = {"jxl-e7", "jxl-e9", "jpeg2k"}
_PROBE = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def run_codec(key: str, pixels: np.ndarray, threads: int | None = None) -> CodecRun:
    """Run one codec by its key; ``threads`` goes to the codecs that are multi-threaded."""
    codec = CODECS[key]
    if key in _THREADED:
        return codec.func(pixels, threads=threads)
    return codec.func(pixels)


def available_codecs() -> dict[str, str | None]:
    """key -> None if usable, else the reason it is not (checked on a tiny RGB probe).

    Only a missing library makes a codec unavailable: any other error on the probe (a lossy
    or broken build) leaves it available, so that every image records it as a failure."""
    out: dict[str, str | None] = {}
    for key in CODECS:
        try:
            run_codec(key, _PROBE, threads=1)
            out[key] = None
        except CodecUnavailableError as exc:
            out[key] = str(exc)
        except Exception:
            out[key] = None
    return out
