"""A JPEG decode's planes coded as the JPEG's own quantised DCT coefficients (formats 13, 14).

A JPEG decoder turns each 8x8 block of quantised coefficients into samples with a fixed
integer IDCT (libjpeg's "islow", jidctint.c, restated in `idct_islow`), so a plane of a
libjpeg decode (coding.ycc gives Y, Cb and Cr back exactly) is a function of far fewer bits
than its pixels: the JPEG file itself codes a decode 2-3 times smaller than any lossless code
of its pixels (docs/RESULTS.md, sessions 23 and 24).  The encoder recovers the coefficients
from the pixels:

1. the quantisation table, from the plane alone: each frequency's DCT values over the blocks
   with no clamped or escaped pixel sit near multiples of its step; the candidate steps that
   fit are tried and the one that gives back the most blocks exactly is kept (ties: the
   larger); then libjpeg's own tables (`ijg_table`, both kinds, qualities 1-100) are tried
   whole and one is kept where it gives back as many blocks (fine tables, where few blocks
   are exact, defeat the per-frequency estimate; most encoders use these tables);
2. each block's coefficients: its float DCT divided by the table and rounded, then, where the
   IDCT does not give the block back, corrected by the DCT of what it misses (a few rounds);
3. what is still missed (rounding ties, clamped blocks, edge blocks, a table step guessed
   wrong) is sent as a per-pixel residual, so every plane is coded exactly whatever it is.

The code: the table (64 bytes, natural order, steps 1..255), then rANS words (32-bit,
little-endian, the first two the final state), pushed in reverse of the walk.  Model 1
(format 13, `_walk`): for each block in raster order the count of nonzero AC coefficients
(context: its left and upper neighbours' counts), the DC coefficient's difference from the
median-edge prediction of the neighbouring DC terms (its size category; context: the
neighbours' differences), the AC coefficients in zigzag order until the count is spent (size
category; context: the position, the count left, the same coefficient's size in the left and
upper blocks), each category's sign and low bits raw.  Model 2 (format 14, `_walk2`, Lepton's
order; 2-3% smaller on training photographs, 4-9% on tiny ones): the count of nonzero terms of
the 7x7 interior, those terms in zigzag order (magnitude 0..7 or size category; context: the
position, the count left, the left, upper and upper-left blocks' same term), then row 0 and
column 0 (each: its nonzero count, then each term under the value that makes the block's
samples meet the upper / left block's at their border, `_edge_prediction`, whose sign is
the sign's context), then the DC term's difference from the value that continues the
neighbouring samples across both borders (`_dc_prediction`; context: how far the border
estimates spread).  Both then code a flag whether the block is exact (context: the left
and upper flags) and, where not, its residual per pixel.  The models are adaptive frequency
counts with integer arithmetic only, so decoding is the same on every machine.

>>> import numpy as np
>>> y = np.add.outer(np.arange(13), 3 * np.arange(19)).astype(np.uint8)
>>> code, used = encode(y, np.ones(y.shape, bool))
>>> bool((decode(code, 13, 19) == y).all()) and bool((used == y).all())
True
"""

from __future__ import annotations

import numba
import numpy as np

# jidctint.c's fixed-point constants (CONST_BITS 13): FIX(0.298631336) ... FIX(3.072711026)
CONST_BITS, PASS1_BITS = 13, 2
F0298, F0390, F0541, F0765, F0899, F1175 = 2446, 3196, 4433, 6270, 7373, 9633
F1501, F1847, F1961, F2053, F2562, F3072 = 12299, 15137, 16069, 16819, 20995, 25172
ZIGZAG = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
                   20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                   58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63], dtype=np.int64)
MAX_COEF = 2047  # coefficients are kept in +-MAX_COEF (size categories 0..11)
REFINE_ROUNDS = 4
SEARCH_PASSES = 4  # then passes of single-coefficient moves on blocks still missed
SIGNIFICANT = 1.5  # DCT values this large are taken as a nonzero coefficient when fitting steps
PROB_BITS = 24
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 31
INC, LIMIT = 32, 1 << 16  # adaptive counts: added per symbol, halved past the limit
# the models: (contexts, symbols)
NZ_MODEL = (8, 64)
DC_MODEL = (12, 16)
AC_POS, AC_LEFT, AC_NB = 28, 7, 7
AC_MODEL = (AC_POS * AC_LEFT * AC_NB, 12)
FLAG_MODEL = (3, 2)
RES_MODEL = (3, 16)
RES_ESCAPE = 15  # residual symbols 0..14 are -7..7; 15: the value follows in 9 raw bits


@numba.njit(cache=True)
def _descale(x, n):
    return (x + (1 << (n - 1))) >> n


@numba.njit(cache=True)
def _butterfly(d, out):
    """jidctint.c's 1-D pass on d[0..7] (dequantised, or the first pass's outputs): out[k] =
    the k-th output before its descale (scaled by 2^CONST_BITS)."""
    z1 = (d[2] + d[6]) * F0541
    tmp2 = z1 + d[6] * (-F1847)
    tmp3 = z1 + d[2] * F0765
    tmp0 = (d[0] + d[4]) << CONST_BITS
    tmp1 = (d[0] - d[4]) << CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    tmp3, tmp2, tmp1, tmp0 = d[1], d[3], d[5], d[7]
    z4, z3, z2, z1 = tmp1 + tmp3, tmp0 + tmp2, tmp1 + tmp2, tmp0 + tmp3
    z5 = (z3 + z4) * F1175
    tmp3, tmp2, tmp1, tmp0 = tmp3 * F1501, tmp2 * F3072, tmp1 * F2053, tmp0 * F0298
    z4 = z4 * (-F0390) + z5
    z3 = z3 * (-F1961) + z5
    z1 = z1 * (-F0899)
    z2 = z2 * (-F2562)
    tmp3 += z1 + z4
    tmp2 += z2 + z3
    tmp1 += z2 + z4
    tmp0 += z1 + z3
    out[0], out[7] = tmp10 + tmp3, tmp10 - tmp3
    out[1], out[6] = tmp11 + tmp2, tmp11 - tmp2
    out[2], out[5] = tmp12 + tmp1, tmp12 - tmp1
    out[3], out[4] = tmp13 + tmp0, tmp13 - tmp0


@numba.njit(cache=True)
def _ac_zero(d):
    return d[1] == 0 and d[2] == 0 and d[3] == 0 and d[4] == 0 and d[5] == 0 and d[6] == 0 and d[7] == 0


@numba.njit(cache=True)
def _column_pass(coef, q):
    """islow's first pass: each column of the dequantised block (64, natural order), descaled
    to PASS1_BITS of fraction (a column whose AC terms are zero: its DC term alone, which the
    butterfly would give too); (8, 8) int64."""
    ws = np.zeros((8, 8), np.int64)
    d = np.empty(8, np.int64)
    t = np.empty(8, np.int64)
    for col in range(8):
        for r in range(8):
            d[r] = coef[8 * r + col] * q[8 * r + col]
        if _ac_zero(d):
            for r in range(8):
                ws[r, col] = d[0] << PASS1_BITS
            continue
        _butterfly(d, t)
        for r in range(8):
            ws[r, col] = _descale(t[r], CONST_BITS - PASS1_BITS)
    return ws


@numba.njit(cache=True)
def idct_islow(coef, q, out):
    """libjpeg's integer IDCT ("islow") of quantised coefficients coef (64, natural order)
    with table q (64), both int64, into out (8, 8): samples 0..255 (clamped).  Columns first,
    then rows, each a 1-D pass; a column or row whose AC terms are zero is its DC term alone."""
    ws = _column_pass(coef, q)
    t = np.empty(8, np.int64)
    for r in range(8):
        if _ac_zero(ws[r]):
            v = min(max(_descale(ws[r, 0], PASS1_BITS + 3) + 128, 0), 255)
            for c in range(8):
                out[r, c] = v
            continue
        _butterfly(ws[r], t)
        for c in range(8):
            out[r, c] = min(max(_descale(t[c], CONST_BITS + PASS1_BITS + 3) + 128, 0), 255)


@numba.njit(cache=True)
def idct_plane(coefs, q, out):
    """islow of every block of coefs (bh, bw, 64) into out (8 bh, 8 bw)."""
    block = np.zeros((8, 8), np.int64)
    for i in range(coefs.shape[0]):
        for j in range(coefs.shape[1]):
            idct_islow(coefs[i, j], q, block)
            out[8 * i:8 * i + 8, 8 * j:8 * j + 8] = block


# the orthonormal DCT-II basis, JPEG's scaling: row k holds frequency k
_BASIS = np.array([[np.sqrt(1 / 8) if k == 0 else 0.5 * np.cos((2 * n + 1) * k * np.pi / 16) for n in range(8)]
                   for k in range(8)])


def dct_blocks(padded: np.ndarray) -> np.ndarray:
    """Float DCT of every 8x8 block of a (8 bh, 8 bw) plane of samples less 128: (bh, bw, 64)."""
    bh, bw = padded.shape[0] // 8, padded.shape[1] // 8
    blocks = padded.reshape(bh, 8, bw, 8).transpose(0, 2, 1, 3)
    return np.einsum("ui,abij,vj->abuv", _BASIS, blocks, _BASIS).reshape(bh, bw, 64)


@numba.njit(cache=True)
def _exact_blocks(coefs, q, plane, care, which, bw):
    """How many of the blocks `which` (indices into the raster of blocks, bw a row) the IDCT
    of their coefs (one row of 64 each) with table q gives back at every pixel that `care`s."""
    block = np.zeros((8, 8), np.int64)
    good = 0
    for n in range(which.shape[0]):
        i, j = which[n] // bw, which[n] % bw
        idct_islow(coefs[n], q, block)
        ok = True
        for r in range(8):
            for c in range(8):
                if care[8 * i + r, 8 * j + c] and block[r, c] != plane[8 * i + r, 8 * j + c]:
                    ok = False
        if ok:
            good += 1
    return good


def _rounded(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.clip(np.round(d / q), -MAX_COEF, MAX_COEF).astype(np.int64)


def estimate_table(d: np.ndarray, plane: np.ndarray, care: np.ndarray) -> np.ndarray:
    """The quantisation table (64, natural order) that best explains the DCT values d (bh, bw,
    64) of a padded plane (8 bh, 8 bw, int64): per frequency, the steps that fit at least half
    of the clean blocks' significant values (the 12 largest, and 255: all zero) are tried in
    turn, keeping the one that gives back the most clean blocks exactly."""
    bh, bw = d.shape[:2]
    clean = care.reshape(bh, 8, bw, 8).all(axis=(1, 3)).reshape(-1)
    flat = d.reshape(-1, 64)
    cv = flat[clean]
    q = np.full(64, 255, dtype=np.int64)
    cands = []
    for f in range(64):
        s = cv[:, f][np.abs(cv[:, f]) >= SIGNIFICANT]
        steps = [255]
        if s.size:
            top = int(min(255, 2 * np.abs(s).max() + 2))
            c = np.arange(1, top + 1)
            fit = (np.abs(s[None, :] - c[:, None] * np.round(s[None, :] / c[:, None])) < 1.0).mean(axis=1)
            ok = c[fit >= 0.5][::-1][:12]
            steps = list(ok) + [255]
            q[f] = int(c[fit >= 0.95].max())  # c = 1 always fits
        cands.append(steps)
    care_i = care.astype(np.bool_)
    for f in ZIGZAG:
        steps = cands[f]
        if len(steps) <= 1:
            continue
        which = np.flatnonzero(clean & (np.abs(flat[:, f]) >= SIGNIFICANT))
        if which.size == 0:
            continue
        which = which[:: max(1, which.size // 3000)]
        sub = flat[which]
        best, best_good = q[f], -1
        for c in sorted(set(int(v) for v in steps), reverse=True):
            q[f] = c
            good = _exact_blocks(_rounded(sub, q), q, plane, care_i, which, bw)
            if good > best_good:
                best, best_good = c, good
        q[f] = best
    return _better_ijg_table(q, flat, plane, care_i, clean, bw)


IJG_SAMPLE = 1500  # clean blocks that judge the IJG tables against the estimate


def _better_ijg_table(q: np.ndarray, flat: np.ndarray, plane: np.ndarray, care: np.ndarray, clean: np.ndarray,
                      bw: int) -> np.ndarray:
    """The IJG table (either kind, any quality) that gives back at least as many clean blocks
    by rounding as the per-frequency estimate q (and some), or q.  Where few blocks are exact
    (fine tables: at q95 a third of the blocks sit on rounding ties) the estimate can miss
    every step."""
    which = np.flatnonzero(clean)
    if which.size == 0:
        return q
    which = which[:: max(1, which.size // IJG_SAMPLE)]
    sub = flat[which]
    best, best_good = q, _exact_blocks(_rounded(sub, q), q, plane, care, which, bw)
    for chroma in (False, True):
        for quality in range(1, 101):
            table = ijg_table(quality, chroma)
            good = _exact_blocks(_rounded(sub, table), table, plane, care, which, bw)
            if good > best_good or (good == best_good and best is q and good > 0):  # a tie: the standard table
                best, best_good = table, good
    return best.copy()


# the IJG tables (jcparam.c, natural order) that libjpeg, Pillow and most software scale by quality
IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
                     56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81,
                     104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
                    dtype=np.int64)
IJG_CHROMA = np.full(64, 99, dtype=np.int64)
IJG_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def ijg_table(quality: int, chroma: bool) -> np.ndarray:
    """libjpeg's jpeg_set_quality table (baseline: steps 1..255) for quality 1..100."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = IJG_CHROMA if chroma else IJG_LUMA
    return np.clip((base * scale + 50) // 100, 1, 255)


def ijg_quality(table: np.ndarray) -> int | None:
    """The IJG quality whose luma table an estimated one (255: a step no block showed) matches,
    or None."""
    seen = table != 255
    for quality in range(100, 0, -1):
        if (ijg_table(quality, False)[seen] == table[seen]).all():
            return quality
    return None


def coefficients(plane: np.ndarray, care: np.ndarray, q: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
    """Each block's coefficients (bh, bw, 64): the rounded DCT (d: the plane's, where already
    made), then REFINE_ROUNDS corrections by the DCT of what the IDCT still misses (at pixels
    that care)."""
    d = dct_blocks(plane - 128.0) if d is None else d
    bh, bw = d.shape[:2]
    coefs = _rounded(d, q)
    out = np.zeros(plane.shape, dtype=np.int64)
    for _ in range(REFINE_ROUNDS):
        idct_plane(coefs, q, out)
        miss = np.where(care, plane - out, 0)
        bad = miss.reshape(bh, 8, bw, 8).any(axis=(1, 3))
        if not bad.any():
            break
        fixed = _rounded(coefs * q + dct_blocks(miss.astype(np.float64)), q)
        coefs = np.where(bad[:, :, None], fixed, coefs)
    idct_plane(coefs, q, out)
    bad = np.where(care, plane != out, False).reshape(bh, 8, bw, 8).any(axis=(1, 3))
    if bad.any():
        _search(coefs, q, plane, care.astype(np.bool_), np.argwhere(bad), SEARCH_PASSES)
    return coefs


@numba.njit(cache=True)
def _block_error(coef, q, plane, care, i, j, block):
    idct_islow(coef, q, block)
    e = 0
    for r in range(8):
        for c in range(8):
            if care[8 * i + r, 8 * j + c]:
                e += abs(block[r, c] - plane[8 * i + r, 8 * j + c])
    return e


@numba.njit(cache=True)
def _search(coefs, q, plane, care, blocks, passes):
    """Each listed block (i, j) whose IDCT still misses the plane where care: every coefficient
    tried one step up and down, each move kept that lowers the summed miss, pass after pass
    (rounding ties at fine tables; edge blocks, whose cut-off part the rounding guessed)."""
    block = np.zeros((8, 8), np.int64)
    for n in range(blocks.shape[0]):
        i, j = blocks[n, 0], blocks[n, 1]
        coef = coefs[i, j]
        best = _block_error(coef, q, plane, care, i, j, block)
        for _ in range(passes):
            if best == 0:
                break
            moved = False
            for f in range(64):
                for step in (-1, 1):
                    if best == 0 or abs(coef[f] + step) > MAX_COEF:
                        continue
                    coef[f] += step
                    e = _block_error(coef, q, plane, care, i, j, block)
                    if e < best:
                        best = e
                        moved = True
                    else:
                        coef[f] -= step
            if not moved:
                break


@numba.njit(cache=True)
def _cat(v):
    """JPEG's size category of v: the bit length of |v|."""
    a = abs(v)
    c = 0
    while a > 0:
        a >>= 1
        c += 1
    return c


@numba.njit(cache=True)
def _code(counts, ctx, nsym, s, dec, st, words, rec):
    """One symbol under the adaptive model counts[ctx, :nsym]: encoding, record its (start,
    frequency) in rec; decoding, pop it from the rANS state st[0] (words at st[1]).  Then the
    model learns it.  Returns the symbol."""
    row = counts[ctx]
    tot = 0
    for j in range(nsym):
        tot += row[j]
    span = PROB_SCALE - nsym
    if dec:
        cum = np.int64(st[0] & np.uint64(PROB_SCALE - 1))
        below = 0
        s = 0
        while s < nsym - 1 and (below + row[s]) * span // tot + s + 1 <= cum:
            below += row[s]
            s += 1
    else:
        below = 0
        for j in range(s):
            below += row[j]
    start = below * span // tot + s
    freq = (below + row[s]) * span // tot + s + 1 - start
    _emit(start, freq, dec, st, words, rec)
    row[s] += INC
    if tot + INC > LIMIT:
        for j in range(nsym):
            row[j] = (row[j] + 1) >> 1
    return s


@numba.njit(cache=True)
def _code_mixed(ca, xa, cb, xb, nsym, s, dec, st, words, rec):
    """One symbol under the mean of two adaptive models' distributions (rows ca[xa], cb[xb],
    totals A, B: symbol j weighs a_j B + b_j A); then both learn it."""
    ra, rb = ca[xa], cb[xb]
    ta, tb = 0, 0
    for j in range(nsym):
        ta += ra[j]
        tb += rb[j]
    tot = 2 * ta * tb
    span = PROB_SCALE - nsym
    if dec:
        cum = np.int64(st[0] & np.uint64(PROB_SCALE - 1))
        below = 0
        s = 0
        while s < nsym - 1 and (below + ra[s] * tb + rb[s] * ta) * span // tot + s + 1 <= cum:
            below += ra[s] * tb + rb[s] * ta
            s += 1
    else:
        below = 0
        for j in range(s):
            below += ra[j] * tb + rb[j] * ta
    start = below * span // tot + s
    freq = (below + ra[s] * tb + rb[s] * ta) * span // tot + s + 1 - start
    _emit(start, freq, dec, st, words, rec)
    for row, total in ((ra, ta), (rb, tb)):
        row[s] += INC
        if total + INC > LIMIT:
            for j in range(nsym):
                row[j] = (row[j] + 1) >> 1
    return s


@numba.njit(cache=True)
def _raw(v, nbits, dec, st, words, rec):
    """nbits equiprobable bits (nbits < PROB_BITS)."""
    if nbits == 0:
        return 0
    freq = 1 << (PROB_BITS - nbits)
    if dec:
        v = np.int64(st[0] & np.uint64(PROB_SCALE - 1)) >> (PROB_BITS - nbits)
    _emit(v * freq, freq, dec, st, words, rec)
    return v


@numba.njit(cache=True)
def _emit(start, freq, dec, st, words, rec):
    if dec:
        cum = np.uint64(st[0] & np.uint64(PROB_SCALE - 1))
        st[0] = np.uint64(freq) * (st[0] >> np.uint64(PROB_BITS)) + cum - np.uint64(start)
        if st[0] < np.uint64(RANS_L):
            # past the end (only a damaged stream reads there): zeros, which decode checks against
            word = np.uint64(words[st[1]]) if st[1] < np.uint64(words.shape[0]) else np.uint64(0)
            st[0] = (st[0] << np.uint64(32)) | word
            st[1] += np.uint64(1)
    else:
        n = rec[0, 0]
        if n + 1 >= rec.shape[0]:
            rec[0, 1] = 1  # full: the encoder tries again with more room
            return
        rec[n + 1, 0], rec[n + 1, 1] = start, freq
        rec[0, 0] = n + 1


@numba.njit(cache=True)
def _signed(v, c, dec, st, words, rec):
    """v's sign and its low c - 1 bits raw, given its category c; returns v."""
    if c == 0:
        return 0
    neg = _raw(1 if v < 0 else 0, 1, dec, st, words, rec)
    low = _raw(abs(v) - (1 << (c - 1)), c - 1, dec, st, words, rec)
    m = (1 << (c - 1)) + low
    return -m if neg else m


@numba.njit(cache=True)
def _residual(resid, flag, i, j, height, width, dec, st, words, rec, m_flag, m_res):
    """Block (i, j)'s flag whether the IDCT misses the plane there (context: the left and upper
    flags) and, where it does, the miss per pixel."""
    h0, w0 = min(8, height - 8 * i), min(8, width - 8 * j)
    miss = 0
    if not dec:
        for y in range(h0):
            for x in range(w0):
                if resid[8 * i + y, 8 * j + x] != 0:
                    miss = 1
    fctx = (flag[i, j - 1] if j > 0 else 0) + (flag[i - 1, j] if i > 0 else 0)
    miss = _code(m_flag, fctx, 2, miss, dec, st, words, rec)
    flag[i, j] = miss
    if miss:
        prev = 0
        for y in range(h0):
            for x in range(w0):
                v = resid[8 * i + y, 8 * j + x]
                s = v + 7 if -7 <= v <= 7 else RES_ESCAPE
                s = _code(m_res, min(abs(prev), 2), RES_MODEL[1], s, dec, st, words, rec)
                if s == RES_ESCAPE:
                    v = _raw(v + 255, 9, dec, st, words, rec) - 255
                else:
                    v = s - 7
                resid[8 * i + y, 8 * j + x] = v
                prev = v


@numba.njit(cache=True)
def _walk(coefs, resid, height, width, zigzag, dec, st, words, rec, m_nz, m_dc, m_ac, m_flag, m_res):
    """Every block's symbols in coding order (module docstring).  Encoding reads coefs (bh,
    bw, 64) and resid (8 bh, 8 bw) and records each symbol's interval in rec; decoding pops
    them from words and fills coefs and resid."""
    bh, bw = coefs.shape[0], coefs.shape[1]
    nz = np.zeros((bh, bw), np.int64)
    dres = np.zeros((bh, bw), np.int64)
    flag = np.zeros((bh, bw), np.int64)
    for i in range(bh):
        for j in range(bw):
            blk = coefs[i, j]
            left_nz = nz[i, j - 1] if j > 0 else (nz[i - 1, j] if i > 0 else 0)
            up_nz = nz[i - 1, j] if i > 0 else left_nz
            n = 0
            if not dec:
                for k in range(1, 64):
                    if blk[k] != 0:
                        n += 1
            n = _code(m_nz, min(_cat((left_nz + up_nz + 1) // 2), NZ_MODEL[0] - 1), 64, n, dec, st, words, rec)
            nz[i, j] = n
            # DC: the median edge predictor of the left, upper and upper-left DC terms
            a = coefs[i, j - 1, 0] if j > 0 else (coefs[i - 1, j, 0] if i > 0 else 0)
            b = coefs[i - 1, j, 0] if i > 0 else a
            c0 = coefs[i - 1, j - 1, 0] if i > 0 and j > 0 else b
            pred = min(a, b) if c0 >= max(a, b) else (max(a, b) if c0 <= min(a, b) else a + b - c0)
            near = (abs(dres[i, j - 1]) if j > 0 else 0) + (abs(dres[i - 1, j]) if i > 0 else 0)
            r = blk[0] - pred
            cr = _code(m_dc, min(_cat(near), DC_MODEL[0] - 1), DC_MODEL[1], _cat(r), dec, st, words, rec)
            r = _signed(r, cr, dec, st, words, rec)
            dres[i, j] = r
            blk[0] = pred + r
            rem = n
            for k in range(1, 64):
                if rem == 0:
                    break
                f = zigzag[k]
                nb = (abs(coefs[i, j - 1, f]) if j > 0 else 0) + (abs(coefs[i - 1, j, f]) if i > 0 else 0)
                pos = k if k < 16 else 16 + (k - 16) // 4
                ctx = (pos * AC_LEFT + min(_cat(rem), AC_LEFT - 1)) * AC_NB + min(_cat(nb), AC_NB - 1)
                v = blk[f]
                cv = _code(m_ac, ctx, AC_MODEL[1], _cat(v), dec, st, words, rec)
                v = _signed(v, cv, dec, st, words, rec)
                blk[f] = v
                if v != 0:
                    rem -= 1
            _residual(resid, flag, i, j, height, width, dec, st, words, rec, m_flag, m_res)


# model 2 (format 14): the 7x7 interior terms first, then the edge terms predicted across the
# block boundary, then DC predicted from the neighbouring pixels (Lepton's order)
MAGNITUDES = 17  # 0..7, then size categories 4..12
MODEL2_NZ = (14, 50)
MODEL2_AC = (25 * 7 * 14, MAGNITUDES)
MODEL2_EDGE_COUNT = (2 * 14, 8)
MODEL2_EDGE = (2 * 7 * 14 * 4, MAGNITUDES)
MODEL2_EDGE_SIGN = (2 * 8 * 3, 2)
MODEL2_DC = (14, MAGNITUDES)
MODEL2_TOP_BIT = (3 * 13, 2)  # (interior, edge, DC) x size category: the bit under the top one
MODEL2_AC_SECOND = (25 * 8 * 8, MAGNITUDES)  # mixed with MODEL2_AC: -1.2%
MODEL2_EDGE_SECOND = (14 * 8 * 8, MAGNITUDES)  # mixed with MODEL2_EDGE: -0.6%
# x = 0 samples of the DCT basis, 2^13 scale: c_u cos(u pi / 16), c_0 = sqrt(1/8), c_u = 1/2
EDGE_BASIS = np.array([2896, 4017, 3784, 3406, 2896, 2276, 1567, 799], dtype=np.int64)
INTERIOR = np.array([f for f in ZIGZAG if f % 8 and f // 8], dtype=np.int64)  # the 7x7 in zigzag order


@numba.njit(cache=True)
def _bucket(v):
    """0, 1, 2, then one more per doubling (v >= 0), at most 13."""
    if v < 3:
        return v
    return min(2 + _cat(v - 1), 13)


@numba.njit(cache=True)
def _idct_x8(coef, q, out):
    """islow of one block without the +128 and the clamp, in eighths of a sample (the DC
    prediction's view of the pixels)."""
    ws = _column_pass(coef, q)
    t = np.empty(8, np.int64)
    for r in range(8):
        _butterfly(ws[r], t)
        for c in range(8):
            out[r, c] = _descale(t[c], CONST_BITS + PASS1_BITS)


@numba.njit(cache=True)
def _size_symbol(av):
    """|v| (< 2^12): 0..7 as themselves, larger as 8 + (size category - 4)."""
    return av if av < 8 else 8 + _cat(av) - 4


@numba.njit(cache=True)
def _magnitude_rest(s, av, kind, dec, st, words, rec, m_top):
    """|v| from its size symbol s: for a category, the bit under the top one under
    m_top[kind, category], the rest raw."""
    if s < 8:
        return s
    c = s - 4
    top = _code(m_top, kind * 13 + c, 2, (av >> (c - 2)) & 1, dec, st, words, rec)
    low = _raw(av & ((1 << (c - 2)) - 1), c - 2, dec, st, words, rec)
    return (1 << (c - 1)) + (top << (c - 2)) + low


@numba.njit(cache=True)
def _magnitude(v, counts, ctx, kind, dec, st, words, rec, m_top):
    """|v|: its size symbol under counts[ctx], then _magnitude_rest.  Returns |v|."""
    av = abs(v)
    s = _code(counts, ctx, MAGNITUDES, _size_symbol(av), dec, st, words, rec)
    return _magnitude_rest(s, av, kind, dec, st, words, rec, m_top)


@numba.njit(cache=True)
def _magnitude_mixed(v, counts, ctx, second, ctx2, kind, dec, st, words, rec, m_top):
    """|v|: its size symbol under the mean of counts[ctx] and second[ctx2], then the rest."""
    av = abs(v)
    s = _code_mixed(counts, ctx, second, ctx2, MAGNITUDES, _size_symbol(av), dec, st, words, rec)
    return _magnitude_rest(s, av, kind, dec, st, words, rec, m_top)


@numba.njit(cache=True)
def _sign(v, dec, st, words, rec):
    neg = _raw(1 if v < 0 else 0, 1, dec, st, words, rec)
    return 1 - 2 * neg


@numba.njit(cache=True)
def _edge_prediction(coefs, q, i, j, e, t, basis):
    """The edge term (e = 0: row 0, term t, from the block above; e = 1: column 0, from the
    left one) that makes the two blocks' samples meet at their border, in quantised units,
    rounded (the block's own interior terms are known)."""
    blk = coefs[i, j]
    nb = coefs[i - 1, j] if e == 0 else coefs[i, j - 1]
    acc = 0
    for u in range(8):
        f = (8 * u + t) if e == 0 else (8 * t + u)
        acc += (basis[u] if u % 2 == 0 else -basis[u]) * nb[f] * q[f]
        if u > 0:
            acc -= basis[u] * blk[f] * q[f]
    f = t if e == 0 else 8 * t
    den = basis[0] * q[f]
    return (2 * acc + den) // (2 * den) if acc >= 0 else -((-2 * acc + den) // (2 * den))


@numba.njit(cache=True)
def _dc_prediction(coefs, q, pix, i, j, own, est):
    """(DC term, spread) that continues the neighbours' samples (pix, eighths) across the
    block's upper and left borders, each border sample extrapolated half a step from both
    sides; own: the block's samples without its DC.  The mean of the middle half of the
    estimates; the spread of that half in DC steps (the coding context)."""
    n = 0
    if i > 0:
        for x in range(8):
            a, b = pix[8 * i - 1, 8 * j + x], pix[8 * i - 2, 8 * j + x]
            est[n] = (3 * a - b) - (3 * own[0, x] - own[1, x])
            n += 1
    if j > 0:
        for y in range(8):
            a, b = pix[8 * i + y, 8 * j - 1], pix[8 * i + y, 8 * j - 2]
            est[n] = (3 * a - b) - (3 * own[y, 0] - own[y, 1])
            n += 1
    if n == 0:
        return 0, 13
    es = np.sort(est[:n])
    lo, hi = n // 4, n - n // 4
    total = 0
    for k in range(lo, hi):
        total += es[k]
    den = 2 * q[0] * (hi - lo)  # est is twice the border step in eighths; a DC step moves q[0] eighths
    pred = (2 * total + den) // (2 * den) if total >= 0 else -((-2 * total + den) // (2 * den))
    return min(max(pred, -MAX_COEF), MAX_COEF), _bucket((es[hi - 1] - es[lo]) // (2 * q[0]))


@numba.njit(cache=True)
def _walk2(coefs, resid, q, height, width, dec, st, words, rec, interior, basis,
           m_nz, m_ac, m_ecount, m_edge, m_esign, m_dc, m_top, m_flag, m_res, m_ac2, m_edge2):
    """Model 2's symbols in coding order (module docstring); as _walk otherwise."""
    bh, bw = coefs.shape[0], coefs.shape[1]
    nz = np.zeros((bh, bw), np.int64)
    flag = np.zeros((bh, bw), np.int64)
    pix = np.zeros((8 * bh, 8 * bw), np.int64)
    own = np.zeros((8, 8), np.int64)
    est = np.zeros(16, np.int64)
    for i in range(bh):
        for j in range(bw):
            if rec[0, 1]:
                return
            blk = coefs[i, j]
            n = 0
            if not dec:
                for k in range(49):
                    if blk[interior[k]] != 0:
                        n += 1
            left_nz = nz[i, j - 1] if j > 0 else (nz[i - 1, j] if i > 0 else 0)
            up_nz = nz[i - 1, j] if i > 0 else left_nz
            n = _code(m_nz, _bucket((left_nz + up_nz + 1) // 2), MODEL2_NZ[1], n, dec, st, words, rec)
            nz[i, j] = n
            rem = n
            for k in range(49):
                if rem == 0:
                    break
                f = interior[k]
                a = abs(coefs[i, j - 1, f]) if j > 0 else 0
                b = abs(coefs[i - 1, j, f]) if i > 0 else 0
                c = abs(coefs[i - 1, j - 1, f]) if i > 0 and j > 0 else 0
                pos = k if k < 16 else 16 + (k - 16) // 4
                ctx = (pos * 7 + min(_cat(rem), 6)) * 14 + _bucket((13 * a + 13 * b + 6 * c + 8) // 16)
                # the second model: the block's own terms left of and above this one (interior ones)
                inside = (abs(blk[f - 1]) if f % 8 >= 2 else 0) + (abs(blk[f - 8]) if f // 8 >= 2 else 0)
                ctx2 = (pos * 8 + min(_bucket(inside), 7)) * 8 + min(_cat(rem), 7)
                v = _magnitude_mixed(blk[f], m_ac, ctx, m_ac2, ctx2, 0, dec, st, words, rec, m_top)
                if v != 0:
                    v *= _sign(blk[f], dec, st, words, rec)
                    rem -= 1
                blk[f] = v
            for e in range(2):
                cnt = 0
                if not dec:
                    for t in range(1, 8):
                        if blk[t if e == 0 else 8 * t] != 0:
                            cnt += 1
                cnt = _code(m_ecount, e * 14 + _bucket(n), 8, cnt, dec, st, words, rec)
                have = i > 0 if e == 0 else j > 0
                for t in range(1, 8):
                    if cnt == 0:
                        break
                    f = t if e == 0 else 8 * t
                    pred = _edge_prediction(coefs, q, i, j, e, t, basis) if have else 0
                    ctx = ((e * 7 + t - 1) * 14 + _bucket(abs(pred))) * 4 + min(_cat(cnt), 3)
                    # the second model: the neighbours' same term, and this row's (column's) previous one
                    a = abs(coefs[i, j - 1, f]) if j > 0 else 0
                    b = abs(coefs[i - 1, j, f]) if i > 0 else 0
                    prev = (abs(blk[f - 1]) if e == 0 else abs(blk[f - 8])) if t > 1 else 0
                    ctx2 = ((e * 7 + t - 1) * 8 + min(_bucket(a + b), 7)) * 8 + min(_bucket(prev), 7)
                    v = _magnitude_mixed(blk[f], m_edge, ctx, m_edge2, ctx2, 1, dec, st, words, rec, m_top)
                    if v != 0:
                        sc = 0 if pred == 0 else (1 if pred > 0 else 2)
                        neg = _code(m_esign, (e * 8 + t) * 3 + sc, 2, 1 if blk[f] < 0 else 0, dec, st, words, rec)
                        v = -v if neg else v
                        cnt -= 1
                    blk[f] = v
            dc = blk[0]
            blk[0] = 0
            _idct_x8(blk, q, own)
            pred, spread = _dc_prediction(coefs, q, pix, i, j, own, est)
            r = _magnitude(dc - pred, m_dc, spread, 2, dec, st, words, rec, m_top)
            if r != 0:
                r *= _sign(dc - pred, dec, st, words, rec)
            blk[0] = pred + r
            _idct_x8(blk, q, own)
            pix[8 * i:8 * i + 8, 8 * j:8 * j + 8] = own
            _residual(resid, flag, i, j, height, width, dec, st, words, rec, m_flag, m_res)


def _models(model: int) -> list[np.ndarray]:
    shapes = ((NZ_MODEL, DC_MODEL, AC_MODEL, FLAG_MODEL, RES_MODEL) if model == 1 else
              (MODEL2_NZ, MODEL2_AC, MODEL2_EDGE_COUNT, MODEL2_EDGE, MODEL2_EDGE_SIGN, MODEL2_DC,
               MODEL2_TOP_BIT, FLAG_MODEL, RES_MODEL, MODEL2_AC_SECOND, MODEL2_EDGE_SECOND))
    models = [np.ones(shape, dtype=np.int64) for shape in shapes]
    if model == 2:
        for k in (1, 3, 5, 9, 10):  # magnitudes start from a falling prior (small first): -1.5%, tiny planes -4 to -11%
            models[k][:] = np.maximum(1, 64 >> np.arange(MAGNITUDES))
    return models


def _run_walk(model, coefs, resid, q, height, width, dec, st, words, rec):
    if model == 1:
        _walk(coefs, resid, height, width, ZIGZAG, dec, st, words, rec, *_models(1))
    else:
        _walk2(coefs, resid, q, height, width, dec, st, words, rec, INTERIOR, EDGE_BASIS, *_models(2))


@numba.njit(cache=True)
def _rans_encode(rec, out):
    """Push the recorded intervals in reverse; returns where the words start in out."""
    state = np.uint64(RANS_L)
    pos = out.shape[0]
    for n in range(rec[0, 0], 0, -1):
        start, freq = np.uint64(rec[n, 0]), np.uint64(rec[n, 1])
        limit = ((np.uint64(RANS_L) >> np.uint64(PROB_BITS)) << np.uint64(32)) * freq
        if state >= limit:
            pos -= 1
            out[pos] = np.uint32(state & np.uint64(0xFFFFFFFF))
            state = state >> np.uint64(32)
        state = ((state // freq) << np.uint64(PROB_BITS)) + (state % freq) + start
    pos -= 1
    out[pos] = np.uint32(state & np.uint64(0xFFFFFFFF))
    pos -= 1
    out[pos] = np.uint32(state >> np.uint64(32))
    return pos


def _padded(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    return np.pad(plane.astype(np.int64), ((0, -h % 8), (0, -w % 8)), mode="edge")


def fit(plane: np.ndarray, care: np.ndarray, table: np.ndarray | None = None,
        free: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(table, coefficients (bh, bw, 64)) of a uint8 plane (H, W), fitted where care (and the
    sample is not clamped at 0 or 255): the table estimated unless given; free: samples whose
    value does not matter."""
    h, w = plane.shape
    padded = _padded(plane)
    fitted = np.pad(np.asarray(care, dtype=bool), ((0, -h % 8), (0, -w % 8))) & (padded > 0) & (padded < 255)
    d = dct_blocks(padded - 128.0)
    q = estimate_table(d, padded, fitted) if table is None else np.asarray(table, dtype=np.int64)
    start = padded.astype(np.float64)
    if free is not None and free.any():  # free samples (escapes) start from their neighbours, not their value
        loose = np.pad(np.asarray(free, dtype=bool), ((0, -h % 8), (0, -w % 8)))
        start = _neighbour_means(padded, fitted, loose)
        d = dct_blocks(start - 128.0)
    coefs = coefficients(padded, fitted, q, d)
    if h % 8 or w % 8:  # edge blocks: also from the plane's slope continued past its edge; the closer kept
        other = coefficients(padded, fitted, q, dct_blocks(_extrapolated(start, h, w) - 128.0))
        closer = _block_misses(other, q, padded, fitted) < _block_misses(coefs, q, padded, fitted)
        coefs = np.where(closer[:, :, None], other, coefs)
    return q, coefs


def _extrapolated(padded: np.ndarray, h: int, w: int) -> np.ndarray:
    """padded (samples past row h and column w: copies of the edge) with the last step before
    the edge continued instead (a JPEG's edge blocks were cut from a longer image)."""
    out = padded.copy()
    if w >= 2:
        step = out[:, w - 1] - out[:, w - 2]
        out[:, w:] = out[:, w - 1:w] + step[:, None] * np.arange(1, out.shape[1] - w + 1)[None, :]
    if h >= 2:
        step = out[h - 1] - out[h - 2]
        out[h:] = out[h - 1:h] + step[None, :] * np.arange(1, out.shape[0] - h + 1)[:, None]
    return np.clip(out, 0, 255)


def _block_misses(coefs: np.ndarray, q: np.ndarray, plane: np.ndarray, care: np.ndarray) -> np.ndarray:
    """Per block (bh, bw): the summed |IDCT - plane| where care."""
    out = np.zeros(plane.shape, dtype=np.int64)
    idct_plane(coefs, q, out)
    bh, bw = coefs.shape[:2]
    return np.where(care, np.abs(out - plane), 0).reshape(bh, 8, bw, 8).sum(axis=(1, 3))


def _neighbour_means(padded: np.ndarray, fitted: np.ndarray, loose: np.ndarray) -> np.ndarray:
    """padded with each loose sample replaced by the mean of the fitted ones among its 3x3
    neighbours (where it has any): the DCT of a block with a free sample then starts near the
    decoder's block, which the corrections reach (its own value would spread over every term)."""
    pad_v = np.pad(np.where(fitted, padded, 0), 1)
    pad_n = np.pad(fitted.astype(np.int64), 1)
    h, w = padded.shape
    total = sum(pad_v[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    count = sum(pad_n[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    out = padded.astype(np.float64)
    use = loose & (count > 0)
    out[use] = total[use] / count[use]
    return out


def table_of(plane: np.ndarray, care: np.ndarray) -> np.ndarray:
    """The quantisation table estimated from a uint8 plane (H, W) where care (`estimate_table`)."""
    h, w = plane.shape
    padded = _padded(plane)
    fitted = np.pad(np.asarray(care, dtype=bool), ((0, -h % 8), (0, -w % 8))) & (padded > 0) & (padded < 255)
    return estimate_table(dct_blocks(padded - 128.0), padded, fitted)


def project(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A near plane that a JPEG decoder can give with table: the IDCT of the plane's fitted
    coefficients (`fit`: rounded DCT, corrected where the IDCT misses, edge blocks fitted to
    their part in the plane only), (H, W) int64 (the chroma search alternates this with its
    descent)."""
    return samples(table, fit(plane, np.ones(plane.shape, dtype=bool), table)[1], *plane.shape)


def samples(table: np.ndarray, coefs: np.ndarray, height: int, width: int) -> np.ndarray:
    """The decoder's plane (H, W) int64 of fitted coefficients (`fit`)."""
    out = np.zeros((8 * coefs.shape[0], 8 * coefs.shape[1]), dtype=np.int64)
    idct_plane(coefs, table, out)
    return out[:height, :width]


def encode(plane: np.ndarray, care: np.ndarray, free: np.ndarray | None = None, table: np.ndarray | None = None,
           model: int = 2, fitted: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[bytes, np.ndarray]:
    """(code, plane as coded) of a uint8 plane (H, W): care marks the pixels the table and
    the coefficients are fitted to (not clamped, not escaped); free marks pixels whose value
    does not matter (escapes): they take the IDCT's value, which the returned plane holds.
    table: the quantisation table where known (else estimated from the plane); model: the
    coefficient model (1: format 13's, 2: format 14's); fitted: (table, coefficients) where
    `fit` has already made them."""
    h, w = plane.shape
    q, coefs = fit(plane, care, table, free) if fitted is None else fitted
    padded = _padded(plane)
    used = padded.copy()
    out = np.zeros(padded.shape, dtype=np.int64)
    idct_plane(coefs, q, out)
    if free is not None:
        loose = np.pad(np.asarray(free, dtype=bool), ((0, -h % 8), (0, -w % 8)))
        used[loose] = out[loose]
    resid = np.zeros(padded.shape, dtype=np.int64)
    resid[:h, :w] = (used - out)[:h, :w]
    room = coefs.shape[0] * coefs.shape[1] * 64 + 64
    while True:
        rec = np.zeros((room, 2), dtype=np.int64)
        st = np.zeros(2, dtype=np.uint64)
        _run_walk(model, coefs.copy(), resid, q, h, w, False, st, np.zeros(1, np.uint32), rec)
        if not rec[0, 1]:
            break
        room *= 4
    words = np.zeros(int(rec[0, 0]) + 2, dtype=np.uint32)
    start = _rans_encode(rec, words)
    code = q.astype(np.uint8).tobytes() + words[start:].astype("<u4").tobytes()
    return code, used[:h, :w].astype(np.uint8)


def decode(data: bytes, height: int, width: int, model: int = 2) -> np.ndarray:
    """Inverse of `encode`: the plane (H, W) uint8; ValueError on data that does not fit."""
    if len(data) < 64 + 8 or (len(data) - 64) % 4:
        raise ValueError("jpeg coefficient data is truncated")
    q = np.frombuffer(data[:64], dtype=np.uint8).astype(np.int64)
    if (q == 0).any():
        raise ValueError("jpeg coefficient table is corrupt")
    bh, bw = -(-height // 8), -(-width // 8)
    words = np.frombuffer(data[64:], dtype="<u4").astype(np.uint32)
    st = np.array([(int(words[0]) << 32) | int(words[1]), 2], dtype=np.uint64)
    coefs = np.zeros((bh, bw, 64), dtype=np.int64)
    resid = np.zeros((8 * bh, 8 * bw), dtype=np.int64)
    _run_walk(model, coefs, resid, q, height, width, True, st, words, np.zeros((1, 2), np.int64))
    if st[1] > len(words):
        raise ValueError("jpeg coefficient data is corrupt")
    out = np.zeros(resid.shape, dtype=np.int64)
    idct_plane(coefs, q, out)
    plane = (out + resid)[:height, :width]
    if plane.min() < 0 or plane.max() > 255:
        raise ValueError("jpeg coefficient data is corrupt")
    return plane.astype(np.uint8)
