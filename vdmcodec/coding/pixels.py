"""p(x | z_0) as the coder runs it: the base logistic per pixel, the multi-pass, colour-ordered
pixel context (the model's or an image's own weights, `ContextWeights`), and the table codecs
that push and pop the pixels pass by pass (`PixelCodec`).  model.vdm.VDM.context_params is
the same computation in torch, for training and the encoder's fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.vdm import CONTEXT_RESIDUAL_CLIP, VDM, group_inputs, pass_classes, pass_map_np
from ..model.context_net import ContextNet
from .ans import AnsStack, categorical
from .arith import FLOAT, Arith, EXACT
from .grids import PARAM_SNAP, snap

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
        return self.arith.logistic_table(loc, scale, offset, self.width)

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

    def bits_map(self, x: np.ndarray) -> np.ndarray:
        """-log2 P of each pixel of x (C, H, W), float64 (C, H, W): bits summed to `bits`."""
        x = x.reshape(self.shape)
        out = np.empty(self.shape)
        for mask, probs, offset in self._group_tables(x):
            idx = np.clip(x[mask].ravel().astype(np.int64) - offset, 0, self.width - 1)
            out[mask] = -np.log2(probs[np.arange(len(idx)), idx]).reshape(out[mask].shape)
        return out

    def tables(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(probs, offset) of every group, for tests."""
        return [(probs, offset) for _, probs, offset in self._group_tables(x)]


def table_bits_rows(probs: np.ndarray, idx: np.ndarray) -> float:
    return float(-np.log2(probs[np.arange(len(idx)), idx]).sum())
