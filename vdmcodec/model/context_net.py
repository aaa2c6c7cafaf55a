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
INPUTS_PER_CHANNEL = 3  # masked residual, base location, log of the base scale (levels)


@dataclass
class ContextNetConfig:
    hidden: int = 32
    kernel: int = 5  # first layer's reach: the pixels within 2 of the coded one
    passes: int = 4  # the decoder's passes
    channels: int = 3
    # one network per (pass, channel) group that knows something; the only layout so far
    # (session 7 also tried one per later pass for all channels: 0.018 bpd worse held out)
    groups: str = "channel"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ContextNetConfig":
        cfg = cls(**d)
        if cfg.groups != "channel":
            raise ValueError(f"unknown context network groups {cfg.groups!r}")
        return cfg


def _group_net(cfg: ContextNetConfig) -> nn.Sequential:
    """First layer evaluated at stride 2 (at one pixel class), the rest at that class's grid."""
    last = nn.Conv2d(cfg.hidden, 2, 1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(INPUTS_PER_CHANNEL * cfg.channels, cfg.hidden, cfg.kernel, stride=2),
        nn.SiLU(),
        nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1),
        nn.SiLU(),
        last,
    )


class ContextNet(nn.Module):
    """One small network per (pass, channel) group of the pixel decoder that knows something
    (all but the first pass's first channel), in coding order.

    Group (p, c) reads the normalised residuals of every channel of the earlier passes and of
    the channels before c in pass p (u masked accordingly; the colour coefficients saw only
    the same pixel's), with the base location and log-scale, and returns a shift (in scales)
    and a log-scale change for channel c.  It runs only at pass p's pixels: per pixel class
    of the pass, its first layer at stride 2 from that class's offset, the others on the
    class's grid, and the outputs are scattered back into full-size maps."""

    def __init__(self, cfg: ContextNetConfig):
        super().__init__()
        self.cfg = cfg
        self.groups = [(p, c) for p in range(cfg.passes) for c in range(cfg.channels) if (p, c) != (0, 0)]
        self.nets = nn.ModuleList(_group_net(cfg) for _ in self.groups)

    def group_index(self, p: int, c: int) -> int:
        return self.groups.index((p, c))

    def features(self, g: int, inp: torch.Tensor, classes) -> list[torch.Tensor | None]:
        """Group g's hidden features on the grid of each pixel class (ra, ca) of its pass (None
        for a class with no pixel here).  inp: (B, 3 * channels, H, W), the masked residuals,
        location and log-scale."""
        r = self.cfg.kernel // 2
        h, w = inp.shape[-2:]
        pad = F.pad(inp, (r, r + 1, r, r + 1))  # one more row and column: a 1-pixel class still fits
        net = self.nets[g]
        out = []
        for ra, ca in classes:
            nh, nw = len(range(ra, h, 2)), len(range(ca, w, 2))
            out.append(net[1:-1](net[0](pad[..., ra:, ca:])[..., :nh, :nw]) if nh and nw else None)
        return out

    def outputs(self, g: int, feats: list[torch.Tensor | None], classes, shape, head=None):
        """(shift, dlog_scale), each (B, 1, H, W), zero off the classes' pixels."""
        weight, bias = self.head(g) if head is None else head
        h, w = shape[-2], shape[-1]
        out = torch.zeros(shape[0], 2, h, w, dtype=torch.float32, device=weight.device)
        for f, (ra, ca) in zip(feats, classes):
            if f is not None:
                out[..., ra::2, ca::2] = F.conv2d(f, weight.to(f.dtype), bias.to(f.dtype))
        return out[:, :1], DLOG_SCALE_MAX * torch.tanh(out[:, 1:] / DLOG_SCALE_MAX)

    def head(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        last = self.nets[g][-1]
        return last.weight, last.bias

    def heads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.head(g) for g in range(len(self.groups))]
