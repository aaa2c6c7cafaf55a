"""The Bit-Swap-ordered bits-back chain of DESIGN.md section 2, for regions and whole images.

`StepModel` is the one place where distribution parameters come from; encoder and decoder
both call it with the same latents and shapes.  Each region's chain finishes before the next
region starts; region sizes grow with the bits already on the stack, and an image's first
rows are seeded with a classic lossless code of themselves when the stack is too short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.vdm import (CONTEXT_RESIDUAL_CLIP, DECODER_LOG_SCALE_RANGE, REVERSE_LOG_VAR_MAX, VDM, group_inputs,
                         pass_classes, pass_map_np)
from ..model.context_net import ContextNet
from ..model.network import ENSEMBLE_FLIPS, flip_ensembles
from .ans import AnsStack, Codec, categorical, windowed_gaussian
from .classic import decode_rows, encode_rows
from .arith import FLOAT, Arith, EXACT
from .grids import PARAM_SNAP, ChainGrids, build_grids, snap

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2
MAX_REGION_PIXELS = 1 << 19  # bounds memory per region (about 1 GB), whatever the image size
STACK_MARGIN_BITS = 256
LOW_WATER_BITS = 64  # a region whose stack fell this low is coded again at the conservative size
DEFICIT_SAFETY = 1.15  # next region's deficit per dim, relative to the last region's
CONTEXT_ROWS = 4  # rows below a region that the decoder already has, shown to the network


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


def check_plan(plan, T: int) -> tuple[int, ...]:
    """A step plan: the model's gamma-table indices the chain visits, 0 = j_0 < j_1 < ... <
    j_n = T.  ValueError if it is not one."""
    plan = tuple(int(j) for j in plan)
    if len(plan) < 2 or plan[0] != 0 or plan[-1] != T or any(b <= a for a, b in zip(plan, plan[1:])):
        raise ValueError(f"a step plan runs strictly upwards from 0 to T = {T}, not {list(plan)[:8]}...")
    return plan


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


class StepModel:
    """Distribution parameters for every step, shared by encoder and decoder."""

    def __init__(self, model: VDM, gamma_table, device: str | torch.device = "cpu", ensemble: int = 1,
                 plan=None, ensemble_steps: int | None = None, z0_ensemble: int = 1, exact=None):
        # channels-last convolutions are ~12% faster on this CPU; encoder and decoder both
        # run this same layout, so results stay identical between them
        self.model = model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        table = snap(np.asarray(gamma_table, dtype=np.float64))
        self.plan = check_plan(range(len(table)) if plan is None else plan, len(table) - 1)
        # exact: an ExactModel (its eps and context networks in exact arithmetic, detmath's
        # transcendentals): the same bits on every machine.  None: float32 networks, numpy.
        self.exact = exact
        self.exact_net = None if exact is None else exact.net
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
        z = torch.from_numpy(zk).to(self.device)[None] * float(self.grids.delta[i])
        z = z.contiguous(memory_format=torch.channels_last)
        gamma = torch.tensor([self.grids.gamma[i]], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if self.exact_net is not None:
                outs = flip_ensembles(self.exact_net, z, int(self.plan[i]), calls, with_features=features)
            else:
                outs = flip_ensembles(self.model.net, z, gamma, calls, with_features=features)

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
        r = self.grids.snr_weight(i) * (xt - self.x_hat(k, i, eps)) ** 2
        return float((0.5 * (lam + np.exp(-lam) * (1.0 + r) - 1.0)).sum()) * LOG2E

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


@dataclass(frozen=True)
class ContextWeights:
    """The pixel context's weights for one image, instead of the model's (coding.adapt)."""

    weight: np.ndarray  # (passes - 1, C, C, K, K) float64
    log_scale: np.ndarray  # (passes, C) float64
    # the context network's last layer per group, (weight (2, hidden, 1, 1), bias (2,))
    # float64; None: the model's
    head: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
    # factors on each group's (shift, log-scale change), (groups, 2) float64; None: ones
    gains: np.ndarray | None = None
    # added to the network's raw colour coefficients, per pass, (passes, 3) float64; None: 0
    coef_shift: np.ndarray | None = None
    # an image's own linear read-out of the network's last features at z_0 (FEATURE_OUTPUTS
    # rows: shift in scales, log-scale change, raw colour coefficients, 3 each; columns: the
    # features, then a bias), float64; None: no such outputs (RGB images only)
    feature_head: np.ndarray | None = None


FEATURE_OUTPUTS = 9


def feature_outputs(head: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(FEATURE_OUTPUTS, H, W) = head[:, :-1] @ features + head[:, -1], in float64 summed
    feature by feature in a fixed order (no BLAS: the same bits on every machine), snapped."""
    out = np.broadcast_to(head[:, -1, None, None], (head.shape[0],) + features.shape[1:])
    for k in range(features.shape[0]):
        out = out + head[:, k][:, None, None] * features[k][None]
    return snap(out, PARAM_SNAP)


@dataclass
class PixelContext:
    """The multi-pass, colour-ordered part of p(x | z_0) (VDM.context_params, in numpy)."""

    weight: np.ndarray  # (passes - 1, C, C, K, K) float64: earlier passes' residuals -> shift
    log_scale: np.ndarray  # (passes, C) float64: per pass and channel
    coef: np.ndarray  # (3, H, W) float64: G on R, B on R, B on G (unused for one channel)
    net: ContextNet | None = None  # the model's nonlinear refinement, if it has one
    head: list | None = None  # float32 (weight, bias) per group for the net, instead of its own
    gains: np.ndarray | None = None  # (groups, 2) float64 factors on the net's outputs (None: ones)
    # the image's own feature read-out (ContextWeights.feature_head): a shift in scales and a
    # log-scale change per pixel, (C, H, W) float64 each; None: none
    feature_shift: np.ndarray | None = None
    feature_log_scale: np.ndarray | None = None
    exact_net: object | None = None  # an ExactContextNet in place of `net` (exact arithmetic)
    own_head: tuple | None = None  # the image's own last layers, float64 (exact arithmetic)
    _base_levels: tuple | None = field(default=None, repr=False)  # (loc, scale, their input levels)

    @classmethod
    def from_model(cls, model: VDM, coef_raw: np.ndarray, channels: int,
                   weights: ContextWeights | None = None, features: np.ndarray | None = None,
                   arith: Arith = FLOAT, exact_net=None) -> "PixelContext":
        head = gains = f_shift = f_log_scale = None
        if weights is not None and weights.feature_head is not None and channels == 3:
            if features is None:
                raise ValueError("an image's feature read-out needs the network's features at z_0")
            fo = feature_outputs(weights.feature_head, features)
            f_shift, f_log_scale, coef_raw = fo[0:3], fo[3:6], coef_raw + fo[6:9]
        if weights is not None:
            weight, log_scale, gains = weights.weight, weights.log_scale, weights.gains
            if weights.head is not None:
                head = [tuple(torch.from_numpy(a).float() for a in wb) for wb in weights.head]
        else:
            with torch.no_grad():
                weight, log_scale = model.context_weights(3 if arith is EXACT else channels)
            weight = weight.detach().to("cpu", torch.float64).numpy()
            log_scale = log_scale.detach().to("cpu", torch.float64).numpy()
            if arith is EXACT and channels == 1:  # context_weights' grey reduction, in a fixed order
                weight = (weight[:, :, 0:1] + weight[:, :, 1:2] + weight[:, :, 2:3])
                weight = (weight[:, 0:1] + weight[:, 1:2] + weight[:, 2:3]) / 3.0
                log_scale = (log_scale[:, 0:1] + log_scale[:, 1:2] + log_scale[:, 2:3]) / 3.0
        if weights is not None and weights.coef_shift is not None and channels == 3:
            pm = pass_map_np(coef_raw.shape[1], coef_raw.shape[2], weight.shape[0] + 1)
            coef_raw = coef_raw + weights.coef_shift[pm].transpose(2, 0, 1)
        coef = np.zeros((3,) + coef_raw.shape[1:]) if channels == 1 else snap(arith.tanh(coef_raw), PARAM_SNAP)
        return cls(weight=weight, log_scale=log_scale, coef=coef, net=model.context_net, head=head, gains=gains,
                   feature_shift=f_shift, feature_log_scale=f_log_scale, exact_net=exact_net,
                   own_head=None if weights is None else weights.head)

    @property
    def passes(self) -> int:
        return self.weight.shape[0] + 1

    def spatial_shift(self, p: int, x: np.ndarray, loc: np.ndarray, scale: np.ndarray, pm: np.ndarray) -> np.ndarray:
        """(C, H, W), at the pixels of pass p >= 1: sum of weight[p-1] * normalised residuals of
        the pixels of earlier passes over the kernel, zero outside the region (and elsewhere).

        Computed on each (row % 2, col % 2) class of the pass with strided slices, skipping
        taps that only see pixels not yet coded.  A fixed order of float64 operations (the
        same for every pixel as a full convolution's), so encoder and decoder agree on every
        machine."""
        c, h, w = loc.shape
        known = pm < p
        u = np.clip((x - loc) / scale, -CONTEXT_RESIDUAL_CLIP, CONTEXT_RESIDUAL_CLIP) * known
        weight = self.weight[p - 1]
        k = weight.shape[-1]
        r = k // 2
        pad = np.pad(u, ((0, 0), (r, r), (r, r)))
        out = np.zeros_like(u)
        for ra, ca in pass_classes(self.passes)[p]:
            nh, nw = len(range(ra, h, 2)), len(range(ca, w, 2))
            if nh == 0 or nw == 0:
                continue
            sub = np.zeros((c, nh, nw))
            # which taps land on pixels coded before (class parity of the source)
            src = [(dy, dx) for dy in range(k) for dx in range(k)
                   if known[(ra + dy - r) % 2 :: 2, (ca + dx - r) % 2 :: 2].any()]
            for o in range(c):
                for i in range(c):
                    for dy, dx in src:
                        wv = weight[o, i, dy, dx]
                        if wv != 0.0:
                            sub[o] += wv * pad[i, ra + dy : ra + dy + 2 * nh - 1 : 2, ca + dx : ca + dx + 2 * nw - 1 : 2]
            out[:, ra::2, ca::2] = sub
        return out

    def group_refine(self, p: int, ch: int, x: np.ndarray, loc: np.ndarray, scale: np.ndarray, pm: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The context network's shift and log-scale change of group (p, ch), each (H, W)
        float64 snapped to PARAM_SNAP, zero off pass p (float32 network on the same inputs
        in encoder and decoder)."""
        net = self.net
        g = net.group_index(p, ch)
        if self.gains is not None and not self.gains[g].any():  # the image turned this group off
            return np.zeros(x.shape[-2:]), np.zeros(x.shape[-2:])
        u = np.clip((x - loc) / scale, -CONTEXT_RESIDUAL_CLIP, CONTEXT_RESIDUAL_CLIP)
        if self.exact_net is not None:
            ds, dls = self._exact_refine(g, p, ch, u, loc, scale, pm)
            if self.gains is not None:
                ds, dls = ds * self.gains[g, 0], dls * self.gains[g, 1]
            return snap(ds, PARAM_SNAP), snap(dls, PARAM_SNAP)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
        net_in = (as_t((loc + 0.5) / 128.0 - 1.0), as_t(np.log(scale)))
        classes = pass_classes(net.cfg.passes)[p]
        with torch.no_grad():
            inp = group_inputs(as_t(u), torch.from_numpy(pm), p, ch, net_in, net.cfg.channels)
            ds, dls = net.outputs(g, net.features(g, inp, classes), classes, u.shape,
                                  None if self.head is None else self.head[g])
        ds, dls = ds[0, 0].to(torch.float64).numpy(), dls[0, 0].to(torch.float64).numpy()
        if self.gains is not None:
            ds, dls = ds * self.gains[g, 0], dls * self.gains[g, 1]
        return snap(ds, PARAM_SNAP), snap(dls, PARAM_SNAP)

    def _exact_refine(self, g: int, p: int, ch: int, u: np.ndarray, loc: np.ndarray, scale: np.ndarray,
                      pm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """group_refine's network part through the ExactContextNet (unsnapped float64)."""
        ex = self.exact_net
        if self._base_levels is None or self._base_levels[0] is not loc or self._base_levels[1] is not scale:
            # every group of a region reads the same base location and scale: one log for all
            self._base_levels = (loc, scale) + ex.base_levels(loc, scale)
        uq, (lq, sq) = ex.residual_levels(u), self._base_levels[2:]
        chans = np.arange(u.shape[0])[:, None, None]
        known = (pm < p) | ((pm == p) & (chans < ch))
        parts = [uq * known, lq, sq]
        if u.shape[0] == 1 and ex.channels == 3:
            parts = [np.repeat(t, 3, axis=0) for t in parts]
        inp = torch.from_numpy(np.concatenate(parts).astype(np.float32))[None]
        head = None if self.own_head is None else self.own_head[g]
        return ex.refine(g, inp, pass_classes(ex.state["passes"])[p], u.shape, head)


class PixelCodec:
    """p(x | z_0) for one region, pushed and popped as a few table codecs.

    Without a PixelContext it is one table per pixel, all in one call.  With one, the pixels
    go in passes (pass_classes) and within a pass by channel (R, G, B): one vectorised call
    each, every table depending only on pixels popped before it (the push runs the same
    calls in reverse)."""

    def __init__(self, loc: np.ndarray, scale: np.ndarray, offset: np.ndarray, width: int,
                 context: PixelContext | None = None, arith: Arith = FLOAT):
        self.loc, self.scale, self.offset, self.width, self.ctx = loc, scale, offset, width, context
        self.arith = arith
        c, h, w = loc.shape
        self.shape = (c, h, w)
        if context is None:
            self.groups = [(None, None)]
        else:
            self.pass_map = pass_map_np(h, w, context.passes)
            self.groups = [(p, ch) for p in range(context.passes) for ch in range(c)]
        self._shift: dict = {}  # per pass: the linear shift; per ("group", p, c): the network's

    def _select(self, p) -> np.ndarray:
        return self.pass_map == p

    def _params(self, p, c, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """loc, scale and window offset for group (pass p, channel c), reading only pixels of
        earlier groups from x (C, H, W float64 levels)."""
        if p is None:
            return self.loc.ravel(), self.scale.ravel(), self.offset.ravel()
        sel = self._select(p)
        ctx = self.ctx

        def loc1(ch: int) -> np.ndarray:
            base = self.loc[ch][sel]
            shift = self._channel_shift(p, ch, x)
            if shift is None:
                return base
            return snap(base + self.scale[ch][sel] * shift[sel], 2.0**-20)

        loc = loc1(c)
        if c >= 1:
            e = [x[ch][sel] - loc1(ch) for ch in range(c)]
            if c == 1:
                loc = loc + ctx.coef[0][sel] * e[0]
            else:
                loc = loc + ctx.coef[1][sel] * e[0] + ctx.coef[2][sel] * e[1]
            loc = snap(loc, 2.0**-20)
        group = self._group_context(p, c, x)
        # math.exp for the scalar: the arithmetic files written without a network were coded with
        ar = self.arith
        factor = ar.scalar_exp(ctx.log_scale[p, c]) if group is None else ar.exp(ctx.log_scale[p, c] + group[1][sel])
        if ctx.feature_log_scale is not None:
            factor = factor * ar.exp(ctx.feature_log_scale[c][sel])
        scale = snap(self.scale[c][sel] * factor, 2.0**-24)
        return loc, scale, self.offset[c][sel]

    def _channel_shift(self, p: int, ch: int, x: np.ndarray) -> np.ndarray | None:
        """Channel ch's shift (in scales, (H, W)) in pass p: the linear context's plus the
        context network's; None for the first pass's first channel (and the whole first pass
        without a network)."""
        shift = None
        if p > 0:
            if p not in self._shift:  # every earlier pass is known once pass p starts
                self._shift[p] = self.ctx.spatial_shift(p, x, self.loc, self.scale, self.pass_map)
            shift = self._shift[p][ch]
        group = self._group_context(p, ch, x)
        if group is not None:
            shift = group[0] if shift is None else shift + group[0]
        if self.ctx.feature_shift is not None:
            shift = self.ctx.feature_shift[ch] if shift is None else shift + self.ctx.feature_shift[ch]
        return shift

    def _group_context(self, p: int, ch: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The context network's (shift, log-scale change) for group (p, ch), (H, W) each,
        computed once (its inputs are known from the group's start on); None without one."""
        ctx = self.ctx
        if ctx.net is None or (p, ch) == (0, 0):
            return None
        key = ("group", p, ch)
        if key not in self._shift:
            self._shift[key] = ctx.group_refine(p, ch, x, self.loc, self.scale, self.pass_map)
        return self._shift[key]

    def _table(self, loc: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        levels = offset[:, None] + np.arange(self.width)[None, :]
        upper = np.where(levels >= 255, np.inf, (levels + 0.5 - loc[:, None]) / scale[:, None])
        lower = np.where(levels <= 0, -np.inf, (levels - 0.5 - loc[:, None]) / scale[:, None])
        probs = self.arith.sigmoid_diff(upper, lower)
        probs = snap(probs, 2.0**-40) + 2.0**-40
        return probs / self.arith.row_sum(probs)

    def _mask(self, p, c) -> tuple:
        if p is None:
            return (slice(None),)
        return (c, self._select(p))

    def _group_tables(self, x: np.ndarray) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
        """(mask, probs, offset) of every group in pop order, given the whole of x (C, H, W)."""
        xf = x.reshape(self.shape).astype(np.float64)
        self._shift = {}
        out = []
        for p, c in self.groups:
            loc, scale, offset = self._params(p, c, xf)
            out.append((self._mask(p, c), self._table(loc, scale, offset), offset))
        return out

    def push(self, stack: AnsStack, symbols: np.ndarray) -> float:
        """Push x; returns its ideal cost -log2 P(x) (the encoder's accounting, from the same
        tables, so they are not built twice)."""
        x = symbols.reshape(self.shape)
        groups = self._group_tables(x)
        for mask, probs, offset in reversed(groups):
            categorical(probs, offset).push(stack, x[mask].ravel().astype(np.int32))
        return sum(table_bits_rows(probs, x[mask].ravel().astype(np.int64) - offset) for mask, probs, offset in groups)

    def pop(self, stack: AnsStack) -> np.ndarray:
        x = np.zeros(self.shape)
        self._shift = {}
        for p, c in self.groups:
            loc, scale, offset = self._params(p, c, x)
            mask = self._mask(p, c)
            x[mask] = categorical(self._table(loc, scale, offset), offset).pop(stack).reshape(x[mask].shape)
        return x.astype(np.int32).ravel()

    def params(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel's location and scale (levels, (C, H, W)) given the whole of x."""
        x = x.reshape(self.shape).astype(np.float64)
        self._shift = {}
        loc, scale = np.empty(self.shape), np.empty(self.shape)
        for p, c in self.groups:
            lo, sc, _ = self._params(p, c, x)
            mask = self._mask(p, c)
            loc[mask], scale[mask] = lo.reshape(loc[mask].shape), sc.reshape(loc[mask].shape)
        return loc, scale

    def bits(self, x: np.ndarray) -> float:
        """-log2 P(x), the ideal cost of x (C, H, W) under the tables that push uses."""
        x = x.reshape(self.shape)
        return sum(table_bits_rows(probs, np.clip(x[mask].ravel().astype(np.int64) - offset, 0, self.width - 1))
                   for mask, probs, offset in self._group_tables(x))

    def tables(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(probs, offset) of every group, for tests."""
        return [(probs, offset) for _, probs, offset in self._group_tables(x)]


def table_bits_rows(probs: np.ndarray, idx: np.ndarray) -> float:
    return float(-np.log2(probs[np.arange(len(idx)), idx]).sum())


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
                  context: np.ndarray | None = None, weights: ContextWeights | None = None) -> RegionStats:
    """Code pixels x (C, H, W uint8) onto the stack; returns the region's accounting.
    context: pixels of the rows below (see StepModel.step_outputs)."""
    start = stack.num_bits()
    xt = unit_pixels(x)
    acc = {"implied": 0.0, "recon": 0.0, "diffusion": 0.0, "low": None}

    def on_pop(i, upper, mean, std):
        bits = stack.num_bits()
        acc["low"] = bits if acc["low"] is None else min(acc["low"], bits)
        acc["implied"] -= gaussian_bits(upper, mean, std)

    def on_push(i, lower, upper, info, cost):
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


# ---------------------------------------------------------------- whole images
def rows_affordable(stack_bits: int, width: int, channels: int, bits_per_dim: float) -> int:
    """How many full rows the bits on the stack can pay for without running dry."""
    per_row = bits_per_dim * width * channels
    return int(max(0, stack_bits - STACK_MARGIN_BITS) // per_row)


def encode_image(stack: AnsStack, sm: StepModel, planes: np.ndarray, progress=None,
                 context_rows: int = CONTEXT_ROWS, weights: ContextWeights | None = None) -> list[RegionStats]:
    """Code an (H, W, C) uint8 image onto the stack as a sequence of row regions.

    Returns the region list (the layout goes into the file header, in coding order).

    A region is as large as the bits on the stack can pay for.  The first takes the
    conservative bound of grids.pop_bits_per_dim (which ignores what pushing x gives back);
    each later one the deficit per dimension that the region before it really reached, with
    DEFICIT_SAFETY to spare.  Should a region still come within LOW_WATER_BITS of an empty
    stack, it is coded again from the stack as it was, at the conservative size: the
    decoder only reads the layout, so the sizes are the encoder's choice.
    """
    h, w, c = planes.shape
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    safe = sm.grids.pop_bits_per_dim()
    need = safe
    max_rows = max(1, MAX_REGION_PIXELS // w)
    regions: list[RegionStats] = []
    row = 0
    if rows_affordable(stack.num_bits(), w, c, safe) < 1:
        row = _push_classic_seed(stack, x, safe, regions)
    while row < h:
        before = stack.clone() if need < safe else None
        for attempt_need in (need, safe):
            rows = even_rows(row, min(h - row, max_rows, rows_affordable(stack.num_bits(), w, c, attempt_need)), h)
            start = stack.num_bits()
            st = encode_region(stack, sm, x[:, row : row + rows], progress=progress,
                               context=x[:, row + rows : row + rows + context_rows], weights=weights)
            if st.low_bits >= LOW_WATER_BITS or before is None:
                break
            stack.restore(before)  # too close to empty: code the region again, conservatively
            before = None
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


def _push_classic_seed(stack: AnsStack, x: np.ndarray, need: float, regions: list[RegionStats]) -> int:
    """Push a classic code of the first rows: enough that the next region has a quarter of
    their rows (a classic code costs less than a region needs per dim, so it cannot pay for
    as many rows as it holds)."""
    c, h, w = x.shape
    max_rows = even_rows(0, max(4, -(-h // 8)), h)  # a very compressible image must not end up all classic
    rows = min(2, h)
    while True:
        codec, data = encode_rows(x[:, :rows])
        enough = stack.num_bits() + 8 * len(data) >= STACK_MARGIN_BITS + need * w * c * max(2, min(rows // 4, h - rows))
        if rows >= min(h, max_rows) or enough:
            break
        rows = min(h, max_rows, even_rows(0, rows + max(2, rows // 2), h))  # 2, 4, 6, 8, 12, 18, ...
    stack.push_bytes(data)
    regions.append(RegionStats(rows=(0, rows), kind="classic", dims=x[:, :rows].size, exact_bits=8 * len(data),
                               implied_bits=8 * len(data), classic_bytes=len(data), classic_codec=codec))
    return rows


def decode_image(stack: AnsStack, sm: StepModel, height: int, width: int, channels: int, layout: list[dict],
                 progress=None, context_rows: int = CONTEXT_ROWS, weights: ContextWeights | None = None) -> np.ndarray:
    """Pop an image coded by encode_image, given its region layout from the header."""
    x = np.zeros((channels, height, width), dtype=np.uint8)
    for reg in reversed(layout):
        r0, r1 = reg["rows"]
        if reg["kind"] == "classic":
            data = stack.pop_bytes(int(reg["bytes"]))
            x[:, r0:r1] = decode_rows(data, channels, r1 - r0, width)
        else:
            # regions are decoded bottom-up, so the rows below this one are already known
            x[:, r0:r1] = decode_region(stack, sm, (channels, r1 - r0, width), progress=progress,
                                        context=x[:, r1 : r1 + context_rows], weights=weights)
    return np.ascontiguousarray(x.transpose(1, 2, 0))
