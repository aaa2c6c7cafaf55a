"""The least-squares code's second model: each sample's value coded bit by bit, with the
least-squares logistic mixed with simple predictors and adaptive context statistics.

`coding.lsq` predicts every sample (a local least-squares fit) and gives it a logistic
scale; its first model codes the value straight from that discretised logistic.  This
model (format 15, `lsq.MODEL_MIXED`) codes the same value as a short sequence of binary
decisions about its distance from the rounded prediction m (`_code_value`):

    t == m?   then   t > m?   then the bucket of |t - m| - 1 in unary (0, 1-2, 3-6, ...)
    then the position in the bucket, by halving

and gives each decision a probability mixed, in the logistic domain, from

- the least-squares logistic's own probability of the decision (the strongest input: the
  mixers start from it alone),
- the same logistic centred on four simple predictors (LOCO-I's median edge detector, the
  mean of west and north, the gradient west + north - north-west, the mean of north and
  north-east; after the first plane in the difference from it, as the least squares are),
- thirteen adaptive probabilities, one per context (`_contexts`: the error bin, the
  prediction's rounding, the signs of the neighbours' errors, the earlier planes' errors at
  the pixel, how far the median predictor and the others are from the prediction, the
  texture of the neighbours around it, the plane, the brightness, the local activity and the
  first plane's gradient at the pixel, the four nearest neighbours' distances from the
  prediction),

by six mixers (each with weights chosen by the decision and one context: the error bin, the
neighbours' error signs, the plane and the median predictor's distance, the activity, the
texture, the brightness) whose outputs are averaged and refined by three adaptive
probability maps, as in PAQ-family context-mixing coders.  Everything after the logistic's probabilities
is integer arithmetic (12-bit probabilities, 16.16 weights), and those probabilities are
IEEE basic operations on `detmath`'s sigmoid, so a file decodes the same on every machine.

Its third model (format 16, `lsq.MODEL_POINTERS`) adds sixteen *pointer* contexts
(`_pointer_contexts`): which integer, relative to m, each of fourteen predictions (the
simple predictors, the neighbours, four extrapolations) points at, and a seventh mixer
chosen by the west and north pointers.  Pixels are integers: where an image is flat or
repeats (resized or JPEG-decoded photographs) the value a neighbour points at is far
likelier than the logistic says.  On the training tune set 0.5% smaller than model 2, on
resized JPEG photographs 1.8-3.5%, on film scans 0-0.4% (docs/RESULTS.md, session 27).

On six training images (four ImageNet photographs, two film scans; docs/RESULTS.md,
session 26) model 2 codes 3.0% smaller than the first model: 1-2% on film scans, 3-6% on the
smooth ImageNet photographs where the first model lost to JPEG XL.  It adds about 2.5 us per
sample to the least squares' 8 (a 512x512 film scan decodes in 8.3 s, not 6.3).

Numba caches each function by its own file: after editing this module, delete lsq's
cached `_walk` (vdmcodec/coding/__pycache__/lsq.*.nb?), which compiles code_sample in.

One function codes one sample in both directions (`code_sample`), so the encoder and the
decoder cannot drift apart.

>>> import numpy as np
>>> from vdmcodec.coding import lsq
>>> x = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
>>> data = lsq.encode(x, model=lsq.MODEL_MIXED)
>>> bool((lsq.decode(data, 5, 7, 3, model=lsq.MODEL_MIXED) == x).all())
True
"""

from __future__ import annotations

import numba
import numpy as np

from vdmcodec.coding.detmath import sigmoid_scalar

NODES = 64  # decision kinds: 0 zero, 1 sign, 2.. unary bucket steps, 12.. bucket halvings
MODEL_MIXED, MODEL_POINTERS = 2, 3  # lsq's model numbers this module codes (formats 15, 16)
POINTER_REACH = 16  # a pointer context tells offsets -16..16 from m apart (farther ones clip)
_PQ = (2 * POINTER_REACH + 1) * 9  # a pointer context's values: the offset, the bin in 3 groups, the plane
N_POINTERS = 14  # pointer contexts (`_pointer_contexts`): 4 simple predictors, 6 neighbours, 4 extrapolations
# per context: its values for each decision kind (see _contexts, _pointer_contexts); model 2
# reads the first 13, model 3 all
CTX_SIZES = np.array([24, 12 * 5, 8 * 81, 3 * 15 * 8, 12 * 9, 64 * 3, 3 * 24, 12 * 9 * 3, 9 * 9 * 4, 8 * 6,
                      8 * 8 * 3, 9 * 9 * 4, 9 * 9 * 4] + [_PQ] * N_POINTERS + [7 * 7 * 3, 8 * 8 * 3],
                     dtype=np.int64)
CTX_OFFSETS = np.concatenate([[0], np.cumsum(CTX_SIZES * NODES)]).astype(np.int64)
N_CTX = CTX_SIZES.shape[0]
N_CTX_MIXED = 13  # model 2's contexts
N_PRED = 4  # simple predictors beside the least squares
N_IN = 1 + N_PRED + N_CTX + 1  # mixer inputs: logistic, predictors, contexts, bias
# the mixers, each with its weight set chosen by the decision kind and one context value
# (`_rows`): the error bin, the neighbours' error signs, (plane, median predictor's
# distance), (activity, first plane's gradient), the texture, (brightness, bin); model 3 adds
# (plane, the west and north neighbour pointers' offsets)
MIX_SIZES = np.array([24, 81, 27, 64, 64, 48, 75], dtype=np.int64)
MIX_OFFSETS = np.concatenate([[0], np.cumsum(MIX_SIZES * NODES)]).astype(np.int64)
N_MIX = MIX_SIZES.shape[0]
N_MIX_MIXED = 6  # model 2's mixers
# the adaptive probability maps after them, chosen likewise by the decision kind and the error
# bin, the error signs, (activity, first plane's gradient); the coded probability is
# (3 mixed + the three maps) / 6
MAP_SIZES = np.array([24, 81, 64], dtype=np.int64)
MAP_OFFSETS = np.concatenate([[0], np.cumsum(MAP_SIZES * NODES)]).astype(np.int64)
N_MAP = MAP_SIZES.shape[0]
COUNT_LIMIT = 255  # a context's adaptation rate falls as 1 / (n + 1.5) down to this n
MIX_RATE = 450  # mixer learning rate, 0.0069 in 16.16 weights per (12-bit error x 8.8 stretch)
APM_RATE = 6  # adaptive probability maps move 1/64 of the way
BIAS = 77  # the bias input, 0.3 in stretch units
# PAQ's squash at 33 points of the stretch domain (-2048..2048 in steps of 128)
_SQUASH_POINTS = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994,
                           3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094],
                          dtype=np.int64)


@numba.njit(cache=True)
def squash(d):
    """12-bit probability of a stretch value d (8 fractional bits), by interpolation."""
    if d > 2047:
        d = 2047
    if d < -2047:
        d = -2047
    w = d & 127
    i = (d >> 7) + 16
    return (_SQUASH_POINTS[i] * (128 - w) + _SQUASH_POINTS[i + 1] * w + 64) >> 7


def _stretch_table() -> np.ndarray:
    """The inverse of squash over the 4096 12-bit probabilities."""
    out = np.zeros(4096, dtype=np.int64)
    pi = 0
    for d in range(-2047, 2048):
        v = int(squash(d))
        for i in range(pi, v + 1):
            out[i] = d
        pi = v + 1
    out[pi:] = 2047
    return out


STRETCH = _stretch_table()
RECIP = np.array([int(65536 / (n + 1.5)) for n in range(COUNT_LIMIT + 1)], dtype=np.int64)


def new_state(size: int = 0):
    """A fresh model and coder, the arguments code_sample takes after its first twelve:
    (counters, their counts, mixer weights, scratch, maps, coder registers, byte buffer of
    `size`)."""
    total = int(CTX_OFFSETS[-1])
    ctr = np.full(total, 32768, dtype=np.int32)  # 16-bit probabilities, starting at 1/2
    cnt = np.zeros(total, dtype=np.int32)
    weights = np.zeros((int(MIX_OFFSETS[-1]), N_IN), dtype=np.int64)
    weights[:, 0] = 65536  # every mixer starts from the least-squares logistic alone
    # scratch rows: the mixers' inputs, the mixers' rows, the maps' rows, the mixers' outputs
    scratch = np.zeros((4, max(N_IN, N_MIX, N_MAP)), dtype=np.int64)
    init = np.array([squash((j - 16) * 128) * 16 for j in range(33)], dtype=np.int64)
    maps = np.tile(init, (int(MAP_OFFSETS[-1]), 1))
    ac = np.array([0, 0xFFFFFFFF, 0, 0], dtype=np.int64)  # low, high, code (decoder), position
    return ctr, cnt, weights, scratch, maps, ac, np.zeros(size, dtype=np.uint8)


@numba.njit(cache=True)
def _cdf(t, mu, s):
    """The logistic(mu, s)'s mass below t - 1/2, truncated to the values 0..255."""
    if t <= 0:
        return 0.0
    if t >= 256:
        return 1.0
    return sigmoid_scalar((t - 0.5 - mu) / s)


@numba.njit(cache=True)
def _split(alo, ahi, blo, bhi, mu, s):
    """Stretched 12-bit probability that the value is in [blo, bhi) rather than [alo, ahi)
    (adjacent ranges) under the logistic; alo < 0 means 'anywhere else' (the zero test)."""
    pb = _cdf(bhi, mu, s) - _cdf(blo, mu, s)
    if alo < 0:
        pa = 1.0 - pb
    else:
        pa = _cdf(ahi, mu, s) - _cdf(alo, mu, s)
    if pa + pb <= 0.0:
        return 0
    p = int(pb / (pa + pb) * 4096.0)
    return STRETCH[min(max(p, 1), 4095)]


@numba.njit(cache=True)
def _code_bit(p, bit, decoding, ac, buf):
    """Binary arithmetic coding (carry-less, 32-bit, as in lpaq) of one decision whose
    probability of 1 is p / 4096; returns the bit."""
    lo, hi = ac[0], ac[1]
    mid = lo + ((hi - lo) >> 12) * p
    if decoding:
        bit = 1 if ac[2] <= mid else 0
    if bit:
        hi = mid
    else:
        lo = mid + 1
    while ((lo ^ hi) & 0xFF000000) == 0:
        if decoding:
            pos = ac[3]
            byte = buf[pos] if pos < buf.shape[0] else 0
            ac[3] = pos + 1
            ac[2] = ((ac[2] << 8) & 0xFFFFFFFF) | byte
        else:
            if ac[3] < buf.shape[0]:  # the caller checks the count against the buffer
                buf[ac[3]] = hi >> 24
            ac[3] += 1
        lo = (lo << 8) & 0xFFFFFFFF
        hi = ((hi << 8) & 0xFFFFFFFF) | 255
    ac[0], ac[1] = lo, hi
    return bit


def flush(ac, buf) -> bytes:
    """The encoder's bytes: what was written, then the low register's four bytes."""
    pos = int(ac[3])
    if pos > buf.shape[0]:
        raise ValueError("the mixed model's buffer overflowed")
    tail = int(ac[0]).to_bytes(4, "big")
    return bytes(buf[:pos]) + tail


def start_decoder(ac, data: bytes) -> None:
    """Load the first four bytes into the decoder's code register."""
    head = data[:4].ljust(4, b"\0")
    ac[2] = int.from_bytes(head, "big")
    ac[3] = 4


@numba.njit(cache=True)
def _q9(d):
    """A signed distance in nine steps."""
    if d < -6.0:
        return 0
    if d < -2.5:
        return 1
    if d < -1.0:
        return 2
    if d < -0.3:
        return 3
    if d <= 0.3:
        return 4
    if d <= 1.0:
        return 5
    if d <= 2.5:
        return 6
    if d <= 6.0:
        return 7
    return 8


@numba.njit(cache=True)
def _q8(v):
    """A non-negative size in eight steps, about logarithmic."""
    if v < 1.0:
        return 0
    if v < 2.0:
        return 1
    if v < 4.0:
        return 2
    if v < 7.0:
        return 3
    if v < 12.0:
        return 4
    if v < 20.0:
        return 5
    if v < 35.0:
        return 6
    return 7


@numba.njit(cache=True)
def _q3(e):
    return 0 if e < -0.75 else (2 if e > 0.75 else 1)


@numba.njit(cache=True)
def _plane_value(x, order, k, y, xx, diff):
    """The sample's value in the plane the least squares predict (after the first plane, the
    difference from it where diff)."""
    v = float(x[y, xx, order[k]])
    if diff and k >= 1:
        v -= float(x[y, xx, order[0]])
    return v


@numba.njit(cache=True)
def median_edge(a, b, q):
    """LOCO-I's median edge detector of west a, north b and north-west q: min(a, b) below an
    edge at q, max(a, b) above, else the gradient a + b - q."""
    if q >= max(a, b):
        return min(a, b)
    if q <= min(a, b):
        return max(a, b)
    return a + b - q


@numba.njit(cache=True)
def _simple_predictions(x, order, k, y, xx, diff, out):
    """The four simple predictors of sample (y, xx) of plane k, in pixel values; outside the
    image a neighbour takes its nearest causal neighbour's value."""
    w = x.shape[1]
    if y == 0 and xx == 0:
        base = 128.0
        if diff and k >= 1:
            base = float(x[y, xx, order[0]])
        for i in range(4):
            out[i] = base
        return
    if y == 0:
        vw = _plane_value(x, order, k, y, xx - 1, diff)
        vn, vnw, vne = vw, vw, vw
    elif xx == 0:
        vn = _plane_value(x, order, k, y - 1, xx, diff)
        vw, vnw = vn, vn
        vne = _plane_value(x, order, k, y - 1, xx + 1, diff) if xx + 1 < w else vn
    else:
        vw = _plane_value(x, order, k, y, xx - 1, diff)
        vn = _plane_value(x, order, k, y - 1, xx, diff)
        vnw = _plane_value(x, order, k, y - 1, xx - 1, diff)
        vne = _plane_value(x, order, k, y - 1, xx + 1, diff) if xx + 1 < w else vn
    grad = vw + vn - vnw
    med = median_edge(vw, vn, vnw)
    base = 0.0
    if diff and k >= 1:
        base = float(x[y, xx, order[0]])
    out[0] = min(max(med + base, 0.0), 255.0)
    out[1] = min(max(0.5 * (vw + vn) + base, 0.0), 255.0)
    out[2] = min(max(grad + base, 0.0), 255.0)
    out[3] = min(max(0.5 * (vn + vne) + base, 0.0), 255.0)


@numba.njit(cache=True)
def _contexts(x, err, order, k, y, xx, mu, b, m, pred, ctx):
    """The thirteen context values of sample (y, xx) of plane k (see CTX_SIZES); returns the
    neighbours' error-sign pattern (0..80), which also picks mixer 2's weights."""
    c = order[k]
    w = x.shape[1]
    ew = err[y, xx - 1, c] if xx >= 1 else 0.0
    en = err[y - 1, xx, c] if y >= 1 else 0.0
    enw = err[y - 1, xx - 1, c] if (y >= 1 and xx >= 1) else 0.0
    ene = err[y - 1, xx + 1, c] if (y >= 1 and xx + 1 < w) else 0.0
    signs = _q3(ew) + 3 * _q3(en) + 9 * _q3(enw) + 27 * _q3(ene)
    frac = int((mu - m + 0.5) * 4.999)
    if k >= 1:
        eg = err[y, xx, order[0]]
        if k >= 2:
            eg += err[y, xx, order[1]]
    else:
        eg = ew
    egq = int(min(max(eg, -7.49), 7.49) + 7.5)
    dmq = _q9(pred[0] - mu)
    tex = 0
    if y >= 2 and xx >= 2 and xx + 1 < w:
        tex = ((float(x[y, xx - 1, c]) > mu) + 2 * (float(x[y - 1, xx, c]) > mu) + 4 * (float(x[y - 1, xx - 1, c]) > mu)
               + 8 * (float(x[y - 1, xx + 1, c]) > mu) + 16 * (float(x[y, xx - 2, c]) > mu)
               + 32 * (float(x[y - 2, xx, c]) > mu))
    ctx[0] = b
    ctx[1] = (b // 2) * 5 + frac
    ctx[2] = (b // 3) * 81 + signs
    ctx[3] = (min(k, 2) * 15 + egq) * 8 + b // 3
    ctx[4] = (b // 2) * 9 + dmq
    ctx[5] = tex * 3 + min(b // 8, 2)
    ctx[6] = min(k, 2) * 24 + b
    ctx[7] = ((b // 2) * 9 + dmq) * 3 + _q3(ew)
    ctx[8] = (_q9(pred[2] - mu) * 9 + _q9(pred[3] - mu)) * 4 + min(b // 6, 3)
    ctx[9] = min(int(mu) // 32, 7) * 6 + b // 4
    h = x.shape[0]
    gq = 0
    if k >= 1:
        g = order[0]
        gy0, gy1 = max(y - 1, 0), min(y + 1, h - 1)
        gx0, gx1 = max(xx - 1, 0), min(xx + 1, w - 1)
        gg = abs(float(x[y, gx1, g]) - float(x[y, gx0, g])) + abs(float(x[gy1, xx, g]) - float(x[gy0, xx, g]))
        gq = _q8(gg)
    act = abs(pred[1] - pred[0]) + abs(pred[3] - pred[1]) + abs(pred[2] - pred[0])
    ctx[10] = (_q8(act) * 8 + gq) * 3 + min(b // 8, 2)
    vw = float(x[y, xx - 1, c]) if xx >= 1 else mu
    vn = float(x[y - 1, xx, c]) if y >= 1 else mu
    ctx[11] = (_q9(vw - mu) * 9 + _q9(vn - mu)) * 4 + min(b // 6, 3)
    vnw = float(x[y - 1, xx - 1, c]) if (y >= 1 and xx >= 1) else vn
    vne = float(x[y - 1, xx + 1, c]) if (y >= 1 and xx + 1 < w) else vn
    ctx[12] = (_q9(vnw - mu) * 9 + _q9(vne - mu)) * 4 + min(b // 6, 3)
    return signs


@numba.njit(cache=True)
def _offset_value(v, m, b, k):
    """A pointer context's value: the offset of v's nearest integer from m (clipped to the
    reach), with the error bin in three groups and the plane (0, 1, 2 or more)."""
    q = min(max(int(np.floor(v + 0.5)) - m, -POINTER_REACH), POINTER_REACH) + POINTER_REACH
    return (q * 3 + min(b // 8, 2)) * 3 + min(k, 2)


@numba.njit(cache=True)
def _offset(value):
    """The offset from m (-POINTER_REACH..POINTER_REACH) in a pointer context's value."""
    return value // 9 - POINTER_REACH


@numba.njit(cache=True)
def _pv(x, order, k, y, xx, diff, default):
    """Sample (y, xx)'s value in plane k's domain (_plane_value), default outside the image."""
    if y < 0 or xx < 0 or xx >= x.shape[1]:
        return default
    return _plane_value(x, order, k, y, xx, diff)


@numba.njit(cache=True)
def _pointer_contexts(x, order, k, y, xx, diff, mu, b, m, pred, ctx):
    """Model 3's contexts (after model 2's thirteen): for fourteen predictions, which value
    m + q they point at (`_offset_value`): pixels are integers, and a value a neighbour or a
    predictor points at exactly is far likelier than the logistic says where an image has
    flat or repeated areas (resized or JPEG-decoded photographs).  The predictions: the four
    simple predictors; the west, north, north-west and north-east neighbours (in the plane's
    domain, so after the first plane: their difference from it plus its value here); west and
    north as differences from the previous plane plus its value here (after the first plane,
    except the second when the planes are differences from the first: that is the pair
    before); the extrapolations 2W - WW, 2N - NN, N + NE - NNE, W + NE - N.  Then two more:
    west's and north's offsets together (-3..3 each), and how many of the fourteen point at
    m and how many next to it (0..7 each)."""
    base = float(x[y, xx, order[0]]) if (diff and k >= 1) else 0.0
    at = N_CTX_MIXED
    for i in range(N_PRED):
        ctx[at + i] = _offset_value(pred[i], m, b, k)
    at += N_PRED
    vw = _pv(x, order, k, y, xx - 1, diff, mu - base)
    vn = _pv(x, order, k, y - 1, xx, diff, vw)
    vnw = _pv(x, order, k, y - 1, xx - 1, diff, vn)
    vne = _pv(x, order, k, y - 1, xx + 1, diff, vn)
    vww = _pv(x, order, k, y, xx - 2, diff, vw)
    vnn = _pv(x, order, k, y - 2, xx, diff, vn)
    vnne = _pv(x, order, k, y - 2, xx + 1, diff, vne)
    ctx[at] = _offset_value(vw + base, m, b, k)
    ctx[at + 1] = _offset_value(vn + base, m, b, k)
    ctx[at + 2] = _offset_value(vnw + base, m, b, k)
    ctx[at + 3] = _offset_value(vne + base, m, b, k)
    cw, cn = mu, mu  # differences from the previous plane
    if k >= 1 and not (diff and k == 1):
        c, prev = order[k], order[k - 1]
        here = float(x[y, xx, prev])
        if xx >= 1:
            cw = float(x[y, xx - 1, c]) - float(x[y, xx - 1, prev]) + here
        if y >= 1:
            cn = float(x[y - 1, xx, c]) - float(x[y - 1, xx, prev]) + here
    ctx[at + 4] = _offset_value(cw, m, b, k)
    ctx[at + 5] = _offset_value(cn, m, b, k)
    ctx[at + 6] = _offset_value(2.0 * vw - vww + base, m, b, k)
    ctx[at + 7] = _offset_value(2.0 * vn - vnn + base, m, b, k)
    ctx[at + 8] = _offset_value(vn + vne - vnne + base, m, b, k)
    ctx[at + 9] = _offset_value(vw + vne - vn + base, m, b, k)
    west = min(max(_offset(ctx[at]), -3), 3) + 3
    north = min(max(_offset(ctx[at + 1]), -3), 3) + 3
    ctx[at + 10] = (west * 7 + north) * 3 + min(b // 8, 2)
    at_m, beside = 0, 0
    for i in range(N_CTX_MIXED, N_CTX_MIXED + N_POINTERS):
        q = _offset(ctx[i])
        if q == 0:
            at_m += 1
        elif q == 1 or q == -1:
            beside += 1
    ctx[at + 11] = (min(at_m, 7) * 8 + min(beside, 7)) * 3 + min(b // 8, 2)


@numba.njit(cache=True)
def _rows(node, b, signs, ctx, n_mix, mix_rows, map_rows):
    """Each mixer's weight row and each map's row for this decision (MIX_SIZES, MAP_SIZES)."""
    activity = ctx[10] // 3
    plane = ctx[6] // 24
    pointers = 0  # model 3's seventh mixer: the west and north pointers' offsets, -2..2
    if n_mix > N_MIX_MIXED:
        west = min(max(_offset(ctx[N_CTX_MIXED + 4]), -2), 2) + 2
        north = min(max(_offset(ctx[N_CTX_MIXED + 5]), -2), 2) + 2
        pointers = (plane * 5 + west) * 5 + north
    sel = (b, signs, plane * 9 + ctx[4] % 9, activity, ctx[5] // 3, ctx[9], pointers)
    for j in range(n_mix):
        mix_rows[j] = MIX_OFFSETS[j] + node * MIX_SIZES[j] + sel[j]
    sel_map = (b, signs, activity)
    for j in range(N_MAP):
        map_rows[j] = MAP_OFFSETS[j] + node * MAP_SIZES[j] + sel_map[j]


@numba.njit(cache=True)
def _code_decision(node, alo, ahi, blo, bhi, bit, decoding, mu, s, pred, ctx, b, signs, n_ctx, n_mix,
                   ctr, cnt, weights, scratch, maps, ac, buf):
    """Mix, code and learn one decision: the value in [blo, bhi) (bit 1) or in [alo, ahi),
    from the first n_ctx contexts by the first n_mix mixers (the model's)."""
    inp = scratch[0]
    mix_rows = scratch[1]
    map_rows = scratch[2]
    outs = scratch[3]
    inp[0] = _split(alo, ahi, blo, bhi, mu, s)
    for i in range(N_PRED):
        inp[1 + i] = _split(alo, ahi, blo, bhi, pred[i], s)
    for q in range(n_ctx):
        j = CTX_OFFSETS[q] + node * CTX_SIZES[q] + ctx[q]
        inp[1 + N_PRED + q] = STRETCH[min(max(ctr[j] >> 4, 1), 4095)]
    n_in = 1 + N_PRED + n_ctx + 1
    inp[n_in - 1] = BIAS
    _rows(node, b, signs, ctx, n_mix, mix_rows, map_rows)
    total = 0
    for j in range(n_mix):
        dot = 0
        r = mix_rows[j]
        for i in range(n_in):
            dot += weights[r, i] * inp[i]
        outs[j] = min(max(dot >> 16, -2047), 2047)
        total += outs[j]
    d = (total * (65536 // n_mix + 1)) >> 16  # the mixers' mean
    pm = squash(d)
    # the maps interpolate between their two points around d
    pos = d + 2048
    lo = pos >> 7
    wt = pos & 127
    p = 3 * pm + 3
    for j in range(N_MAP):
        r = map_rows[j]
        p += (maps[r, lo] * (128 - wt) + maps[r, lo + 1] * wt) >> 11
    p = min(max(p // 6, 1), 4095)
    bit = _code_bit(p, bit, decoding, ac, buf)
    # learn
    for j in range(n_mix):
        e = (bit << 12) - squash(outs[j])
        r = mix_rows[j]
        for i in range(n_in):
            weights[r, i] += (inp[i] * e * MIX_RATE) >> 20
    near = lo + (wt >> 6)
    for j in range(N_MAP):
        r = map_rows[j]
        maps[r, near] += ((bit << 16) - maps[r, near]) >> APM_RATE
    for q in range(n_ctx):
        j = CTX_OFFSETS[q] + node * CTX_SIZES[q] + ctx[q]
        n = cnt[j]
        ctr[j] += (((bit << 16) - ctr[j]) * RECIP[n]) >> 16
        if n < COUNT_LIMIT:
            cnt[j] = n + 1
    return bit


@numba.njit(cache=True)
def code_sample(x, err, order, k, y, xx, diff, mu, s, b, t, decoding, model,
                ctr, cnt, weights, scratch, maps, ac, buf, pred, ctx):
    """Code sample (y, xx) of plane k, value t (encoding) or returned (decoding), given its
    least-squares prediction mu, logistic scale s and error bin b.  The binarisation: t == m,
    then the side, then |t - m| - 1's bucket [2^j - 1, 2^(j+1) - 1) in unary, then its place
    in the bucket by halving; decisions the range settles are not coded.  model: MODEL_MIXED
    or MODEL_POINTERS (with the pointer contexts and their mixer); ctr..buf: the state
    (new_state); pred, ctx: scratch (N_PRED floats, N_CTX int64)."""
    m = min(max(int(np.floor(mu + 0.5)), 0), 255)
    _simple_predictions(x, order, k, y, xx, diff, pred)
    signs = _contexts(x, err, order, k, y, xx, mu, b, m, pred, ctx)
    n_ctx, n_mix = N_CTX_MIXED, N_MIX_MIXED
    if model == MODEL_POINTERS:
        _pointer_contexts(x, order, k, y, xx, diff, mu, b, m, pred, ctx)
        n_ctx, n_mix = N_CTX, N_MIX
    bit = 1 if t == m else 0
    bit = _code_decision(0, -1, -1, m, m + 1, bit, decoding, mu, s, pred, ctx, b, signs, n_ctx, n_mix,
                         ctr, cnt, weights, scratch, maps, ac, buf)
    if bit:
        return m
    if m == 0:
        up = 1
    elif m == 255:
        up = 0
    else:
        up = _code_decision(1, 0, m, m + 1, 256, 1 if t > m else 0, decoding, mu, s, pred, ctx, b, signs, n_ctx, n_mix,
                            ctr, cnt, weights, scratch, maps, ac, buf)
    top = 254 - m if up else m - 1  # the largest |t - m| - 1 on this side
    a = abs(t - m) - 1
    j = 0
    while (1 << (j + 1)) - 1 <= top:
        a0, a1 = (1 << j) - 1, (1 << (j + 1)) - 1
        near, far = _side_range(m, up, a0, a1, top + 1)
        more = _code_decision(2 + j, near[0], near[1], far[0], far[1], 1 if a >= a1 else 0, decoding, mu, s,
                              pred, ctx, b, signs, n_ctx, n_mix, ctr, cnt, weights, scratch, maps, ac, buf)
        if not more:
            break
        j += 1
    alo = (1 << j) - 1
    ahi = min((1 << (j + 1)) - 1, top + 1)
    while ahi - alo > 1:
        mid = (alo + ahi) // 2
        width = ahi - alo
        lg = 0
        while (2 << lg) <= width:
            lg += 1
        node = 12 + min(j, 7) * 6 + min(lg, 5)
        near, far = _side_range(m, up, alo, mid, ahi)
        half = _code_decision(node, near[0], near[1], far[0], far[1], 1 if a >= mid else 0, decoding, mu, s,
                              pred, ctx, b, signs, n_ctx, n_mix, ctr, cnt, weights, scratch, maps, ac, buf)
        if half:
            alo = mid
        else:
            ahi = mid
    return m + 1 + alo if up else m - 1 - alo


@numba.njit(cache=True)
def _side_range(m, up, a0, a1, a2):
    """The value ranges [lo, hi) of the distances [a0, a1) (nearer) and [a1, a2) (farther)
    from m on one side (a distance a is the value m + 1 + a above m, m - 1 - a below)."""
    if up:
        return (m + 1 + a0, m + 1 + a1), (m + 1 + a1, m + 1 + a2)
    return (m - a1, m - a0), (m - a2, m - a1)


@numba.njit(cache=True, nogil=True)
def encode_samples(x, order, diff, mus, bins, scales, first, model,
                   ctr, cnt, weights, scratch, maps, ac, buf):
    """Code every sample of planes first.. in coding order (mus, bins over those planes)."""
    h, w, nc = x.shape
    err = np.zeros((h, w, nc))
    pred = np.zeros(N_PRED)
    ctx = np.zeros(N_CTX, dtype=np.int64)
    i = 0
    for k in range(first, nc):
        c = order[k]
        for y in range(h):
            for xx in range(w):
                t = int(x[y, xx, c])
                code_sample(x, err, order, k, y, xx, diff, mus[i], scales[k - first, bins[i]], bins[i], t, False, model,
                            ctr, cnt, weights, scratch, maps, ac, buf, pred, ctx)
                err[y, xx, c] = float(t) - mus[i]
                i += 1
