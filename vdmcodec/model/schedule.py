"""Learned monotone noise schedule gamma(t), after the VDM reference NoiseSchedule_NNet.

gamma(t) = gamma0 + (gamma1 - gamma0) * (h(t) - h(0)) / (h(1) - h(0)), where h is a sum of a
positive-slope linear map and a positive-weight sigmoid layer, so gamma is monotone in t
whatever the weights; gamma1 - gamma0 is held at MIN_SPAN or more.  The schedule always
computes in float64: its values feed the coder.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MIN_SPAN = 1.0  # smallest gamma1 - gamma0


class LearnedSchedule(nn.Module):
    def __init__(self, gamma0: float = -13.3, gamma1: float = 5.0, n_features: int = 256):
        super().__init__()
        self.gamma0 = nn.Parameter(torch.tensor(float(gamma0)))
        self.gamma1 = nn.Parameter(torch.tensor(float(gamma1)))
        self.n_features = n_features
        # Raw weights pass through softplus so that every slope stays positive.
        self.w1 = nn.Parameter(torch.tensor(1.0))
        self.w2 = nn.Parameter(torch.randn(n_features) * 0.5)
        self.b2 = nn.Parameter(torch.randn(n_features) * 0.5)
        self.w3 = nn.Parameter(torch.full((n_features,), -3.0))

    def _h(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        w1 = F.softplus(self.w1.double())
        w2 = F.softplus(self.w2.double())
        w3 = F.softplus(self.w3.double())
        inner = torch.sigmoid((2.0 * (t[..., None] - 0.5)) * w2 + self.b2.double())
        return w1 * t + (2.0 * (inner - 0.5) * w3).sum(-1) / self.n_features

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """gamma(t) in float64, t in [0, 1] of any shape."""
        ends = self._h(torch.tensor([0.0, 1.0], dtype=torch.float64, device=self.gamma0.device))
        frac = (self._h(t) - ends[0]) / (ends[1] - ends[0])
        g0 = self.gamma0.double()
        # the endpoints are free parameters: keep gamma1 above gamma0 so that monotone holds
        span = torch.clamp(self.gamma1.double() - g0, min=MIN_SPAN)
        return g0 + span * frac

    @torch.no_grad()
    def table(self, steps: int) -> torch.Tensor:
        """gamma(i / steps) for i = 0..steps, float64 on the CPU."""
        t = torch.arange(steps + 1, dtype=torch.float64, device=self.gamma0.device) / steps
        return self.forward(t).cpu()
