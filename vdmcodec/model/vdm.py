"""VDM terms in bits per dimension, and the per-step Gaussians the coder needs.

Notation follows DESIGN.md section 1: x_tilde = (2x + 1)/256 - 1, sigma^2 = sigmoid(gamma),
alpha^2 = sigmoid(-gamma), discrete times t_i = i/T.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .context_net import ContextNet, ContextNetConfig
from .network import EpsNet, NetConfig
from .schedule import LearnedSchedule

LN2 = math.log(2.0)
DECODER_LOG_SCALE_RANGE = (-6.0, 3.0)  # per-pixel correction, bounded so no scale collapses
REVERSE_LOG_VAR_MAX = 4.0  # log of the largest reverse-variance inflation
CONTEXT_KERNEL = 5  # spatial reach of the pixel context (anchors within 2 pixels)
CONTEXT_RESIDUAL_CLIP = 16.0  # |normalised residual| fed to the context, bounded against outliers


CONTEXT_PASSES = (2, 4)


def pass_classes(passes: int) -> list[list[tuple[int, int]]]:
    """The (row % 2, col % 2) classes of pixels in each pass, in coding order.

    Two passes: the checkerboard (row + col even) first, then the rest, each knowing the
    anchors on its four sides.  Four: (even row, even column), then (odd, odd), which knows
    its four diagonal neighbours, then (even, odd), which knows its four sides, and last
    (odd, even), which knows all eight neighbours."""
    if passes == 2:
        return [[(0, 0), (1, 1)], [(0, 1), (1, 0)]]
    if passes == 4:
        return [[(0, 0)], [(1, 1)], [(0, 1)], [(1, 0)]]
    raise ValueError(f"the pixel context has 2 or 4 passes, not {passes}")


def pass_map_np(h: int, w: int, passes: int) -> np.ndarray:
    """(h, w) int64: the pass each pixel is coded in."""
    out = np.zeros((h, w), dtype=np.int64)
    for p, classes in enumerate(pass_classes(passes)):
        for ra, ca in classes:
            out[ra::2, ca::2] = p
    return out


def pass_map(h: int, w: int, passes: int, device=None) -> torch.Tensor:
    return torch.from_numpy(pass_map_np(h, w, passes)).to(device)


def upgrade_context_passes(state: dict, passes: int) -> dict:
    """A two-pass model's context weights as a `passes`-pass model with the same decoder.

    Of four passes, the first two are the old anchors (no spatial context, the old anchors'
    scales) and the last two the old second pass, each with the old weights on the pixels of
    the old anchors only: every pixel keeps its distribution, so the terms are unchanged."""
    w_key, s_key = "context_weight", "context_log_scale"
    if w_key not in state or state[w_key].shape[0] == (passes - 1) * state[w_key].shape[1]:
        return state
    if passes != 4 or state[w_key].shape[0] != state[w_key].shape[1]:
        raise ValueError(f"cannot turn context weights of shape {tuple(state[w_key].shape)} into {passes} passes")
    w, ls = state[w_key].float(), state[s_key].float()
    k = w.shape[-1]
    off = torch.arange(k) - k // 2
    odd = (off[:, None] + off[None, :]) % 2 == 1  # offsets at which a (row+col)-odd pixel sees anchors
    old = w * odd
    out = dict(state)
    out[w_key] = torch.cat([torch.zeros_like(w), old, old])
    out[s_key] = torch.stack([ls[0], ls[0], ls[1], ls[1]])
    return out


def channel_coefficients(raw: torch.Tensor) -> torch.Tensor:
    """Colour coefficients (G on R, B on R, B on G) from the network's raw output, in (-1, 1)."""
    return torch.tanh(raw)


def reverse_log_var(h: torch.Tensor) -> torch.Tensor:
    """lambda = log(var_P / s_i^2) of p(z_{i-1} | z_i) from the network's raw output h:
    zero at h = 0 (the fixed-variance model), at least -log 2, at most REVERSE_LOG_VAR_MAX.
    The best lambda is log(1 + r) for a squared mean error of r s_i^2, so it is mostly >= 0."""
    return torch.clamp(F.softplus(h) - LN2, max=REVERSE_LOG_VAR_MAX)


def step_kl(r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """KL(N(m, s^2) || N(m', s^2 e^lam)) in nats, with r = (m - m')^2 / s^2 (elementwise)."""
    return 0.5 * (lam + torch.exp(-lam) * (1.0 + r) - 1.0)


@dataclass
class VDMConfig:
    steps: int = 64  # T, the same for training and coding
    gamma0: float = -13.3
    gamma1: float = 5.0
    # p(x | z_0) located at "z0" (z_0 / alpha_0) or at "xhat", the network's estimate of x at
    # z_0 with a per-pixel scale: at the learned gamma0 the first costs ~1.8 bpd, the second less
    decoder: str = "xhat"
    # "xhat" only: code the pixels in checkerboard passes, R then G then B in each, each
    # pixel's location shifted by what the pixels already coded say about its residual
    pixel_context: bool = True
    context_passes: int = 4  # 2 or 4 (pass_classes); models written before the option have 2
    net: NetConfig = field(default_factory=NetConfig)
    # the nonlinear refinement of the pixel context (context_net.py); None: linear only
    context_net: ContextNetConfig | None = None
    # network calls at z_0 (flips averaged) whose outputs the pixel context was trained on:
    # 1, or the coder's z0_ensemble for every image (coding.steps.StepModel.z0_calls)
    context_calls: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        if self.context_net is None:
            del d["context_net"]  # configs of models without it stay as they were (same hash)
        if self.context_calls == 1:
            del d["context_calls"]  # the same for models whose context saw one call
        else:
            d["context_net"] = self.context_net.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VDMConfig":
        d = dict(d)
        d["net"] = NetConfig.from_dict(d["net"])
        if d.get("context_net") is not None:
            d["context_net"] = ContextNetConfig.from_dict(d["context_net"])
        d.setdefault("decoder", "z0")  # configs written before the option had none
        d.setdefault("pixel_context", False)
        d.setdefault("context_passes", 2)
        if d["decoder"] not in ("z0", "xhat"):
            raise ValueError(f"unknown pixel decoder {d['decoder']!r}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.pixel_context and not (self.decoder == "xhat" and self.net.channel_head and self.net.decoder_head):
            raise ValueError("pixel_context needs the xhat decoder and the network's decoder and channel heads")
        if self.context_passes not in CONTEXT_PASSES:
            raise ValueError(f"context_passes must be one of {CONTEXT_PASSES}, not {self.context_passes}")
        if self.context_net is not None and not (self.pixel_context and self.context_net.passes == self.context_passes
                                                 and self.context_net.channels == self.net.image_channels):
            raise ValueError("context_net needs the pixel context, with its passes and the network's channels")


def pixels_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels -> x_tilde = (2x + 1)/256 - 1 in float32."""
    return (2.0 * x.float() + 1.0) / 256.0 - 1.0


def sigma2(gamma: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(gamma)


def alpha2(gamma: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(-gamma)


def discretized_logistic_logp(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(x) under a logistic(loc, scale) discretised on the 256 levels (x uint8-valued).

    The end bins take the tails.  Works in float64 for the tiny scales near gamma0.
    """
    x = x.double()
    xt = (2.0 * x + 1.0) / 256.0 - 1.0
    loc, scale = loc.double(), scale.double()
    upper = (xt + 1.0 / 256.0 - loc) / scale
    lower = (xt - 1.0 / 256.0 - loc) / scale
    upper = torch.where(x >= 255, torch.full_like(upper, math.inf), upper)
    lower = torch.where(x <= 0, torch.full_like(lower, -math.inf), lower)
    # log(sigmoid(u) - sigmoid(l)) computed on the side of the bin nearer the centre
    mid = 0.5 * (upper + lower)
    flip = mid > 0
    u = torch.where(flip, -lower, upper)
    l = torch.where(flip, -upper, lower)
    log_cdf_u = F.logsigmoid(u)
    log_cdf_l = F.logsigmoid(l)
    return log_cdf_u + torch.log1p(-torch.exp(torch.clamp(log_cdf_l - log_cdf_u, max=-1e-12)))


def context_net_inputs(loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The context network's per-pixel inputs besides the residuals, in float32: the base
    location in x_tilde units and the log of the base scale in pixel levels."""
    return loc.float(), torch.log(scale.float() * 128.0)


def group_inputs(u: torch.Tensor, pm: torch.Tensor, p: int, c: int, net_in, net_channels: int) -> torch.Tensor:
    """A context-network group's input (B, 3 * net_channels, H, W) float32: the residuals
    known when channel c of pass p is coded (every channel of earlier passes, channels before
    c in pass p), then the base location and log-scale; a one-channel image as three equal
    channels."""
    chans = torch.arange(u.shape[1], device=u.device)[:, None, None]
    known = (pm < p) | ((pm == p) & (chans < c))
    parts = [(u * known).float(), *net_in]
    if u.shape[1] == 1 and net_channels == 3:
        parts = [t.expand(-1, 3, -1, -1) for t in parts]
    return torch.cat(parts, dim=1)


class VDM(nn.Module):
    def __init__(self, cfg: VDMConfig | None = None):
        super().__init__()
        cfg = cfg or VDMConfig()
        self.cfg = cfg
        self.schedule = LearnedSchedule(cfg.gamma0, cfg.gamma1)
        self.net = EpsNet(cfg.net)
        # learned log-correction of the pixel decoder's scale (tied to sigma0/alpha0)
        self.decoder_log_scale = nn.Parameter(torch.zeros(()))
        if cfg.pixel_context:
            cfg.validate()
            c, k, n = cfg.net.image_channels, CONTEXT_KERNEL, cfg.context_passes
            # linear prediction of a later pass's normalised residual from those of the pixels
            # coded before (zero at the start: an upgraded model begins as the one it came
            # from); passes 2, 3, ... stacked as one ((passes - 1) * C, C, K, K) convolution
            self.context_weight = nn.Parameter(torch.zeros((n - 1) * c, c, k, k))
            # log-scale change per pass and channel
            self.context_log_scale = nn.Parameter(torch.zeros(n, c))
        self.context_net = ContextNet(cfg.context_net) if cfg.context_net is not None else None

    def forward(self, x: torch.Tensor, recon_batch: int | None = None) -> dict:
        """Training entry point (so that DistributedDataParallel can wrap the whole model)."""
        return self.terms(x, recon_batch=recon_batch)

    @property
    def steps(self) -> int:
        return self.cfg.steps

    def decoder_scale(self, gamma0: torch.Tensor) -> torch.Tensor:
        """Logistic scale of p(x | z_0) in x_tilde units: sigma0/alpha0 * sqrt(3)/pi * exp(c)."""
        g = gamma0.double()
        return torch.exp(0.5 * g) * (math.sqrt(3.0) / math.pi) * torch.exp(self.decoder_log_scale.double())

    def decoder_params(self, z0: torch.Tensor, g0: torch.Tensor, eps: torch.Tensor | None = None,
                       aux: dict | None = None, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale (float64, x_tilde units) of the discretised logistic p(x | z_0),
        one per pixel.

        With the "xhat" decoder, eps and aux are the network's outputs at (z_0, gamma0)
        (computed here when not given).  With pixel_context, each pixel's distribution also
        depends on the pixels coded before it, which are taken from x (uint8-valued): the
        teacher-forced form that training and evaluation use."""
        a0, s0 = torch.sqrt(alpha2(g0.double())), torch.sqrt(sigma2(g0.double()))
        base = self.decoder_scale(g0)
        if self.cfg.decoder == "z0":
            return z0.double() / a0, base.expand(z0.shape)
        if eps is None:
            eps, aux = self.net(z0, g0.float().reshape(1), with_aux=True)
        loc = (z0.double() - s0 * eps.double()) / a0
        lo, hi = DECODER_LOG_SCALE_RANGE
        scale = base * torch.exp(torch.clamp(aux["decoder_log_scale"].double(), lo, hi))
        if not self.cfg.pixel_context:
            return loc, scale
        if x is None:
            raise ValueError("the pixel-context decoder needs the pixels coded before each one")
        return self.context_params(pixels_to_unit(x).double(), loc, scale, aux["channel_coef"])

    def context_weights(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(passes - 1, C, C, K, K) weights and (passes, C) log-scales in float64; for one
        channel, the RGB weights seen through three equal channels."""
        weight, log_scale = self.context_weight.double(), self.context_log_scale.double()
        c = weight.shape[1]
        weight = weight.reshape(-1, c, c, *weight.shape[2:])
        if channels == 1:
            weight, log_scale = weight.sum(2, keepdim=True).mean(1, keepdim=True), log_scale.mean(1, keepdim=True)
        return weight, log_scale

    def context_params(self, xt: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                       coef_raw: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                       head: list | None = None, feature_cache: dict | None = None,
                       gains: torch.Tensor | None = None,
                       coef_shift: torch.Tensor | None = None,
                       feature_head: torch.Tensor | None = None,
                       features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced locations and scales of the multi-pass, colour-ordered pixel decoder.

        Pass p (pass_map) is located at loc + scale * sum(context_weight[p-1] * residuals /
        scales) of the pixels of earlier passes over a CONTEXT_KERNEL square.  In every pass G
        is shifted by a * (R's residual) and B by b * (R's) + c * (G's), residuals taken from
        the pass's own locations.  Outside the image counts as zero residual.  With a
        context_net, each (pass, channel) group's network adds a shift and a log-scale change
        from the residuals known to that group (in float32).  The coder computes the
        same in numpy (coding.pixels.PixelCodec).  weights: (passes - 1, C, C, K, K) and
        (passes, C) float64 to use instead of the model's, and head: the context network's
        last layer per group (weight, bias) instead of the model's (an image's own,
        fitted by the encoder).  gains: (groups, 2) factors on each group's shift and
        log-scale change (an image's own; None: ones).  coef_shift: (passes, 3) added to the raw
        colour coefficients at each pass's pixels (an image's own; None: 0).  feature_head: (9,
        F + 1), an image's own linear read-out of the network's last features at z_0
        (`features`, (B, F, H, W)): a shift in scales, a log-scale change and raw colour
        coefficients, 3 each, added to the others (RGB only; coding.pixels.feature_outputs).
        feature_cache: a dict that keeps the
        context network's features between calls on the same pixels (they do not depend on
        what is fitted)."""
        b, c, h, w = xt.shape
        weight, log_scale = self.context_weights(c) if weights is None else weights
        passes = weight.shape[0] + 1
        pm = pass_map(h, w, passes, xt.device)
        u = torch.clamp((xt - loc) / scale, -CONTEXT_RESIDUAL_CLIP, CONTEXT_RESIDUAL_CLIP)
        shift = torch.zeros_like(u)
        log_scale = log_scale[pm].permute(2, 0, 1).to(u.dtype)
        if coef_shift is not None and c == 3:
            coef_raw = coef_raw + coef_shift.to(coef_raw.dtype)[pm].permute(2, 0, 1)
        fo = None
        if feature_head is not None and c == 3:
            fo = torch.einsum("of,bfhw->bohw", feature_head[:, :-1].to(u.dtype), features.to(u.dtype))
            fo = fo + feature_head[:, -1].to(u.dtype)[None, :, None, None]
            coef_raw = coef_raw + fo[:, 6:9].to(coef_raw.dtype)
        coef = channel_coefficients(coef_raw.to(u.dtype))
        for p in range(1, passes):
            s = F.conv2d(u * (pm < p), weight[p - 1].to(u.dtype), padding=CONTEXT_KERNEL // 2)
            shift = torch.where(pm == p, s, shift)
        if self.context_net is not None:
            ds, dls = self._context_net_outputs(u, pm, context_net_inputs(loc, scale), head, feature_cache, gains)
            shift, log_scale = shift + ds.to(u.dtype), log_scale + dls.to(u.dtype)
        if fo is not None:
            shift, log_scale = shift + fo[:, 0:3], log_scale + fo[:, 3:6]
        loc = loc + scale * shift
        scale = scale * torch.exp(log_scale)
        if c == 3:
            a = coef
            e = xt - loc
            loc = torch.stack([loc[:, 0], loc[:, 1] + a[:, 0] * e[:, 0],
                               loc[:, 2] + a[:, 1] * e[:, 0] + a[:, 2] * e[:, 1]], dim=1)
        return loc, scale

    def _context_net_outputs(self, u: torch.Tensor, pm: torch.Tensor, net_in, head, feature_cache, gains=None):
        """The context network's shifts and log-scale changes, (B, C, H, W) float32, each
        group's at its pass's pixels (teacher forced: every group sees its known residuals)."""
        net = self.context_net
        c = u.shape[1]
        classes = pass_classes(net.cfg.passes)
        shift, dls = torch.zeros_like(u, dtype=torch.float32), torch.zeros_like(u, dtype=torch.float32)
        for g, (p, ch) in enumerate(net.groups):
            if ch >= c:
                continue  # a one-channel image has the first channel's groups only
            feats = None if feature_cache is None else feature_cache.get(g)
            if feats is None:
                inp = group_inputs(u, pm, p, ch, net_in, net.cfg.channels)
                feats = net.features(g, inp, classes[p])
                if feature_cache is not None:
                    feature_cache[g] = [None if f is None else f.detach() for f in feats]
            ds, dl = net.outputs(g, feats, classes[p], u.shape, None if head is None else head[g])
            if gains is not None:
                ds, dl = ds * gains[g, 0], dl * gains[g, 1]
            shift[:, ch : ch + 1] += ds
            dls[:, ch : ch + 1] += dl
        return shift, dls

    def terms(self, x: torch.Tensor, step_index: torch.Tensor | None = None, generator=None,
              recon_batch: int | None = None) -> dict:
        """Per-image NELBO terms in bits per dimension (each a tensor of shape (B,)).

        x: (B, C, H, W) uint8-valued.  step_index: (B,) ints in 1..T (default: stratified
        random).  The diffusion term is the unbiased one-step estimate T * L_i.
        recon_batch: for training, compute the "xhat" decoder's term (one more network call)
        on only the first n images, scaled by B/n so that the batch mean stays unbiased.
        """
        b = x.shape[0]
        dims = x[0].numel()
        T = self.steps
        xt = pixels_to_unit(x)
        dev = x.device
        if step_index is None:
            u = torch.rand((), generator=generator, device=dev if generator is None else "cpu").item()
            tcont = torch.remainder(u + torch.arange(b, device=dev, dtype=torch.float64) / b, 1.0)
            step_index = torch.clamp(torch.floor(tcont * T).long() + 1, 1, T)
        step_index = step_index.to(dev)
        g_ends = self.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64, device=dev))
        g0, g1 = g_ends[0], g_ends[1]

        # z_0 ~ q(z_0 | x) for the reconstruction term -log p(x | z_0)
        e0 = torch.randn(x.shape, generator=generator, device=dev if generator is None else "cpu").to(dev)
        a0, s0 = torch.sqrt(alpha2(g0)), torch.sqrt(sigma2(g0))
        z0 = a0.float() * xt + s0.float() * e0
        n_rec = b if recon_batch is None else max(1, min(b, recon_batch))

        # prior: KL(q(z_1 | x) || N(0, I))
        a1sq, s1sq = alpha2(g1), sigma2(g1)
        xt64 = xt.double().flatten(1)
        prior = 0.5 * (s1sq + a1sq * xt64**2 - torch.log(s1sq) - 1.0).sum(1)

        # diffusion: T * KL(q(z_s | z_t, x) || p(z_s | z_t)), the one-step estimate of the sum over steps
        t = step_index.double() / T
        s = (step_index.double() - 1.0) / T
        g_t = self.schedule(t)
        g_s = self.schedule(s)
        eps = torch.randn(x.shape, generator=generator, device=dev if generator is None else "cpu").to(dev)
        at = torch.sqrt(alpha2(g_t)).float()[:, None, None, None]
        st = torch.sqrt(sigma2(g_t)).float()[:, None, None, None]
        zt = at * xt + st * eps
        if self.cfg.decoder == "xhat":
            # one network call for both: the diffusion step at z_t and the decoder at z_0
            gam = torch.cat([g_t.float(), g0.float().expand(n_rec)])
            out, aux = self.net(torch.cat([zt, z0[:n_rec]]), gam, with_aux=True)
            eps_hat, var_raw = out[:b], aux["reverse_var"][:b]
            loc, dscale = self.decoder_params(z0[:n_rec], g0, out[b:], {k: v[b:] for k, v in aux.items()}, x[:n_rec])
        else:
            eps_hat, aux = self.net(zt, g_t.float(), with_aux=True)
            var_raw = aux["reverse_var"]
            loc, dscale = self.decoder_params(z0[:n_rec], g0)
        recon = torch.zeros(b, dtype=torch.float64, device=dev)
        recon[:n_rec] = -discretized_logistic_logp(x[:n_rec], loc, dscale).flatten(1).sum(1) * (b / n_rec)
        # per pixel, (mu_Q - mu_P)^2 / s_i^2 = (SNR(s) - SNR(t)) (x - x_hat)^2 = expm1(g_t - g_s) (eps - eps_hat)^2
        r = torch.expm1(g_t - g_s)[:, None, None, None] * ((eps - eps_hat) ** 2).double()
        diffusion = T * step_kl(r, reverse_log_var(var_raw.double())).flatten(1).sum(1)

        scale = 1.0 / (dims * LN2)
        out = {
            "recon": recon * scale,
            "prior": prior * scale,
            "diffusion": diffusion * scale,
        }
        out["nelbo"] = out["recon"] + out["prior"] + out["diffusion"]
        return out
