"""Every distribution of the chain, for encoder and decoder alike: `StepModel` turns the
model (its networks, in float or exact arithmetic) and the chain's grids into the codecs of
each step: Q(z_0 | x), Q(z_i | z_{i-1}), P(z_{i-1} | z_i), the prior and p(x | z_0).
Step plans (which of the model's T steps the chain visits) are checked here.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch

from ..model.vdm import DECODER_LOG_SCALE_RANGE, REVERSE_LOG_VAR_MAX, VDM
from ..model.network import ENSEMBLE_FLIPS, flip_ensembles
from .ans import Codec, windowed_gaussian
from .arith import FLOAT, Arith, EXACT
from .grids import PARAM_SNAP, ChainGrids, build_grids, snap
from ..header import check_plan
from .film import FilmDeltas, adapted_exact_net, adapted_float_net
from .pixels import ContextWeights, PixelCodec, PixelContext

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2


def plan_from_strides(T: int, strides: tuple[tuple[float, int], ...]) -> tuple[int, ...]:
    """((fraction of T, stride), ...) -> the plan: stride 1 up to the first fraction of T,
    then the next stride up to the next fraction, ...; the last fraction is 1."""
    plan, j = [0], 0
    for frac, stride in strides:
        end = max(j, min(T, round(frac * T)))
        while j < end:
            j = min(j + stride, end)
            plan.append(j)
    return check_plan(plan, T)


class NetworkMemo:
    """The exact network's outputs by their exact input, kept from an encode for the decode
    that verifies it.

    Where the verifying decoder feeds the network the very latents the encoder fed it (the
    key is a hash of the input's bytes, the step and the calls), it gets the encoder's
    outputs back instead of computing them again; any other input is computed.  Sound only
    for exact arithmetic, where the network is a function of its input's bits on every
    machine (tests compare it bit for bit); the float network's outputs depend on kernels
    and threads, so its check must compute.  The oldest entries go first when the budget is
    full: compress checks each region right after coding it (coding.chain.CheckedRegions), so
    the memo needs to hold one region's outputs (about 0.2 GB at the largest), not an image's
    (a 12 MP photo's are about 11 GB).

    >>> memo = NetworkMemo(budget_bytes=1 << 20)
    >>> key = memo.key(np.zeros((3, 4, 4), np.float32), step=1, calls=2, features=False)
    >>> key == memo.key(np.zeros((3, 4, 4), np.float32), 1, 2, False, tag=b"another network")
    False
    >>> memo.put(key, (np.ones((3, 4, 4)), {"reverse_var": np.zeros((3, 4, 4))}))
    >>> eps, aux = memo.get(key)
    >>> float(eps.sum()), memo.hits, memo.get(memo.key(np.ones((3, 4, 4), np.float32), 1, 2, False))
    (48.0, 1, None)
    """

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[bytes, tuple[tuple[np.ndarray, dict], int]] = OrderedDict()

    @staticmethod
    def key(zk: np.ndarray, step: int, calls: int, features: bool, tag: bytes = b"") -> bytes:
        return NetworkMemo.keys(zk, step, (calls,), features, tag)[calls]

    @staticmethod
    def keys(zk: np.ndarray, step: int, calls: tuple[int, ...], features: bool,
             tag: bytes = b"") -> dict[int, bytes]:
        """One key per number of calls, the input's bytes hashed once; tag names the
        network (an image's own FiLM deltas, StepModel.adapted)."""
        h = hashlib.blake2b(np.ascontiguousarray(zk).view(np.uint8).ravel(), digest_size=20)
        h.update(repr((zk.shape, str(zk.dtype), int(step), bool(features), bytes(tag))).encode())
        out = {}
        for n in calls:
            hn = h.copy()
            hn.update(int(n).to_bytes(2, "little"))
            out[n] = hn.digest()
        return out

    def get(self, key: bytes) -> tuple[np.ndarray, dict] | None:
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        eps, aux = hit[0]
        return _unpack(eps), {k: _unpack(v) for k, v in aux.items()}

    def close(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self.bytes = 0

    def put(self, key: bytes, value: tuple[np.ndarray, dict]) -> None:
        if key in self._entries:
            return
        eps, aux = _pack(value[0]), {k: _pack(v) for k, v in value[1].items()}
        size = eps.nbytes + sum(v.nbytes for v in aux.values())
        if size > self.budget:
            return
        while self.bytes + size > self.budget:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old
        self._entries[key] = ((eps, aux), size)
        self.bytes += size


def _pack(a: np.ndarray) -> np.ndarray:
    """A copy in float32 where that holds every value exactly (snapped outputs mostly do)."""
    if a.dtype == np.float64:
        f = a.astype(np.float32)
        if np.array_equal(f, a):
            return f
    return a.copy()


def _unpack(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype == np.float32 else a.copy()


class StepModel:
    """Distribution parameters for every step, shared by encoder and decoder."""

    def __init__(self, model: VDM, gamma_table, device: str | torch.device = "cpu", ensemble: int = 1,
                 plan=None, ensemble_steps: int | None = None, z0_ensemble: int = 1, exact=None):
        # channels-last convolutions are ~12% faster on this CPU; encoder and decoder both
        # run this same layout, so results stay identical between them
        self.model = model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        table = snap(np.asarray(gamma_table, dtype=np.float64))
        self.gamma_table = table  # all T + 1 of the model's (the FiLM fit samples them)
        self.plan = check_plan(range(len(table)) if plan is None else plan, len(table) - 1)
        # exact: an ExactModel (its eps and context networks in exact arithmetic, detmath's
        # transcendentals): the same bits on every machine.  None: float32 networks, numpy.
        self.exact = exact
        self.exact_net = None if exact is None else exact.net
        self.float_net = model.net  # these two and net_tag change for an image with FiLM deltas (adapted)
        self.net_tag = b""
        self.arith: Arith = FLOAT if exact is None else EXACT
        if exact is None:
            with torch.no_grad():
                scale = float(model.decoder_scale(torch.tensor(table[0], dtype=torch.float64)))
        else:  # model.decoder_scale's formula with detmath's exp
            scale = (self.arith.scalar_exp(0.5 * float(table[0])) * (math.sqrt(3.0) / math.pi)
                     * self.arith.scalar_exp(float(model.decoder_log_scale.double())))
        self.decoder_scale = float(snap(scale * 128.0, 2.0**-24))  # logistic scale in pixel levels
        self.grids: ChainGrids = build_grids(table[list(self.plan)], self.decoder_scale, self.arith)
        if exact is not None and self.grids.delta.min() < 2.0**-8:
            raise ValueError("the exact network takes latents on grids of 2^-8 or coarser; this plan's are finer")
        self.T = self.grids.T
        self._jump_ratio = self._jump_ratios(table)
        self.ensemble = ensemble
        self.ensemble_steps = ensemble_steps
        self.z0_ensemble = z0_ensemble
        self.memo: NetworkMemo | None = None  # set by remembering()

    @contextmanager
    def remembering(self, budget_bytes: int):
        """Within the block, network outputs are kept (NetworkMemo: budget_bytes of them) and
        reused for inputs seen before: an encode and its verifying decode.  Exact arithmetic
        only (else a no-op)."""
        if self.exact is None or self.memo is not None:
            yield None
            return
        self.memo = NetworkMemo(budget_bytes)
        try:
            yield self.memo
        finally:
            self.memo.close()
            self.memo = None

    @contextmanager
    def adapted(self, film: FilmDeltas | None):
        """Within the block the network carries an image's own FiLM deltas (coding.film);
        None: the model's network."""
        if film is None:
            yield
            return
        saved = self.exact_net, self.float_net, self.net_tag
        if self.exact is not None:
            self.exact_net = adapted_exact_net(self.exact.net, self.model.net, film)
        else:
            self.float_net = adapted_float_net(self.model.net, film)
        self.net_tag = film.tag()
        try:
            yield
        finally:
            self.exact_net, self.float_net, self.net_tag = saved

    def _jump_ratios(self, table: np.ndarray) -> np.ndarray:
        """jump_ratio of every step of the plan (index 0 unused)."""
        return np.array([1.0] + [jump_ratio(table, self.plan[i], self.plan[i - 1], self.arith) for i in range(1, self.T + 1)])

    @property
    def ensemble(self) -> int:
        """Network calls per diffusion step (i >= 1) on the first ensemble_steps steps,
        averaged over flipped copies of z_i (network.ENSEMBLE_FLIPS); the decoder at z_0
        makes z0_ensemble calls."""
        return self._ensemble

    @ensemble.setter
    def ensemble(self, calls: int) -> None:
        self._ensemble = _ensemble_size(calls, "ensemble")

    @property
    def ensemble_steps(self) -> int:
        """How many of the first steps (i = 1, 2, ...) make `ensemble` calls; later ones make one."""
        return self._ensemble_steps

    @ensemble_steps.setter
    def ensemble_steps(self, steps: int | None) -> None:
        steps = self.T if steps is None else int(steps)
        if not 0 <= steps <= self.T:
            raise ValueError(f"ensemble steps must lie in 0..{self.T}, not {steps}")
        self._ensemble_steps = steps

    @property
    def z0_ensemble(self) -> int:
        """Network calls at z_0 (flips averaged, like `ensemble`) for an image coded with its
        own (fitted) pixel-context weights; with the model's weights one call, unless the
        model's context was trained on ensembled outputs (VDMConfig.context_calls > 1).  The
        averaged prediction is sharper than a single call: a context trained on single calls
        codes it smaller after the image's own fit and larger without one."""
        return self._z0_ensemble

    @z0_ensemble.setter
    def z0_ensemble(self, calls: int) -> None:
        self._z0_ensemble = _ensemble_size(calls, "z0 ensemble")

    def z0_calls(self, weights: "ContextWeights | None") -> int:
        """Network calls at z_0 for an image with these context weights (None: the model's)."""
        if weights is None and getattr(self.model.cfg, "context_calls", 1) == 1:
            return 1
        return self.z0_ensemble

    def calls(self, i: int) -> int:
        return self.ensemble if i <= self.ensemble_steps else 1

    def network_calls(self) -> int:
        """Network calls per region (an image with its own context weights): at z_0 and at
        every step."""
        return self.z0_ensemble + sum(self.calls(i) for i in range(1, self.T + 1))

    # ---- network ----
    def step_outputs(self, k: np.ndarray, i: int, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """eps_hat and lambda = log(var_P / s_i^2) per latent at z_i = k * delta_i (both snapped
        to PARAM_SNAP), for step i >= 1; k: int32 (C, H, W).

        context: uint8 pixels (C, c, W) of the rows just below the region, already known to
        the decoder; their z_i is drawn from q(z_i | x) with a frozen pseudo-random stream
        (the forward process is independent per pixel given x, so this is an exact sample).
        """
        eps, aux = self._net(k, i, context, self.calls(i))
        lam = reverse_log_var_np(aux["reverse_var"], self.arith)
        if self._jump_ratio[i] != 1.0:
            lam = jump_log_var(lam, float(self._jump_ratio[i]), self.arith)
        return eps, lam

    def _net(self, k: np.ndarray, i: int, context: np.ndarray | None, calls: int = 1,
             features: bool = False) -> tuple[np.ndarray, dict]:
        return self._nets(k, i, context, (calls,), features)[calls]

    def _nets(self, k: np.ndarray, i: int, context: np.ndarray | None, calls: tuple[int, ...],
              features: bool = False) -> dict[int, tuple[np.ndarray, dict]]:
        """_net for each ensemble size in `calls`, from one pass (network.flip_ensembles)."""
        h = k.shape[1]
        zk = k.astype(np.float32)
        if context is not None and context.shape[1]:
            zk = np.concatenate([zk, self._context_latents(context, i, h)], axis=1)
        memo = self.memo
        if memo is not None:
            keys = memo.keys(zk, i, calls, features, self.net_tag)
            known = {n: memo.get(key) for n, key in keys.items()}
            if all(v is not None for v in known.values()):
                return known
        out = self._compute_nets(zk, h, i, calls, features)
        if memo is not None:
            for n, value in out.items():
                memo.put(keys[n], value)
        return out

    def _compute_nets(self, zk: np.ndarray, h: int, i: int, calls: tuple[int, ...],
                      features: bool) -> dict[int, tuple[np.ndarray, dict]]:
        z = torch.from_numpy(zk).to(self.device)[None] * float(self.grids.delta[i])
        z = z.contiguous(memory_format=torch.channels_last)
        gamma = torch.tensor([self.grids.gamma[i]], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if self.exact_net is not None:
                outs = flip_ensembles(self.exact_net, z, int(self.plan[i]), calls, with_features=features)
            else:
                outs = flip_ensembles(self.float_net, z, gamma, calls, with_features=features)

        def crop(t: torch.Tensor) -> np.ndarray:
            return snap(t[0, :, :h].to("cpu", torch.float64).numpy(), PARAM_SNAP)

        return {n: (crop(eps), {name: crop(v) for name, v in aux.items()}) for n, (eps, aux) in outs.items()}

    def _context_latents(self, context: np.ndarray, i: int, region_rows: int) -> np.ndarray:
        """Grid indices of z_i for the context rows (float32), identical in encoder and decoder.

        The noise is an Irwin-Hall sum of 12 uniforms from numpy's frozen legacy stream:
        plain arithmetic only, so every machine draws the same numbers.
        """
        g = self.grids
        rs = np.random.RandomState([i, region_rows, context.shape[1], context.shape[2]])
        noise = rs.random_sample((12,) + context.shape).sum(0) - 6.0
        xt = (2.0 * context.astype(np.float64) + 1.0) / 256.0 - 1.0
        return np.rint((g.alpha[i] * xt + g.sigma[i] * noise) / g.delta[i]).astype(np.float32)

    def step_kl_bits(self, xt: np.ndarray, k: np.ndarray, i: int, eps: np.ndarray, lam: np.ndarray) -> float:
        """KL(q(z_{i-1} | z_i, x) || P(z_{i-1} | z_i)) in bits, summed: step i's NELBO share."""
        return float(self.step_kl_nats(xt, k, i, eps, lam).sum()) * LOG2E

    def step_kl_nats(self, xt: np.ndarray, k: np.ndarray, i: int, eps: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """step_kl_bits per latent, in nats (for per-row accounting)."""
        r = self.grids.snr_weight(i) * (xt - self.x_hat(k, i, eps)) ** 2
        return 0.5 * (lam + np.exp(-lam) * (1.0 + r) - 1.0)

    def x_hat(self, k: np.ndarray, i: int, eps: np.ndarray) -> np.ndarray:
        g = self.grids
        z = k.astype(np.float64) * g.delta[i]
        return np.clip((z - g.sigma[i] * eps) / g.alpha[i], -1.0, 1.0)

    # ---- codecs, each used for one pop and the matching push ----
    def q_z0(self, xt: np.ndarray) -> tuple[Codec, np.ndarray, np.ndarray]:
        g = self.grids
        mean = g.alpha[0] * xt / g.delta[0]
        std = np.full(xt.size, g.sigma[0] / g.delta[0])
        return windowed_gaussian(mean.ravel(), std, int(g.q_half[0])), mean.ravel(), std

    def q_forward(self, k_prev: np.ndarray, i: int) -> tuple[Codec, np.ndarray, np.ndarray]:
        g = self.grids
        mean = (k_prev.astype(np.float64) * (g.alpha_ts[i] * g.delta[i - 1] / g.delta[i])).ravel()
        std = np.full(k_prev.size, g.sigma_ts[i] / g.delta[i])
        return windowed_gaussian(mean, std, int(g.q_half[i])), mean, std

    def p_reverse(self, k: np.ndarray, i: int, eps: np.ndarray,
                  lam: np.ndarray | None = None) -> tuple[Codec, np.ndarray, np.ndarray]:
        """P(z_{i-1} | z_i); lam: per-latent log variance ratio from step_outputs (None: 0)."""
        g = self.grids
        z = k.astype(np.float64) * g.delta[i]
        mu = g.post_a[i] * z + g.post_b[i] * self.x_hat(k, i, eps)
        mean = (mu / g.delta[i - 1]).ravel()
        std = np.full(k.size, g.post_s[i] / g.delta[i - 1])
        if lam is not None:
            std = snap(std * self.arith.exp(0.5 * lam.ravel()), 2.0**-20)
        return windowed_gaussian(mean, std, int(g.p_half[i])), mean, std

    def p_prior(self, n: int) -> tuple[Codec, np.ndarray, np.ndarray]:
        g = self.grids
        mean = np.zeros(n)
        std = np.full(n, 1.0 / g.delta[self.T])
        return windowed_gaussian(mean, std, int(g.prior_half)), mean, std

    def pixel_params(self, k0: np.ndarray, context: np.ndarray | None = None, calls: int = 1,
                     features: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
        """Base location and scale of p(x | z_0), in pixel levels (float64, shape (C, H, W)),
        and the network's other outputs at z_0 (channel_coef, and with `features` the output
        layer's input, all snapped), from `calls` network calls (z0_calls)."""
        return self.pixel_params_each(k0, context, (calls,), features)[calls]

    def pixel_params_each(self, k0: np.ndarray, context: np.ndarray | None, calls: tuple[int, ...],
                          features: bool = False) -> dict[int, tuple[np.ndarray, np.ndarray, dict]]:
        """pixel_params for each number of calls in `calls`, from one pass over the flips."""
        g = self.grids
        z0 = k0.astype(np.float64) * g.delta[0]
        if self.model.cfg.decoder == "z0":
            x_est = z0 / g.alpha[0]
            return {n: (snap((x_est + 1.0) * 128.0 - 0.5, 2.0**-20), np.full(z0.shape, self.decoder_scale), {})
                    for n in calls}
        out = {}
        for n, (eps, aux) in self._nets(k0, 0, context, calls, features).items():
            # bounded only against wild outputs: training leaves the estimate unclipped
            x_est = np.clip((z0 - g.sigma[0] * eps) / g.alpha[0], -2.0, 2.0)
            scale = snap(self.decoder_scale * self.arith.exp(np.clip(aux["decoder_log_scale"], *DECODER_LOG_SCALE_RANGE)), 2.0**-24)
            out[n] = (snap((x_est + 1.0) * 128.0 - 0.5, 2.0**-20), scale, aux)
        return out

    def p_pixels(self, k0: np.ndarray, context: np.ndarray | None = None,
                 weights: ContextWeights | None = None) -> "PixelCodec":
        """p(x | z_0) on a window of levels around z_0 / alpha_0, where x must lie; weights:
        the image's own pixel-context weights (default: the model's)."""
        g = self.grids
        centre = snap((k0.astype(np.float64) * g.delta[0] / g.alpha[0] + 1.0) * 128.0 - 0.5, 2.0**-20)
        width = min(2 * g.x_half + 1, 256)
        offset = np.clip(np.rint(centre).astype(np.int64) - g.x_half, 0, 256 - width)
        own_features = weights is not None and weights.feature_head is not None
        loc, scale, aux = self.pixel_params(k0, context, self.z0_calls(weights), features=own_features)
        ctx = None
        if getattr(self.model.cfg, "pixel_context", False):
            ctx = PixelContext.from_model(self.model, aux["channel_coef"], k0.shape[0], weights, aux.get("features"),
                                          self.arith, None if self.exact is None else self.exact.context)
        return PixelCodec(loc, scale, offset, width, ctx, self.arith)


def _ensemble_size(calls: int, what: str) -> int:
    if calls not in ENSEMBLE_FLIPS:
        raise ValueError(f"{what} size must be one of {sorted(ENSEMBLE_FLIPS)}, not {calls}")
    return calls


def jump_ratio(table: np.ndarray, j: int, j_prev: int, arith: Arith = FLOAT) -> float:
    """expm1(gamma gap of a plan step from index j down to j_prev) / expm1(gap of the model's
    one grid step below j), snapped; 1 for a single step.  table: the snapped gamma table."""
    if j - j_prev == 1:
        return 1.0
    return float(snap(arith.expm1(table[j] - table[j_prev]) / arith.expm1(table[j] - table[j - 1])))


def jump_log_var(lam: np.ndarray, ratio: float, arith: Arith = FLOAT) -> np.ndarray:
    """The network's one-step lambda rescaled to a plan step that jumps several grid steps.

    lambda = log(1 + expm1(gap) m) is best for a mean squared eps error m; the network's
    one-step lambda gives m (taken >= 0), and the jump's lambda is log(1 + ratio * expm1(gap) m)
    with ratio = jump_ratio(...)."""
    return snap(arith.log1p(np.maximum(arith.expm1(lam), 0.0) * ratio), PARAM_SNAP)


def reverse_log_var_np(h: np.ndarray, arith: Arith = FLOAT) -> np.ndarray:
    """vdm.reverse_log_var in float64 numpy, snapped: encoder and decoder compute it alike."""
    return snap(np.minimum(arith.softplus(h) - LN2, REVERSE_LOG_VAR_MAX), PARAM_SNAP)
