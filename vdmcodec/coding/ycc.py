"""Photographs decoded from JPEG, coded in the decoder's own colour space (format 12).

libjpeg (and libjpeg-turbo, which Pillow, browsers and most tools use) turns a JPEG's integer
Y, Cb, Cr samples into RGB with integer tables (jdcolor.c):

    R = Y + Cr_r[Cr],   G = Y + ((Cb_g[Cb] + Cr_g[Cr]) >> 16),   B = Y + Cb_b[Cb]   (clamped)

so R - G and B - G depend on (Cb, Cr) only, and the map (Cb, Cr) -> (R - G, B - G) is one
to one: only a quarter of the (R - G, B - G) pairs can occur, and R - G moves in steps of
about two for each step of Cr.  In such an image every pixel gives back its exact (Y, Cb, Cr)
(a clamped pixel: any triple that the tables and the clamp turn into it, the one nearest its
neighbour's chroma), and coding those planes with the own least-squares code costs about a
quarter less than coding R, G, B (CBSD68 photographs and scikit-image's chelsea, all of them
JPEG-decoded at their size: docs/RESULTS.md, session 23).  Pixels no triple gives (an
image edited after decoding, or decoded by another decoder) are escapes: their planes hold
a neighbour's chroma, and their true values are sent beside the planes.

The code: 4 bytes (little-endian) giving the length of the escape section, the section
(zlib: the escape count, each escape's distance from the previous in raster order, LEB128,
then for each its three bytes R, G, B minus what the planes give, modulo 256), then the own
code (coding.lsq) of the planes Y, Cb, Cr, in the order Cb, Cr, Y, none as a difference.

>>> import numpy as np
>>> rgb = to_rgb(np.full((2, 3, 3), (90, 100, 160), dtype=np.uint8))
>>> planes, escapes = to_planes(rgb)
>>> int(escapes.sum()), planes[0, 0].tolist()
(0, [90, 100, 160])
>>> bool((decode(encode(rgb), 2, 3) == rgb).all())
True
"""

from __future__ import annotations

import struct
import zlib

import numba
import numpy as np

from . import lsq

# libjpeg's fixed-point constants: FIX(1.40200), FIX(1.77200), FIX(0.71414), FIX(0.34414)
_SHIFT, _HALF = 16, 1 << 15
CR_R = np.array([(91881 * (i - 128) + _HALF) >> _SHIFT for i in range(256)], dtype=np.int64)
CB_B = np.array([(116130 * (i - 128) + _HALF) >> _SHIFT for i in range(256)], dtype=np.int64)
# G's offset from Y for every (Cb, Cr)
G_OFF = np.array([[(-22554 * (cb - 128) + _HALF - 46802 * (cr - 128)) >> _SHIFT for cr in range(256)]
                  for cb in range(256)], dtype=np.int64)
_DIFF_SPAN = 1024  # R - G and B - G lie in (-512, 512)


def _inverse_table() -> np.ndarray:
    """Cb * 256 + Cr for each (R - G, B - G) (offset by 512) that a (Cb, Cr) gives; -1 elsewhere."""
    inv = -np.ones((_DIFF_SPAN, _DIFF_SPAN), dtype=np.int64)
    cb, cr = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rg = CR_R[cr] - G_OFF + _DIFF_SPAN // 2
    bg = CB_B[cb] - G_OFF + _DIFF_SPAN // 2
    inv[rg, bg] = cb * 256 + cr
    assert (inv >= 0).sum() == 256 * 256, "libjpeg's chroma map is one to one"
    return inv


INVERSE = _inverse_table()
ORDER = (1, 2, 0)  # the planes (Y, Cb, Cr) coded Cb, Cr, Y: smooth chroma first, luma reads both
MAX_ESCAPE_SHARE = 0.03  # more escapes than this: not a JPEG decode, coded as RGB
CLAMP_SEARCH = 16  # a clamped pixel's chroma is sought this far from its neighbour's first,
WIDE_SEARCHES = 4096  # then everywhere, for at most this many pixels of an image (0.2 ms each)


@numba.njit(cache=True)
def _clamp(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True)
def _gives(yv, cb, cr, r, g, b, cr_r, cb_b, g_off):
    return (_clamp(yv + cr_r[cr]) == r and _clamp(yv + g_off[cb, cr]) == g
            and _clamp(yv + cb_b[cb]) == b)


@numba.njit(cache=True)
def _clamped_triple(r, g, b, pcb, pcr, radius, cr_r, cb_b, g_off, out):
    """A (Y, Cb, Cr) that gives the clamped pixel (r, g, b), its chroma nearest (pcb, pcr)
    within radius, into out; False if none."""
    best = 1 << 30
    for cb in range(max(0, pcb - radius), min(256, pcb + radius + 1)):
        for cr in range(max(0, pcr - radius), min(256, pcr + radius + 1)):
            dist = abs(cb - pcb) + abs(cr - pcr)
            if dist >= best:
                continue
            # Y follows from any channel that is not clamped; if all are, try every Y
            if 0 < g < 255:
                lo = hi = g - g_off[cb, cr]
            elif 0 < r < 255:
                lo = hi = r - cr_r[cr]
            elif 0 < b < 255:
                lo = hi = b - cb_b[cb]
            else:
                lo, hi = 0, 255
            for yv in range(max(lo, 0), min(hi, 255) + 1):
                if _gives(yv, cb, cr, r, g, b, cr_r, cb_b, g_off):
                    best = dist
                    out[0], out[1], out[2] = yv, cb, cr
                    break
    return best < (1 << 30)


@numba.njit(cache=True)
def _to_planes(x, inverse, cr_r, cb_b, g_off, planes, escapes):
    h, w = x.shape[0], x.shape[1]
    t = np.zeros(3, dtype=np.int64)
    wide_left = WIDE_SEARCHES
    half = inverse.shape[0] // 2
    for y in range(h):
        for xx in range(w):
            r, g, b = np.int64(x[y, xx, 0]), np.int64(x[y, xx, 1]), np.int64(x[y, xx, 2])
            j = inverse[r - g + half, b - g + half]
            found = False
            if j >= 0:
                cb, cr = j // 256, j % 256
                yv = g - g_off[cb, cr]
                if 0 <= yv <= 255 and 0 <= yv + cr_r[cr] <= 255 and 0 <= yv + cb_b[cb] <= 255:
                    t[0], t[1], t[2] = yv, cb, cr
                    found = True
            if not found:
                # the neighbour's chroma: where a clamped pixel's is sought, or an escape's stands-in
                pcb, pcr = 128, 128
                if xx > 0:
                    pcb, pcr = np.int64(planes[y, xx - 1, 1]), np.int64(planes[y, xx - 1, 2])
                elif y > 0:
                    pcb, pcr = np.int64(planes[y - 1, xx, 1]), np.int64(planes[y - 1, xx, 2])
                clamped = min(r, g, b) == 0 or max(r, g, b) == 255
                # near the neighbour's chroma first; then anywhere, unless Y is free too
                if clamped and _clamped_triple(r, g, b, pcb, pcr, CLAMP_SEARCH, cr_r, cb_b, g_off, t):
                    found = True
                elif clamped and wide_left > 0 and (0 < r < 255 or 0 < g < 255 or 0 < b < 255):
                    wide_left -= 1
                    found = _clamped_triple(r, g, b, pcb, pcr, 255, cr_r, cb_b, g_off, t)
                if not found:
                    escapes[y, xx] = True
                    t[0], t[1], t[2] = _clamp(g - g_off[pcb, pcr]), pcb, pcr
            planes[y, xx, 0], planes[y, xx, 1], planes[y, xx, 2] = t[0], t[1], t[2]


@numba.njit(cache=True)
def _plain_misses(x, inverse, cr_r, cb_b, g_off):
    """Pixels with no channel at 0 or 255 that no (Y, Cb, Cr) gives: escapes for sure."""
    n = 0
    half = inverse.shape[0] // 2
    for y in range(x.shape[0]):
        for xx in range(x.shape[1]):
            r, g, b = np.int64(x[y, xx, 0]), np.int64(x[y, xx, 1]), np.int64(x[y, xx, 2])
            if min(r, g, b) == 0 or max(r, g, b) == 255:
                continue
            j = inverse[r - g + half, b - g + half]
            if j < 0 or not 0 <= g - g_off[j // 256, j % 256] <= 255:
                n += 1
    return n


@numba.njit(cache=True)
def _to_rgb(planes, cr_r, cb_b, g_off, out):
    h, w = planes.shape[0], planes.shape[1]
    for y in range(h):
        for xx in range(w):
            yv, cb, cr = np.int64(planes[y, xx, 0]), np.int64(planes[y, xx, 1]), np.int64(planes[y, xx, 2])
            out[y, xx, 0] = _clamp(yv + cr_r[cr])
            out[y, xx, 1] = _clamp(yv + g_off[cb, cr])
            out[y, xx, 2] = _clamp(yv + cb_b[cb])


def to_planes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (H, W, 3) -> (planes uint8 (H, W, 3) of Y, Cb, Cr; escapes bool (H, W)):
    to_rgb(planes) == x wherever escapes is False."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    planes = np.zeros(x.shape, dtype=np.uint8)
    escapes = np.zeros(x.shape[:2], dtype=np.bool_)
    _to_planes(x, INVERSE, CR_R, CB_B, G_OFF, planes, escapes)
    return planes, escapes


def to_rgb(planes: np.ndarray) -> np.ndarray:
    """libjpeg's YCbCr -> RGB of uint8 planes (H, W, 3)."""
    out = np.zeros(planes.shape, dtype=np.uint8)
    _to_rgb(np.ascontiguousarray(planes, dtype=np.uint8), CR_R, CB_B, G_OFF, out)
    return out


def _leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_leb128(buf: bytes, pos: int, count: int) -> tuple[list[int], int]:
    vals = []
    for _ in range(count):
        v, shift = 0, 0
        while True:
            if pos >= len(buf) or shift > 35:
                raise ValueError("ycc escape section is corrupt")
            byte = buf[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        vals.append(v)
    return vals, pos


def _escape_section(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray) -> bytes:
    where = np.flatnonzero(escapes.reshape(-1))
    gaps = np.diff(where, prepend=-1) - 1
    fixes = (x.reshape(-1, 3)[where].astype(np.int64) - to_rgb(planes).reshape(-1, 3)[where]) % 256
    raw = struct.pack("<I", where.size) + _leb128(gaps) + fixes.astype(np.uint8).tobytes()
    return zlib.compress(raw, 9)


def encode(x: np.ndarray, threads: int = 2, max_escape_share: float = MAX_ESCAPE_SHARE) -> bytes | None:
    """The code of uint8 RGB pixels (H, W, 3), or None when more than max_escape_share of
    them are not a libjpeg decode (then the RGB code is the better one)."""
    if _plain_misses(np.ascontiguousarray(x, dtype=np.uint8), INVERSE, CR_R, CB_B, G_OFF) > max_escape_share * x.shape[0] * x.shape[1]:
        return None  # most are no JPEG decode: not worth the clamped pixels' search
    planes, escapes = to_planes(x)
    if escapes.mean() > max_escape_share:
        return None
    section = _escape_section(x, planes, escapes)
    return struct.pack("<I", len(section)) + section + lsq.encode(planes, threads=threads, order=ORDER, diff=False)


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode`: uint8 RGB (H, W, 3); ValueError on data that does not fit."""
    if len(data) < 4:
        raise ValueError("ycc data is truncated")
    (n,) = struct.unpack_from("<I", data)
    if 4 + n > len(data):
        raise ValueError("ycc data is truncated")
    try:
        raw = zlib.decompress(data[4:4 + n])
    except zlib.error:
        raise ValueError("ycc escape section is corrupt") from None
    if len(raw) < 4:
        raise ValueError("ycc escape section is corrupt")
    (count,) = struct.unpack_from("<I", raw)
    if count > height * width:
        raise ValueError("ycc escape section is corrupt")
    gaps, pos = _read_leb128(raw, 4, count)
    if len(raw) != pos + 3 * count:
        raise ValueError("ycc escape section is corrupt")
    where = np.cumsum(np.array(gaps, dtype=np.int64) + 1) - 1
    if count and where[-1] >= height * width:
        raise ValueError("ycc escape section is corrupt")
    planes = lsq.decode(data[4 + n:], height, width, 3, order=ORDER, diff=False)
    rgb = to_rgb(planes).reshape(-1, 3)
    fixes = np.frombuffer(raw[pos:], dtype=np.uint8).reshape(count, 3)
    rgb[where] = ((rgb[where].astype(np.int64) + fixes) % 256).astype(np.uint8)
    return rgb.reshape(height, width, 3)
