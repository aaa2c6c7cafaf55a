"""The conformance reference of the exact network: numpy only, convolutions in int64.

Slow, short and meant to be read: it defines the numbers `exact_net.ExactNet` must give, bit
for bit (the tests compare them on random and real inputs).  Every convolution is an integer
sum in int64 (no float rounding at all, so the float32 fast path is right only if its bound
holds); everything else is the float32 / float64 sequence of `exact_ops` and of the output
stage, one IEEE operation at a time.
"""

from __future__ import annotations

import numpy as np

from . import exact_ops as ops
from .exact_net import E_ROUND_MAX, Z_FRAC_BITS, Z_MAX, conv_names

F32 = np.float32


def conv_int(x: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """'Same' convolution of integer-valued x (B, Cin, H, W) by w (Cout, Cin, k, k) as exact
    int64 sums per input-channel group, the groups then added in float32 in order."""
    k = w.shape[-1]
    p = k // 2
    b, cin, h, wd = x.shape
    xi = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (p, p), (p, p)))
    wi = w.astype(np.int64)
    chunk = cin // groups
    out = None
    for g in range(groups):
        sl = slice(g * chunk, (g + 1) * chunk)
        acc = np.zeros((b, w.shape[0], h, wd), dtype=np.int64)
        for dy in range(k):
            for dx in range(k):
                acc += np.einsum("oc,bchw->bohw", wi[:, sl, dy, dx], xi[:, sl, dy : dy + h, dx : dx + wd])
        part = acc.astype(F32)
        out = part if out is None else out + part
    return out


def pixel_unshuffle(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def pixel_shuffle(x: np.ndarray) -> np.ndarray:
    b, c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(b, c, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h * 2, w * 2)


def _ch(v) -> np.ndarray:
    return np.asarray(v).reshape(1, -1, 1, 1)


class ReferenceNet:
    """ExactNet's state evaluated the slow way."""

    def __init__(self, state: dict):
        self.s = state
        self.names = conv_names(tuple(int(v) for v in state["block_counts"]))
        self.L = {n: {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in state["layers"][n].items()}
                  for n in self.names}

    def _quant(self, n, step):
        lay = self.L[n]
        return F32(lay["in_mult"][step]), F32(lay["in_max"])

    def _affine(self, n, y, step):
        lay = self.L[n]
        return ops.affine(y, _ch(lay["mult"][step]), _ch(lay["offset"][step]))

    def _conv(self, n, a):
        return conv_int(a, self.L[n]["weight"], int(self.L[n]["groups"]))

    def _act(self, n, h, step):
        return ops.act_np(h, *self._quant(n, step))

    def _block(self, prefix, x, step):
        c1, c2 = prefix + ".conv1", prefix + ".conv2"
        y = self._conv(c1, self._act(c1, x, step))
        a = ops.affine_act_np(y, _ch(self.L[c1]["mult"][step]), _ch(self.L[c1]["offset"][step]), *self._quant(c2, step))
        return ops.affine_add_np(self._conv(c2, a), _ch(self.L[c2]["mult"][step]), _ch(self.L[c2]["offset"][step]), x)

    def stem_input(self, z: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        unit = 1 << Z_FRAC_BITS
        zq = np.clip(z * F32(unit), F32(-Z_MAX * unit), F32(Z_MAX * unit))
        zi = zq.astype(np.int64)
        table = self.s["fourier_sin"].numpy()
        feats = [zq]
        for n in self.s["fourier_exponents"]:
            phase = (zi * (1 << int(n))) % unit
            feats += [table[phase], table[(phase + unit // 4) % unit]]
        alpha, inv_alpha, inv_sigma = (float(v) for v in self.s["step_consts"][step])
        z64 = zq.astype(np.float64) * (1.0 / unit)
        level = np.clip(np.rint((z64 * inv_alpha + 1.0) * 128.0 - 0.5), 0.0, 255.0)
        x_near = (2.0 * level + 1.0) * (1.0 / 256.0) - 1.0
        e_round = np.clip((z64 - alpha * x_near) * inv_sigma, -E_ROUND_MAX, E_ROUND_MAX)
        feats.append(np.rint(e_round * float(unit)).astype(F32))
        return np.concatenate(feats, axis=1).astype(F32), e_round

    def __call__(self, z: np.ndarray, step: int) -> tuple[np.ndarray, dict, np.ndarray]:
        """eps (float64), the aux heads (float64) and the output layer's input features
        (float32) for z: (B, C, H, W) float32 multiples of 2^-8."""
        c_img = int(self.s["image_channels"])
        grey = z.shape[1] == 1 and c_img == 3
        if grey:
            z = np.repeat(z, 3, axis=1)
        b, c, h, w = z.shape
        x = np.pad(z, ((0, 0), (0, 0), (0, (-h) % 4), (0, (-w) % 4)), mode="edge")
        stem_in, e_round = self.stem_input(x, step)
        h0 = self._affine("stem", self._conv("stem", stem_in), step)
        h1 = self._affine("down1", self._conv("down1", pixel_unshuffle(self._act("down1", h0, step))), step)
        b1, b2, u1n = (int(v) for v in self.s["block_counts"])
        for k in range(b1):
            h1 = self._block(f"blocks1.{k}", h1, step)
        h2 = self._affine("down2", self._conv("down2", pixel_unshuffle(self._act("down2", h1, step))), step)
        for k in range(b2):
            h2 = self._block(f"blocks2.{k}", h2, step)
        u1 = h1 + pixel_shuffle(self._affine("up2", self._conv("up2", self._act("up2", h2, step)), step))
        for k in range(u1n):
            u1 = self._block(f"ublocks1.{k}", u1, step)
        u0 = h0 + pixel_shuffle(self._affine("up1", self._conv("up1", self._act("up1", u1, step)), step))
        y = self._conv("head", self._act("head", u0, step))
        feats = ops.affine_act_np(y, _ch(self.L["head"]["mult"][step]), _ch(self.L["head"]["offset"][step]),
                                  *self._quant("out", step))
        out_l = self.L["out"]
        out = self._conv("out", feats).astype(np.float64) * _ch(out_l["mult"][step]) + _ch(out_l["offset"][step])
        out = out[:, :, :h, :w]
        z64 = z.astype(np.float64)
        eps = z64 + out[:, :c] + _ch(self.s["gate"][step].numpy()) * (e_round[:, :, :h, :w] - z64)
        aux = {name: out[:, c * (k + 1) : c * (k + 2)] for k, name in enumerate(self.s["heads"])}
        if grey:
            eps = _mean3(eps)
            aux = {k: _mean3(v) for k, v in aux.items()}
        return eps, aux, feats[:, :, :h, :w] * F32(out_l["in_scale"][step])


def _mean3(t: np.ndarray) -> np.ndarray:
    return (t[:, 0:1] + t[:, 1:2] + t[:, 2:3]) * (1.0 / 3.0)
