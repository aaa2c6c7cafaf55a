"""Discretisation of the diffusion chain: schedule coefficients, latent grids and windows.

Everything here is float64 numpy computed from the checkpoint's stored gamma table, then
snapped to a fixed binary grid, so encoder and decoder derive identical coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arith import FLOAT, Arith

HALF_LOG2_2PIE = 0.5 * math.log2(2.0 * math.pi * math.e)  # entropy of a unit Gaussian, bits
Q_WINDOW_SIGMAS = 7.0  # forward draws are truncated here: mass beyond is ~1e-12
P_WINDOW_SIGMAS = 9.0  # reverse windows cover the posterior residual with room to spare
MAX_HALF_WINDOW = (1 << 15) - 1
COEF_SNAP = 2.0**-40
PARAM_SNAP = 2.0**-16  # network outputs are snapped to this before becoming distributions


def snap(x, step: float = COEF_SNAP):
    return np.rint(np.asarray(x, dtype=np.float64) / step) * step


def pow2_floor(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x))


def pow2_floor_exact(x: float) -> float:
    """pow2_floor from the exponent field alone (no log2)."""
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


@dataclass(frozen=True)
class ChainGrids:
    """Coefficients for steps i = 0..T (index i; entries for i = 0 of transition terms unused)."""

    T: int
    gamma: np.ndarray  # (T+1,)
    alpha: np.ndarray
    sigma: np.ndarray
    alpha_ts: np.ndarray  # alpha_{i|i-1}
    sigma_ts: np.ndarray  # sigma_{i|i-1}
    post_a: np.ndarray  # mu = post_a * z_i + post_b * x
    post_b: np.ndarray
    post_s: np.ndarray  # posterior std s_i
    delta: np.ndarray  # grid step of z_i (power of two)
    q_half: np.ndarray  # window half-width of Q(z_i | z_{i-1}) (and Q(z_0 | x)), in symbols
    p_half: np.ndarray  # window half-width of P(z_{i-1} | z_i), in symbols of z_{i-1}
    prior_half: int  # window of P(z_T) = N(0, 1)
    x_half: int  # half-width of the pixel decoder's table, in levels

    def snr_weight(self, i: int) -> float:
        """SNR(t_{i-1}) - SNR(t_i)."""
        return float(np.exp(-self.gamma[i - 1]) - np.exp(-self.gamma[i]))

    def pop_bits_per_dim(self) -> float:
        """Largest expected deficit of the stack (bits per dimension) while coding one region.

        Follows the chain of DESIGN.md section 2: each pop of a latent takes its entropy, each
        push of the previous latent returns about the posterior's entropy; pushes of x and the
        KL excess (both >= 0) are ignored, so the estimate is conservative.
        """
        level = -(math.log2(self.sigma[0] / self.delta[0]) + HALF_LOG2_2PIE)
        worst = -level
        for i in range(1, self.T + 1):
            level -= math.log2(self.sigma_ts[i] / self.delta[i]) + HALF_LOG2_2PIE
            worst = max(worst, -level)
            level += math.log2(self.post_s[i] / self.delta[i - 1]) + HALF_LOG2_2PIE
        return worst


def build_grids(gamma_table: np.ndarray, decoder_scale: float, arith: Arith = FLOAT) -> ChainGrids:
    g = snap(np.asarray(gamma_table, dtype=np.float64))
    T = len(g) - 1
    alpha2 = arith.exp(-arith.softplus(g))  # sigmoid(-gamma)
    sigma2 = -arith.expm1(-arith.softplus(g))  # 1 - alpha^2 = sigmoid(gamma), accurate when small
    alpha, sigma = np.sqrt(alpha2), np.sqrt(sigma2)
    alpha_ts = np.ones(T + 1)
    sigma2_ts = np.zeros(T + 1)
    alpha_ts[1:] = alpha[1:] / alpha[:-1]
    sigma2_ts[1:] = -arith.expm1(arith.softplus(g[:-1]) - arith.softplus(g[1:]))
    sigma_ts = np.sqrt(sigma2_ts)
    post_a = np.zeros(T + 1)
    post_b = np.zeros(T + 1)
    post_s = np.zeros(T + 1)
    post_a[1:] = alpha_ts[1:] * sigma2[:-1] / sigma2[1:]
    post_b[1:] = alpha[:-1] * sigma2_ts[1:] / sigma2[1:]
    post_s[1:] = np.sqrt(sigma2_ts[1:] * sigma2[:-1] / sigma2[1:])

    delta = np.zeros(T + 1)
    for i in range(T + 1):
        coded_with = [sigma[0] if i == 0 else sigma_ts[i]]
        coded_with.append(post_s[i + 1] if i < T else 1.0)
        delta[i] = (pow2_floor if arith is FLOAT else pow2_floor_exact)(min(coded_with) / 4.0)
    q_std = np.where(np.arange(T + 1) == 0, sigma[0], sigma_ts)
    q_half = np.ceil(Q_WINDOW_SIGMAS * q_std / delta).astype(np.int64) + 1
    p_half = np.zeros(T + 1, dtype=np.int64)
    p_half[1:] = np.ceil((2.0 * post_b[1:] + P_WINDOW_SIGMAS * post_s[1:]) / delta[:-1]).astype(np.int64) + 2
    prior_half = int(math.ceil((alpha[T] + P_WINDOW_SIGMAS) / delta[T])) + 2
    # pixel decoder: x lies within (q_half[0] + 1) grid steps of alpha0 * x_tilde
    dist_levels = (q_half[0] + 1) * delta[0] / alpha[0] * 128.0
    x_half = int(math.ceil(dist_levels)) + 2
    if max(p_half.max(), q_half.max(), prior_half) > MAX_HALF_WINDOW:
        raise ValueError("schedule needs symbol ranges beyond 2^16: grids too fine for this schedule")
    return ChainGrids(
        T=T, gamma=g, alpha=snap(alpha), sigma=snap(sigma), alpha_ts=snap(alpha_ts), sigma_ts=snap(sigma_ts),
        post_a=snap(post_a), post_b=snap(post_b), post_s=snap(post_s), delta=delta, q_half=q_half,
        p_half=p_half, prior_half=prior_half, x_half=x_half,
    )
