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
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..model.vdm import discretized_logistic_logp
from .pixels import FEATURE_OUTPUTS, ContextWeights
from .rice import pack_parts, unpack_parts
from .steps import StepModel

DELTA_STEP = 2.0**-8  # the sent change of each weight and log-scale: int8 multiples of this
HEAD_DELTA_STEP = 2.0**-8  # the same for the context network's last layer
GAIN_STEP = 2.0**-6  # the gains on the context network's outputs: 1 + int8 multiples of this
GAIN_LR = 0.05  # they must be able to reach 0 (the network off) within a fit
COEF_STEP = 2.0**-7  # the shifts of the raw colour coefficients per pass: int8 multiples of this
COEF_LR = 0.02
# the read-out of the network's last features at z_0 (ContextWeights.feature_head): int8
# multiples of this (+-0.248; the fit is judged after the clip).  Its learning rate, chosen
# on the four held-apart never-JPEG photos (recon_with_fit --feature-lr): 0.003 -> 0.01
# took their reconstruction with side data from 2.0489 to 2.0462 bpd (session 12)
FEATURE_STEP = 2.0**-9
FEATURE_LR = 0.01
DELTA_LIMIT = 127
FIT_PATCH = (32, 96)  # patch height, width
FIT_LR = 0.005
KEEP_IF_SAVING_OVER_COST = 2.0  # the fitted patches' estimate must beat the side data this many times
KEEP_IF_HELD_OUT_SAVING_OVER_COST = 1.25  # the estimate on pixels the fit did not see: nearly unbiased
HELD_OUT_PIXELS = 1 << 19  # images up to this size are judged whole; larger ones on a grid of tiles
# the tiles' height, width: more and smaller tiles sample a photograph's rows better (on a
# 2 MP mosaic of two training photos, reconstruction at z_0 on 16 tiles of 128x256 came 6.2%
# under all rows' sum, on 64 of 64x128 1.0%; smaller ones lose more to their borders: session 19)
HELD_OUT_TILE = (64, 128)
HEADER_BYTES = 24  # about what the header entry naming the section costs
# no fit on images too small for it to pay even at this saving (the largest seen on Kodak
# was 0.21 bpd): 32x32 images would spend the fit's time for nothing
MAX_SAVING_BPD = 0.5
SHARED_FIT_IMAGES = 96  # an archive's shared context is fitted on at most this many of its images
MIN_HELD_OUT_IMAGES = 16  # and judged on as many others when it has at least this many more


@dataclass(frozen=True)
class FitBudget:
    """How much the encoder spends on an image's own context (the effort presets set it)."""

    steps: int = 60  # Adam steps of each fit
    patches: tuple[int, int] = (4, 4)  # rows x columns of patches the fit sees
    patch: tuple[int, int] = FIT_PATCH  # each patch's height, width
    head: bool = True  # also try fitting the context network's last layers
    # also try the linear weights with the network's context turned off (what an image the
    # network hurts wants; on six training photos it lost 28-115 kbit where the others gained
    # and never won: session 18)
    off: bool = True
    # patches per Adam step, drawn afresh from all of them each step (None: all): more
    # patches at the cost of fewer (session 15, benchmarks/experiments/fit_budget)
    batch: int | None = None


def model_weights(sm: StepModel, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's context weights and log-scales for `channels` planes, float64."""
    with torch.no_grad():
        w, ls = sm.model.context_weights(channels)
    return w.detach().to("cpu", torch.float64).numpy(), ls.detach().to("cpu", torch.float64).numpy()


def model_head(sm: StepModel) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The context network's last layer per group, float64; None without a network."""
    net = sm.model.context_net
    if net is None:
        return None
    return [tuple(t.detach().to("cpu", torch.float64).numpy() for t in wb) for wb in net.heads()]


def _flat(parts) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in parts])


def _head_parts(head) -> list[np.ndarray]:
    return [a for wb in head for a in wb]


def n_gains(sm: StepModel) -> int:
    net = sm.model.context_net
    return 0 if net is None else 2 * len(net.groups)


def n_coef_shifts(sm: StepModel, channels: int) -> int:
    """How many colour-coefficient shifts an image of `channels` planes can send."""
    return (sm.model.cfg.context_passes * 3) if channels == 3 else 0


def feature_head_shape(sm: StepModel, channels: int) -> tuple[int, int] | None:
    """Shape of an image's feature read-out (ContextWeights.feature_head); None where it has
    none (one-channel images, models without the network's decoder heads)."""
    if channels != 3 or sm.model.cfg.decoder != "xhat":
        return None
    return (FEATURE_OUTPUTS, sm.model.net.cfg.channels[0] + 1)


# how an image's context section is written (header.CONTEXT_PACKINGS): "int8", a byte per
# number (files of format 7 and before); "rice", a Golomb-Rice code per part (coding.rice;
# 30% smaller on photographs)
WRITE_PACKING = "rice"


def pack_deltas(sm: StepModel, w: ContextWeights, packing: str = WRITE_PACKING) -> bytes:
    """w as int8 steps away from the model's weights (w must be on that grid): the linear
    weights and log-scales; with a context network, the gains on its outputs (steps from 1);
    the colour-coefficient shifts when w has them; then its last layers when w has its own;
    then the feature read-out when w has one.  "int8": a byte each (the blob's size says
    which parts are there); "rice": a byte of flags (bit 0 shifts, 1 last layers, 2
    read-out), then each part Rice-coded."""
    base_w, base_ls = model_weights(sm, w.log_scale.shape[1])
    q = [_flat([w.weight - base_w, w.log_scale - base_ls]) / DELTA_STEP]
    if n_gains(sm):
        gains = np.ones(n_gains(sm)) if w.gains is None else w.gains.ravel()
        q.append((gains - 1.0) / GAIN_STEP)
    if w.coef_shift is not None:
        q.append(w.coef_shift.ravel() / COEF_STEP)
    if w.head is not None:
        q.append((_flat(_head_parts(w.head)) - _flat(_head_parts(model_head(sm)))) / HEAD_DELTA_STEP)
    if w.feature_head is not None:
        q.append(w.feature_head.ravel() / FEATURE_STEP)
    steps = [np.rint(part).astype(np.int8) for part in q]
    if packing == "int8":
        return np.concatenate(steps).tobytes()
    if packing != "rice":
        raise ValueError(f"unknown context packing {packing!r}")
    flags = (w.coef_shift is not None) | (w.head is not None) << 1 | (w.feature_head is not None) << 2
    return bytes([flags]) + pack_parts([s.astype(np.int64) for s in steps])


def unpack_deltas(sm: StepModel, blob: bytes, channels: int, packing: str = "int8") -> ContextWeights:
    """The model's weights plus the deltas of pack_deltas; ValueError if the blob has the
    wrong size or layout for this model and number of planes."""
    base_w, base_ls = model_weights(sm, channels)
    n_lin, n_gain = base_w.size + base_ls.size, n_gains(sm)
    base_head = model_head(sm)
    n_head = 0 if base_head is None else _flat(_head_parts(base_head)).size
    n_coef = n_coef_shifts(sm, channels)
    fh_shape = feature_head_shape(sm, channels)
    n_feat = 0 if fh_shape is None else fh_shape[0] * fh_shape[1]
    if packing == "rice":
        flags = blob[0] if blob else 255
        has_cs, has_hd, has_fh = bool(flags & 1), bool(flags & 2), bool(flags & 4)
        if flags > 7 or has_cs and not n_coef or has_hd and not n_head or has_fh and not (n_feat and has_cs):
            raise ValueError(f"pixel-context layout byte {flags} does not fit this model and {channels} planes")
        n_cs, n_hd, n_fh = n_coef * has_cs, n_head * has_hd, n_feat * has_fh
        sizes = [n for n in (n_lin, n_gain, n_cs, n_hd, n_fh) if n]
        q = np.concatenate(unpack_parts(blob[1:], sizes)).astype(np.float64)
    elif packing == "int8":
        # the read-out comes only with the colour shifts (both are RGB-only, written since session 10)
        layouts = {n_lin + n_gain + cs + hd + fh: (cs, hd, fh) for cs in {0, n_coef} for hd in {0, n_head}
                   for fh in ({0, n_feat} if cs else {0})}
        if len(blob) not in layouts:
            raise ValueError(f"pixel-context section has {len(blob)} bytes, expected one of {sorted(layouts)}")
        n_cs, n_hd, n_fh = layouts[len(blob)]
        q = np.frombuffer(blob, dtype=np.int8).astype(np.float64)
    else:
        raise ValueError(f"unknown context packing {packing!r}")
    gains = head = coef_shift = feature_head = None
    i = n_lin + n_gain
    if n_gain:
        gains = 1.0 + q[n_lin:i].reshape(-1, 2) * GAIN_STEP
    if n_cs:
        coef_shift = q[i : i + n_cs].reshape(-1, 3) * COEF_STEP
    if n_hd:
        head = _unflatten(base_head, q[i + n_cs : i + n_cs + n_hd] * HEAD_DELTA_STEP)
    if n_fh:
        feature_head = q[i + n_cs + n_hd :].reshape(fh_shape) * FEATURE_STEP
    q = q[:n_lin] * DELTA_STEP
    return ContextWeights(weight=base_w + q[: base_w.size].reshape(base_w.shape),
                          log_scale=base_ls + q[base_w.size :].reshape(base_ls.shape), head=head, gains=gains,
                          coef_shift=coef_shift, feature_head=feature_head)


def _unflatten(base_head, delta: np.ndarray) -> tuple:
    out, i = [], 0
    for w, b in base_head:
        dw, i = delta[i : i + w.size].reshape(w.shape), i + w.size
        db, i = delta[i : i + b.size].reshape(b.shape), i + b.size
        out.append((w + dw, b + db))
    return tuple(out)


def quantise(sm: StepModel, weight: torch.Tensor, log_scale: torch.Tensor, head=None,
             gains: torch.Tensor | None = None, coef_shift: torch.Tensor | None = None,
             feature_head: torch.Tensor | None = None) -> ContextWeights:
    """Round the fitted weights to what the decoder will rebuild from int8 deltas."""
    base_w, base_ls = model_weights(sm, log_scale.shape[1])

    def q(t: torch.Tensor, base: np.ndarray, step: float = DELTA_STEP) -> np.ndarray:
        steps = np.clip(np.rint((t.detach().to(torch.float64).numpy() - base) / step), -DELTA_LIMIT, DELTA_LIMIT)
        return base + steps * step

    qhead = None
    if head is not None:
        qhead = tuple((q(w, bw, HEAD_DELTA_STEP), q(b, bb, HEAD_DELTA_STEP)) for (w, b), (bw, bb) in zip(head, model_head(sm)))
    qgains = None if gains is None else q(gains, np.ones(tuple(gains.shape)), GAIN_STEP)
    qcoef = None if coef_shift is None else q(coef_shift, np.zeros(tuple(coef_shift.shape)), COEF_STEP)
    qfeat = None if feature_head is None else q(feature_head, np.zeros(tuple(feature_head.shape)), FEATURE_STEP)
    return ContextWeights(weight=q(weight, base_w), log_scale=q(log_scale, base_ls), head=qhead, gains=qgains,
                          coef_shift=qcoef, feature_head=qfeat)


def _patches(x: np.ndarray, grid: tuple[int, int] = (3, 3), size: tuple[int, int] = FIT_PATCH) -> list[np.ndarray]:
    """A grid of patches of x (C, H, W), evenly spread; x itself if it is small."""
    (ny, nx), (ph, pw) = grid, size
    h, w = x.shape[1:]
    if h * w <= ny * nx * ph * pw:
        return [x]
    ph, pw = min(ph, h), min(pw, w)
    # at even offsets, like the coder's regions (chain.even_rows): the fit may learn the
    # image's 2-periodic pixel grid
    ys = np.linspace(0, h - ph, ny).astype(int) // 2 * 2
    xs = np.linspace(0, w - pw, nx).astype(int) // 2 * 2
    return [x[:, y : y + ph, c : c + pw] for y in ys for c in xs]


def _decoder_inputs(sm: StepModel, patches: list[np.ndarray], rng: np.random.Generator,
                    calls: tuple[int, ...] = (1,)) -> dict[int, tuple]:
    """Pixels, and base location, scale (x_tilde units, float32: the fit needs no more),
    colour outputs and the network's last features at one z_0 draw, batched over
    equal-sized patches: for each number of network calls at z_0 in `calls`, at the same
    draw."""
    g = sm.grids
    out: dict[int, list] = {n: [] for n in calls}
    for x in patches:
        xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
        k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * rng.standard_normal(xt.shape)) / g.delta[0]).astype(np.int32)
        for n, (loc, scale, aux) in sm.pixel_params_each(k0, None, calls, features=True).items():
            out[n].append((x.astype(np.int64), xt, (loc + 0.5) / 128.0 - 1.0, scale / 128.0,
                           np.asarray(aux["channel_coef"], dtype=np.float64), aux["features"]))
    f32 = lambda a: torch.from_numpy(a).float()  # noqa: E731
    result = {}
    for n, parts in out.items():
        x, xt, loc, scale, coef, feats = (np.stack(a) for a in zip(*parts))
        result[n] = (torch.from_numpy(x), f32(xt), f32(loc), f32(scale), f32(coef), f32(feats))
    return result


def too_small_for_own_context(sm: StepModel, planes: np.ndarray) -> bool:
    """Whether an image is too small for its own context weights ever to pay."""
    least_cost = 8.0 * (sum(a.size for a in model_weights(sm, planes.shape[2])) + HEADER_BYTES)
    return MAX_SAVING_BPD * planes.size <= KEEP_IF_SAVING_OVER_COST * least_cost


def fit_image_context(sm: StepModel, planes: np.ndarray, seed: int = 0,
                      budget: FitBudget = FitBudget()) -> tuple[ContextWeights | None, dict]:
    """The image's own context weights, or None when they would not pay for themselves;
    with the estimates behind the decision (bits per dim on the fitted patches and on the
    held-out pixels that judge them).

    With a context network, up to three fits (fit_context): the network's features are
    computed once, they do not depend on what is fitted."""
    if not getattr(sm.model.cfg, "pixel_context", False):
        return None, {}
    if too_small_for_own_context(sm, planes):
        return None, {"skipped": "image too small for its own context weights to pay"}
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    patches = _patches(x, budget.patches, budget.patch)
    return fit_context(sm, patches, x.size, seed, budget, held_out=_held_out(x, patches))


def _held_out(x: np.ndarray, patches: list[np.ndarray]) -> list[np.ndarray] | None:
    """What judges the fit: the whole image, or a grid of tiles of a large one (about
    HELD_OUT_PIXELS); None when the fit saw the whole image anyway."""
    if len(patches) == 1 and patches[0].shape == x.shape:
        return None
    h, w = x.shape[1:]
    if h * w <= HELD_OUT_PIXELS:
        return [x]
    side = max(1, round(math.sqrt(HELD_OUT_PIXELS / (HELD_OUT_TILE[0] * HELD_OUT_TILE[1]))))
    return _patches(x, (side, side), HELD_OUT_TILE)


def held_out_tiles(x: np.ndarray) -> list[np.ndarray]:
    """x (C, H, W) itself, or for an image larger than HELD_OUT_PIXELS a grid of tiles of
    about that many pixels."""
    return _held_out(x, []) or [x]


def fit_shared_context(sm: StepModel, planes: list[np.ndarray], seed: int = 0,
                       budget: FitBudget = FitBudget()) -> tuple[ContextWeights | None, dict]:
    """One set of context weights for many images that are each too small for their own
    (an archive of thumbnails), paid for once: fitted on up to SHARED_FIT_IMAGES of those
    of the most common shape, for all of those with its number of planes."""
    if not getattr(sm.model.cfg, "pixel_context", False) or not planes:
        return None, {}
    shape = Counter(p.shape for p in planes).most_common(1)[0][0]
    same = [np.ascontiguousarray(p.transpose(2, 0, 1)) for p in planes if p.shape == shape]
    dims = sum(p.size for p in planes if p.shape[2] == shape[2])
    # the images beyond the fitted ones judge the fit (spread over the archive: every other one)
    fit_on, held_out = (same[::2], same[1::2]) if len(same) >= 2 * MIN_HELD_OUT_IMAGES else (same, None)
    weights, info = fit_context(sm, fit_on[:SHARED_FIT_IMAGES], dims, seed, budget,
                                held_out=None if held_out is None else held_out[:SHARED_FIT_IMAGES])
    return weights, dict(info, planes=shape[2])


def fit_context(sm: StepModel, patches: list[np.ndarray], dims: int, seed: int = 0,
                budget: FitBudget = FitBudget(), held_out: list[np.ndarray] | None = None,
                ) -> tuple[ContextWeights | None, dict]:
    """Context weights fitted on equal-sized patches (C, h, w) for `dims` coded dimensions,
    or None when no candidate pays for its side data.

    The candidates: the linear weights with gains on the network's outputs, the same with
    the network's last layers (budget.head), and the linear weights with the network off
    (gains 0: what an image the network hurts wants).  Each is judged on `held_out`
    (equal-sized arrays the fit did not see, the whole image where it is small enough):
    a fit of a thousand numbers on a few patches can look good on them and lose on the
    rest of the image.  Without held_out the fitted patches judge, with a wider margin."""
    model = sm.model
    c = patches[0].shape[0]
    rng = np.random.default_rng(seed)
    # the model's weights are judged at their network calls at z_0, fitted ones at
    # z0_ensemble (StepModel.z0_calls); both at the same z_0 draw
    n_model = sm.z0_calls(None)
    calls = tuple(sorted({n_model, sm.z0_ensemble}))
    with torch.no_grad():
        fit_all = _decoder_inputs(sm, patches, rng, calls)
        val_all = fit_all if held_out is None else _decoder_inputs(sm, held_out, rng, calls)
    fit_in, val_in = fit_all[sm.z0_ensemble], val_all[sm.z0_ensemble]
    w0, l0 = (torch.from_numpy(a).float() for a in model_weights(sm, c))
    base_head = model_head(sm)
    # the context network's features per input set ("fit1", "val1": the model weights' inputs)
    caches: dict = {"fit": {}, "val": {}}
    same_calls = n_model == sm.z0_ensemble
    caches["fit1"], caches["val1"] = (caches["fit"], caches["val"]) if same_calls else ({}, {})

    def bits(inputs, cache, weight, log_scale, head=None, gains=None, coef_shift=None,
             feature_head=None, by_row: list | None = None) -> torch.Tensor:
        """Bits per dim; by_row, when given, receives the bits of each row (summed over the batch)."""
        xi, xt, loc, scale, coef, feats = inputs
        lo, sc = model.context_params(xt, loc, scale, coef, weights=(weight, log_scale), head=head,
                                      feature_cache=cache, gains=gains, coef_shift=coef_shift,
                                      feature_head=feature_head, features=feats)
        nll = -discretized_logistic_logp(xi, lo, sc) / math.log(2.0)
        if by_row is not None:
            by_row.append(nll.detach().sum(dim=(0, 1, 3)).double().numpy())
        return nll.mean()

    def fit(kind: str) -> ContextWeights:
        params = [w0.clone().requires_grad_(True), l0.clone().requires_grad_(True)]
        head = gains = None
        if kind == "head":
            head = [tuple(torch.from_numpy(a).float().requires_grad_(True) for a in wb) for wb in base_head]
            params += [t for wb in head for t in wb]
        groups = [{"params": params, "lr": FIT_LR}]
        # per pass: a camera's or scanner's colour grid differs between pixel classes
        coef_shift = torch.zeros(model.cfg.context_passes, 3, requires_grad=True) if n_coef_shifts(sm, c) else None
        if coef_shift is not None:
            groups.append({"params": [coef_shift], "lr": COEF_LR})
        # the network's own denoising, re-read for this image (its grain, its sharpness)
        fh_shape = feature_head_shape(sm, c)
        feature_head = None if fh_shape is None else torch.zeros(fh_shape, requires_grad=True)
        if feature_head is not None:
            groups.append({"params": [feature_head], "lr": FEATURE_LR})
        if kind == "off":
            gains = torch.zeros(n_gains(sm) // 2, 2)
        elif base_head is not None:  # the network's gains: the fit may turn it down or off
            gains = torch.ones(n_gains(sm) // 2, 2, requires_grad=True)
            groups.append({"params": [gains], "lr": GAIN_LR})
        opt = torch.optim.Adam(groups)
        with torch.enable_grad():
            for _ in range(budget.steps):
                opt.zero_grad()
                inputs, cache = minibatch()
                bits(inputs, cache, params[0], params[1], head, gains, coef_shift, feature_head).backward()
                opt.step()
        return quantise(sm, params[0], params[1], head, gains, coef_shift, feature_head)

    n_fit = fit_in[0].shape[0]
    batch_gen = torch.Generator().manual_seed(seed)

    def minibatch():
        """The fit's inputs and cached features for one Adam step: budget.batch patches
        drawn afresh, or all of them."""
        if not budget.batch or budget.batch >= n_fit:
            return fit_in, caches["fit"]
        idx = torch.randperm(n_fit, generator=batch_gen)[: budget.batch]
        return (tuple(t[idx] for t in fit_in),
                {g: [None if f is None else f[idx] for f in feats] for g, feats in caches["fit"].items()})

    if budget.batch and budget.batch < n_fit and model.context_net is not None:
        with torch.no_grad():  # the context network's features of every patch, once
            bits(fit_in, caches["fit"], w0, l0)

    def as_torch(w: ContextWeights):
        head = None if w.head is None else [tuple(torch.from_numpy(a).float() for a in wb) for wb in w.head]
        gains = None if w.gains is None else torch.from_numpy(w.gains).float()
        coef_shift = None if w.coef_shift is None else torch.from_numpy(w.coef_shift).float()
        fh = None if w.feature_head is None else torch.from_numpy(w.feature_head).float()
        return torch.from_numpy(w.weight).float(), torch.from_numpy(w.log_scale).float(), head, gains, coef_shift, fh

    kinds = ["linear"]
    if base_head is not None:
        kinds += (["off"] if budget.off else []) + (["head"] if budget.head else [])
    # one held-out array (the whole image): the bits of each of its rows are kept for the
    # chosen weights (coding.bands decides by them)
    rows: dict = {} if held_out is not None and len(held_out) == 1 else None
    with torch.no_grad():
        before = float(bits(fit_all[n_model], caches["fit1"], w0, l0))
        val_before = before if held_out is None else float(
            bits(val_all[n_model], caches["val1"], w0, l0, by_row=None if rows is None else rows.setdefault("model", [])))
    margin = KEEP_IF_SAVING_OVER_COST if held_out is None else KEEP_IF_HELD_OUT_SAVING_OVER_COST
    best, best_info = None, {"patch_bpd_model": before, "held_out_bpd_model": val_before, "choice": "model",
                             "saving_bits": 0.0, "cost_bits": 0.0, "head": False, "candidates": {}}
    for kind in kinds:
        fitted = fit(kind)
        with torch.no_grad():
            after = float(bits(fit_in, caches["fit"], *as_torch(fitted)))
            val_after = after if held_out is None else float(
                bits(val_in, caches["val"], *as_torch(fitted), by_row=None if rows is None else rows.setdefault(kind, [])))
        saving, cost = (val_before - val_after) * dims, 8.0 * (len(pack_deltas(sm, fitted)) + HEADER_BYTES)
        best_info["candidates"][kind] = {"patch_bpd": after, "held_out_bpd": val_after, "saving_bits": saving,
                                         "cost_bits": cost, "net_bits": saving - cost}
        # margin >= 1 keeps only savings net of the side data; the best net saving wins
        if saving > margin * cost and (best is None or saving - cost > best_info["saving_bits"] - best_info["cost_bits"]):
            best = fitted
            best_info.update(patch_bpd_fitted=after, held_out_bpd_fitted=val_after, choice=kind,
                             saving_bits=saving, cost_bits=cost, head=kind == "head")
    best_info.setdefault("patch_bpd_fitted", best_info["candidates"][kinds[0]]["patch_bpd"])
    if rows is not None:
        best_info["held_out_rows"] = rows[best_info["choice"]][0]
    return best, best_info
