"""The eps network in exact arithmetic: the same output bits on every correct machine.

An `ExactNet` is exported from a trained float `EpsNet` (`export_exact`) and computes the
same function up to quantisation, as a fixed sequence of two kinds of operation:

1. **Convolutions of integers.**  Inputs are integer-valued float32 with |x| <= in_max,
   weights integer-valued with a scale per output channel.  Every partial sum of such a
   convolution is an integer below 2^24 in magnitude (the export chooses each channel's
   weight scale, and splits the input channels into `groups` convolutions, so that
   sum |w| in_max < 2^24 in every group), so float32 gives the exact result whatever the
   summation order, blocking, SIMD width or thread count.
2. **Elementwise IEEE-754 operations** (add, multiply, divide, round, clamp) in a fixed order,
   each correctly rounded by the standard (`exact_ops`: numpy as the specification, fused
   numba kernels as the fast path).  No transcendental function runs at decode time: SiLU
   is a rational function, the Fourier features a table of phases, and everything that
   depends on gamma only (its embedding, FiLM, the rounding gate, alpha and sigma) is a
   per-step table computed once at export and stored.  No division by a scalar either (CUDA
   turns it into a reciprocal multiply): reciprocals are stored.

Between convolutions the activations are float32 (the result of those operations); a
layer's input is SiLU of them quantised to `in_max` levels with a scale per layer and
diffusion step (the range differs by orders of magnitude along the chain).  The network's
inputs z must lie on the grid 2^-8 (the coder's latent grids are coarser powers of two).

`vdmcodec.model.exact_ref` computes the same numbers with numpy and integer convolutions: the
conformance reference the tests hold this module to, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from . import exact_ops as ops
from .network import EpsNet

EXACT_SUM = 1 << 24  # float32 sums of integers below this are exact
Z_FRAC_BITS = 8  # the network's input z is a multiple of 2^-8; the stem's inputs are integers at that grid
Z_MAX = 16.0  # |z| beyond this is clamped (the coder's windows stay well inside)
E_ROUND_MAX = 10.0  # as network.rounding_eps
EXACT_VERSION = 1  # the arithmetic of this module; a new rule gets a new number


def conv_names(block_counts: tuple[int, int, int]) -> list[str]:
    """The network's convolutions in the order they run."""
    b1, b2, u1 = block_counts
    names = ["stem", "down1"]
    names += [f"blocks1.{b}.conv{c}" for b in range(b1) for c in (1, 2)]
    names += ["down2"]
    names += [f"blocks2.{b}.conv{c}" for b in range(b2) for c in (1, 2)]
    names += ["up2"]
    names += [f"ublocks1.{b}.conv{c}" for b in range(u1) for c in (1, 2)]
    names += ["up1", "head", "out"]
    return names


def integer_weights(w: np.ndarray, weight_scale: np.ndarray, fold: np.ndarray | None = None) -> np.ndarray:
    """A layer's integer weights from its float ones (float64, exactly the checkpoint's fp16
    values): rint(w * fold / weight_scale) per output channel, one IEEE multiply (by a power
    of two) and one division each, so every machine derives the same integers and the
    checkpoint stores only the scales."""
    if fold is not None:
        w = w * fold[None, :, None, None]
    return np.rint(w / weight_scale[:, None, None, None])


def check_exact_sums(wq: np.ndarray, in_bound: np.ndarray, groups: int, name: str) -> None:
    """Refuse weights for which some group's sum |w| in_bound reaches 2^24 (computed in int64)."""
    cout, cin = wq.shape[:2]
    b = np.abs(wq).astype(np.int64) * in_bound.astype(np.int64)[None, :, None, None]
    if b.reshape(cout, groups, cin // groups, -1).sum(axis=(2, 3)).max() >= EXACT_SUM:
        raise ValueError(f"exact tables do not fit the weights of {name}: a sum could round")


@dataclass
class ExactConv:
    """One convolution: integer weights, input bound, input-channel groups, the per-step
    output affine (`mult`, `offset`: (T+1, Cout), y * mult + offset; FiLM is folded into a
    block's first one) and the per-step input quantisation (`in_mult` (T+1,): levels per unit
    of the input; `in_scale` (T+1,): the value of one level)."""

    weight: torch.Tensor  # (Cout, Cin, k, k) float32 integers (integer_weights)
    groups: int
    in_max: int
    mult: torch.Tensor  # (T+1, Cout) float32 (float64 for the output layer)
    offset: torch.Tensor
    in_mult: torch.Tensor  # (T+1,) float32
    in_scale: torch.Tensor  # (T+1,) float32
    in_bound: torch.Tensor  # (Cin,) float32: the largest |input| of each channel (in_max but for the stem)
    stride: int = 1
    pad: int = -1  # -1: "same" (kernel // 2)

    def __post_init__(self):
        cin = self.weight.shape[1] // self.groups
        self._group_weights = [self.weight[:, g * cin : (g + 1) * cin].contiguous() for g in range(self.groups)]

    @property
    def padding(self) -> int:
        return self.weight.shape[-1] // 2 if self.pad < 0 else self.pad

    def conv(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The convolution of x, or of its input-channel groups given apart: each group's
        result is exact, and the groups are added in order in float32 (a deterministic IEEE
        add, even where the sum rounds)."""
        if self.groups == 1:
            return F.conv2d(x[0] if isinstance(x, list) else x, self.weight, stride=self.stride, padding=self.padding)
        cin = self.weight.shape[1] // self.groups
        parts = x if isinstance(x, list) else [x[:, g * cin : (g + 1) * cin] for g in range(self.groups)]
        out = None
        for g, part in enumerate(parts):
            y = F.conv2d(part, self._group_weights[g], stride=self.stride, padding=self.padding)
            out = y if out is None else out.add_(y)
        return out

    def params(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.mult[step].numpy(), self.offset[step].numpy()

    def quant(self, step: int) -> tuple[np.float32, np.float32]:
        return np.float32(self.in_mult[step]), np.float32(self.in_max)


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """A (B, C, H, W) float32 tensor in channels-last memory and its (B H W, C) numpy view."""
    t = t.contiguous(memory_format=torch.channels_last)
    return t, t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy()


def _elementwise(fast_name: str, spec, *args, out_like: torch.Tensor, groups: int = 1) -> list[torch.Tensor]:
    """Run one exact_ops step on channels-last rows (the numba kernel, or the numpy spec);
    the result split into `groups` tensors of consecutive channels, each channels-last."""
    b, c, h, w = out_like.shape
    cg = c // groups
    buf = torch.empty(groups, b * h * w, cg)
    if ops.numba is not None:
        getattr(ops, fast_name)(*args, buf.numpy())
    else:
        full = spec(*args)
        for g in range(groups):
            buf[g] = torch.from_numpy(full[:, g * cg : (g + 1) * cg])
    return [buf[g].view(b, h, w, cg).permute(0, 3, 1, 2) for g in range(groups)]


def act(h: torch.Tensor, mult: np.float32, in_max: np.float32, groups: int = 1) -> list[torch.Tensor]:
    h, rows = _rows(h)
    return _elementwise("_act_nb", ops.act_np, rows, mult, in_max, out_like=h, groups=groups)


def affine_act(y: torch.Tensor, m: np.ndarray, o: np.ndarray, mult: np.float32, in_max: np.float32,
               groups: int = 1) -> list[torch.Tensor]:
    y, rows = _rows(y)
    return _elementwise("_affine_act_nb", ops.affine_act_np, rows, m, o, mult, in_max, out_like=y, groups=groups)


def affine(y: torch.Tensor, m: np.ndarray, o: np.ndarray) -> torch.Tensor:
    y, rows = _rows(y)
    return _elementwise("_affine_nb", ops.affine, rows, m, o, out_like=y)[0]


def affine_add(y: torch.Tensor, m: np.ndarray, o: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    y, rows = _rows(y)
    _, xrows = _rows(x)
    return _elementwise("_affine_add_nb", ops.affine_add_np, rows, m, o, xrows, out_like=y)[0]


class ExactNet:
    """eps_hat(z, step) in exact arithmetic; see the module docstring.  `step` is the index of
    z's gamma in the model's gamma table (0 = gamma_0)."""

    def __init__(self, state: dict, net: EpsNet):
        """state: export_exact's tables; net: the float network whose weights they quantise."""
        if int(state["version"]) != EXACT_VERSION:
            raise ValueError(f"exact network version {state['version']} is not {EXACT_VERSION}")
        self.state = state
        self.block_counts = tuple(int(v) for v in state["block_counts"])
        self.names = conv_names(self.block_counts)
        modules = dict(net.named_modules())
        self.layers = {}
        for n in self.names:
            st = dict(state["layers"][n])
            wq = integer_weights(modules[n].weight.detach().double().numpy(), st.pop("weight_scale").double().numpy())
            check_exact_sums(wq, st["in_bound"].numpy(), int(st["groups"]), n)
            self.layers[n] = ExactConv(weight=torch.from_numpy(wq).float(), **st)
        self.image_channels = int(state["image_channels"])
        self.heads = list(state["heads"])
        self.fourier_exponents = tuple(int(v) for v in state["fourier_exponents"])
        self.fourier_sin = state["fourier_sin"]  # (2^8,) float32: round(sin(2 pi p / 2^8) 2^8)
        self.step_consts = state["step_consts"]  # (T+1, 3) float64: alpha, 1/alpha, 1/sigma
        self.gate = state["gate"]  # (T+1, C) float64: the rounding gate

    def stem_input(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's integer inputs (z, Fourier features, rounding eps, all at 2^-8) and the
        rounding eps in float64 (used again at the output)."""
        lim = Z_MAX * (1 << Z_FRAC_BITS)
        zq = torch.clamp(z * float(1 << Z_FRAC_BITS), -lim, lim)
        zi = zq.to(torch.int64)
        feats = [zq]
        mask = (1 << Z_FRAC_BITS) - 1
        for n in self.fourier_exponents:
            phase = (zi * (1 << n)) & mask
            quarter = (phase + (1 << (Z_FRAC_BITS - 2))) & mask  # cos(a) = sin(a + pi/2)
            feats += [self.fourier_sin[phase], self.fourier_sin[quarter]]
        alpha, inv_alpha, inv_sigma = (float(v) for v in self.step_consts[step])
        z64 = zq.double() * (1.0 / (1 << Z_FRAC_BITS))
        level = torch.clamp(torch.round((z64 * inv_alpha + 1.0) * 128.0 - 0.5), 0.0, 255.0)
        x_near = (2.0 * level + 1.0) * (1.0 / 256.0) - 1.0
        e_round = torch.clamp((z64 - alpha * x_near) * inv_sigma, -E_ROUND_MAX, E_ROUND_MAX)
        feats.append(torch.round(e_round * float(1 << Z_FRAC_BITS)).float())
        return torch.cat(feats, dim=1), e_round

    def _act(self, name: str, h: torch.Tensor, step: int, split: bool = True) -> list[torch.Tensor]:
        """Layer `name`'s input from h, in its input-channel groups (one piece unless split)."""
        layer = self.layers[name]
        return act(h, *layer.quant(step), groups=layer.groups if split else 1)

    def _block(self, prefix: str, x: torch.Tensor, step: int) -> torch.Tensor:
        c1, c2 = self.layers[prefix + ".conv1"], self.layers[prefix + ".conv2"]
        y = c1.conv(self._act(prefix + ".conv1", x, step))
        a = affine_act(y, *c1.params(step), *c2.quant(step), groups=c2.groups)
        return affine_add(c2.conv(a), *c2.params(step), x)

    def _conv_affine(self, name: str, a: torch.Tensor | list[torch.Tensor], step: int) -> torch.Tensor:
        layer = self.layers[name]
        return affine(layer.conv(a), *layer.params(step))

    def __call__(self, z: torch.Tensor, step: int, with_aux: bool = False, with_features: bool = False):
        """As EpsNet.forward, with the gamma table index `step` for gamma; outputs float64
        (features float32).  z: (B, C, H, W) float32 multiples of 2^-8."""
        grey = z.shape[1] == 1 and self.image_channels == 3
        if grey:
            z = z.expand(-1, 3, -1, -1)
        b, c, h, w = z.shape
        ph, pw = (-h) % 4, (-w) % 4
        x = F.pad(z, (0, pw, 0, ph), mode="replicate") if (ph or pw) else z
        stem_in, e_round = self.stem_input(x, step)
        stem_in = stem_in.contiguous(memory_format=torch.channels_last)
        h0 = self._conv_affine("stem", stem_in, step)
        h1 = self._conv_affine("down1", F.pixel_unshuffle(self._act("down1", h0, step, False)[0], 2), step)
        for k in range(self.block_counts[0]):
            h1 = self._block(f"blocks1.{k}", h1, step)
        h2 = self._conv_affine("down2", F.pixel_unshuffle(self._act("down2", h1, step, False)[0], 2), step)
        for k in range(self.block_counts[1]):
            h2 = self._block(f"blocks2.{k}", h2, step)
        u1 = h1 + F.pixel_shuffle(self._conv_affine("up2", self._act("up2", h2, step), step), 2)
        for k in range(self.block_counts[2]):
            u1 = self._block(f"ublocks1.{k}", u1, step)
        u0 = h0 + F.pixel_shuffle(self._conv_affine("up1", self._act("up1", u1, step), step), 2)
        head, outl = self.layers["head"], self.layers["out"]
        feats = affine_act(head.conv(self._act("head", u0, step)), *head.params(step), *outl.quant(step),
                           groups=outl.groups)
        y = outl.conv(feats).double()
        feats = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)
        out = y * outl.mult[step].view(1, -1, 1, 1) + outl.offset[step].view(1, -1, 1, 1)
        out = out[:, :, :h, :w]
        z64 = z.double()
        eps = z64 + out[:, :c] + self.gate[step].view(1, -1, 1, 1) * (e_round[:, :, :h, :w] - z64)
        aux = {name: out[:, c * (k + 1) : c * (k + 2)] for k, name in enumerate(self.heads)}
        if grey:
            eps = _mean3(eps)
            aux = {k: _mean3(v) for k, v in aux.items()}
        if not with_aux:
            return eps
        if with_features:
            aux["features"] = feats[:, :, :h, :w] * outl.in_scale[step]
        for name in ("decoder_log_scale", "reverse_var", "channel_coef"):
            aux.setdefault(name, torch.zeros_like(eps))
        return eps, aux


def _mean3(t: torch.Tensor) -> torch.Tensor:
    """The mean of three channels in a fixed order (a reduction kernel might reorder)."""
    return (t[:, 0:1] + t[:, 1:2] + t[:, 2:3]) * (1.0 / 3.0)


# ---------------------------------------------------------------- export
DEFAULT_IN_BITS = {"quarter": 11, "half": 12, "full": 12}  # chosen on held-apart photos (docs/RESULTS.md)
MIN_WEIGHT_BITS, MAX_WEIGHT_BITS = 6, 12


def _resolution(name: str) -> str:
    if name.startswith(("blocks2", "up2")):
        return "quarter"
    if name.startswith(("blocks1", "ublocks1", "down2", "up1")):
        return "half"
    return "full"  # down1 reads full-resolution activations (unshuffled), head and out


def quantise_weights(w: np.ndarray, in_max: np.ndarray, groups: int, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights and a scale per output channel: as fine as max_bits allows while every
    group's sum |w_q| in_max stays below 2^24.  w: (Cout, Cin, k, k) float64; in_max: (Cin,)."""
    cout, cin = w.shape[:2]
    chunk = cin // groups
    bound = np.abs(w) * in_max[None, :, None, None]
    per_group = bound.reshape(cout, groups, chunk, -1).sum(axis=(2, 3))  # real sum |w| in_max
    max_abs = np.abs(w).reshape(cout, -1).max(axis=1)
    limit = EXACT_SUM - 1
    scale = np.maximum(max_abs / (2 ** (max_bits - 1) - 1), per_group.max(axis=1) / (limit * 0.999))
    scale = np.where(scale > 0, scale, 1.0)
    for _ in range(100):
        wq = integer_weights(w, scale)
        sums = (np.abs(wq) * in_max[None, :, None, None]).reshape(cout, groups, chunk, -1).sum(axis=(2, 3))
        over = sums.max(axis=1) >= limit
        if not over.any():
            return wq, scale
        scale = np.where(over, scale * 1.001, scale)
    raise RuntimeError("weight quantisation did not meet the exact-sum bound")


def _choose_groups(w: np.ndarray, in_max: np.ndarray, min_bits: int = MIN_WEIGHT_BITS) -> tuple[int, np.ndarray, np.ndarray]:
    """The fewest input-channel groups whose bound leaves every channel at least min_bits of
    weight precision."""
    cin = w.shape[1]
    for groups in [g for g in range(1, cin + 1) if cin % g == 0]:
        wq, scale = quantise_weights(w, in_max, groups, MAX_WEIGHT_BITS)
        live = np.abs(w).reshape(w.shape[0], -1).max(axis=1) > 0
        if (np.abs(wq).reshape(w.shape[0], -1).max(axis=1)[live] >= 2 ** (min_bits - 1) - 1).all():
            return groups, wq, scale
    return cin, wq, scale


@torch.no_grad()
def calibrate_ranges(net: EpsNet, gamma_table: np.ndarray, images: list[np.ndarray], seed: int = 0) -> dict:
    """max |input| of every convolution but the stem at each step, over latents
    z = alpha x + sigma eps of `images` (uint8 (H, W, 3); never the benchmark sets), on the
    2^-8 grid, with the float network."""
    names = [n for n in conv_names((len(net.blocks1), len(net.blocks2), len(net.ublocks1))) if n != "stem"]
    modules = dict(net.named_modules())
    ranges = {n: np.zeros(len(gamma_table)) for n in names}
    current = {"step": 0}
    hooks = []
    for n in names:
        def hook(module, args, n=n):
            ranges[n][current["step"]] = max(ranges[n][current["step"]], float(args[0].abs().max()))
        hooks.append(modules[n].register_forward_pre_hook(hook))
    gen = torch.Generator().manual_seed(seed)
    try:
        for j, g in enumerate(gamma_table):
            current["step"] = j
            g = torch.tensor([float(g)], dtype=torch.float64)
            alpha, sigma = torch.sqrt(torch.sigmoid(-g)), torch.sqrt(torch.sigmoid(g))
            for im in images:
                x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).double()[None]
                xt = (2.0 * x + 1.0) / 256.0 - 1.0
                z = alpha * xt + sigma * torch.randn(xt.shape, generator=gen, dtype=torch.float64)
                z = torch.round(z * 256.0) / 256.0
                net(z.float(), g.float(), with_aux=True)
    finally:
        for hk in hooks:
            hk.remove()
    return ranges


def _stem_in_max(cfg) -> np.ndarray:
    """Per input channel of the stem: z, the Fourier pairs, the rounding eps (levels of 2^-8)."""
    unit = 1 << Z_FRAC_BITS
    c = cfg.image_channels
    return np.array([Z_MAX * unit] * c + [unit] * (2 * c * len(cfg.fourier_exponents)) + [E_ROUND_MAX * unit] * c)


@torch.no_grad()
def export_exact(net: EpsNet, gamma_table, calibration: list[np.ndarray], in_bits: dict | None = None,
                 min_weight_bits: int = MIN_WEIGHT_BITS, seed: int = 0) -> ExactNet:
    """An ExactNet from a float EpsNet, its gamma table (T+1 values) and calibration images.
    in_bits: activation bits by resolution ("quarter", "half", "full"), DEFAULT_IN_BITS else;
    min_weight_bits: the weight precision below which a layer is split into more groups."""
    in_bits = dict(DEFAULT_IN_BITS, **(in_bits or {}))
    gamma = np.asarray(gamma_table, dtype=np.float64)
    net = net.float().eval()
    cfg = net.cfg
    counts = (len(net.blocks1), len(net.blocks2), len(net.ublocks1))
    names = conv_names(counts)
    modules = dict(net.named_modules())
    ranges = calibrate_ranges(net, gamma, calibration, seed)
    steps = len(gamma)
    net64 = EpsNet(cfg).double()  # gamma-only parts in float64
    net64.load_state_dict(net.state_dict())
    from .network import gamma_embedding
    emb = net64.emb(gamma_embedding(torch.from_numpy(gamma), cfg.emb_dim).double())
    if cfg.rounding_input:
        gate = torch.sigmoid(net64.round_gate(emb))
    else:
        gate = torch.zeros(steps, cfg.image_channels, dtype=torch.float64)
    alpha = np.sqrt(1.0 / (1.0 + np.exp(gamma)))
    sigma = np.sqrt(1.0 / (1.0 + np.exp(-gamma)))
    layers = {}
    for n in names:
        mod = modules[n]
        w = mod.weight.detach().double().numpy()
        bias = mod.bias.detach().double().numpy()
        if n == "stem":
            in_max_vec = _stem_in_max(cfg)
            in_scale = np.full(steps, 2.0**-Z_FRAC_BITS)
        else:
            in_max_vec = np.full(w.shape[1], float(2 ** (in_bits[_resolution(n)] - 1) - 1))
            # the stored float32 value is the one the decoder uses
            in_scale = (np.maximum(ranges[n], 1e-6) / in_max_vec[0]).astype(np.float32).astype(np.float64)
        groups, wq, wscale = _choose_groups(w, in_max_vec, min_weight_bits)
        unit = in_scale[:, None] * wscale[None, :]  # (T+1, Cout): the value of one unit of y
        mult, offset = unit, np.broadcast_to(bias[None], unit.shape)
        if n.endswith("conv1"):  # FiLM folded in: (y unit + b)(1 + scale) + shift
            block = dict(net64.named_modules())[n.rsplit(".", 1)[0]]
            fs, ft = (t.detach().numpy() for t in block.film(emb).chunk(2, dim=1))
            mult, offset = unit * (1.0 + fs), bias[None] * (1.0 + fs) + ft
        dtype = torch.float64 if n == "out" else torch.float32
        layers[n] = {"weight_scale": torch.from_numpy(wscale), "groups": groups, "in_max": int(in_max_vec.max()),
                     "mult": torch.from_numpy(np.ascontiguousarray(mult)).to(dtype),
                     "offset": torch.from_numpy(np.ascontiguousarray(offset)).to(dtype),
                     "in_scale": torch.from_numpy(in_scale).float(),
                     "in_mult": torch.from_numpy(1.0 / in_scale).float(),
                     "in_bound": torch.from_numpy(in_max_vec).float()}
    state = {
        "version": EXACT_VERSION, "layers": layers, "image_channels": cfg.image_channels,
        "heads": net.aux_heads(), "block_counts": counts, "fourier_exponents": tuple(cfg.fourier_exponents),
        "fourier_sin": torch.from_numpy(np.round(np.sin(2 * np.pi * np.arange(256) / 256) * 256)).float(),
        "step_consts": torch.from_numpy(np.stack([alpha, 1.0 / alpha, 1.0 / sigma], axis=1)),
        "gate": gate.detach().double(),
    }
    return ExactNet(state, net)
