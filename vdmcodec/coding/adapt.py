"""Per-image pixel-context weights: fitted by the encoder, sent in the file.

The model's context weights are a compromise over the training images; refitted to one
image (a few hundred numbers, the network frozen) they code its pixels for less.  The
encoder fits them on a few patches of the image at one z_0 draw and sends how far they
moved from the model's, as int8 multiples of DELTA_STEP; it keeps them only when the
estimated saving on the whole image is well above their size.  The decoder only reads them
(the model's weights plus the deltas, in float64), so the fit need not be reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model.vdm import discretized_logistic_logp
from .chain import ContextWeights, StepModel

DELTA_STEP = 2.0**-8  # the sent change of each weight and log-scale: int8 multiples of this
DELTA_LIMIT = 127
FIT_PATCHES = (3, 3)  # rows x columns of patches the fit sees
FIT_PATCH = (32, 96)  # patch height, width
FIT_STEPS = 60
FIT_LR = 0.005
KEEP_IF_SAVING_OVER_COST = 2.0  # the patches' estimate must beat the side data this many times
HEADER_BYTES = 24  # about what the header entry naming the section costs
# no fit on images too small for it to pay even at this saving (the largest seen on Kodak
# was 0.21 bpd): 32x32 images would spend the fit's time for nothing
MAX_SAVING_BPD = 0.5


def model_weights(sm: StepModel, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's context weights and log-scales for `channels` planes, float64."""
    with torch.no_grad():
        w, ls = sm.model.context_weights(channels)
    return w.detach().to("cpu", torch.float64).numpy(), ls.detach().to("cpu", torch.float64).numpy()


def pack_deltas(sm: StepModel, w: ContextWeights) -> bytes:
    """w as int8 steps away from the model's weights (w must be on that grid)."""
    base_w, base_ls = model_weights(sm, w.log_scale.shape[1])
    q = np.concatenate([(w.weight - base_w).ravel(), (w.log_scale - base_ls).ravel()]) / DELTA_STEP
    return np.rint(q).astype(np.int8).tobytes()


def unpack_deltas(sm: StepModel, blob: bytes, channels: int) -> ContextWeights:
    """The model's weights plus the deltas of pack_deltas; ValueError if the blob has the
    wrong size for this model and number of planes."""
    base_w, base_ls = model_weights(sm, channels)
    if len(blob) != base_w.size + base_ls.size:
        raise ValueError(f"pixel-context section has {len(blob)} bytes, expected {base_w.size + base_ls.size}")
    q = np.frombuffer(blob, dtype=np.int8).astype(np.float64) * DELTA_STEP
    return ContextWeights(weight=base_w + q[: base_w.size].reshape(base_w.shape),
                          log_scale=base_ls + q[base_w.size :].reshape(base_ls.shape))


def quantise(sm: StepModel, weight: torch.Tensor, log_scale: torch.Tensor) -> ContextWeights:
    """Round the fitted weights to what the decoder will rebuild from int8 deltas."""
    base_w, base_ls = model_weights(sm, log_scale.shape[1])

    def q(t: torch.Tensor, base: np.ndarray) -> np.ndarray:
        steps = np.clip(np.rint((t.detach().to(torch.float64).numpy() - base) / DELTA_STEP), -DELTA_LIMIT, DELTA_LIMIT)
        return base + steps * DELTA_STEP

    return ContextWeights(weight=q(weight, base_w), log_scale=q(log_scale, base_ls))


def _patches(x: np.ndarray) -> list[np.ndarray]:
    """A grid of FIT_PATCHES patches of x (C, H, W), evenly spread; x itself if it is small."""
    (ny, nx), (ph, pw) = FIT_PATCHES, FIT_PATCH
    h, w = x.shape[1:]
    if h * w <= ny * nx * ph * pw:
        return [x]
    ph, pw = min(ph, h), min(pw, w)
    ys = np.linspace(0, h - ph, ny).astype(int)
    xs = np.linspace(0, w - pw, nx).astype(int)
    return [x[:, y : y + ph, c : c + pw] for y in ys for c in xs]


def _decoder_inputs(sm: StepModel, patches: list[np.ndarray], rng: np.random.Generator) -> tuple:
    """Pixels, and base location, scale (x_tilde units, float32: the fit needs no more) and
    colour outputs at one z_0 draw, batched over equal-sized patches."""
    g = sm.grids
    out = []
    for x in patches:
        xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
        k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
        loc, scale, aux = sm.pixel_params(k0)
        out.append((x.astype(np.int64), xt, (loc + 0.5) / 128.0 - 1.0, scale / 128.0,
                    np.asarray(aux["channel_coef"], dtype=np.float64)))
    x, xt, loc, scale, coef = (np.stack(a) for a in zip(*out))
    f32 = lambda a: torch.from_numpy(a).float()  # noqa: E731
    return torch.from_numpy(x), f32(xt), f32(loc), f32(scale), f32(coef)


def fit_image_context(sm: StepModel, planes: np.ndarray, seed: int = 0) -> tuple[ContextWeights | None, dict]:
    """The image's own context weights, or None when they would not pay for themselves;
    with the estimate behind the decision (bits per dim on the fitted patches)."""
    model = sm.model
    if not getattr(model.cfg, "pixel_context", False):
        return None, {}
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    c = x.shape[0]
    least_cost = 8.0 * (sum(a.size for a in model_weights(sm, c)) + HEADER_BYTES)
    if MAX_SAVING_BPD * x.size <= KEEP_IF_SAVING_OVER_COST * least_cost:
        return None, {"skipped": "image too small for its own context weights to pay"}
    with torch.no_grad():
        xi, xt, loc, scale, coef = _decoder_inputs(sm, _patches(x), np.random.default_rng(seed))
    w0, l0 = (torch.from_numpy(a).float() for a in model_weights(sm, c))

    def bits(weight: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        lo, sc = model.context_params(xt, loc, scale, coef, weights=(weight, log_scale))
        return -discretized_logistic_logp(xi, lo, sc).mean() / math.log(2.0)

    weight, log_scale = w0.clone().requires_grad_(True), l0.clone().requires_grad_(True)
    opt = torch.optim.Adam([weight, log_scale], lr=FIT_LR)
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            opt.zero_grad()
            bits(weight, log_scale).backward()
            opt.step()
    fitted = quantise(sm, weight, log_scale)
    with torch.no_grad():
        before = float(bits(w0, l0))
        after = float(bits(torch.from_numpy(fitted.weight).float(), torch.from_numpy(fitted.log_scale).float()))
    saving = (before - after) * x.size
    cost = 8.0 * (len(pack_deltas(sm, fitted)) + HEADER_BYTES)
    info = {"patch_bpd_model": before, "patch_bpd_fitted": after, "saving_bits": saving, "cost_bits": cost}
    return (fitted if saving > KEEP_IF_SAVING_OVER_COST * cost else None), info
