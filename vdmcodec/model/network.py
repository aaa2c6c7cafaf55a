"""The epsilon-prediction network: a small, fully convolutional U-Net conditioned on gamma.

No normalisation layers: every output pixel depends only on its receptive field, so a
region coded on its own gives the same numbers however large it is, and CPU time goes to
convolutions.  Residual branches end in zero-initialised convolutions and the output is
eps_hat = z + net(z, gamma), which is the right answer at high noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


AUX_NAMES = ("decoder_log_scale", "reverse_var", "channel_coef")


@dataclass
class NetConfig:
    # the shipped model's shape (vdmc-rgb-t64-s5 onwards); `train`'s options default to these
    channels: tuple[int, int, int] = (16, 64, 128)  # full, 1/2 and 1/4 resolution
    down_blocks: tuple[int, int] = (1, 3)  # residual blocks at 1/2 and 1/4 on the way down
    up_blocks: int = 1  # residual blocks at 1/2 on the way up
    emb_dim: int = 128
    fourier_exponents: tuple[int, ...] = (6, 7)
    image_channels: int = 3
    rounding_input: bool = True  # eps implied by the nearest pixel level, plus a gamma-gated skip
    decoder_head: bool = True  # extra outputs: per-pixel log-scale correction of p(x | z_0)
    variance_head: bool = True  # extra outputs: per-pixel variance of p(z_{i-1} | z_i)
    channel_head: bool = True  # extra outputs: per-pixel colour coefficients of p(x | z_0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        d.setdefault("rounding_input", False)  # configs written before the option had none
        d.setdefault("decoder_head", False)
        d.setdefault("variance_head", False)
        d.setdefault("channel_head", False)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def fourier_features(z: torch.Tensor, exponents: tuple[int, ...]) -> torch.Tensor:
    """sin/cos(2 pi 2^n z): the n = 7 pair has a period of one pixel level (2/256)."""
    feats = []
    for n in exponents:
        arg = z * (2.0 * math.pi * 2.0**n)
        feats += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(feats, dim=1)


def rounding_eps(z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The eps that z implies if x is the pixel level nearest to z / alpha.

    Exact while sigma/alpha * |eps| < half a level (the lowest-noise steps, which would
    otherwise cost the most bits); a bounded, harmless input at higher noise.
    """
    g = gamma.to(z.dtype)[:, None, None, None]
    alpha = torch.sqrt(torch.sigmoid(-g))
    sigma = torch.sqrt(torch.sigmoid(g))
    level = torch.clamp(torch.round((z / alpha + 1.0) * 128.0 - 0.5), 0.0, 255.0)
    x_near = (2.0 * level + 1.0) / 256.0 - 1.0
    return torch.clamp((z - alpha * x_near) / sigma, -10.0, 10.0)


def gamma_embedding(gamma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of gamma mapped to about [0, 1000], as in the VDM reference."""
    t = (gamma.float() + 13.3) / 18.3 * 1000.0
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=gamma.device) / (half - 1))
    args = t[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1.0 + scale) + shift
        return x + self.conv2(F.silu(h))


class EpsNet(nn.Module):
    """eps_hat(z, gamma) for z of shape (B, C, H, W), any H and W."""

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        cfg = cfg or NetConfig()
        self.cfg = cfg
        c0, c1, c2 = cfg.channels
        cin = cfg.image_channels * (1 + 2 * len(cfg.fourier_exponents) + int(cfg.rounding_input))
        self.emb = nn.Sequential(
            nn.Linear(cfg.emb_dim, cfg.emb_dim * 2), nn.SiLU(), nn.Linear(cfg.emb_dim * 2, cfg.emb_dim)
        )
        self.stem = nn.Conv2d(cin, c0, 3, padding=1)
        self.down1 = nn.Conv2d(4 * c0, c1, 1)
        self.blocks1 = nn.ModuleList(ResBlock(c1, cfg.emb_dim) for _ in range(cfg.down_blocks[0]))
        self.down2 = nn.Conv2d(4 * c1, c2, 1)
        self.blocks2 = nn.ModuleList(ResBlock(c2, cfg.emb_dim) for _ in range(cfg.down_blocks[1]))
        self.up2 = nn.Conv2d(c2, 4 * c1, 1)
        self.ublocks1 = nn.ModuleList(ResBlock(c1, cfg.emb_dim) for _ in range(cfg.up_blocks))
        self.up1 = nn.Conv2d(c1, 4 * c0, 1)
        self.head = nn.Conv2d(c0, c0, 3, padding=1)
        self.out = nn.Conv2d(c0, cfg.image_channels * (1 + len(self.aux_heads())), 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if cfg.rounding_input:
            self.round_gate = nn.Linear(cfg.emb_dim, cfg.image_channels)
            nn.init.zeros_(self.round_gate.weight)
            nn.init.constant_(self.round_gate.bias, -6.0)

    def aux_heads(self) -> list[str]:
        """Names of the extra output groups (image_channels each), after the eps channels."""
        heads = (("decoder_log_scale", self.cfg.decoder_head), ("reverse_var", self.cfg.variance_head),
                 ("channel_coef", self.cfg.channel_head))
        return [n for n, on in heads if on]

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, with_aux: bool = False, with_features: bool = False):
        """z: (B, C, H, W) float32; gamma: (B,) or scalar.  Returns eps_hat of z's shape, and
        with `with_aux` also a dict of the extra outputs, each of z's shape (zeros for a head
        the network does not have): "decoder_log_scale" (used at gamma0, by p(x | z_0)) and
        "reverse_var" (used at gamma_i, i >= 1, by p(z_{i-1} | z_i)) and "channel_coef" (at
        gamma0: the raw colour coefficients of p(x | z_0), G on R, B on R, B on G).  With
        `with_features` (and with_aux) the dict also holds "features": the output layer's
        input, (B, channels[0], H, W), which an image's own output corrections read.

        A one-channel z (greyscale) is run as three equal channels and the outputs averaged.
        """
        grey = z.shape[1] == 1 and self.cfg.image_channels == 3
        if grey:
            z = z.expand(-1, 3, -1, -1)
        b, _, h, w = z.shape
        gamma = gamma.reshape(-1).to(z.dtype).expand(b) if gamma.numel() == 1 else gamma.to(z.dtype)
        emb = self.emb(gamma_embedding(gamma, self.cfg.emb_dim))
        ph, pw = (-h) % 4, (-w) % 4
        x = F.pad(z, (0, pw, 0, ph), mode="replicate") if (ph or pw) else z
        feats = [x, fourier_features(x, self.cfg.fourier_exponents)]
        if self.cfg.rounding_input:
            e_round = rounding_eps(x, gamma)
            feats.append(e_round)
        x = torch.cat(feats, dim=1)
        h0 = self.stem(x)
        h1 = self.down1(F.pixel_unshuffle(F.silu(h0), 2))
        for blk in self.blocks1:
            h1 = blk(h1, emb)
        h2 = self.down2(F.pixel_unshuffle(F.silu(h1), 2))
        for blk in self.blocks2:
            h2 = blk(h2, emb)
        u1 = h1 + F.pixel_shuffle(self.up2(F.silu(h2)), 2)
        for blk in self.ublocks1:
            u1 = blk(u1, emb)
        u0 = h0 + F.pixel_shuffle(self.up1(F.silu(u1)), 2)
        feats = F.silu(self.head(F.silu(u0)))
        out = self.out(feats)[:, :, :h, :w]
        c = z.shape[1]
        aux = {name: out[:, c * (k + 1) : c * (k + 2)] for k, name in enumerate(self.aux_heads())}
        out = out[:, :c]
        eps = z + out
        if self.cfg.rounding_input:
            gate = torch.sigmoid(self.round_gate(emb))[:, :, None, None]
            eps = eps + gate * (e_round[:, :, :h, :w] - z)
        if grey:
            eps = eps.mean(dim=1, keepdim=True)
            aux = {k: v.mean(dim=1, keepdim=True) for k, v in aux.items()}
        if not with_aux:
            return eps
        if with_features:
            aux["features"] = feats[:, :, :h, :w]
        for name in AUX_NAMES:
            aux.setdefault(name, torch.zeros_like(eps))
        return eps, aux


# Views of an ensemble of n network calls, as (transpose H and W first?, flipped dims of a
# (B, C, H, W) tensor): the identity, then the horizontal, vertical and both flips, then (8,
# format 10) the same four of the transposed image.  Training flips its crops, so the network
# is nearly equivariant to them and the mean of its outputs on the views is a better prediction.
_FLIPS = ((), (3,), (2,), (2, 3))
ENSEMBLE_FLIPS = {1: ((False, ()),), 2: ((False, ()), (False, (3,))), 4: tuple((False, d) for d in _FLIPS),
                  8: tuple((t, d) for t in (False, True) for d in _FLIPS)}


def _view(z: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    if transpose:
        z = z.transpose(2, 3)
    return torch.flip(z, dims) if dims else z.contiguous() if transpose else z


def _unview(y: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    if dims:
        y = torch.flip(y, dims)
    return y.transpose(2, 3).contiguous() if transpose else y


def flip_ensemble(net: EpsNet, z: torch.Tensor, gamma: torch.Tensor, calls: int,
                  with_features: bool = False) -> tuple[torch.Tensor, dict]:
    """net(z, gamma, with_aux=True, with_features=...) averaged over the flips of
    ENSEMBLE_FLIPS[calls], each output flipped back; always summed in the same order (the
    coder needs identical results).  Sizes are checked where they come in
    (StepModel.ensemble, the file header)."""
    return flip_ensembles(net, z, gamma, (calls,), with_features)[calls]


def flip_ensembles(net: EpsNet, z: torch.Tensor, gamma: torch.Tensor, calls: tuple[int, ...],
                   with_features: bool = False) -> dict[int, tuple[torch.Tensor, dict]]:
    """flip_ensemble for each size in `calls` from one pass over the largest one's flips:
    every smaller flip set is a prefix of a larger one and the sums run in the same order,
    so each result is bit for bit what flip_ensemble of that size gives alone."""
    out = {}
    eps_sum, aux_sum = None, None
    for n, (transpose, dims) in enumerate(ENSEMBLE_FLIPS[max(calls)], start=1):
        eps, aux = net(_view(z, transpose, dims), gamma, with_aux=True, with_features=with_features)
        if transpose or dims:
            eps, aux = _unview(eps, transpose, dims), {k: _unview(v, transpose, dims) for k, v in aux.items()}
        eps_sum = eps if eps_sum is None else eps_sum + eps
        aux_sum = aux if aux_sum is None else {k: aux_sum[k] + v for k, v in aux.items()}
        if n in calls:
            out[n] = (eps_sum, aux_sum) if n == 1 else (eps_sum / n, {k: v / n for k, v in aux_sum.items()})
    return out
