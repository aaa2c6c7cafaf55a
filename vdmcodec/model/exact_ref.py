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
from .exact_net import E_ROUND_MAX, Z_FRAC_BITS, Z_MAX, conv_names, integer_weights

F32 = np.float32


def conv_int(x: np.ndarray, w: np.ndarray, groups: int, stride: int = 1, pad: int = -1) -> np.ndarray:
    """Convolution of integer-valued x (B, Cin, H, W) by w (Cout, Cin, k, k) ("same" padding
    unless pad >= 0) as exact int64 sums per input-channel group, the groups then added in
    float32 in order."""
    k = w.shape[-1]
    p = k // 2 if pad < 0 else pad
    b, cin = x.shape[:2]
    xi = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = (xi.shape[2] - k) // stride + 1, (xi.shape[3] - k) // stride + 1
    wi = w.astype(np.int64)
    chunk = cin // groups
    out = None
    for g in range(groups):
        sl = slice(g * chunk, (g + 1) * chunk)
        acc = np.zeros((b, w.shape[0], h, wd), dtype=np.int64)
        for dy in range(k):
            for dx in range(k):
                win = xi[:, sl, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (wd - 1) + 1 : stride]
                acc += np.einsum("oc,bchw->bohw", wi[:, sl, dy, dx], win)
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


def _plain(d: dict) -> dict:
    return {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in d.items()}


class ReferenceNet:
    """ExactNet's state (on the float weights of `net`) evaluated the slow way."""

    def __init__(self, state: dict, net):
        self.s = state
        self.names = conv_names(tuple(int(v) for v in state["block_counts"]))
        modules = dict(net.named_modules())
        self.L = {n: _plain(state["layers"][n]) for n in self.names}
        for n in self.names:
            self.L[n]["weight"] = integer_weights(modules[n].weight.detach().double().numpy(), self.L[n]["weight_scale"])

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


def reference_context_refine(state: dict, net, g: int, inp: np.ndarray, classes, shape,
                             head=None) -> tuple[np.ndarray, np.ndarray]:
    """ExactContextNet.refine the slow way (state on the float ContextNet `net`): inp
    (1, 3 C, H, W) float32 integers."""
    from ..coding import detmath
    from .context_net import DLOG_SCALE_MAX

    conv0, conv1 = (_plain(layer) for layer in state["layers"][g])
    seq = net.nets[g]
    conv0["weight"] = integer_weights(seq[0].weight.detach().double().numpy(), conv0["weight_scale"], conv0["weight_fold"])
    conv1["weight"] = integer_weights(seq[2].weight.detach().double().numpy(), conv1["weight_scale"])
    if head is None:
        head = (seq[-1].weight.detach().double().numpy(), seq[-1].bias.detach().double().numpy())
    weight, bias = head
    weight, bias = np.asarray(weight, dtype=np.float64).reshape(2, -1), np.asarray(bias, dtype=np.float64)
    r = int(state["kernel"]) // 2
    h, w = inp.shape[-2:]
    pad = np.pad(inp, ((0, 0), (0, 0), (r, r + 1), (r, r + 1)))
    out = np.zeros((2, shape[-2], shape[-1]))
    for ra, ca in classes:
        nh, nw = len(range(ra, h, 2)), len(range(ca, w, 2))
        if not (nh and nw):
            continue
        y = conv_int(pad[..., ra:, ca:], conv0["weight"], int(conv0["groups"]), stride=2, pad=0)[..., :nh, :nw]
        a = ops.affine_act_np(y, _ch(conv0["mult"][0]), _ch(conv0["offset"][0]), F32(conv1["in_mult"][0]), F32(conv1["in_max"]))
        y = conv_int(a, conv1["weight"], int(conv1["groups"]))
        f = ops.affine_act_np(y, _ch(conv1["mult"][0]), _ch(conv1["offset"][0]), F32(state["feature_mult"]),
                              F32(state["feature_max"])) * F32(state["feature_scale"])
        fv = f[0].astype(np.float64)
        acc = np.broadcast_to(bias[:, None, None], (2,) + fv.shape[1:])
        for k in range(fv.shape[0]):
            acc = acc + weight[:, k][:, None, None] * fv[k][None]
        out[:, ra::2, ca::2] = acc
    return out[0], DLOG_SCALE_MAX * detmath.spec("tanh", out[1] * (1.0 / DLOG_SCALE_MAX))
