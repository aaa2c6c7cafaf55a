"""JPEG XL lossless encoding with libjxl's modular settings (the classic codes' strongest).

imagecodecs' ``jpegxl_encode`` takes an effort only.  libjxl's own API also takes the
modular group size, the share of pixels its MA trees learn from and the number of earlier
channels they may read (cjxl's ``-g``, ``-I``, ``-E``): with groups of 1024, trees learnt on
every pixel and three earlier channels, effort 9 codes 768x512 training photographs 1.3%
smaller than effort 10 (session 21, ``benchmarks/experiments/jxl_settings.py``).  This
module calls the libjxl that imagecodecs already loads, through ctypes.  Where that cannot
be done (a build without the symbols, a setting the library refuses) it falls back to
``imagecodecs.jpegxl_encode`` at the same effort.  Either way the stream is standard JPEG
XL, decoded by ``imagecodecs.jpegxl_decode``: nothing about decoding depends on this module.

>>> import numpy as np, imagecodecs
>>> x = (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)
>>> data = encode_lossless(x, JxlSettings(effort=9, group_size=3, tree_percent=100, prev_channels=3))
>>> bool((imagecodecs.jpegxl_decode(data) == x).all())
True
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

import imagecodecs
import numpy as np

# libjxl's JxlEncoderFrameSettingId values (jxl/encode.h, stable since libjxl 0.7)
_EFFORT, _GROUP_SIZE, _PREDICTOR, _TREE_PERCENT, _PREV_CHANNELS = 0, 26, 27, 28, 29
_SUCCESS, _NEED_MORE_OUTPUT = 0, 2
_TYPE_UINT8 = 2


@dataclass(frozen=True)
class JxlSettings:
    """Encoder settings; -1 leaves a setting to libjxl (its default for the effort)."""

    effort: int
    group_size: int = -1  # 0..3: modular groups of 128 << group_size pixels a side
    tree_percent: float = -1  # share of pixels the MA trees learn from (cjxl -I)
    prev_channels: int = -1  # earlier channels the MA trees may read (cjxl -E)
    predictor: int = -1  # 0..15, 15: every predictor mixed (cjxl -P)


class _BasicInfo(ctypes.Structure):  # JxlBasicInfo (jxl/codestream_header.h)
    _fields_ = [("have_container", ctypes.c_int), ("xsize", ctypes.c_uint32),
                ("ysize", ctypes.c_uint32), ("bits_per_sample", ctypes.c_uint32),
                ("exponent_bits_per_sample", ctypes.c_uint32), ("intensity_target", ctypes.c_float),
                ("min_nits", ctypes.c_float), ("relative_to_max_display", ctypes.c_int),
                ("linear_below", ctypes.c_float), ("uses_original_profile", ctypes.c_int),
                ("have_preview", ctypes.c_int), ("have_animation", ctypes.c_int),
                ("orientation", ctypes.c_int), ("num_color_channels", ctypes.c_uint32),
                ("num_extra_channels", ctypes.c_uint32), ("alpha_bits", ctypes.c_uint32),
                ("alpha_exponent_bits", ctypes.c_uint32), ("alpha_premultiplied", ctypes.c_int),
                ("preview", ctypes.c_uint32 * 2), ("animation", ctypes.c_uint32 * 4),
                ("intrinsic_xsize", ctypes.c_uint32), ("intrinsic_ysize", ctypes.c_uint32),
                ("padding", ctypes.c_uint8 * 100)]


class _PixelFormat(ctypes.Structure):  # JxlPixelFormat
    _fields_ = [("num_channels", ctypes.c_uint32), ("data_type", ctypes.c_int),
                ("endianness", ctypes.c_int), ("align", ctypes.c_size_t)]


@lru_cache(maxsize=1)
def _libjxl() -> ctypes.CDLL | None:
    """The libjxl imagecodecs links (its symbols resolve through the extension's handle,
    wherever the wheel put the library), or None."""
    try:
        from imagecodecs import _jpegxl

        lib = ctypes.CDLL(_jpegxl.__file__)
        P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        signatures = {
            "JxlEncoderCreate": (P, [P]), "JxlEncoderDestroy": (None, [P]),
            "JxlEncoderSetParallelRunner": (I, [P, P, P]),
            "JxlThreadParallelRunnerCreate": (P, [P, S]), "JxlThreadParallelRunnerDestroy": (None, [P]),
            "JxlEncoderInitBasicInfo": (None, [P]), "JxlEncoderSetBasicInfo": (I, [P, P]),
            "JxlColorEncodingSetToSRGB": (None, [P, I]), "JxlEncoderSetColorEncoding": (I, [P, P]),
            "JxlEncoderFrameSettingsCreate": (P, [P, P]), "JxlEncoderSetFrameLossless": (I, [P, I]),
            "JxlEncoderFrameSettingsSetOption": (I, [P, I, ctypes.c_int64]),
            "JxlEncoderFrameSettingsSetFloatOption": (I, [P, I, ctypes.c_float]),
            "JxlEncoderAddImageFrame": (I, [P, P, P, S]), "JxlEncoderCloseInput": (None, [P]),
            "JxlEncoderProcessOutput": (I, [P, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(S)]),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        lib.JxlThreadParallelRunner  # noqa: B018  (present, or AttributeError)
        return lib
    except (ImportError, OSError, AttributeError):
        return None


def encode_lossless(pixels: np.ndarray, settings: JxlSettings, threads: int = 1) -> bytes:
    """pixels: (H, W) or (H, W, 3) uint8.  A JPEG XL codestream of them, lossless."""
    lib = _libjxl()
    code = _encode_with(lib, pixels, settings, threads) if lib is not None else None
    if code is None:
        code = imagecodecs.jpegxl_encode(pixels, lossless=True, effort=settings.effort,
                                         numthreads=threads if threads > 1 else None)
    return code


def _encode_with(lib: ctypes.CDLL, pixels: np.ndarray, settings: JxlSettings, threads: int) -> bytes | None:
    """libjxl's encoder through its C API; None where libjxl refuses anything."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels not in (1, 3):
        return None
    enc = lib.JxlEncoderCreate(None)
    if not enc:
        return None
    runner = lib.JxlThreadParallelRunnerCreate(None, threads) if threads > 1 else None
    try:
        if runner and lib.JxlEncoderSetParallelRunner(
                enc, ctypes.cast(lib.JxlThreadParallelRunner, ctypes.c_void_p), runner) != _SUCCESS:
            return None
        info = _BasicInfo()
        lib.JxlEncoderInitBasicInfo(ctypes.byref(info))
        info.xsize, info.ysize, info.bits_per_sample = w, h, 8
        info.num_color_channels = channels
        info.uses_original_profile = 1  # lossless: no XYB
        if lib.JxlEncoderSetBasicInfo(enc, ctypes.byref(info)) != _SUCCESS:
            return None
        colour = ctypes.create_string_buffer(256)  # a JxlColorEncoding (under 128 bytes)
        lib.JxlColorEncodingSetToSRGB(colour, int(channels == 1))
        if lib.JxlEncoderSetColorEncoding(enc, colour) != _SUCCESS:
            return None
        frame = lib.JxlEncoderFrameSettingsCreate(enc, None)
        ok = frame and lib.JxlEncoderSetFrameLossless(frame, 1) == _SUCCESS
        for option, value in ((_EFFORT, settings.effort), (_GROUP_SIZE, settings.group_size),
                              (_PREV_CHANNELS, settings.prev_channels), (_PREDICTOR, settings.predictor)):
            ok = ok and lib.JxlEncoderFrameSettingsSetOption(frame, option, int(value)) == _SUCCESS
        if settings.tree_percent >= 0:
            ok = ok and lib.JxlEncoderFrameSettingsSetFloatOption(
                frame, _TREE_PERCENT, float(settings.tree_percent)) == _SUCCESS
        fmt = _PixelFormat(channels, _TYPE_UINT8, 0, 0)
        if not ok or lib.JxlEncoderAddImageFrame(frame, ctypes.byref(fmt), pixels.ctypes.data,
                                                 pixels.nbytes) != _SUCCESS:
            return None
        lib.JxlEncoderCloseInput(enc)
        return _drain(lib, enc, max(1 << 16, pixels.nbytes // 2))
    finally:
        lib.JxlEncoderDestroy(enc)
        if runner:
            lib.JxlThreadParallelRunnerDestroy(runner)


def _drain(lib: ctypes.CDLL, enc: int, chunk: int) -> bytes | None:
    """The encoder's output, chunk by chunk."""
    out = bytearray()
    buf = ctypes.create_string_buffer(chunk)
    while True:
        cursor, avail = ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(chunk)
        status = lib.JxlEncoderProcessOutput(enc, ctypes.byref(cursor), ctypes.byref(avail))
        out += buf.raw[: chunk - avail.value]
        if status == _SUCCESS:
            return bytes(out)
        if status != _NEED_MORE_OUTPUT:
            return None
