"""Per-image FiLM deltas of the eps network: fitted by the encoder, sent in the file.

Each residual block of the network scales and shifts its first convolution's output by a
FiLM of gamma.  An image's own constant change to those scales and shifts (1,024 numbers
in the shipped network) is fitted by backward passes through the float network on random
patches of the image at the diffusion steps that carry the bits (the first quarter of T),
sent as int8 multiples of FILM_STEP in Golomb-Rice codes, and kept only when the saving it
is estimated to bring to the whole image beats its size.  The decoder only reads them, so
the fit need not be reproducible.

In exact arithmetic FiLM is folded into the first convolution's per-step output affine
(`ExactConv.mult`, `offset`): y (unit (1 + s) ) + (b (1 + s) + t).  A delta (ds, dt) adds
unit ds to mult and b ds + dt to offset, each sum computed in float64 by correctly rounded
IEEE operations from the stored tables and rounded to float32 once, so every machine derives
the same tables (docs/DESIGN.md §4).

>>> d = FilmDeltas((np.array([0, 1, -2, 0]), np.array([3, 0])))
>>> unpack_film(pack_film(d), [4, 2]) == d, d.values()[0].tolist()
(True, [0.0, 0.03125, -0.0625, 0.0])
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..model.vdm import pixels_to_unit, reverse_log_var, step_kl
from .rice import pack_parts, unpack_parts

if TYPE_CHECKING:
    from ..model.exact_net import ExactNet
    from ..model.network import EpsNet
    from .steps import StepModel

FILM_STEP = 2.0**-5  # the sent change of each FiLM scale and shift: int8 multiples of this
FILM_LIMIT = 127
FILM_PATCH = 64  # the fit's random square patches
FILM_BATCH = 8  # patches per Adam step
FILM_SHARE = 0.25  # fitted on the first quarter of the model's steps, where ~96% of the diffusion bits are
# chosen on the four held-apart never-JPEG photos (benchmarks.experiments.film_adaptation,
# steps 1..16 at 1/32 steps: lr 0.003 over 100 steps gained 0.0069-0.0128 bpd, lr 0.01 less)
FILM_LR = 3e-3
EVAL_GRID = (3, 3)  # the keep-rule's fixed patches (FILM_PATCH x 1.5 FILM_PATCH)
KEEP_IF_SAVING_OVER_COST = 1.5  # the paired estimate on a few patches must beat the section this many times
HEADER_BYTES = 24  # about what the header entry naming the section costs
# A fit whose deltas, judged at a probe step (FilmBudget.probe_at), are estimated to save
# less than this share of what keeping them needs stops there.  On 30 training photos (768x512
# crops, benchmarks/experiments/film_probe, results/film_probe_s19.json) the estimate swings
# from step to step, but after 100 of 200 steps every fit that was kept in the end stood at
# 1.24 or more of the keep line, and 8 of the 13 that were dropped below 0.8: about 4 s of a
# Kodak image spared on a quarter of photographs.
PROBE_KEEP_SHARE = 0.8


@dataclass(frozen=True)
class FilmBudget:
    """How much the encoder spends on an image's FiLM deltas (the effort presets set it)."""

    steps: int = 0  # Adam steps; 0: no fit
    # Adam steps after which the fit so far is judged (its deltas quantised, their paired
    # saving estimate against their cost): a fit far from paying stops there (fit_film)
    probe_at: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class FilmDeltas:
    """Per residual block (network order), its FiLM's int8 steps: the scales' then the shifts'."""

    steps: tuple[np.ndarray, ...]
    # the bits the fit estimated they save on the whole image's diffusion term (its paired
    # estimate; 0 where unknown); not sent, not compared
    saving_bits: float = 0.0

    def values(self) -> list[np.ndarray]:
        return [np.asarray(s, dtype=np.float64) * FILM_STEP for s in self.steps]

    def tag(self) -> bytes:
        """A short hash naming the adapted network (NetworkMemo keys)."""
        h = hashlib.blake2b(digest_size=16)
        for s in self.steps:
            h.update(np.asarray(s, dtype=np.int64).tobytes())
        return h.digest()

    def __eq__(self, other) -> bool:
        return isinstance(other, FilmDeltas) and len(self.steps) == len(other.steps) and all(
            np.array_equal(a, b) for a, b in zip(self.steps, other.steps))


def film_blocks(net: "EpsNet") -> list[tuple[str, torch.nn.Module]]:
    """The residual blocks with a FiLM, by name, in network order."""
    named = [(f"blocks1.{k}", b) for k, b in enumerate(net.blocks1)]
    named += [(f"blocks2.{k}", b) for k, b in enumerate(net.blocks2)]
    named += [(f"ublocks1.{k}", b) for k, b in enumerate(net.ublocks1)]
    return named


def film_sizes(net: "EpsNet") -> list[int]:
    return [blk.film.out_features for _, blk in film_blocks(net)]


def pack_film(d: FilmDeltas) -> bytes:
    return pack_parts([np.asarray(s, dtype=np.int64) for s in d.steps])


def unpack_film(blob: bytes, sizes: list[int]) -> FilmDeltas:
    """ValueError if the blob is not exactly a packing of these sizes."""
    return FilmDeltas(tuple(unpack_parts(blob, sizes)))


# ------------------------------------------------------------------ the adapted networks
def adapted_float_net(net: "EpsNet", d: FilmDeltas) -> "EpsNet":
    """A copy of the float network with the deltas added to its FiLMs' biases."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for (_, blk), v in zip(film_blocks(out), d.values()):
            blk.film.bias += torch.from_numpy(v).to(blk.film.bias.dtype)
    return out


def adapted_exact_net(exact: "ExactNet", net: "EpsNet", d: FilmDeltas) -> "ExactNet":
    """The exact network with the deltas folded into each block's first convolution's tables
    (see the module docstring); `net`: the float network the tables were exported from."""
    out = copy.copy(exact)
    out.layers = dict(exact.layers)
    for (name, blk), v in zip(film_blocks(net), d.values()):
        conv = name + ".conv1"
        layer = exact.layers[conv]
        mult, offset = adapted_tables(layer.mult.numpy(), layer.offset.numpy(), layer.in_scale.numpy(),
                                      exact.state["layers"][conv]["weight_scale"].double().numpy(),
                                      blk.conv1.bias.detach().double().numpy(), v)
        out.layers[conv] = dataclasses.replace(layer, mult=torch.from_numpy(mult), offset=torch.from_numpy(offset))
    return out


def adapted_tables(mult: np.ndarray, offset: np.ndarray, in_scale: np.ndarray, weight_scale: np.ndarray,
                   bias: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv1's (T+1, C) float32 tables with a FiLM delta (2C: scales, shifts) folded in; each
    entry one float64 expression of exactly representable inputs, rounded to float32 once."""
    c = mult.shape[1]
    ds, dt = delta[:c], delta[c:]
    unit = in_scale.astype(np.float64)[:, None] * weight_scale[None, :]  # as export_exact computes it
    new_mult = mult.astype(np.float64) + unit * ds[None, :]
    new_offset = offset.astype(np.float64) + (bias * ds + dt)[None, :]
    return new_mult.astype(mult.dtype), new_offset.astype(offset.dtype)


# ------------------------------------------------------------------ the encoder's fit
def fit_film(sm: "StepModel", planes: np.ndarray, budget: FilmBudget, seed: int = 0) -> FilmDeltas | None:
    """An image's FiLM deltas (uint8 planes H x W x C), or None where they would not pay
    (or the image is too small to fit on, or the budget is 0)."""
    h, w, _ = planes.shape
    if budget.steps <= 0 or min(h, w) < 2 * FILM_PATCH or not hasattr(sm.model.net, "blocks1"):
        return None
    film, saving_bits, cost_bits = fit_deltas(sm, planes, budget, seed, probe=_on_track)
    if not any(k.any() for k in film.steps) or saving_bits < KEEP_IF_SAVING_OVER_COST * cost_bits:
        return None
    return FilmDeltas(film.steps, saving_bits)


def _on_track(step: int, saving_bits: float, cost_bits: float) -> bool:
    """Whether a fit judged after `step` Adam steps may still come to pay (fit_film's probe)."""
    return saving_bits >= PROBE_KEEP_SHARE * KEEP_IF_SAVING_OVER_COST * cost_bits


def fit_deltas(sm: "StepModel", planes: np.ndarray, budget: FilmBudget, seed: int = 0,
               probe=None) -> tuple[FilmDeltas, float, float]:
    """The fitted, quantised deltas, the bits they are estimated to save on the whole image
    (paired: the same patches and noise before and after) and the bits they cost.

    probe(step, saving_bits, cost_bits) -> bool is called after each of budget.probe_at's
    Adam steps with the same estimates of the deltas so far; False ends the fit there."""
    h, w, c = planes.shape
    net = sm.model.net
    x = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1))).to(torch.int64)
    table = torch.as_tensor(sm.gamma_table, dtype=torch.float32)
    steps = range(1, max(2, round(FILM_SHARE * (len(table) - 1))) + 1)
    blocks = film_blocks(net)
    deltas = [torch.zeros(blk.film.out_features, requires_grad=True) for _, blk in blocks]
    hooks = [blk.film.register_forward_hook(lambda m, i, o, d=d: o + d.to(o.dtype)) for (_, blk), d in zip(blocks, deltas)]
    frozen = [(p, p.requires_grad) for p in net.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        eval_x = grid_patches(x)
        with torch.no_grad():
            before = _eval_bits(net, table, eval_x, steps, seed)

        def judged() -> tuple[FilmDeltas, float, float]:
            """The deltas so far, quantised, their estimated saving and their cost (bits);
            the float deltas are left as they were."""
            ints = [torch.clamp(torch.round(d.detach() / FILM_STEP), -FILM_LIMIT, FILM_LIMIT) for d in deltas]
            with torch.no_grad():
                kept = [d.detach().clone() for d in deltas]
                for d, k in zip(deltas, ints):
                    d.copy_(k * FILM_STEP)
                after = _eval_bits(net, table, eval_x, steps, seed)
                for d, v in zip(deltas, kept):
                    d.copy_(v)
            film = FilmDeltas(tuple(k.numpy().astype(np.int64) for k in ints))
            return film, (before - after) * (h * w * c) / eval_x.numel(), 8.0 * (len(pack_film(film)) + HEADER_BYTES)

        def keep_going(step: int) -> bool:
            return probe is None or step not in budget.probe_at or probe(step, *judged()[1:])

        _adam(net, table, x, deltas, steps, budget.steps, seed, keep_going)
        return judged()
    finally:
        for hk in hooks:
            hk.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)


def step_bits(net, table: torch.Tensor, x: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
    """Bits of step i's KL for pixels x (B, C, H, W int64) at noise eps, summed (the training loss)."""
    g_t, g_s = table[i], table[i - 1]
    z = torch.sqrt(torch.sigmoid(-g_t)) * pixels_to_unit(x) + torch.sqrt(torch.sigmoid(g_t)) * eps
    eps_hat, aux = net(z, g_t.reshape(1), with_aux=True)
    r = torch.expm1(g_t - g_s) * (eps - eps_hat) ** 2
    return step_kl(r, reverse_log_var(aux["reverse_var"])).sum() / math.log(2)


def _adam(net, table, x, deltas, steps, iters: int, seed: int, keep_going=None) -> None:
    """Up to `iters` Adam steps on the deltas; keep_going(n) after the n-th, False stops."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(deltas, lr=FILM_LR)
    _, h, w = x.shape
    for n in range(1, iters + 1):
        ys = rng.integers(0, h - FILM_PATCH + 1, FILM_BATCH)
        xs = rng.integers(0, w - FILM_PATCH + 1, FILM_BATCH)
        batch = torch.stack([x[:, y:y + FILM_PATCH, x0:x0 + FILM_PATCH] for y, x0 in zip(ys, xs)])
        i = int(rng.integers(steps.start, steps.stop))
        loss = step_bits(net, table, batch, i, torch.randn(batch.shape, generator=gen)) / batch.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if keep_going is not None and not keep_going(n):
            return


def grid_patches(x: torch.Tensor) -> torch.Tensor:
    _, h, w = x.shape
    ph, pw = FILM_PATCH, min(w, FILM_PATCH * 3 // 2)
    ys = np.linspace(0, h - ph, EVAL_GRID[0]).astype(int)
    xs = np.linspace(0, w - pw, EVAL_GRID[1]).astype(int)
    return torch.stack([x[:, y:y + ph, x0:x0 + pw] for y in ys for x0 in xs])


def _eval_bits(net, table, x: torch.Tensor, steps: range, seed: int) -> float:
    """Bits of the odd steps of `steps` on x at a fixed noise draw, doubled (a paired estimate
    of all of them: the same draw before and after a fit)."""
    gen = torch.Generator().manual_seed(seed + 1)
    total = 0.0
    for i in steps:
        eps = torch.randn(x.shape, generator=gen)
        if i % 2:
            total += 2.0 * float(step_bits(net, table, x, i, eps))
    return total
