"""The Bit-Swap-ordered bits-back chain of DESIGN.md section 2, for regions and whole images.

`steps.StepModel` is the one place where distribution parameters come from (p(x | z_0) in
`pixels`); encoder and decoder both call it with the same latents and shapes.  Each region's chain finishes before the next
region starts; region sizes grow with the bits already on the stack, and an image's first
rows are seeded with a classic lossless code of themselves when the stack is too short.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import VerificationError
from .ans import AnsStack, Codec
from .classic import WEBP_MAX_PIXELS, decode_rows, encode_rows, webp_rows
from .pixels import ContextWeights, PixelCodec
from .steps import LOG2E, StepModel

if TYPE_CHECKING:
    from .bands import ClassicStrip
# bounds a region's memory whatever the image size, and its speed: the exact network takes
# 1270-1300 ns per pixel and call on regions of 3840x136 (2^19 pixels, this bound until
# session 20) against 710-850 on 3840x48 to 3840x96, whose activations stay nearer the cache
# (2 cores, AMD EPYC; docs/RESULTS.md, session 20)
MAX_REGION_PIXELS = 1 << 18
STACK_MARGIN_BITS = 256
LOW_WATER_BITS = 64  # a region whose stack fell this low is coded again at the conservative size
DEFICIT_SAFETY = 1.15  # next region's deficit per dim, relative to the last region's
CONTEXT_ROWS = 4  # rows below a region that the decoder already has, shown to the network
# a seed whose rows cost less than this share of the bits a region of a quarter of them
# needs goes to its most rows at once (_push_classic_seed)
SEED_JUMP_SHARE = 0.75


@dataclass
class RegionStats:
    rows: tuple[int, int]
    kind: str  # "bitsback" or "classic"
    dims: int
    exact_bits: int = 0  # how much the stack grew
    implied_bits: float = 0.0  # sum of -log2 P + log2 Q of the latents actually drawn
    nelbo_bits: float = 0.0  # the model's expected NELBO for this region
    terms: dict = field(default_factory=dict)
    classic_bytes: int = 0
    classic_codec: str = ""
    low_bits: int = 0  # the fewest bits the stack held just after a pop, while coding this region


def gaussian_bits(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """-log2 of the Gaussian mass of the grid cells of `symbols` (ideal, for accounting).

    Every std here is at least 4 grid cells (grids.py), where the midpoint rule with its
    second-order correction, mass = pdf(d) * (1 + (d^2/s^2 - 1) / (24 s^2)), is accurate
    to ~1e-5 bits per symbol and several times cheaper than differences of normal CDFs.
    """
    d = symbols.astype(np.float64).ravel() - mean
    inv_var = 1.0 / (std * std)
    u = d * d * inv_var
    log_mass = -0.5 * u - np.log(std) - 0.5 * math.log(2.0 * math.pi) + np.log1p((u - 1.0) * inv_var / 24.0)
    if std.min() < 2.0:  # not reached by construction; keep the exact form for safety
        return _gaussian_bits_exact(symbols, mean, std)
    return float(-log_mass.sum()) * LOG2E


def _gaussian_bits_exact(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    return float(gaussian_symbol_bits(symbols, mean, std).sum())


def gaussian_symbol_bits(symbols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """-log2 of each symbol's Gaussian cell mass, from differences of log normal CDFs."""
    k = torch.from_numpy(symbols.astype(np.float64).ravel())
    m = torch.from_numpy(mean)
    s = torch.from_numpy(std)
    hi = (k + 0.5 - m) / s
    lo = (k - 0.5 - m) / s
    flip = (hi + lo) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    lb = torch.special.log_ndtr(b)
    la = torch.special.log_ndtr(a)
    logmass = lb + torch.log1p(-torch.exp(torch.clamp(la - lb, max=-1e-300)))
    return -logmass.numpy() * LOG2E


# ---------------------------------------------------------------- one region
class RegionChain:
    """One region's bits-back chain, described once; push_region and pop_region walk it.

    Link 0 codes the pixels x given z_0, link i >= 1 codes z_{i-1} given z_i, and the prior
    codes z_T.  Each link is craystack's BBANS(likelihood, posterior) without its prior: the
    encoder pops the upper variable from posterior(i, lower) and pushes the lower one with
    likelihood(i, upper); the decoder pops the lower one with likelihood(i, upper) and
    pushes the upper one back with posterior(i, lower).  Both directions call the same two
    methods with the same arguments, so they cannot drift apart.  Variables are int32
    arrays (C, H, W): pixel levels for x, grid indices for the latents.

    context: uint8 pixels of the rows below the region, known to the decoder
    (StepModel.step_outputs); weights: the image's own pixel-context weights."""

    def __init__(self, sm: StepModel, shape: tuple[int, int, int], context: np.ndarray | None = None,
                 weights: ContextWeights | None = None):
        self.sm, self.shape, self.context, self.weights = sm, tuple(shape), context, weights
        self.links = sm.T + 1

    def posterior(self, i: int, lower: np.ndarray) -> tuple[Codec, np.ndarray, np.ndarray]:
        """Q of link i's upper variable given its lower one, with its means and stds."""
        if i == 0:
            if lower.min() < 0 or lower.max() > 255:
                raise ValueError("decoded pixel out of range")
            return self.sm.q_z0(unit_pixels(lower))
        return self.sm.q_forward(lower, i)

    def likelihood(self, i: int, upper: np.ndarray) -> tuple["Codec | PixelCodec", dict]:
        """P of link i's lower variable given its upper one; for the encoder's accounting
        also the network's outputs (eps, lam) and the Gaussian's means and stds."""
        if i == 0:
            return self.sm.p_pixels(upper, self.context, self.weights), {}
        eps, lam = self.sm.step_outputs(upper, i, self.context)
        codec, mean, std = self.sm.p_reverse(upper, i, eps, lam)
        return codec, {"eps": eps, "lam": lam, "mean": mean, "std": std}

    def prior(self) -> tuple[Codec, np.ndarray, np.ndarray]:
        return self.sm.p_prior(int(np.prod(self.shape)))


def unit_pixels(x: np.ndarray) -> np.ndarray:
    """Pixel levels -> x_tilde = (2x + 1)/256 - 1, float64."""
    return (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0


def push_region(stack: AnsStack, chain: RegionChain, x: np.ndarray, on_pop=None, on_push=None,
                progress=None) -> None:
    """Code the pixels x (C, H, W) onto the stack through the chain.  on_pop(i, upper, mean,
    std) after each posterior pop, on_push(i, lower, upper, info, cost) after each likelihood
    push (cost: what the push returned): the encoder's accounting."""
    lower = np.ascontiguousarray(x, dtype=np.int32)
    for i in range(chain.links):
        q, mean, std = chain.posterior(i, lower)
        upper = q.pop(stack).reshape(chain.shape)
        if on_pop:
            on_pop(i, upper, mean, std)
        p, info = chain.likelihood(i, upper)
        cost = p.push(stack, lower.ravel())
        if on_push:
            on_push(i, lower, upper, info, cost)
        if progress and i:
            progress(chain.shape[1] * chain.shape[2])
        lower = upper
    prior, mean, std = chain.prior()
    prior.push(stack, lower.ravel())
    if on_push:
        on_push(chain.links, lower, None, {"mean": mean, "std": std}, None)


def pop_region(stack: AnsStack, chain: RegionChain, progress=None) -> np.ndarray:
    """The exact mirror of push_region: pops the pixels (C, H, W uint8) it pushed."""
    prior, _, _ = chain.prior()
    upper = prior.pop(stack).reshape(chain.shape)
    for i in reversed(range(chain.links)):
        p, _ = chain.likelihood(i, upper)
        lower = np.asarray(p.pop(stack)).reshape(chain.shape).astype(np.int32)
        q, _, _ = chain.posterior(i, lower)
        q.push(stack, upper.ravel())
        if progress and i:
            progress(chain.shape[1] * chain.shape[2])
        upper = lower
    return upper.astype(np.uint8)


def encode_region(stack: AnsStack, sm: StepModel, x: np.ndarray, progress=None,
                  context: np.ndarray | None = None, weights: ContextWeights | None = None,
                  account: bool = True) -> RegionStats:
    """Code pixels x (C, H, W uint8) onto the stack; returns the region's accounting.
    context: pixels of the rows below (see StepModel.step_outputs).  account=False leaves
    out what only reports need (the implied bits and the NELBO's diffusion term: about 1.5%
    of a large photo's compress); the stack's low water, which sizes the next region, stays."""
    start = stack.num_bits()
    xt = unit_pixels(x)
    acc = {"implied": 0.0, "recon": 0.0, "diffusion": 0.0, "low": None}

    def on_pop(i, upper, mean, std):
        bits = stack.num_bits()
        acc["low"] = bits if acc["low"] is None else min(acc["low"], bits)
        if account:
            acc["implied"] -= gaussian_bits(upper, mean, std)

    def on_push(i, lower, upper, info, cost):
        if not account:
            return
        if i == 0:
            acc["recon"] = cost
            acc["implied"] += cost
            return
        if upper is not None:
            acc["diffusion"] += sm.step_kl_bits(xt, upper, i, info["eps"], info["lam"])
        acc["implied"] += gaussian_bits(lower, info["mean"], info["std"])

    push_region(stack, RegionChain(sm, x.shape, context, weights), x, on_pop, on_push, progress)
    g = sm.grids
    a2, s2 = g.alpha[g.T] ** 2, g.sigma[g.T] ** 2
    prior = 0.5 * float((s2 + a2 * xt**2 - math.log(s2) - 1.0).sum()) * LOG2E
    recon, diffusion = acc["recon"], acc["diffusion"]
    return RegionStats(
        rows=(0, 0), kind="bitsback", dims=x.size, exact_bits=stack.num_bits() - start,
        implied_bits=acc["implied"], nelbo_bits=recon + prior + diffusion,
        terms={"recon": recon, "prior": prior, "diffusion": diffusion}, low_bits=acc["low"],
    )


def decode_region(stack: AnsStack, sm: StepModel, shape: tuple[int, int, int], progress=None,
                  context: np.ndarray | None = None, weights: ContextWeights | None = None) -> np.ndarray:
    """Pop the pixels (C, H, W uint8) that encode_region pushed with the same arguments."""
    return pop_region(stack, RegionChain(sm, shape, context, weights), progress)


class CheckedRegions:
    """Regions decoded again right after they were encoded: compress's check, one region at a
    time, while the network outputs the encoder just made are still in memory (NetworkMemo).

    Each check pops the region from a copy of the stack as it was after the push and insists
    on the region's pixels and on the stack as it was before the push.  Decoding is a
    function of the stack and the coder's setup, so a decoder that meets this stack with this
    setup decodes the region the same way: the verifying decode of the whole file (decode_image
    with these records) takes the recorded outcome instead of decoding again.  From the file's
    last region down, that makes every region's check part of the check of the whole file,
    while the file's header, side data, classic rows and layout are still decoded from the
    file.  A region found nowhere here (another stack, setup or context) is decoded.
    """

    def __init__(self):
        self.regions = 0  # regions checked
        self.taken = 0  # regions the verifying decode took from here
        # key (stack after the push, setup, context, shape) -> the stack before it (as the
        # length of the words it shares with the stack after, and its words beyond those:
        # a capped region of a large photo pops a small part of a stack of many MB) and pixels
        self._outcomes: dict[bytes, tuple[int, np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _key(words: np.ndarray, sm: StepModel, shape: tuple[int, int, int], context: np.ndarray | None,
             weights: ContextWeights | None) -> bytes:
        h = hashlib.blake2b(words.view(np.uint8), digest_size=32)
        h.update(repr((id(sm), tuple(sm.plan), sm.ensemble, sm.ensemble_steps, sm.z0_ensemble, sm.arith.name,
                       bytes(sm.net_tag), tuple(shape))).encode())
        h.update(b"-" if context is None else np.ascontiguousarray(context, dtype=np.uint8).tobytes())
        for f in fields(ContextWeights) if weights is not None else ():
            for a in _arrays(getattr(weights, f.name)):
                h.update(repr((f.name, a.shape, a.dtype.str)).encode())
                h.update(np.ascontiguousarray(a).view(np.uint8))
        return h.digest()

    def check(self, stack: AnsStack, words_before: np.ndarray, sm: StepModel, x: np.ndarray,
              context: np.ndarray | None, weights: ContextWeights | None) -> None:
        """Decode the region x (C, H, W uint8) just pushed onto stack (left as it is) and
        record the outcome; VerificationError where it does not come back."""
        probe = stack.clone()
        back = decode_region(probe, sm, x.shape, context=context, weights=weights)
        if not np.array_equal(back, x) or not np.array_equal(probe.words(), words_before):
            raise VerificationError("verification failed: a region does not decode to its pixels")
        after = stack.words()
        shared = _shared_prefix(after, words_before)
        self._outcomes[self._key(after, sm, x.shape, context, weights)] = (shared, words_before[shared:].copy(),
                                                                             x.copy())
        self.regions += 1

    def take(self, stack: AnsStack, sm: StepModel, shape: tuple[int, int, int], context: np.ndarray | None,
             weights: ContextWeights | None) -> np.ndarray | None:
        """The pixels of a checked region, with the stack set to what popping them leaves;
        None (the stack untouched) where this stack and setup were never checked."""
        words = stack.words()
        found = self._outcomes.get(self._key(words, sm, shape, context, weights))
        if found is None:
            return None
        shared, tail, x = found
        before = np.concatenate([words[:shared], tail])
        stack.restore(AnsStack(before) if len(before) else AnsStack())
        self.taken += 1
        return x.copy()


def _shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading words a and b share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _arrays(value) -> list[np.ndarray]:
    """Every array in a ContextWeights field (an array, None, or nested tuples of arrays)."""
    if value is None:
        return []
    if isinstance(value, tuple):
        return [a for v in value for a in _arrays(v)]
    return [np.asarray(value)]


# ---------------------------------------------------------------- whole images
def rows_affordable(stack_bits: int, width: int, channels: int, bits_per_dim: float) -> int:
    """How many full rows the bits on the stack can pay for without running dry."""
    per_row = bits_per_dim * width * channels
    return int(max(0, stack_bits - STACK_MARGIN_BITS) // per_row)


def encode_image(stack: AnsStack, sm: StepModel, planes: np.ndarray, progress=None,
                 context_rows: int = CONTEXT_ROWS, weights: ContextWeights | None = None,
                 strips: "list[ClassicStrip]" = (), checked: CheckedRegions | None = None,
                 account: bool = True) -> list[RegionStats]:
    """Code an (H, W, C) uint8 image onto the stack as a sequence of row regions.

    Returns the region list (the layout goes into the file header, in coding order).
    strips: bands of rows coded classically (coding.bands, each starting at an even row),
    pushed as they come like the seed; no region crosses one.

    A region is as large as the bits on the stack can pay for.  The first takes the
    conservative bound of grids.pop_bits_per_dim (which ignores what pushing x gives back);
    each later one the deficit per dimension that the region before it really reached, with
    DEFICIT_SAFETY to spare.  Should a region still come within LOW_WATER_BITS of an empty
    stack, it is coded again from the stack as it was, at the conservative size: the
    decoder only reads the layout, so the sizes are the encoder's choice.  checked: each
    region is decoded again as soon as it is coded (CheckedRegions.check); account: as
    encode_region's.
    """
    h, w, c = planes.shape
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    safe = sm.grids.pop_bits_per_dim()
    need = safe
    max_rows = max(1, MAX_REGION_PIXELS // w)
    regions: list[RegionStats] = []
    strips = sorted(strips, key=lambda s: s.rows[0])
    row, after_strip = 0, False
    while row < h:
        if strips and strips[0].rows[0] == row:
            strip = strips.pop(0)
            stack.push_bytes(strip.data)
            regions.append(RegionStats(rows=strip.rows, kind="classic", dims=x[:, row : strip.rows[1]].size,
                                       exact_bits=8 * len(strip.data), implied_bits=8 * len(strip.data),
                                       classic_bytes=len(strip.data), classic_codec=strip.codec))
            row, after_strip = strip.rows[1], True
            continue
        end = strips[0].rows[0] if strips else h  # the next strip's first row (even)
        # a seed starts the image, and follows a strip too small to pay for the next region
        seed = (row == 0 or after_strip) and rows_affordable(stack.num_bits(), w, c, safe) < 1
        after_strip = False
        if seed:
            row = _push_classic_seed(stack, x, safe, regions, row, end)
            continue
        before = stack.clone() if need < safe else None
        words_before = stack.words() if checked is not None else None
        for attempt_need in (need, safe):
            rows = even_rows(row, min(end - row, max_rows, rows_affordable(stack.num_bits(), w, c, attempt_need)), h)
            start = stack.num_bits()
            region, context = x[:, row : row + rows], x[:, row + rows : row + rows + context_rows]
            st = encode_region(stack, sm, region, progress=progress, context=context, weights=weights, account=account)
            if st.low_bits >= LOW_WATER_BITS or before is None:
                break
            stack.restore(before)  # too close to empty: code the region again, conservatively
            before = None
        if checked is not None:
            checked.check(stack, words_before, sm, region, context, weights)
        st.rows = (row, row + rows)
        regions.append(st)
        row += rows
        need = min(safe, DEFICIT_SAFETY * (start - st.low_bits) / st.dims)
    return regions


def even_rows(row: int, rows: int, h: int) -> int:
    """rows, made even (at least 2) unless the region ends the image, so that every region
    starts at an even row.  Why: the pixel decoder's passes and the network's 2x2 grids are
    laid out from a region's first row, and an image's own context fit learns the image's
    pixel grid (camera and scanner images carry 2-periodic structure from demosaicing and
    chroma subsampling).  A region that starts at an odd row sees that grid shifted: on
    kodim02 a last-layer fit coded 0.27 bpd worse in such regions than in even ones."""
    if row + rows >= h:
        return h - row
    return max(2, rows - rows % 2)  # h - row > rows here, so 2 rows always fit


def _push_classic_seed(stack: AnsStack, x: np.ndarray, need: float, regions: list[RegionStats],
                       start: int = 0, end: int | None = None) -> int:
    """Push a classic code of the rows from `start` (the image's first, or the first after a
    classic strip too small to pay for a region): enough that the next region has a quarter
    of their rows (a classic code costs less than a region needs per dim, so it cannot pay
    for as many rows as it holds), and not past `end` (where a strip starts).  Returns the
    row after the seed.

    The row counts tried grow by half; WebP (method 6, the slowest candidate) joins only the
    last one, and where a photograph's rows cost clearly less than a quarter of what a
    region needs, no count short of the most can be enough: the search goes there at once
    (a 12 MP photo's seed took 14 codes and 14 s, now 5)."""
    c, h, w = x.shape
    end = h if end is None else end
    max_rows = min(end - start, even_rows(0, max(4, -(-h // 8)), h))  # a very compressible image must not end up all classic

    def enough(data: bytes, rows: int) -> bool:
        return stack.num_bits() + 8 * len(data) >= STACK_MARGIN_BITS + need * w * c * max(2, min(rows // 4, h - start - rows))

    rows = min(2, end - start)
    while True:
        codec, data = encode_rows(x[:, start : start + rows], webp_max_pixels=0)
        if rows >= max_rows or enough(data, rows):
            break
        if rows >= 8 and 8 * len(data) / rows < SEED_JUMP_SHARE * need * w * c / 4:
            rows = max_rows
            continue
        rows = min(max_rows, even_rows(0, rows + max(2, rows // 2), h))  # 2, 4, 6, 8, 12, 18, ...
    webp = webp_rows(x[:, start : start + rows]) if rows * w <= WEBP_MAX_PIXELS else None
    if webp is not None and len(webp) < len(data) and (rows >= max_rows or enough(webp, rows)):
        codec, data = "webp", webp
    stack.push_bytes(data)
    regions.append(RegionStats(rows=(start, start + rows), kind="classic", dims=x[:, start : start + rows].size,
                               exact_bits=8 * len(data), implied_bits=8 * len(data), classic_bytes=len(data),
                               classic_codec=codec))
    return start + rows


def decode_image(stack: AnsStack, sm: StepModel, height: int, width: int, channels: int, layout: list[dict],
                 progress=None, context_rows: int = CONTEXT_ROWS, weights: ContextWeights | None = None,
                 checked: CheckedRegions | None = None) -> np.ndarray:
    """Pop an image coded by encode_image, given its region layout from the header (checked:
    regions the encoder decoded already, taken from there where stack and setup match)."""
    x = np.zeros((channels, height, width), dtype=np.uint8)
    for reg in reversed(layout):
        r0, r1 = reg["rows"]
        if reg["kind"] == "classic":
            data = stack.pop_bytes(int(reg["bytes"]))
            x[:, r0:r1] = decode_rows(data, channels, r1 - r0, width)
        else:
            # regions are decoded bottom-up, so the rows below this one are already known
            shape, context = (channels, r1 - r0, width), x[:, r1 : r1 + context_rows]
            known = checked.take(stack, sm, shape, context, weights) if checked is not None else None
            if known is None:
                known = decode_region(stack, sm, shape, progress=progress, context=context, weights=weights)
            elif progress:
                progress(sm.T * (r1 - r0) * width)
            x[:, r0:r1] = known
    return np.ascontiguousarray(x.transpose(1, 2, 0))
