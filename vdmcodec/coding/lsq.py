"""Lossless pixels by local least-squares prediction and rANS: vdmcodec's own classic code.

The channels are coded as planes, in `ORDER` (G, R, B), each in raster order. Every sample
is predicted by a linear combination of its regressors, with weights solved afresh for each
sample by least squares over two causal windows of the plane (`RADII`: the rows above, 2r + 1
columns wide, and r samples to the left; a sample in both counts twice): 14 causal
neighbours in its own plane, the earlier planes' 3x3 neighbourhoods around it (they are whole
by then, so below and right count too: colour correlation is learnt per region) and a
constant. R and B are predicted as their difference from G (`DIFF`), from the differences at
their neighbours. The sample is coded with a discretised logistic around the prediction
whose scale comes from a per-image table, indexed by the bin (`ENERGY_EDGES`) of the local
error energy: nearby prediction errors plus `ALPHA` times the window's residual deviation.

The decoder repeats the same arithmetic: the window sums are sums of products of 8-bit
integers (exact in float64 in any order), the solve and the probabilities use only IEEE-754
basic operations in a fixed order (`detmath` for the logistic), so a file decodes to the same
pixels on every machine. Encoder and decoder run one walk (`_walk`), so they cannot drift.
Every constant here is part of format 11 (docs/FORMAT.md, "Least-squares code"): changing
one strands the files written with it (tests/test_golden.py).

The only per-image side data is the scale table: one byte per (channel, error bin).
Since format 15 whole images are written with a second model (MODEL_MIXED, coding.lsqcm):
the same prediction, scale and bin, with the logistic mixed with simple predictors and
adaptive contexts, about 3% smaller; the decoder's walk calls its code_sample in place of
the rANS pop.  Since format 16 with a third (MODEL_POINTERS): that model with its pointer
contexts, another 0.5-4% (Kodak 4%).

>>> import numpy as np
>>> x = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
>>> data = encode(x)
>>> bool((decode(data, 6, 5, 3) == x).all())
True
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from vdmcodec.coding import lsqcm
from vdmcodec.coding.detmath import sigmoid_scalar

# causal neighbours (dy, dx) of the sample's own channel, and of each earlier channel
OWN_OFFSETS = np.array([(0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-2, 1), (-1, -2),
                        (-1, 2), (-2, -1), (-2, -2), (-2, 2), (0, -3), (-3, 0)], dtype=np.int64)
EARLIER_OFFSETS = np.array([(0, 0), (0, -1), (-1, 0), (-1, -1), (-1, 1), (0, 1), (1, 0), (1, -1),
                            (1, 1)], dtype=np.int64)
OUTSIDE = 128.0  # the value of a neighbour outside the image
ORDER = {1: (0,), 3: (1, 0, 2)}  # channels coded in this order: green first for RGB
RADII = (16, 6)  # the two windows (chosen on training photographs: docs/RESULTS.md, session 22)
RIDGE = 0.02  # added to the normal equations' diagonal per window sample
ALPHA = 3.0  # weight of the window's residual deviation in the error energy
DIFF = True  # planes after the first predicted as differences from the first
EARLIER_ERR_W = 0.3  # weight of an earlier plane's |error| at the pixel in the energy
EARLIER_ERR_W2 = 0.15  # ... and east and south of it
# bins of the error energy (sum of nearby |errors|): upper edges, hand-written so that they
# are the same floats everywhere
ENERGY_EDGES = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 19.0,
                         24.0, 30.0, 38.0, 48.0, 60.0, 76.0, 96.0, 120.0, 150.0, 190.0])
BINS = len(ENERGY_EDGES) + 1
MODEL_LOGISTIC = 1  # the value coded from the logistic (format 11)
MODEL_MIXED = lsqcm.MODEL_MIXED  # ... or mixed (lsqcm, format 15)
MODEL_POINTERS = lsqcm.MODEL_POINTERS  # ... or mixed with the pointer contexts too (lsqcm, format 16)
MODELS = (MODEL_LOGISTIC, MODEL_MIXED, MODEL_POINTERS)
PROB_BITS = 24
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 31


def _scale_table() -> np.ndarray:
    """Logistic scales 0.125 * 1.05^i, i < 128, by repeated multiplication (exact rounding
    at each step, so the same floats on every machine)."""
    out, s = [], 0.125
    for _ in range(128):
        out.append(s)
        s *= 1.05
    return np.array(out)


SCALES = _scale_table()


@numba.njit(cache=True)
def _value(x, y, xx, c):
    if y < 0 or xx < 0 or y >= x.shape[0] or xx >= x.shape[1]:
        return OUTSIDE
    return float(x[y, xx, c])


@numba.njit(cache=True)
def _features(x, order, k, y, xx, f, diff):
    """The sample (y, xx) of channel order[k]'s regressors into f; returns their count."""
    c = order[k]
    d = 0
    for i in range(OWN_OFFSETS.shape[0]):
        f[d] = _value(x, y + OWN_OFFSETS[i, 0], xx + OWN_OFFSETS[i, 1], c)
        if diff and k >= 1:
            f[d] -= _value(x, y + OWN_OFFSETS[i, 0], xx + OWN_OFFSETS[i, 1], order[0])
        d += 1
    for j in range(k):
        for i in range(EARLIER_OFFSETS.shape[0]):
            f[d] = _value(x, y + EARLIER_OFFSETS[i, 0], xx + EARLIER_OFFSETS[i, 1], order[j])
            d += 1
    f[d] = 1.0
    return d + 1


@numba.njit(cache=True)
def _target(x, order, k, y, xx, diff):
    """What the least squares predict: the value, or after the first plane its difference
    from the first plane's value at the pixel."""
    t = float(x[y, xx, order[k]])
    if diff and k >= 1:
        t -= float(x[y, xx, order[0]])
    return t


@numba.njit(cache=True)
def _product(out, x, order, k, y, xx, f, diff):
    """out = (f f^T (lower triangle), f t, t t) of sample (y, xx): exact integers, so sums of
    them are exact in any order."""
    d = _features(x, order, k, y, xx, f, diff)
    t = _target(x, order, k, y, xx, diff)
    m = 0
    for i in range(d):
        fi = f[i]
        for j in range(i + 1):
            out[m] = fi * f[j]
            m += 1
    for i in range(d):
        out[m] = f[i] * t
        m += 1
    out[m] = t * t


@numba.njit(cache=True)
def _solve_predict(acc, d, n, f, ridge, L, z, w):
    """Least-squares weights from the window sums acc (Cholesky of A + ridge I), applied to f."""
    m = 0
    for i in range(d):
        for j in range(i + 1):
            s = acc[m]
            if i == j and i < d - 1:
                s += ridge * n + 1e-3
            elif i == j:
                s += 1e-6
            for q in range(j):
                s -= L[i, q] * L[j, q]
            if i == j:
                L[i, i] = np.sqrt(s) if s > 1e-12 else 1e-6
            else:
                L[i, j] = s / L[j, j]
            m += 1
    for i in range(d):
        s = acc[m + i]
        for q in range(i):
            s -= L[i, q] * z[q]
        z[i] = s / L[i, i]
    for i in range(d - 1, -1, -1):
        s = z[i]
        for q in range(i + 1, d):
            s -= L[q, i] * w[q]
        w[i] = s / L[i, i]
    p = 0.0
    fit = 0.0
    for i in range(d):
        p += w[i] * f[i]
        fit += w[i] * acc[m + i]
    sse = acc[m + d] - fit  # the window's residual sum of squares (less the ridge's share)
    return p, max(sse, 0.0) / n


@numba.njit(cache=True)
def _energy_bin(err, order, k, y, xx, extra):
    c = order[k]
    h, w = err.shape[0], err.shape[1]
    e = extra
    if xx >= 1:
        e += abs(err[y, xx - 1, c])
    if xx >= 2:
        e += 0.3 * abs(err[y, xx - 2, c])
    if y >= 1:
        e += abs(err[y - 1, xx, c])
        if xx >= 1:
            e += 0.5 * abs(err[y - 1, xx - 1, c])
        if xx + 1 < w:
            e += 0.5 * abs(err[y - 1, xx + 1, c])
    if y >= 2:
        e += 0.3 * abs(err[y - 2, xx, c])
    for j in range(k):
        cj = order[j]
        e += EARLIER_ERR_W * abs(err[y, xx, cj])
        if xx + 1 < w:
            e += EARLIER_ERR_W2 * abs(err[y, xx + 1, cj])
        if y + 1 < h:
            e += EARLIER_ERR_W2 * abs(err[y + 1, xx, cj])
    b = 0
    while b < ENERGY_EDGES.shape[0] and e >= ENERGY_EDGES[b]:
        b += 1
    return b


@numba.njit(cache=True)
def _cdf(t, mu, s):
    """Cumulative frequency below value t (0..256) of the discretised logistic(mu, s) on
    0..255, out of PROB_SCALE; every value keeps a frequency of at least 1."""
    if t <= 0:
        return 0
    if t >= 256:
        return PROB_SCALE
    p = sigmoid_scalar((t - 0.5 - mu) / s)
    return int(np.floor(p * (PROB_SCALE - 256))) + t


@numba.njit(cache=True)
def _med(x, c, y, xx):
    """LOCO-I's median edge detector from the west, north and north-west neighbours (one of
    them where the others are outside the image; OUTSIDE at the first pixel)."""
    if y == 0:
        return float(x[y, xx - 1, c]) if xx >= 1 else OUTSIDE
    if xx == 0:
        return float(x[y - 1, xx, c])
    return lsqcm.median_edge(float(x[y, xx - 1, c]), float(x[y - 1, xx, c]), float(x[y - 1, xx - 1, c]))


@numba.njit(cache=True)
def _fallback(x, order, k, y, xx, diff):
    """The prediction where the window holds too few samples: the median edge detector, and
    after the first channel, plus the first channel's own miss of it at this pixel."""
    mu = _med(x, order[k], y, xx)
    if diff and k >= 1:
        mu += float(x[y, xx, order[0]]) - _med(x, order[0], y, xx)
    return min(max(mu, 0.0), 255.0)


@numba.njit(cache=True)
def _window_count(y, xx, w, radius):
    """Samples in the causal window of `radius` around (y, xx)."""
    return min(y, radius) * (min(xx + radius, w - 1) - max(xx - radius, 0) + 1) + min(xx, radius)


@numba.njit(cache=True)
def _pop(state, words, pos, mu, s):
    """rANS: the value whose frequency interval holds the state's low bits; (value, state, pos)."""
    cum = np.int64(state & np.uint64(PROB_SCALE - 1))
    lo, hi = 0, 256
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cdf(mid, mu, s) <= cum:
            lo = mid
        else:
            hi = mid
    start = _cdf(lo, mu, s)
    freq = _cdf(lo + 1, mu, s) - start
    state = np.uint64(freq) * (state >> np.uint64(PROB_BITS)) + np.uint64(cum - start)
    if state < np.uint64(RANS_L):
        state = (state << np.uint64(32)) | np.uint64(words[pos])
        pos += 1
    return lo, state, pos


@numba.njit(cache=True, nogil=True)
def _walk(x, order, diff, radii, ridge, alpha, first, last, decoding, scales, words, mu_out, noise_out,
          model, ctr, cnt, weights, scratch, maps, ac, buf):
    """Visit every sample of planes first..last-1 in coding order (channel planes in `order`,
    each in raster order) and predict it; encoding, record its prediction and window noise
    in mu_out and noise_out; decoding, find its error bin and pop its value from the rANS
    words into x.  (The encoder knows every pixel: it walks the planes in parallel and finds
    the bins afterwards, `_bins`, from the same errors.)

    The least-squares sums of each window (radii: an outer and an inner one, added, so that
    the nearest samples count twice) are kept as column sums over the rows above, slid along
    the row, plus the current row's samples to the left.  model: how the decoder reads a
    value, MODEL_LOGISTIC (rANS from `words`) or MODEL_MIXED / MODEL_POINTERS
    (lsqcm.code_sample with the model state ctr..buf).  Returns the words read."""
    h, w, nc = x.shape
    nwin = radii.shape[0]
    err = np.zeros((h, w, nc))
    dmax = OWN_OFFSETS.shape[0] + EARLIER_OFFSETS.shape[0] * (nc - 1) + 1
    size = dmax * (dmax + 1) // 2 + dmax + 1  # f f^T (lower triangle), f t, t t
    cols = np.zeros((nwin, w, size))
    win = np.zeros((nwin, size))
    row = np.zeros((nwin, size))
    span = 0
    for p in range(nwin):
        span = max(span, radii[p])
    span += 2  # the rows whose products the windows still need, and the current one
    prod = np.zeros((span, w, size))  # each sample's products, computed once it is known
    acc = np.zeros(size)
    f = np.zeros(dmax)
    L = np.zeros((dmax, dmax))
    z = np.zeros(dmax)
    wt = np.zeros(dmax)
    state = np.uint64(0)
    pos = 0
    pred = np.zeros(lsqcm.N_PRED)
    ctx = np.zeros(lsqcm.N_CTX, dtype=np.int64)
    if decoding and model == MODEL_LOGISTIC:
        state = (np.uint64(words[0]) << np.uint64(32)) | np.uint64(words[1])
        pos = 2
    i = first * h * w
    for k in range(first, last):
        c = order[k]
        dk = OWN_OFFSETS.shape[0] + EARLIER_OFFSETS.shape[0] * k + 1
        sk = dk * (dk + 1) // 2 + dk + 1  # this plane's share of the sums
        cols[:, :, :] = 0.0
        for y in range(h):
            here = prod[y % span]
            for p in range(nwin):
                if y >= 1:
                    above = prod[(y - 1) % span]
                    for xx in range(w):
                        for q in range(sk):
                            cols[p, xx, q] += above[xx, q]
                if y - radii[p] - 1 >= 0:
                    gone = prod[(y - radii[p] - 1) % span]
                    for xx in range(w):
                        for q in range(sk):
                            cols[p, xx, q] -= gone[xx, q]
                win[p, :] = 0.0
                row[p, :] = 0.0
                for xx in range(min(radii[p], w - 1) + 1):
                    win[p, :sk] += cols[p, xx, :sk]
            for xx in range(w):
                n = 0
                for p in range(nwin):
                    r = radii[p]
                    if xx >= 1:
                        if xx + r < w:
                            win[p, :sk] += cols[p, xx + r, :sk]
                        if xx - r - 1 >= 0:
                            win[p, :sk] -= cols[p, xx - r - 1, :sk]
                        row[p, :sk] += here[xx - 1, :sk]
                        if xx - r - 1 >= 0:
                            row[p, :sk] -= here[xx - r - 1, :sk]
                    n += _window_count(y, xx, w, r)
                d = _features(x, order, k, y, xx, f, diff)
                noise = 0.0
                if n < 2 * d * nwin:
                    # too few samples to fit (the first rows and columns)
                    mu = _fallback(x, order, k, y, xx, diff)
                else:
                    for q in range(sk):
                        acc[q] = 0.0
                    for p in range(nwin):
                        for q in range(sk):
                            acc[q] += win[p, q] + row[p, q]
                    mu, var = _solve_predict(acc, d, n, f, ridge, L, z, wt)
                    if diff and k >= 1:
                        mu += float(x[y, xx, order[0]])
                    mu = min(max(mu, 0.0), 255.0)
                    noise = np.sqrt(var)
                if decoding:
                    b = _energy_bin(err, order, k, y, xx, alpha * noise)
                    if model != MODEL_LOGISTIC:
                        v = lsqcm.code_sample(x, err, order, k, y, xx, diff, mu, scales[k, b], b, 0, True, model,
                                              ctr, cnt, weights, scratch, maps, ac, buf, pred, ctx)
                    else:
                        v, state, pos = _pop(state, words, pos, mu, scales[k, b])
                    x[y, xx, c] = v
                else:
                    mu_out[i] = mu
                    noise_out[i] = noise
                err[y, xx, c] = float(x[y, xx, c]) - mu
                _product(here[xx], x, order, k, y, xx, f, diff)
                i += 1
    return pos


@numba.njit(cache=True, nogil=True)
def _bins(x, order, alpha, mus, noise, bins, first):
    """The error bin of every sample of planes first.. (mus, noise, bins indexed over all
    planes), from their predictions (the encoder's second pass: the decoder finds the same
    bins as it goes, from the same errors; planes before `first` are given, their errors 0)."""
    h, w, nc = x.shape
    err = np.zeros((h, w, nc))
    i = first * h * w
    for k in range(first, nc):
        for y in range(h):
            for xx in range(w):
                err[y, xx, order[k]] = float(x[y, xx, order[k]]) - mus[i]
                i += 1
    i = first * h * w
    for k in range(first, nc):
        for y in range(h):
            for xx in range(w):
                bins[i] = _energy_bin(err, order, k, y, xx, alpha * noise[i])
                i += 1


@numba.njit(cache=True, nogil=True)
def _rans_encode(values, mus, bins, scales_flat, chan_of, out):
    """Push every sample in reverse coding order; returns the number of 32-bit words (the
    first two are the final state), written at the end of `out`."""
    state = np.uint64(RANS_L)
    pos = out.shape[0]
    for i in range(values.shape[0] - 1, -1, -1):
        s = scales_flat[chan_of[i], bins[i]]
        t = values[i]
        start = _cdf(t, mus[i], s)
        freq = _cdf(t + 1, mus[i], s) - start
        limit = ((np.uint64(RANS_L) >> np.uint64(PROB_BITS)) << np.uint64(32)) * np.uint64(freq)
        if state >= limit:
            pos -= 1
            out[pos] = np.uint32(state & np.uint64(0xFFFFFFFF))
            state = state >> np.uint64(32)
        state = ((state // np.uint64(freq)) << np.uint64(PROB_BITS)) + (state % np.uint64(freq)) + np.uint64(start)
    pos -= 1
    out[pos] = np.uint32(state & np.uint64(0xFFFFFFFF))
    pos -= 1
    out[pos] = np.uint32(state >> np.uint64(32))
    return pos


@numba.njit(cache=True, nogil=True)
def _bits_by_candidates(values, mus, bins, chan_of, cand):
    """Ideal bits of every (channel, bin) under its own candidate scales cand[k, b, :]."""
    out = np.zeros(cand.shape)
    for i in range(values.shape[0]):
        k, b, t, mu = chan_of[i], bins[i], values[i], mus[i]
        for j in range(cand.shape[2]):
            s = cand[k, b, j]
            up = 1.0 if t >= 255 else 1.0 / (1.0 + np.exp(-(t + 0.5 - mu) / s))
            lo = 0.0 if t <= 0 else 1.0 / (1.0 + np.exp(-(t - 0.5 - mu) / s))
            out[k, b, j] -= np.log2(max(up - lo, 1e-15))
    return out


def _bits_by_scale(values, mus, bins, chan_of, nc: int, table: np.ndarray) -> np.ndarray:
    """Ideal bits of every (channel, bin) under every scale of `table`."""
    cand = np.ascontiguousarray(np.broadcast_to(table, (nc, BINS, table.size)))
    return _bits_by_candidates(values, mus, bins, chan_of, cand)


def _order(channels: int, order: tuple | None = None) -> np.ndarray:
    if order is None and channels not in ORDER:
        raise ValueError(f"lsq codes 1 or 3 channels, not {channels}")
    if order is not None and sorted(order) != list(range(channels)):
        raise ValueError(f"lsq plane order {order} is not an order of {channels} channels")
    return np.array(ORDER[channels] if order is None else order, dtype=np.int64)


def analyse(x: np.ndarray, radii: tuple = RADII, ridge: float = RIDGE, alpha: float = ALPHA,
            threads: int = 2, order: tuple | None = None, diff: bool = DIFF, first: int = 0):
    """(values, predictions, bins, channel index) of every sample in coding order; the
    planes are walked on up to `threads` threads.  order: the planes' coding order (default
    ORDER); diff: planes after the first predicted as differences from it; first: the
    planes before it in the order are given (the decoder has them), only the rest coded."""
    x = np.array(x.reshape(x.shape[0], x.shape[1], -1), dtype=np.uint8)  # writable: _walk's type
    order = _order(x.shape[2], order)
    h, w, nc = x.shape
    n = x.size
    mus, noise, bins = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    r = np.array(radii, dtype=np.int64)
    none_f, none_w = np.zeros((1, 1)), np.zeros(1, dtype=np.uint32)
    unused = lsqcm.new_state()

    def plane(k: int) -> None:
        _walk(x, order, diff, r, ridge, alpha, k, k + 1, False, none_f, none_w, mus, noise, MODEL_LOGISTIC, *unused)

    # the last plane reads the most regressors: start it first
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(plane, reversed(range(first, nc))))
    _bins(x, order, alpha, mus, noise, bins, first)
    values = x[:, :, order[first:]].transpose(2, 0, 1).reshape(-1).astype(np.int64)
    chan_of = np.repeat(np.arange(nc - first), h * w)
    rest = slice(first * h * w, None)
    return values, mus[rest], bins[rest], chan_of


def choose_scales(values, mus, bins, chan_of, channels: int) -> np.ndarray:
    """Index into SCALES per (channel, bin) that codes the samples in fewest bits: every
    eighth scale first, then the neighbours of the best."""
    coarse = np.arange(0, SCALES.size, 8)
    bits = _bits_by_scale(values, mus, bins, chan_of, channels, SCALES[coarse])
    best = coarse[bits.argmin(axis=2)]
    fine = np.arange(-7, 8)
    cand = np.clip(best[:, :, None] + fine, 0, SCALES.size - 1)  # (C, BINS, 15)
    fbits = _bits_by_candidates(values, mus, bins, chan_of, SCALES[cand])
    return np.take_along_axis(cand, fbits.argmin(axis=2)[:, :, None], axis=2)[:, :, 0].astype(np.uint8)


def _check_model(model: int) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown lsq model {model}")


def encode(x: np.ndarray, radii: tuple = RADII, ridge: float = RIDGE, alpha: float = ALPHA,
           threads: int = 2, order: tuple | None = None, diff: bool = DIFF, first: int = 0,
           model: int = MODEL_LOGISTIC) -> bytes:
    """Lossless code of uint8 pixels (H, W) or (H, W, C), C in 1 or 3: the scale table
    (coded channels x BINS bytes), then the rANS words (MODEL_LOGISTIC) or the mixed models'
    arithmetic code (MODEL_MIXED, MODEL_POINTERS).  order, diff, first: as `analyse` (the
    decoder must be given the same, and the planes before first)."""
    _check_model(model)
    planes = np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1), dtype=np.uint8)
    values, mus, bins, chan_of = analyse(planes, radii, ridge, alpha, threads, order, diff, first)
    idx = choose_scales(values, mus, bins, chan_of, planes.shape[2] - first)
    if model != MODEL_LOGISTIC:
        # 3 bytes a sample is far above any image's cost; a stream that needs more (at most 17
        # decisions of 12 bits each) is coded again into a buffer that holds the worst case
        for per_sample in (3, 26):
            state = lsqcm.new_state(per_sample * values.size + 1024)
            lsqcm.encode_samples(planes, _order(planes.shape[2], order), diff, mus, bins, SCALES[idx], first, model,
                                 *state)
            if state[-2][3] <= state[-1].size:
                break
        return idx.tobytes() + lsqcm.flush(state[-2], state[-1])
    out = np.zeros(values.size + 2, dtype=np.uint32)
    start = _rans_encode(values, mus, bins, SCALES[idx], chan_of, out)
    return idx.tobytes() + out[start:].astype("<u4").tobytes()


def decode(data: bytes, height: int, width: int, channels: int, radii: tuple = RADII,
           ridge: float = RIDGE, alpha: float = ALPHA, order: tuple | None = None,
           diff: bool = DIFF, given: np.ndarray | None = None, first: int = 0,
           model: int = MODEL_LOGISTIC) -> np.ndarray:
    """Inverse of `encode`: uint8 pixels (H, W, C); given: (H, W, C) holding the planes
    before `first` in the order (the rest is overwritten)."""
    order = _order(channels, order)
    head = (channels - first) * BINS
    _check_model(model)
    mixed = model != MODEL_LOGISTIC
    if len(data) < head + (4 if mixed else 8) or (not mixed and (len(data) - head) % 4):
        raise ValueError("lsq data is truncated")
    idx = np.frombuffer(data[:head], dtype=np.uint8).reshape(channels - first, BINS)
    if int(idx.max()) >= SCALES.size:
        raise ValueError("lsq scale table is corrupt")
    state = lsqcm.new_state()
    if mixed:
        words = np.zeros(1, dtype=np.uint32)
        # the coder reads zeros past the end, so a damaged stream cannot read out of bounds
        state = state[:-1] + (np.frombuffer(data[head:], dtype=np.uint8).copy(),)
        lsqcm.start_decoder(state[-2], data[head:])
    else:
        words = np.frombuffer(data[head:], dtype="<u4").astype(np.uint32)
        # the decoder reads at most one word per sample beyond the state; pad so a corrupt
        # stream cannot read past the end
        words = np.concatenate([words, np.zeros(height * width * channels + 2, dtype=np.uint32)])
    x = np.zeros((height, width, channels), dtype=np.uint8) if given is None else np.array(given, dtype=np.uint8)
    scales = np.concatenate([np.ones((first, BINS)), SCALES[idx]])  # the walk reads row k of plane k
    _walk(x, order, diff, np.array(radii, dtype=np.int64), ridge, alpha, first, channels, True, scales, words,
          np.zeros(1), np.zeros(1), model, *state)
    return x
