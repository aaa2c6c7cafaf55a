"""The model's NELBO on whole images at the coding T, without coding (`vdmcodec eval`).

It uses the coder's own StepModel (stored gamma table, clipped x_hat), so its numbers are
the 'theory' column next to actual file sizes.  Each step draws its own z_i from q(z_i | x):
an unbiased estimate of every term of the discrete-time NELBO.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from .coding.adapt import fit_image_context
from .coding.film import HEADER_BYTES as FILM_HEADER_BYTES
from .coding.film import fit_film, pack_film
from .coding.pixels import ContextWeights
from .coding.steps import LOG2E, StepModel

if TYPE_CHECKING:
    from .codec import Coder

EVAL_MAX_PIXELS = 1 << 19  # larger images are evaluated in row strips of this area (memory)


def evaluate_image(coder: "Coder", planes: np.ndarray, seed: int = 0, progress=None) -> dict:
    """One image's rate as compress would code it, without coding: its own FiLM deltas and
    pixel-context weights fitted as the coder's budgets say, the NELBO under them, and what
    sending them costs (side_bpd); total_bpd = nelbo_bpd + side_bpd."""
    t0 = time.perf_counter()
    sm = coder.step_model
    film = fit_film(sm, planes, coder.film)
    side_bits = 8.0 * (len(pack_film(film)) + FILM_HEADER_BYTES) if film is not None else 0.0
    with sm.adapted(film):
        weights = None
        if coder.adapt_context:
            weights, fit = fit_image_context(sm, planes, budget=coder.fit)
            side_bits += fit["cost_bits"] if weights is not None else 0.0
        res = image_nelbo(sm, planes, seed=seed, progress=progress, weights=weights)
    dims = res["dims"]
    return {"dims": dims, "nelbo_bpd": res["nelbo_bpd"], "terms": res["terms"],
            "image_context": weights is not None, "film": film is not None, "side_bpd": side_bits / dims,
            "total_bits": res["nelbo_bits"] + side_bits, "total_bpd": (res["nelbo_bits"] + side_bits) / dims,
            "T": coder.plan[-1], "steps": sm.T, "ensemble": coder.ensemble, "ensemble_steps": coder.ensemble_steps,
            "z0_ensemble": coder.z0_ensemble, "network_calls": sm.network_calls(),
            "model_id": coder.loaded.model_id, "seconds": time.perf_counter() - t0}


def mean_bpd(records: list[dict]) -> float:
    """The rate of a set of images as one: total bits over total dimensions."""
    return sum(r["total_bits"] for r in records) / sum(r["dims"] for r in records)


def image_nelbo(sm: StepModel, planes: np.ndarray, seed: int = 0, progress=None,
                weights: ContextWeights | None = None) -> dict:
    """NELBO terms (bits, summed over dims) and bpd for an (H, W, C) uint8 image; weights:
    the image's own pixel-context weights (default: the model's)."""
    h, w, c = planes.shape
    rows = max(1, EVAL_MAX_PIXELS // w)
    totals = {"recon": 0.0, "prior": 0.0, "diffusion": 0.0}
    for r0 in range(0, h, rows):
        x = np.ascontiguousarray(planes[r0 : r0 + rows].transpose(2, 0, 1))
        for k, v in _strip_terms(sm, x, seed + r0, progress, weights).items():
            totals[k] += v
    dims = planes.size
    nelbo = sum(totals.values())
    return {
        "dims": dims,
        "nelbo_bits": nelbo,
        "nelbo_bpd": nelbo / dims,
        "terms": {k: v / dims for k, v in totals.items()},
    }


def _strip_terms(sm: StepModel, x: np.ndarray, seed: int, progress, weights: ContextWeights | None) -> dict:
    g = sm.grids
    rng = np.random.default_rng(seed)
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    # reconstruction at z_0 ~ q(z_0 | x) on the coder's grid
    z0 = g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)
    k0 = np.rint(z0 / g.delta[0]).astype(np.int32)
    recon = sm.p_pixels(k0, weights=weights).bits(x)
    a2, s2 = g.alpha[g.T] ** 2, g.sigma[g.T] ** 2
    prior = 0.5 * float((s2 + a2 * xt**2 - math.log(s2) - 1.0).sum()) * LOG2E
    diffusion = 0.0
    for i in range(1, g.T + 1):
        z = g.alpha[i] * xt + g.sigma[i] * rng.standard_normal(xt.shape)
        k = np.rint(z / g.delta[i]).astype(np.int32)
        eps, lam = sm.step_outputs(k, i)
        diffusion += sm.step_kl_bits(xt, k, i, eps, lam)
        if progress:
            progress(x.shape[1] * x.shape[2])
    return {"recon": recon, "prior": prior, "diffusion": diffusion}
