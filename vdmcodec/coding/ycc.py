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

A camera JPEG also keeps Cb and Cr at half resolution (4:2:0), which libjpeg-turbo scales
up with a fixed integer filter; where an image's chroma is that, the encoder finds
half-resolution planes that the filter turns into it (a descent, below) and codes those:
another 10-15% (Pillow's JPEG decodes of training photographs, and most of CBSD68).

The code: a mode byte (WHOLE: chroma at full resolution; HALF: at half), a u32 length
(little-endian) and the escape section (zlib: the escape count, each escape's distance from
the previous in raster order, LEB128, then for each its three bytes R, G, B minus what the
planes give, modulo 256); WHOLE: the own code (coding.lsq) of the planes Y, Cb, Cr, in the
order Cb, Cr, Y, none as a difference; HALF: a u32 length and the own code of the
half-resolution Cb, Cr planes, then the own code of Y alone, Cb and Cr (upsampled) given.
Format 13 adds two mode bits: COEF_LUMA, Y coded as the JPEG's own DCT coefficients
(coding.jpegcoef, recovered from the plane), and COEF_CHROMA, the Cb, Cr planes (as coded)
likewise; the encoder makes both codes of each part and keeps the smaller.  Format 14 adds
COEF_MODEL2 (the coefficients in jpegcoef's model 2) and a faster, exact chroma search: where
Y's table is one of libjpeg's (jpegcoef.ijg_table), the chroma's table is that quality's, and
the search alternates a short descent with projections onto the planes that table's IDCT can
give (`half_chroma_dct`), so the chroma's coefficients give its planes back with no residual
(and fewer escapes: training photographs 15-30% smaller, searched five times faster).
Format 15 adds LSQ_MIXED: every own (least-squares) code inside is in lsq's mixed model
(coding.lsqcm); format 16 LSQ_POINTERS: in its model with the pointer contexts.

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

from . import jpegcoef, lsq

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
# the chroma planes: whole, or at half resolution (fancy upsampling): in both directions
# (4:2:0) or along the rows only (4:2:2)
WHOLE, HALF, HALF_ROWS = 0, 1, 2
COEF_LUMA = 4  # or-ed into the mode: Y coded as the JPEG's DCT coefficients (coding.jpegcoef, format 13)
COEF_CHROMA = 8  # or-ed into the mode: Cb and Cr (as coded: half resolution or whole) likewise
COEF_MODEL2 = 16  # or-ed with either: the coefficients in jpegcoef's model 2 (format 14)
LSQ_MIXED = 32  # or-ed into the mode: every least-squares code inside in lsq's mixed model (format 15)
LSQ_POINTERS = 64  # ... or in its model with the pointer contexts (format 16)
COEF_BITS = COEF_LUMA | COEF_CHROMA | COEF_MODEL2
LSQ_BITS = LSQ_MIXED | LSQ_POINTERS
MODE_BITS = COEF_BITS | LSQ_BITS
LSQ_MODELS = {0: lsq.MODEL_LOGISTIC, LSQ_MIXED: lsq.MODEL_MIXED, LSQ_POINTERS: lsq.MODEL_POINTERS}  # by mode bits
LSQ_BIT = LSQ_POINTERS  # what the encoder writes
LSQ_MODEL = LSQ_MODELS[LSQ_BIT]
SHORT_SWEEPS = 5  # the chroma search with a known table: descent sweeps between projections
PROJECTIONS = 3  # ... and projections onto the planes the table's IDCT can give
COEF_PASSES = 3  # then passes of single-coefficient moves
DIRECT_PIXELS = 1 << 16  # planes this large, exact as coefficients: no own code made beside
DIRECT_BITS = 3.0  # Y as coefficients in fewer bits per pixel: no own code beside (q95: 2.4-2.7 against 3.3-3.8)
SUBSAMPLED_MISFIT = 0.08  # chroma is taken as half resolution where the first descent leaves fewer misses
HALF_ESCAPE_SLACK = 0.01  # below it the half-resolution code is taken, above both are tried
CLAMPED_MISS = 8  # the misfit of a clamped pixel that the chroma leaves without a Y
CLAMP_SEARCH = 16  # a clamped pixel's chroma is sought this far from its neighbour's first,
WIDE_SEARCHES = 4096  # then everywhere, for at most this many pixels of an image (0.2 ms each)


@numba.njit(cache=True)
def _clamp(v):
    return 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True)
def _luma_for(cb, cr, r, g, b, cr_r, cb_b, g_off):
    """A Y that gives (r, g, b) with chroma (cb, cr), or -1: each channel v with offset o asks
    Y = v - o, or Y >= 255 - o where v is 255 (clamped), or Y <= -o where v is 0."""
    lo, hi = 0, 255
    for v, o in ((r, cr_r[cr]), (g, g_off[cb, cr]), (b, cb_b[cb])):
        if v == 255:
            lo = max(lo, 255 - o)
        elif v == 0:
            hi = min(hi, -o)
        else:
            lo = max(lo, v - o)
            hi = min(hi, v - o)
    return lo if lo <= hi else -1


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
            yv = _luma_for(cb, cr, r, g, b, cr_r, cb_b, g_off)
            if yv >= 0:
                best = dist
                out[0], out[1], out[2] = yv, cb, cr
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


# ---------------------------------------------------------------- chroma at half resolution
# A camera JPEG keeps Cb and Cr at half the resolution in both directions (4:2:0), and
# libjpeg-turbo scales them up with its "fancy" triangle filter (jdsample.c,
# h2v2_fancy_upsample): every full-resolution chroma sample is (9 a + 3 b + 3 c + d + 8 or 7)
# >> 4 of the four nearest half-resolution ones.  Where an image's chroma is that, the
# half-resolution planes are coded instead (a quarter of the samples).


@numba.njit(cache=True)
def _low_at(low, i, j):
    return low[min(max(i, 0), low.shape[0] - 1), min(max(j, 0), low.shape[1] - 1)]


@numba.njit(cache=True)
def _fancy(low, y, x, fy):
    """Sample (y, x) of the fancy upsampling of low.  fy = 2 (h2v2, 4:2:0): the nearer row
    three times plus the farther one (edges repeated), then along the row the nearer column
    sum three times plus the farther one, + 8 (even columns) or + 7 (odd), >> 4; the first
    and last columns take their own column sum four times.  fy = 1 (h2v1, 4:2:2): along the
    row only, the nearer sample three times plus the farther one, + 1 (even) or + 2 (odd),
    >> 2; the first and last columns are their sample."""
    j = x >> 1
    if fy == 1:
        v = low[y, j]
        if (x & 1) == 0:
            return v if j == 0 else (3 * v + low[y, j - 1] + 1) >> 2
        return v if j == low.shape[1] - 1 else (3 * v + low[y, j + 1] + 2) >> 2
    i = y >> 1
    di = -1 if (y & 1) == 0 else 1
    cs = 3 * _low_at(low, i, j) + _low_at(low, i + di, j)
    if (x & 1) == 0:
        if j == 0:
            return (cs * 4 + 8) >> 4
        return (cs * 3 + 3 * _low_at(low, i, j - 1) + _low_at(low, i + di, j - 1) + 8) >> 4
    if j == low.shape[1] - 1:
        return (cs * 4 + 7) >> 4
    return (cs * 3 + 3 * _low_at(low, i, j + 1) + _low_at(low, i + di, j + 1) + 7) >> 4


@numba.njit(cache=True)
def _upsample(low, out, fy):
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            out[y, x] = _fancy(low, y, x, fy)


def low_shape(height: int, width: int, fy: int) -> tuple[int, int]:
    """The half-resolution planes' size: half the columns, and half the rows where fy = 2."""
    return (height + fy - 1) // fy, (width + 1) // 2


def upsample(low: np.ndarray, height: int, width: int, fy: int = 2) -> np.ndarray:
    """libjpeg-turbo's fancy upsampling (fy = 2: h2v2, 1: h2v1) of each plane of low (h, w,
    C) to (height, width, C)."""
    out = np.zeros((height, width, low.shape[2]), dtype=np.uint8)
    for c in range(low.shape[2]):
        plane = np.zeros((height, width), dtype=np.int64)
        _upsample(np.ascontiguousarray(low[:, :, c], dtype=np.int64), plane, fy)
        out[:, :, c] = plane
    return out


@numba.njit(cache=True)
def _pixel_misfit(low, full, pin, fy, y, x, rgb, other, is_cb, cr_r, cb_b, g_off):
    """|upsampled - full| at (y, x) where the pixel pins its chroma (pin 1); CLAMPED_MISS where
    a clamped pixel (pin 2) has no Y that gives it with the upsampled chroma and the other
    plane's (other); 0 elsewhere."""
    if pin[y, x] == 1:
        return abs(_fancy(low, y, x, fy) - full[y, x])
    if pin[y, x] == 2:
        mine, theirs = _fancy(low, y, x, fy), np.int64(other[y, x])
        cb, cr = (mine, theirs) if is_cb else (theirs, mine)
        if _luma_for(cb, cr, np.int64(rgb[y, x, 0]), np.int64(rgb[y, x, 1]), np.int64(rgb[y, x, 2]),
                     cr_r, cb_b, g_off) < 0:
            return CLAMPED_MISS
    return 0


@numba.njit(cache=True)
def _misfit(low, full, pin, fy, i0, i1, j0, j1, rgb, other, is_cb, cr_r, cb_b, g_off):
    """The misfit (_pixel_misfit) of low[i0..i1, j0..j1] over the samples they reach."""
    c = 0
    y0, y1 = (2 * i0 - 2, 2 * i1 + 4) if fy == 2 else (i0, i1 + 1)
    for y in range(max(0, y0), min(full.shape[0], y1)):
        for x in range(max(0, 2 * j0 - 2), min(full.shape[1], 2 * j1 + 4)):
            c += _pixel_misfit(low, full, pin, fy, y, x, rgb, other, is_cb, cr_r, cb_b, g_off)
    return c


@numba.njit(cache=True)
def _recover(low, full, pin, fy, sweeps, span, rounds, rgb, other, is_cb, cr_r, cb_b, g_off):
    """Half-resolution samples whose fancy upsampling gives full wherever pin: from 2x2 means,
    coordinate descent (each sample's best value within span, sweep after sweep), then
    `rounds` passes of joint +-1 moves of 2x2 groups (out of the descent's local minima);
    improves low in place."""
    h, w = low.shape
    for _ in range(sweeps):
        changed = 0
        for i in range(h):
            for j in range(w):
                cur = low[i, j]
                best = _misfit(low, full, pin, fy, i, i, j, j, rgb, other, is_cb, cr_r, cb_b, g_off)
                bv = cur
                if best == 0:
                    continue
                for v in range(max(0, cur - span), min(255, cur + span) + 1):
                    low[i, j] = v
                    c = _misfit(low, full, pin, fy, i, i, j, j, rgb, other, is_cb, cr_r, cb_b, g_off)
                    if c < best:
                        best, bv = c, v
                low[i, j] = bv
                changed += bv != cur
        if changed == 0:
            break
    if rounds == 0:
        return
    orig = np.zeros(4, np.int64)
    for _ in range(rounds):
        for i in range(h - 1):
            for j in range(w - 1):
                base = _misfit(low, full, pin, fy, i, i + 1, j, j + 1, rgb, other, is_cb, cr_r, cb_b, g_off)
                if base == 0:
                    continue
                orig[0], orig[1], orig[2], orig[3] = low[i, j], low[i, j + 1], low[i + 1, j], low[i + 1, j + 1]
                best, bcode = base, 40  # 40: all four unchanged
                for code in range(81):
                    d0, d1, d2, d3 = code % 3 - 1, (code // 3) % 3 - 1, (code // 9) % 3 - 1, code // 27 - 1
                    low[i, j], low[i, j + 1] = min(max(orig[0] + d0, 0), 255), min(max(orig[1] + d1, 0), 255)
                    low[i + 1, j], low[i + 1, j + 1] = min(max(orig[2] + d2, 0), 255), min(max(orig[3] + d3, 0), 255)
                    c = _misfit(low, full, pin, fy, i, i + 1, j, j + 1, rgb, other, is_cb, cr_r, cb_b, g_off)
                    if c < best:
                        best, bcode = c, code
                d0, d1, d2, d3 = bcode % 3 - 1, (bcode // 3) % 3 - 1, (bcode // 9) % 3 - 1, bcode // 27 - 1
                low[i, j], low[i, j + 1] = min(max(orig[0] + d0, 0), 255), min(max(orig[1] + d1, 0), 255)
                low[i + 1, j], low[i + 1, j + 1] = min(max(orig[2] + d2, 0), 255), min(max(orig[3] + d3, 0), 255)


@numba.njit(cache=True)
def _coef_descent(low, coefs, q, full, pin, fy, passes, rgb, other, is_cb, cr_r, cb_b, g_off):
    """The descent in the DCT domain: each block of low whose samples leave a misfit tries each
    of its coefficients one step up and down (the block's IDCT written into low each time) and
    keeps every move that lowers the misfit, pass after pass; low stays the IDCT of coefs."""
    h, w = low.shape
    block = np.zeros((8, 8), np.int64)
    for _ in range(passes):
        moved = 0
        for bi in range(coefs.shape[0]):
            for bj in range(coefs.shape[1]):
                i0, j0 = 8 * bi, 8 * bj
                i1, j1 = min(i0 + 8, h) - 1, min(j0 + 8, w) - 1
                best = _misfit(low, full, pin, fy, i0, i1, j0, j1, rgb, other, is_cb, cr_r, cb_b, g_off)
                if best == 0:
                    continue
                for f in range(64):
                    for step in (-1, 1):
                        if best == 0 or abs(coefs[bi, bj, f] + step) > jpegcoef.MAX_COEF:
                            continue
                        coefs[bi, bj, f] += step
                        jpegcoef.idct_islow(coefs[bi, bj], q, block)
                        low[i0:i1 + 1, j0:j1 + 1] = block[:i1 + 1 - i0, :j1 + 1 - j0]
                        c = _misfit(low, full, pin, fy, i0, i1, j0, j1, rgb, other, is_cb, cr_r, cb_b, g_off)
                        if c < best:
                            best = c
                            moved += 1
                        else:
                            coefs[bi, bj, f] -= step
                jpegcoef.idct_islow(coefs[bi, bj], q, block)
                low[i0:i1 + 1, j0:j1 + 1] = block[:i1 + 1 - i0, :j1 + 1 - j0]
        if moved == 0:
            break


def _box_means(full: np.ndarray, fy: int) -> np.ndarray:
    """Each fy x 2 block's rounded mean (the blocks cut at the edges): where the descent starts."""
    h, w = low_shape(*full.shape, fy)
    pad = np.pad(full, ((0, fy * h - full.shape[0]), (0, 2 * w - full.shape[1])), mode="edge")
    n = 2 * fy
    return (pad.reshape(h, fy, w, 2).sum(axis=(1, 3)) + n // 2) // n


def half_chroma(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(fy, half-resolution Cb and Cr (h, w, 2)) whose fancy upsampling (fy = 2: 4:2:0, 1:
    4:2:2) gives the planes' chroma at (nearly) every pixel that pins it (no channel clamped,
    no escape), with which every clamped pixel has a Y; None where the chroma is neither (more
    than SUBSAMPLED_MISFIT of the pinning pixels miss after a first descent, for both)."""
    clamped = ((x == 0) | (x == 255)).any(axis=2)
    pin = np.where(escapes, 0, np.where(clamped, 2, 1)).astype(np.int64)
    if (pin == 1).sum() == 0 or min(x.shape[:2]) < 4:
        return None
    full = [np.ascontiguousarray(planes[:, :, c], dtype=np.int64) for c in (1, 2)]
    first = np.where(pin == 1, 1, 0)  # the first descent: pinning pixels only
    for fy in (2, 1):
        lows = [_box_means(f, fy) for f in full]
        ups = [np.zeros(x.shape[:2], dtype=np.int64) for _ in full]
        for c in (0, 1):
            _recover(lows[c], full[c], first, fy, 30, 6, 0, x, ups[1 - c], c == 0, CR_R, CB_B, G_OFF)
            _upsample(lows[c], ups[c], fy)
            if ((ups[c] != full[c]) & (pin == 1)).sum() > SUBSAMPLED_MISFIT * (pin == 1).sum():
                break
        else:
            for _ in range(2):  # then with the clamped pixels too, each plane against the other's
                for c in (0, 1):
                    _recover(lows[c], full[c], pin, fy, 30, 6, 3, x, ups[1 - c], c == 0, CR_R, CB_B, G_OFF)
                    _upsample(lows[c], ups[c], fy)
            return fy, np.stack(lows, axis=-1).astype(np.uint8)
    return None


def half_chroma_dct(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray,
                    table: np.ndarray) -> tuple[int, np.ndarray] | None:
    """As half_chroma, where the chroma's quantisation table is known: a short descent, then
    PROJECTIONS times the nearest planes the table's IDCT gives (jpegcoef.project) and a short
    descent from them, a last projection, and COEF_PASSES passes of single-coefficient moves
    (_coef_descent); every block returned is the table's IDCT of some coefficients, so they
    give it back exactly.  Several times faster than half_chroma and fewer escapes: a descent
    stops in local minima that the projection leaves."""
    clamped = ((x == 0) | (x == 255)).any(axis=2)
    pin = np.where(escapes, 0, np.where(clamped, 2, 1)).astype(np.int64)
    if (pin == 1).sum() == 0 or min(x.shape[:2]) < 4:
        return None
    full = [np.ascontiguousarray(planes[:, :, c], dtype=np.int64) for c in (1, 2)]
    first = np.where(pin == 1, 1, 0)
    for fy in (2, 1):
        lows = [_box_means(f, fy) for f in full]
        ups = [np.zeros(x.shape[:2], dtype=np.int64) for _ in full]
        for c in (0, 1):
            _recover(lows[c], full[c], first, fy, SHORT_SWEEPS, 6, 0, x, ups[1 - c], c == 0, CR_R, CB_B, G_OFF)
            _upsample(lows[c], ups[c], fy)
            if ((ups[c] != full[c]) & (pin == 1)).sum() > SUBSAMPLED_MISFIT * (pin == 1).sum():
                break
        else:
            for _ in range(PROJECTIONS):
                lows = [np.clip(jpegcoef.project(low, table), 0, 255) for low in lows]
                for c in (0, 1):
                    _upsample(lows[c], ups[c], fy)
                for c in (0, 1):
                    _recover(lows[c], full[c], pin, fy, SHORT_SWEEPS, 6, 0, x, ups[1 - c], c == 0, CR_R, CB_B, G_OFF)
                    _upsample(lows[c], ups[c], fy)
            every = np.ones(lows[0].shape, dtype=bool)
            fitted = [jpegcoef.fit(low, every, table)[1] for low in lows]  # the last projection, its coefficients kept
            lows = [jpegcoef.samples(table, coefs, *low.shape) for coefs, low in zip(fitted, lows)]
            for c in (0, 1):
                _upsample(lows[c], ups[c], fy)
            for c, coefs in enumerate(fitted):  # the last misses, by moves of single coefficients
                _coef_descent(lows[c], coefs, table, full[c], pin, fy, COEF_PASSES, x, ups[1 - c], c == 0,
                              CR_R, CB_B, G_OFF)
                _upsample(lows[c], ups[c], fy)
            return fy, np.stack(lows, axis=-1).astype(np.uint8)
    return None


@numba.njit(cache=True)
def _with_chroma(x, chroma, cr_r, cb_b, g_off, planes, escapes):
    """planes = (Y, Cb, Cr) with the given chroma and, per pixel, a Y that gives the pixel
    with it (escapes where none does)."""
    for y in range(x.shape[0]):
        for xx in range(x.shape[1]):
            r, g, b = np.int64(x[y, xx, 0]), np.int64(x[y, xx, 1]), np.int64(x[y, xx, 2])
            cb, cr = np.int64(chroma[y, xx, 0]), np.int64(chroma[y, xx, 1])
            yv = _luma_for(cb, cr, r, g, b, cr_r, cb_b, g_off)
            if yv < 0:
                escapes[y, xx] = True
                yv = _clamp(g - g_off[cb, cr])
            planes[y, xx, 0], planes[y, xx, 1], planes[y, xx, 2] = yv, cb, cr


def with_chroma(x: np.ndarray, chroma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(planes, escapes) as to_planes, with the chroma (H, W, 2) given."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    planes = np.zeros(x.shape, dtype=np.uint8)
    escapes = np.zeros(x.shape[:2], dtype=np.bool_)
    _with_chroma(x, np.ascontiguousarray(chroma, dtype=np.uint8), CR_R, CB_B, G_OFF, planes, escapes)
    return planes, escapes


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
    """Unsigned LEB128 of every value (7 bits a byte, low first, the high bit set on all but a
    value's last byte), vectorised."""
    v = np.asarray(values, dtype=np.int64)
    nbytes = np.maximum(1, (np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 7) // 7)
    owner = np.repeat(np.arange(v.size), nbytes)
    k = np.arange(owner.size) - np.repeat(np.cumsum(nbytes) - nbytes, nbytes)  # byte index in its value
    out = (v[owner] >> (7 * k)) & 0x7F
    out |= np.where(k < nbytes[owner] - 1, 0x80, 0)
    return out.astype(np.uint8).tobytes()


def _read_leb128(buf: bytes, pos: int, count: int) -> tuple[np.ndarray, int]:
    """The first `count` LEB128 values of buf from pos, and the position after them."""
    b = np.frombuffer(buf, dtype=np.uint8)[pos:].astype(np.int64)
    last = np.flatnonzero(b < 0x80)[:count]  # each value's last byte
    if last.size < count:
        raise ValueError("ycc escape section is corrupt")
    end = int(last[-1]) + 1 if count else 0
    starts = np.concatenate([[0], last[:-1] + 1]) if count else last
    if count and int(np.max(last - starts)) > 5:
        raise ValueError("ycc escape section is corrupt")
    owner = np.repeat(np.arange(count), last - starts + 1)
    k = np.arange(end) - starts[owner]
    vals = np.zeros(count, dtype=np.int64)
    np.add.at(vals, owner, (b[:end] & 0x7F) << (7 * k))
    return vals, pos + end


def _escape_section(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray, green: bool = False) -> bytes:
    """green (format 14, with COEF_MODEL2): each escape's fixes as (R's - G's, G's, B's - G's),
    all escapes' first bytes, then their second, then their third (the Y that the JPEG's
    coefficients give an escape moves R, G and B alike: the differences stay small)."""
    where = np.flatnonzero(escapes.reshape(-1))
    gaps = np.diff(where, prepend=-1) - 1
    fixes = (x.reshape(-1, 3)[where].astype(np.int64) - to_rgb(planes).reshape(-1, 3)[where]) % 256
    if green:  # (3, m): plane by plane
        fixes = np.stack([fixes[:, 0] - fixes[:, 1], fixes[:, 1], fixes[:, 2] - fixes[:, 1]]) % 256
    raw = struct.pack("<I", where.size) + _leb128(gaps) + fixes.astype(np.uint8).tobytes()
    return zlib.compress(raw, 9)


def encode(x: np.ndarray, threads: int = 2, max_escape_share: float = MAX_ESCAPE_SHARE) -> bytes | None:
    """The code of uint8 RGB pixels (H, W, 3), or None when more than max_escape_share of
    them are not a libjpeg decode (then the RGB code is the better one)."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if _plain_misses(x, INVERSE, CR_R, CB_B, G_OFF) > max_escape_share * x.shape[0] * x.shape[1]:
        return None  # most are no JPEG decode: not worth the clamped pixels' search
    planes, escapes = to_planes(x)
    if escapes.mean() > max_escape_share:
        return None
    clamped = ((x == 0) | (x == 255)).any(axis=2)
    luma_table = jpegcoef.table_of(planes[:, :, 0], ~(escapes | clamped))  # once: the chroma's and Y's codes use it
    half, table = _half_resolution(x, planes, escapes, luma_table)
    if half is not None:
        fy, low = half
        planes2, escapes2 = with_chroma(x, upsample(low, *x.shape[:2], fy))
        if escapes2.mean() <= escapes.mean() + max_escape_share:
            chroma_bit, chroma = _chroma_code(low, threads, table)
            code = _smaller_luma(x, (HALF if fy == 2 else HALF_ROWS) | chroma_bit, planes2, escapes2, chroma, threads,
                                 luma_table)
            if escapes2.mean() <= escapes.mean() + HALF_ESCAPE_SLACK:
                return code  # clearly the smaller: the whole planes are not tried
            return min(code, _whole_code(x, planes, escapes, threads, luma_table), key=len)
    return _whole_code(x, planes, escapes, threads, luma_table)


def _chroma_table(luma_table: np.ndarray) -> np.ndarray | None:
    """The IJG chroma table of the quality whose luma table Y shows (most encoders scale
    libjpeg's two tables by one quality), or None where Y's table is no IJG one."""
    quality = jpegcoef.ijg_quality(luma_table)
    return None if quality is None else jpegcoef.ijg_table(quality, chroma=True)


def _half_resolution(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray,
                     luma_table: np.ndarray) -> tuple[tuple[int, np.ndarray] | None, np.ndarray | None]:
    """((fy, half-resolution chroma) or None, the chroma's table where the planes are exactly
    its IDCT's): the search with the IJG chroma table where Y shows one and it leaves at most
    MAX_ESCAPE_SHARE more escapes (exact planes pay for more escapes than the descent's: at
    q95, 1.5% against 0.8%, and a file 3% smaller), else the descent alone (half_chroma)."""
    table = _chroma_table(luma_table)
    if table is not None:
        half = half_chroma_dct(x, planes, escapes, table)
        if half is not None:
            _, escapes2 = with_chroma(x, upsample(half[1], *x.shape[:2], half[0]))
            if escapes2.mean() <= escapes.mean() + MAX_ESCAPE_SHARE:
                return half, table
    return half_chroma(x, planes, escapes), None


def _chroma_code(chroma: np.ndarray, threads: int, table: np.ndarray | None = None) -> tuple[int, bytes]:
    """(mode bits, code) of the Cb, Cr planes (h, w, 2): each as JPEG coefficients (COEF_CHROMA;
    table: theirs where the planes are exactly its IDCT's, else estimated) or the own code of
    both, whichever is smaller (the own code is not made for large planes known exact)."""
    everywhere = np.ones(chroma.shape[:2], dtype=bool)
    coef = b"".join(_part(jpegcoef.encode(np.ascontiguousarray(chroma[:, :, c]), everywhere, table=table)[0])
                    for c in (0, 1))
    if table is not None and chroma.shape[0] * chroma.shape[1] >= DIRECT_PIXELS // 4:
        return COEF_CHROMA | COEF_MODEL2, coef
    own = lsq.encode(chroma, threads=threads, order=(0, 1), diff=False, model=LSQ_MODEL)
    return (COEF_CHROMA | COEF_MODEL2, coef) if len(coef) < len(own) else (LSQ_BIT, own)


def _smaller_luma(x: np.ndarray, mode: int, planes: np.ndarray, escapes: np.ndarray, chroma: bytes,
                  threads: int, luma_table: np.ndarray) -> bytes:
    """The code of the chroma (mode and code given) with Y as JPEG coefficients, or as the
    own code given the chroma's upsampling, whichever is smaller (the own code is not made
    where the coefficients take under DIRECT_BITS per pixel of a large plane)."""
    coef = _coef_code(x, mode, planes, escapes, chroma, luma_table)
    pixels = x.shape[0] * x.shape[1]
    if pixels >= DIRECT_PIXELS and 8 * len(coef) < DIRECT_BITS * pixels:
        return coef
    own = (bytes([mode | LSQ_BIT]) + _part(_escape_section(x, planes, escapes)) + _part(chroma)
           + lsq.encode(planes, threads=threads, order=ORDER, diff=False, first=2, model=LSQ_MODEL))
    return min(own, coef, key=len)


def _whole_code(x: np.ndarray, planes: np.ndarray, escapes: np.ndarray, threads: int,
                luma_table: np.ndarray) -> bytes:
    """The code of full-resolution chroma: the three planes in the own code, or Cb, Cr on
    their own (_chroma_code) and Y as JPEG coefficients, whichever is smaller."""
    own = (bytes([WHOLE | LSQ_BIT]) + _part(_escape_section(x, planes, escapes))
           + lsq.encode(planes, threads=threads, order=ORDER, diff=False, model=LSQ_MODEL))
    chroma_bit, chroma = _chroma_code(np.ascontiguousarray(planes[:, :, 1:]), threads)
    return min(own, _coef_code(x, WHOLE | chroma_bit, planes, escapes, chroma, luma_table), key=len)


def _coef_code(x: np.ndarray, mode: int, planes: np.ndarray, escapes: np.ndarray, chroma: bytes,
               luma_table: np.ndarray) -> bytes:
    """mode | COEF_LUMA: the escapes, the chroma's code, then Y as JPEG coefficients under
    luma_table (fitted where no channel is clamped; an escape's Y is the IDCT's, its fix bytes
    against that)."""
    clamped = ((x == 0) | (x == 255)).any(axis=2)
    care = ~(escapes | clamped)
    fitted = jpegcoef.fit(planes[:, :, 0], care, luma_table, free=escapes)
    # a clamped pixel whose Y the decoder's own gives as well takes that (no residual there)
    decoded = planes.copy()
    decoded[:, :, 0] = np.clip(jpegcoef.samples(*fitted, *x.shape[:2]), 0, 255)
    agrees = clamped & (to_rgb(decoded) == x).all(axis=2)
    coef, luma = jpegcoef.encode(planes[:, :, 0], care, escapes | agrees, fitted=fitted)
    planes = planes.copy()
    planes[:, :, 0] = luma
    return (bytes([mode | COEF_LUMA | COEF_MODEL2]) + _part(_escape_section(x, planes, escapes, green=True))
            + _part(chroma) + coef)


def _part(data: bytes) -> bytes:
    """data behind its u32 length."""
    return struct.pack("<I", len(data)) + data


def _read_escapes(section: bytes, pixels: int, green: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(raster indices, bytes to add (count, 3)) of an escape section (`_escape_section`)."""
    try:
        raw = zlib.decompress(section)
    except zlib.error:
        raise ValueError("ycc escape section is corrupt") from None
    if len(raw) < 4:
        raise ValueError("ycc escape section is corrupt")
    (count,) = struct.unpack_from("<I", raw)
    if count > pixels:
        raise ValueError("ycc escape section is corrupt")
    gaps, pos = _read_leb128(raw, 4, count)
    if len(raw) != pos + 3 * count:
        raise ValueError("ycc escape section is corrupt")
    where = np.cumsum(gaps + 1) - 1
    if count and where[-1] >= pixels:
        raise ValueError("ycc escape section is corrupt")
    if not green:
        return where, np.frombuffer(raw[pos:], dtype=np.uint8).reshape(count, 3)
    diff_r, g, diff_b = np.frombuffer(raw[pos:], dtype=np.uint8).astype(np.int64).reshape(3, count)
    return where, (np.stack([diff_r + g, g, diff_b + g], axis=1) % 256).astype(np.uint8)


def _take(data: bytes, pos: int) -> tuple[bytes, int]:
    """A u32-length-prefixed part of data at pos, and the position after it."""
    if pos + 4 > len(data):
        raise ValueError("ycc data is truncated")
    (n,) = struct.unpack_from("<I", data, pos)
    if pos + 4 + n > len(data):
        raise ValueError("ycc data is truncated")
    return data[pos + 4:pos + 4 + n], pos + 4 + n


def _chroma_planes(chroma: bytes, height: int, width: int, coef: bool, model: int, lsq_model: int) -> np.ndarray:
    """The Cb, Cr planes (height, width, 2) from their code (_chroma_code)."""
    if not coef:
        return lsq.decode(chroma, height, width, 2, order=(0, 1), diff=False, model=lsq_model)
    cb, pos = _take(chroma, 0)
    cr, pos = _take(chroma, pos)
    if pos != len(chroma):
        raise ValueError("ycc chroma code is corrupt")
    return np.stack([jpegcoef.decode(cb, height, width, model), jpegcoef.decode(cr, height, width, model)], axis=-1)


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode`: uint8 RGB (H, W, 3); ValueError on data that does not fit."""
    modes = (WHOLE, HALF, HALF_ROWS)
    if (not data or data[0] & ~MODE_BITS not in modes or data[0] & ~(COEF_MODEL2 | LSQ_BITS) == WHOLE | COEF_CHROMA
            or data[0] & COEF_BITS == COEF_MODEL2 or data[0] & LSQ_BITS == LSQ_BITS):
        raise ValueError("ycc data has an unknown chroma mode")
    mode, coef = data[0] & ~MODE_BITS, bool(data[0] & COEF_LUMA)
    model = 2 if data[0] & COEF_MODEL2 else 1
    lsq_model = LSQ_MODELS[data[0] & LSQ_BITS]
    section, pos = _take(data, 1)
    where, fixes = _read_escapes(section, height * width, green=coef and model == 2)
    if mode != WHOLE or coef:
        chroma, pos = _take(data, pos)
        given = np.zeros((height, width, 3), dtype=np.uint8)
        if mode == WHOLE:
            given[:, :, 1:] = _chroma_planes(chroma, height, width, bool(data[0] & COEF_CHROMA), model, lsq_model)
        else:
            fy = 2 if mode == HALF else 1
            low = _chroma_planes(chroma, *low_shape(height, width, fy), bool(data[0] & COEF_CHROMA), model, lsq_model)
            given[:, :, 1:] = upsample(low, height, width, fy)
        if coef:
            given[:, :, 0] = jpegcoef.decode(data[pos:], height, width, model)
            planes = given
        else:
            planes = lsq.decode(data[pos:], height, width, 3, order=ORDER, diff=False, given=given, first=2,
                                model=lsq_model)
    else:
        planes = lsq.decode(data[pos:], height, width, 3, order=ORDER, diff=False, model=lsq_model)
    rgb = to_rgb(planes).reshape(-1, 3)
    rgb[where] = ((rgb[where].astype(np.int64) + fixes) % 256).astype(np.uint8)
    return rgb.reshape(height, width, 3)
