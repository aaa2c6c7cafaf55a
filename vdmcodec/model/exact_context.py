"""The pixel decoder's context network (context_net.ContextNet) in exact arithmetic.

The same two rules as the exact eps network (exact_net): integer convolutions whose every
partial sum stays below 2^24, and elementwise IEEE operations in a fixed order.  Per
(pass, channel) group: the inputs (masked normalised residuals, base location, log of the
base scale) on fixed grids, a 5x5 stride-2 convolution, SiLU, a 3x3 convolution, SiLU (both
re-quantised with one scale per layer, calibrated on training photos), then the last 1x1
layer (the model's or an image's own, float64) as a fixed-order float64 sum, and the
log-scale bound through detmath's tanh.

>>> ExactContextNet.INPUT_FRAC_BITS
(8, 10, 8)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..coding import detmath
from .context_net import DLOG_SCALE_MAX, ContextNet
from .exact_net import ExactConv, _choose_groups, affine_act, check_exact_sums, integer_weights

U_MAX, LOC_MAX, LOG_SCALE_MAX = 16.0, 2.0, 8.0  # clamps of the three inputs (CONTEXT_RESIDUAL_CLIP = 16)
HIDDEN_BITS = 12
EXACT_CONTEXT_VERSION = 1


class ExactContextNet:
    """ContextNet's groups in exact arithmetic; `refine` gives what ContextNet.outputs gives."""

    INPUT_FRAC_BITS = (8, 10, 8)  # residuals, location, log-scale: grids of 2^-bits

    def __init__(self, state: dict, net: ContextNet):
        """state: export_context's tables; net: the float network whose weights they quantise."""
        if int(state["version"]) != EXACT_CONTEXT_VERSION:
            raise ValueError(f"exact context network version {state['version']} is not {EXACT_CONTEXT_VERSION}")
        self.state = state
        self.groups = [tuple(int(v) for v in g) for g in state["groups"]]
        self.channels = int(state["channels"])
        self.kernel = int(state["kernel"])
        self.layers = []
        for g, (a, b) in enumerate(state["layers"]):
            convs = []
            for st, module in ((a, net.nets[g][0]), (b, net.nets[g][2])):
                st = dict(st)
                fold = st.pop("weight_fold", None)
                wq = integer_weights(module.weight.detach().double().numpy(), st.pop("weight_scale").double().numpy(),
                                     None if fold is None else fold.double().numpy())
                check_exact_sums(wq, st["in_bound"].numpy(), int(st["groups"]), f"context group {g}")
                convs.append(ExactConv(weight=torch.from_numpy(wq).float(), **st))
            self.layers.append(tuple(convs))
        self.heads = [(seq[-1].weight.detach().double().numpy(), seq[-1].bias.detach().double().numpy()) for seq in net.nets]

    def group_index(self, p: int, c: int) -> int:
        return self.groups.index((p, c))

    @classmethod
    def input_levels(cls, u: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, ...]:
        """The three inputs on their grids (float32 integers), each (C, H, W): u the clipped
        normalised residuals, loc and scale the base location and scale in levels."""
        return (cls.residual_levels(u),) + cls.base_levels(loc, scale)

    @classmethod
    def residual_levels(cls, u: np.ndarray) -> np.ndarray:
        return np.rint(np.clip(u, -U_MAX, U_MAX) * float(1 << cls.INPUT_FRAC_BITS[0])).astype(np.float32)

    @classmethod
    def base_levels(cls, loc: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The location and log-scale inputs: the same for every group of a region."""
        fl, fs = (float(1 << b) for b in cls.INPUT_FRAC_BITS[1:])
        lq = np.rint(np.clip((loc + 0.5) * (1.0 / 128.0) - 1.0, -LOC_MAX, LOC_MAX) * fl)
        sq = np.rint(np.clip(detmath.log(scale), -LOG_SCALE_MAX, LOG_SCALE_MAX) * fs)
        return lq.astype(np.float32), sq.astype(np.float32)

    def features(self, g: int, inp: torch.Tensor, classes) -> list[torch.Tensor | None]:
        """Group g's last hidden features (float32 values) on the grid of each pixel class, as
        ContextNet.features; inp: (1, 3 * channels, H, W) float32 integers (input_levels,
        residuals masked to the known pixels)."""
        conv0, conv1 = self.layers[g]
        r = self.kernel // 2
        h, w = inp.shape[-2:]
        pad = F.pad(inp, (r, r + 1, r, r + 1))
        out = []
        for ra, ca in classes:
            nh, nw = len(range(ra, h, 2)), len(range(ca, w, 2))
            if not (nh and nw):
                out.append(None)
                continue
            x = pad[..., ra:, ca:].contiguous(memory_format=torch.channels_last)
            y = conv0.conv(x)[..., :nh, :nw]
            a = affine_act(y, *conv0.params(0), *conv1.quant(0), groups=conv1.groups)
            feats = affine_act(conv1.conv(a), *conv1.params(0), np.float32(self.state["feature_mult"]),
                               np.float32(self.state["feature_max"]))[0]
            out.append(feats * float(self.state["feature_scale"]))
        return out

    def refine(self, g: int, inp: torch.Tensor, classes, shape, head=None) -> tuple[np.ndarray, np.ndarray]:
        """(shift, log-scale change), each (H, W) float64, zero off the classes' pixels: the
        last layer (`head`: (weight (2, hidden, 1, 1), bias (2,)) float64, else the model's)
        summed feature by feature in a fixed order, the log-scale bounded by tanh."""
        weight, bias = self.heads[g] if head is None else head
        weight = np.asarray(weight, dtype=np.float64).reshape(2, -1)
        bias = np.asarray(bias, dtype=np.float64)
        h, w = shape[-2], shape[-1]
        out = np.zeros((2, h, w))
        for f, (ra, ca) in zip(self.features(g, inp, classes), classes):
            if f is None:
                continue
            fv = f[0].double().numpy()
            acc = np.broadcast_to(bias[:, None, None], (2,) + fv.shape[1:])
            for k in range(fv.shape[0]):
                acc = acc + weight[:, k][:, None, None] * fv[k][None]
            out[:, ra::2, ca::2] = acc
        dls = DLOG_SCALE_MAX * detmath.tanh(out[1] * (1.0 / DLOG_SCALE_MAX))
        return out[0], dls


@torch.no_grad()
def calibrate_context(net: ContextNet, run) -> dict:
    """max |value| of each group's hidden activations (after each SiLU) while `run()` codes
    calibration images with the float network."""
    ranges = {}
    hooks = []
    for g, seq in enumerate(net.nets):
        for layer in (1, 3):
            def hook(module, args, out, key=(g, layer)):
                ranges[key] = max(ranges.get(key, 0.0), float(out.abs().max()))
            hooks.append(seq[layer].register_forward_hook(hook))
    try:
        run()
    finally:
        for hk in hooks:
            hk.remove()
    return ranges


def export_context(net: ContextNet, ranges: dict) -> ExactContextNet:
    """An ExactContextNet from the float one and calibrate_context's ranges."""
    cfg = net.cfg
    fu, fl, fs = (2.0 ** -b for b in ExactContextNet.INPUT_FRAC_BITS)
    c = cfg.channels
    in_scale0 = np.array([fu] * c + [fl] * c + [fs] * c)
    in_bound0 = np.array([U_MAX / fu] * c + [LOC_MAX / fl] * c + [LOG_SCALE_MAX / fs] * c)
    hidden_max = 2 ** (HIDDEN_BITS - 1) - 1
    layers = []
    feature_range = max(ranges[(g, 3)] for g in range(len(net.nets)))
    for g, seq in enumerate(net.nets):
        w0 = seq[0].weight.detach().double().numpy() * in_scale0[None, :, None, None]  # input grids folded in
        groups0, _, ws0 = _choose_groups(w0, in_bound0)
        s1 = np.float32(max(ranges[(g, 1)], 1e-6) / hidden_max)
        w1 = seq[2].weight.detach().double().numpy()
        groups1, _, ws1 = _choose_groups(w1, np.full(w1.shape[1], float(hidden_max)))
        conv0 = {"weight_scale": torch.from_numpy(ws0), "weight_fold": torch.from_numpy(in_scale0),
                 "groups": groups0, "in_max": int(in_bound0.max()),
                 "mult": torch.from_numpy(ws0[None]).float(), "offset": seq[0].bias.detach().float()[None],
                 "in_mult": torch.ones(1), "in_scale": torch.ones(1), "in_bound": torch.from_numpy(in_bound0).float(),
                 "stride": 2, "pad": 0}
        conv1 = {"weight_scale": torch.from_numpy(ws1), "groups": groups1, "in_max": hidden_max,
                 "mult": torch.from_numpy(float(s1) * ws1[None]).float(), "offset": seq[2].bias.detach().float()[None],
                 "in_mult": torch.tensor([1.0 / float(s1)]).float(), "in_scale": torch.tensor([float(s1)]),
                 "in_bound": torch.full((w1.shape[1],), float(hidden_max))}
        layers.append((conv0, conv1))
    feature_scale = np.float32(max(feature_range, 1e-6) / hidden_max)
    state = {"version": EXACT_CONTEXT_VERSION, "groups": [list(g) for g in net.groups], "channels": c, "passes": cfg.passes,
             "kernel": cfg.kernel, "layers": layers,
             "feature_scale": float(feature_scale), "feature_mult": float(np.float32(1.0 / float(feature_scale))),
             "feature_max": hidden_max}
    return ExactContextNet(state, net)


class ExactModel:
    """What a checkpoint carries for exact coding: the eps network and the context network
    (None for a model without one) in exact arithmetic."""

    VERSION = 1

    def __init__(self, net, context: ExactContextNet | None):
        self.net, self.context = net, context

    def state(self) -> dict:
        return {"version": self.VERSION, "net": self.net.state,
                "context": None if self.context is None else self.context.state}

    @classmethod
    def from_state(cls, state: dict, model) -> "ExactModel":
        """The tables of `state` on the float weights of `model` (a VDM)."""
        from .exact_net import ExactNet

        if int(state["version"]) != cls.VERSION:
            raise ValueError(f"exact model version {state['version']} is not {cls.VERSION}")
        ctx = state.get("context")
        if (ctx is None) != (model.context_net is None):
            raise ValueError("exact tables and model disagree on the context network")
        return cls(ExactNet(state["net"], model.net), None if ctx is None else ExactContextNet(ctx, model.context_net))
