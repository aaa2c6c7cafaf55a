"""The diffusion term of an image's NELBO, estimated on a few patches before any coding.

A compress that would end up storing a classic code (JPEG XL) can skip the bits-back chain
once it knows the chain's file would be larger.  The reconstruction term is already
measured by the pixel-context fit (coding.adapt: the whole image's bits at z_0); what is
left is the diffusion term, the sum over the plan's steps of each step's KL.  It is a sum
over latents of terms that depend mostly on each pixel's neighbourhood, so a grid of
patches, each seen by the network with a margin of its surroundings that is not counted,
estimates it to about a percent for a few per cent of the chain's network time.
(estimate_recon_bits measures the reconstruction term itself where no fit ran.)

The estimate runs the float network (the exact one gives the same expectation, slower)
with the coder's plan and ensembles; it need not be reproducible.

>>> tiles, mask = patch_mosaic(np.zeros((3, 200, 300), np.uint8), grid=(2, 2), patch=32, margin=8)
>>> tiles.shape, int(mask.sum()) == 4 * 32 * 32
((3, 192, 48), True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .adapt import held_out_tiles
from .film import FilmDeltas
from .steps import LOG2E, StepModel

if TYPE_CHECKING:
    from .pixels import ContextWeights

ESTIMATE_GRID = (3, 4)  # rows x columns of patches
ESTIMATE_PATCH = 64  # each counted patch's side
ESTIMATE_MARGIN = 16  # the surroundings the network sees around each patch, not counted
WHOLE_STEPS = 5  # steps 1, 2, 4, 8 and 16 computed on the whole image (whole_step_indices)
WHOLE_MAX_PIXELS = 1 << 20  # larger images: those steps on a dense grid of patches, each with its margin:
# on a 2 MP mosaic of two training photos their sum came 0.2% under the whole image's; on 16
# tiles of 128x256 without margins (before session 19) 18% under: a photograph's rows differ
# too much for a few tiles to sample them
LARGE_GRID = (16, 16)
LARGE_PATCH = 48


@dataclass(frozen=True)
class DiffusionEstimate:
    """The diffusion term's estimate for the whole image, in bits, and what it took."""

    bits: float
    counted_dims: int  # latents the estimate summed (scaled up to the image's)
    seconds: float
    # bits per image row, summing to `bits` (the first steps' share of each row, scaled up),
    # where the whole image was computed; None for tiled large images
    rows: np.ndarray | None = None


def patch_mosaic(x: np.ndarray, grid: tuple[int, int] = ESTIMATE_GRID, patch: int = ESTIMATE_PATCH,
                 margin: int = ESTIMATE_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Patches of x (C, H, W uint8) with their margins, stacked top to bottom into one
    (C, n (patch + 2 margin), patch + 2 margin) array, and the bool mask (H', W') of the
    counted pixels; the whole image and an all-true mask where it is too small for the grid
    to be a sample."""
    c, h, w = x.shape
    side = patch + 2 * margin
    ny, nx = grid
    if h < side or w < side or ny * nx * patch * patch * 2 >= h * w:
        return x, np.ones((h, w), dtype=bool)
    # at even offsets, like the coder's regions: the image's 2-periodic pixel grid stays put
    ys = np.linspace(0, h - side, ny).astype(int) // 2 * 2
    xs = np.linspace(0, w - side, nx).astype(int) // 2 * 2
    tiles = [x[:, y : y + side, x0 : x0 + side] for y in ys for x0 in xs]
    tile_mask = np.zeros((side, side), dtype=bool)
    tile_mask[margin : margin + patch, margin : margin + patch] = True
    return np.ascontiguousarray(np.concatenate(tiles, axis=1)), np.tile(tile_mask, (len(tiles), 1))


def float_step_model(sm: StepModel, z0_ensemble: int | None = None) -> StepModel:
    """The same plan and ensembles on the float network (faster than the exact one);
    z0_ensemble: network calls at z_0 instead of sm's."""
    if sm.exact is None and z0_ensemble in (None, sm.z0_ensemble):
        return sm
    calls = sm.z0_ensemble if z0_ensemble is None else z0_ensemble
    return StepModel(sm.model, sm.gamma_table, sm.device, sm.ensemble, sm.plan, sm.ensemble_steps, calls)


def whole_step_indices(T: int, whole_steps: int) -> list[int]:
    """The plan's steps (1..T) that estimate_diffusion computes on the whole image: 1, 2, 4,
    8, ... (the first `whole_steps` powers of two within T).  The diffusion bits fall
    steeply and smoothly with the step, so a row's bits at the steps between are well
    interpolated from these."""
    return [1 << k for k in range(whole_steps) if (1 << k) <= T]


def estimate_diffusion(sm: StepModel, planes: np.ndarray, film: FilmDeltas | None = None, seed: int = 0,
                       grid: tuple[int, int] = ESTIMATE_GRID, patch: int = ESTIMATE_PATCH,
                       margin: int = ESTIMATE_MARGIN, whole_steps: int = WHOLE_STEPS) -> DiffusionEstimate:
    """The diffusion term of (H, W, C) uint8 planes as the chain of `sm` would code it (its
    plan and ensembles; film: the image's FiLM deltas).

    Steps 1, 2, 4, ... (whole_step_indices; about three quarters of the term) are computed on
    the whole image (on a dense mosaic of LARGE_GRID patches with their margins, scaled up,
    where it is larger than WHOLE_MAX_PIXELS: bounded time and memory); all steps on a patch mosaic, whose
    other steps are scaled by the ratio of whole image to patches on those (a ratio
    estimator: where the patches happen to be busier or calmer than the image, they are so
    at every step).  Where the whole image was computed, `rows` spreads the estimate over
    the rows in proportion to each row's bits at those steps, interpolated linearly between
    them (on six training photographs every band of 64 rows within 1.6% of the diffusion
    bits of all steps, against 3-14% from steps 1 and 2 alone)."""
    t0 = time.perf_counter()
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    fsm = float_step_model(sm)
    T = fsm.grids.T
    rng = np.random.default_rng(seed)
    rows = None
    with fsm.adapted(film):
        tiles, mask = patch_mosaic(x, grid, patch, margin)
        if tiles is x:  # too small for patches: every step on the whole image
            by_row = diffusion_by_row(fsm, x, range(1, T + 1), rng).sum(axis=0)
            return DiffusionEstimate(bits=float(by_row.sum()), counted_dims=x.size,
                                     seconds=time.perf_counter() - t0, rows=by_row)
        per_patch = diffusion_by_step(fsm, tiles, mask, range(1, T + 1), rng)
        per_patch *= planes.size / (mask.sum() * x.shape[0])
        steps = whole_step_indices(T, whole_steps)
        if not steps:
            bits = float(per_patch.sum())
        else:
            if x.shape[1] * x.shape[2] <= WHOLE_MAX_PIXELS:
                at_steps = diffusion_by_row(fsm, x, steps, rng)  # (len(steps), H)
                first = at_steps.sum(axis=1)
            else:  # a dense grid of patches, each seen with its margin
                dense, dense_mask = patch_mosaic(x, LARGE_GRID, LARGE_PATCH, margin)
                first = diffusion_by_step(fsm, dense, dense_mask, steps, rng) * planes.size / (
                    dense_mask.sum() * x.shape[0])
            chosen = np.array(steps) - 1
            rest = np.ones(T, dtype=bool)
            rest[chosen] = False
            ratio = first.sum() / max(per_patch[chosen].sum(), 1e-9)
            bits = float(first.sum() + ratio * per_patch[rest].sum())
            if x.shape[1] * x.shape[2] <= WHOLE_MAX_PIXELS:
                every = np.arange(1, T + 1)
                shape = np.array([np.interp(every, steps, at_steps[:, r]).sum() for r in range(x.shape[1])])
                rows = shape * (bits / max(shape.sum(), 1e-9))
    return DiffusionEstimate(bits=bits, counted_dims=int(mask.sum()) * x.shape[0], seconds=time.perf_counter() - t0,
                             rows=rows)


def step_kl_maps(fsm: StepModel, x: np.ndarray, steps, rng: np.random.Generator):
    """Each step's KL in bits per latent (C, H, W) of x (C, H, W uint8), one noise draw per step."""
    g = fsm.grids
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    for i in steps:
        k = np.rint((g.alpha[i] * xt + g.sigma[i] * rng.standard_normal(xt.shape)) / g.delta[i]).astype(np.int32)
        eps, lam = fsm.step_outputs(k, i)
        yield fsm.step_kl_nats(xt, k, i, eps, lam) * LOG2E


def diffusion_by_step(fsm: StepModel, x: np.ndarray, mask: np.ndarray | None, steps: range,
                      rng: np.random.Generator) -> np.ndarray:
    """Each step's KL in bits over x (C, H, W uint8), counting the pixels in mask (None: all)."""
    return np.array([float((b if mask is None else b[:, mask]).sum()) for b in step_kl_maps(fsm, x, steps, rng)])


def diffusion_by_row(fsm: StepModel, x: np.ndarray, steps, rng: np.random.Generator) -> np.ndarray:
    """Each step's KL in bits for each row of x (C, H, W uint8): (len(steps), H)."""
    return np.array([b.sum(axis=(0, 2)) for b in step_kl_maps(fsm, x, steps, rng)])


RECON_ROWS_STRIP_PIXELS = 1 << 18  # recon_bits_by_row works in strips of about this many pixels (memory)


def recon_bits_by_row(sm: StepModel, planes: np.ndarray, weights: "ContextWeights | None", seed: int = 0,
                      z0_calls: int | None = None) -> np.ndarray:
    """Bits of p(x | z_0) for each row of (H, W, C) planes at one z_0 draw (float network),
    in strips of rows (the pixel decoder's tables of a whole large image would take GBs);
    z0_calls: network calls at z_0 (None: as sm codes the image; 1 is about 8 times faster
    than the default effort's 8 and costs a percent or so of the bits)."""
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    g = sm.grids
    fsm = float_step_model(sm, z0_calls)
    rng = np.random.default_rng(seed)
    step = max(2, RECON_ROWS_STRIP_PIXELS // x.shape[2] // 2 * 2)
    out = []
    for r0 in range(0, x.shape[1], step):
        part = x[:, r0 : r0 + step]
        xt = (2.0 * part.astype(np.float64) + 1.0) / 256.0 - 1.0
        k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
        out.append(fsm.p_pixels(k0, weights=weights).bits_map(part).sum(axis=(0, 2)))
    return np.concatenate(out)


def estimate_recon_bits(sm: StepModel, planes: np.ndarray, weights: "ContextWeights | None", seed: int = 0) -> float:
    """Bits of p(x | z_0) for (H, W, C) planes at one z_0 draw: the whole image, or for a
    large one a grid of tiles (coding.adapt.held_out_tiles) scaled up."""
    whole = np.ascontiguousarray(planes.transpose(2, 0, 1))
    rng = np.random.default_rng(seed)
    g = sm.grids
    bits, size = 0.0, 0
    for x in held_out_tiles(whole):
        xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
        k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
        bits += float(sm.p_pixels(k0, weights=weights).bits(x))
        size += x.size
    return bits * whole.size / size
