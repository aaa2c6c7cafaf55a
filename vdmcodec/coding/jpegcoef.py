"""A JPEG decode's luma plane coded as the JPEG's own quantised DCT coefficients (format 13).

A JPEG decoder turns each 8x8 block of quantised coefficients into samples with a fixed
integer IDCT (libjpeg's "islow", jidctint.c, restated in `idct_islow`), so the luma plane of a
libjpeg decode (coding.ycc gives it back exactly) is a function of far fewer bits than its
pixels: the JPEG file itself codes a decode 2-3 times smaller than any lossless code of its
pixels (docs/RESULTS.md, sessions 23 and 24).  The encoder recovers the coefficients from
the pixels:

1. the quantisation table, from the plane alone: each frequency's DCT values over the blocks
   with no clamped or escaped pixel sit near multiples of its step; the candidate steps that
   fit are tried and the one that gives back the most blocks exactly is kept (ties: the
   larger);
2. each block's coefficients: its float DCT divided by the table and rounded, then, where the
   IDCT does not give the block back, corrected by the DCT of what it misses (a few rounds);
3. what is still missed (rounding ties, clamped blocks, edge blocks, a table step guessed
   wrong) is sent as a per-pixel residual, so every plane is coded exactly whatever it is.

The code: the table (64 bytes, natural order, steps 1..255), then rANS words (32-bit,
little-endian, the first two the final state), pushed in reverse of the walk (`_walk`): for
each block in raster order the count of nonzero AC coefficients (context: its left and upper
neighbours' counts), the DC coefficient's difference from the median-edge prediction of the
neighbouring DC terms (its size category; context: the neighbours' differences), the AC
coefficients in zigzag order until the count is spent (size category; context: the
position, the count left, the same coefficient's size in the left and upper blocks), each
category's sign and low bits raw, then a flag whether the block is exact (context: the left
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
SYMBOLS_PER_BLOCK = 1 + 3 + 63 * 3 + 1 + 64 * 2  # the most a block codes (the decoder's padding)


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
def idct_islow(coef, q, out):
    """libjpeg's integer IDCT ("islow") of quantised coefficients coef (64, natural order)
    with table q (64), both int64, into out (8, 8): samples 0..255 (clamped).  Columns first,
    then rows, each a 1-D pass; a column or row whose AC terms are zero is its DC term alone."""
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
    return q


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
    return coefs


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
            st[0] = (st[0] << np.uint64(32)) | np.uint64(words[st[1]])
            st[1] += np.uint64(1)
    else:
        n = rec[0, 0]
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
            # the residual: where the IDCT misses the plane
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


def _models():
    return [np.ones(shape, dtype=np.int64) for shape in (NZ_MODEL, DC_MODEL, AC_MODEL, FLAG_MODEL, RES_MODEL)]


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


def encode(plane: np.ndarray, care: np.ndarray, free: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
    """(code, plane as coded) of a uint8 plane (H, W): care marks the pixels the table and
    the coefficients are fitted to (not clamped, not escaped); free marks pixels whose value
    does not matter (escapes): they take the IDCT's value, which the returned plane holds."""
    h, w = plane.shape
    padded = _padded(plane)
    fit = np.pad(np.asarray(care, dtype=bool), ((0, -h % 8), (0, -w % 8))) & (padded > 0) & (padded < 255)
    d = dct_blocks(padded - 128.0)
    q = estimate_table(d, padded, fit)
    coefs = coefficients(padded, fit, q, d)
    out = np.zeros(padded.shape, dtype=np.int64)
    idct_plane(coefs, q, out)
    used = padded.copy()
    if free is not None:
        loose = np.pad(np.asarray(free, dtype=bool), ((0, -h % 8), (0, -w % 8)))
        used[loose] = out[loose]
    resid = np.zeros(padded.shape, dtype=np.int64)
    resid[:h, :w] = (used - out)[:h, :w]
    rec = np.zeros((coefs.shape[0] * coefs.shape[1] * SYMBOLS_PER_BLOCK + 1, 2), dtype=np.int64)
    st = np.zeros(2, dtype=np.uint64)
    _walk(coefs, resid, h, w, ZIGZAG, False, st, np.zeros(1, np.uint32), rec, *_models())
    words = np.zeros(int(rec[0, 0]) + 2, dtype=np.uint32)
    start = _rans_encode(rec, words)
    code = q.astype(np.uint8).tobytes() + words[start:].astype("<u4").tobytes()
    return code, used[:h, :w].astype(np.uint8)


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode`: the plane (H, W) uint8; ValueError on data that does not fit."""
    if len(data) < 64 + 8 or (len(data) - 64) % 4:
        raise ValueError("jpeg coefficient data is truncated")
    q = np.frombuffer(data[:64], dtype=np.uint8).astype(np.int64)
    if (q == 0).any():
        raise ValueError("jpeg coefficient table is corrupt")
    bh, bw = -(-height // 8), -(-width // 8)
    words = np.frombuffer(data[64:], dtype="<u4").astype(np.uint32)
    # at most one word per symbol is read: pad so that a corrupt stream cannot read past the end
    words = np.concatenate([words, np.zeros(bh * bw * SYMBOLS_PER_BLOCK + 2, dtype=np.uint32)])
    st = np.array([(int(words[0]) << 32) | int(words[1]), 2], dtype=np.uint64)
    coefs = np.zeros((bh, bw, 64), dtype=np.int64)
    resid = np.zeros((8 * bh, 8 * bw), dtype=np.int64)
    _walk(coefs, resid, height, width, ZIGZAG, True, st, words, np.zeros((1, 2), np.int64), *_models())
    out = np.zeros(resid.shape, dtype=np.int64)
    idct_plane(coefs, q, out)
    plane = (out + resid)[:height, :width]
    if plane.min() < 0 or plane.max() > 255:
        raise ValueError("jpeg coefficient data is corrupt")
    return plane.astype(np.uint8)
