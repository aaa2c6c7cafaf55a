"""A small nonlinear refinement of the multi-pass pixel decoder p(x | z_0).

The four-pass decoder (vdm.VDM.context_params) predicts a later pass's pixel from the
normalised residuals of the pixels coded before it with one linear 5x5 filter and one
log-scale per pass.  That cannot say "the neighbours missed by a lot, so widen this pixel"
or "the residuals line up along an edge, so follow it".  This module adds, per pass p >= 1,
a small convolutional network that reads the same residuals (masked to pixels of earlier
passes) with the big network's location and scale, and returns a further shift of the
location, a log-scale change and a change of the colour coefficients at that pass's pixels.

Its last layer starts at zero, so a model with a fresh ContextNet codes exactly as it did
without one; it is trained with the big network frozen (train_context.py), from cached
network outputs at z_0, which is cheap on a CPU.  The coder runs it in float32 on the same
inputs in encoder and decoder and snaps its outputs, like the big network's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

DLOG_SCALE_MAX = 2.0  # the refinement's log-scale change is bounded to +-this
DCOEF_MAX = 0.5  # and its colour-coefficient change to +-this
INPUTS_PER_CHANNEL = 3  # masked residual, base location, log of the base scale (levels)
OUTPUTS_PER_CHANNEL = 3  # shift (in scales), log-scale change, colour-coefficient change


@dataclass
class ContextNetConfig:
    hidden: int = 32
    kernel: int = 5  # first layer's reach: the pixels within 2 of the coded one
    passes: int = 4  # the decoder's passes; a network for each pass after the first
    channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ContextNetConfig":
        return cls(**d)


def _pass_net(cfg: ContextNetConfig) -> nn.Sequential:
    c = cfg.channels
    last = nn.Conv2d(cfg.hidden, OUTPUTS_PER_CHANNEL * c, 1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(INPUTS_PER_CHANNEL * c, cfg.hidden, cfg.kernel, padding=cfg.kernel // 2),
        nn.SiLU(),
        nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1),
        nn.SiLU(),
        last,
    )


class ContextNet(nn.Module):
    """refine(p, u, loc, log_scale) -> (shift, dlog_scale, dcoef), each (B, C, H, W).

    u: normalised residuals (x - loc) / scale of the pixels coded before pass p, zero
    elsewhere; loc: the network's location in x_tilde units; log_scale: the network's
    base scale, as log(scale in pixel levels).  Only the outputs at pass
    p's pixels are used.  A one-channel image is run as three equal channels and the
    outputs averaged (colour coefficients are unused for it)."""

    def __init__(self, cfg: ContextNetConfig | None = None):
        super().__init__()
        self.cfg = cfg or ContextNetConfig()
        self.nets = nn.ModuleList(_pass_net(self.cfg) for _ in range(self.cfg.passes - 1))

    def forward(self, p: int, u: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                head: tuple[torch.Tensor, torch.Tensor] | None = None):
        return self.outputs(p, self.features(p, u, loc, log_scale), head, grey=u.shape[1] == 1)

    def features(self, p: int, u: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """Pass p's hidden features (B, hidden, H, W): all but the last layer.  They do not
        depend on the last layer, so a per-image fit of that layer computes them once."""
        if u.shape[1] == 1 and self.cfg.channels == 3:
            u, loc, log_scale = (t.expand(-1, 3, -1, -1) for t in (u, loc, log_scale))
        return self.nets[p - 1][:-1](torch.cat([u, loc, log_scale], dim=1))

    def head(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass p's last layer: (outputs, hidden, 1, 1) weight and (outputs,) bias."""
        last = self.nets[p - 1][-1]
        return last.weight, last.bias

    def outputs(self, p: int, feats: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor] | None = None,
                grey: bool = False):
        """(shift, dlog_scale, dcoef) from pass p's features; head: a last layer to use instead
        of the model's (an image's own).  grey: average the channels (one-channel image)."""
        weight, bias = self.head(p) if head is None else head
        out = F.conv2d(feats, weight.to(feats.dtype), bias.to(feats.dtype))
        c = self.cfg.channels
        shift, dls, dcoef = out[:, :c], out[:, c : 2 * c], out[:, 2 * c :]
        dls = DLOG_SCALE_MAX * torch.tanh(dls / DLOG_SCALE_MAX)
        dcoef = DCOEF_MAX * torch.tanh(dcoef / DCOEF_MAX)
        if grey:
            shift, dls = shift.mean(1, keepdim=True), dls.mean(1, keepdim=True)
            dcoef = torch.zeros_like(shift)
        return shift, dls, dcoef


def flops_per_pixel(cfg: ContextNetConfig) -> int:
    """Multiply-adds per pixel of one pass's network (the coder runs one per later pass)."""
    c, h, k = cfg.channels, cfg.hidden, cfg.kernel
    return INPUTS_PER_CHANNEL * c * h * k * k + h * h * 9 + h * OUTPUTS_PER_CHANNEL * c

