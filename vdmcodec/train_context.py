"""Train the pixel decoder's context (model.context_net and the linear context) with the big
network frozen.

The big network runs once per training crop, at one z_0 draw, and its decoder outputs
(location, scale, colour coefficients) are cached; the context is then trained on the cache
for many epochs, with no network call and no backward through it.  Held-out crops (every
20th training file, as train.py) give the reconstruction term before and after.

    python -m vdmcodec.train_context ../shared/data/train --out runs/ctx --minutes 30
    python -m vdmcodec.train_context ../shared/data/train --out runs/ctx --resume runs/ctx/state.pt
    python -m vdmcodec.export runs/ctx/model.pt checkpoints/default.pt --model-id vdmc-rgb-t64-s7
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoints import earlier_models, load_checkpoint, save_checkpoint, save_torch_atomic
from .model.context_net import ContextNetConfig
from .model.network import flip_ensembles
from .model.vdm import VDM, VDMConfig, alpha2, discretized_logistic_logp, pixels_to_unit, sigma2
from .train import HELD_APART, eval_batches, list_images, load_rgb, split_data

LN2 = math.log(2.0)
SMALL = 32  # side of the whole small training images (CIFAR)


def with_context_net(model: VDM, hidden: int) -> VDM:
    """The model with a fresh (zero-output) context network, if it has none."""
    if model.context_net is not None:
        return model
    cfg = VDMConfig.from_dict(model.cfg.to_dict())
    cfg.context_net = ContextNetConfig(hidden=hidden, passes=cfg.context_passes, channels=cfg.net.image_channels)
    cfg.validate()
    out = VDM(cfg)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("context_net.") for k in missing):
        raise ValueError(f"cannot add a context network: {missing} {unexpected}")
    return out


def widened(model: VDM, hidden: int) -> VDM:
    """The model with its context network's hidden layers widened to `hidden` channels,
    computing exactly what it did: the new channels' outgoing weights start at zero (their
    incoming ones small and random, so that training can move them)."""
    old = model.context_net
    if old is None or old.cfg.hidden == hidden:
        return model
    if hidden < old.cfg.hidden:
        raise ValueError(f"cannot narrow the context network from {old.cfg.hidden} to {hidden}")
    cfg = VDMConfig.from_dict(model.cfg.to_dict())
    cfg.context_net = ContextNetConfig(**dict(old.cfg.to_dict(), hidden=hidden))
    out = VDM(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("context_net.")}
    out.load_state_dict(state, strict=False)
    h = old.cfg.hidden
    with torch.no_grad():
        for new_seq, old_seq in zip(out.context_net.nets, old.nets):
            first, mid, last = new_seq[0], new_seq[2], new_seq[4]
            first.weight.mul_(0.1)
            first.weight[:h], first.bias[:h] = old_seq[0].weight, old_seq[0].bias
            mid.weight.mul_(0.1)
            mid.weight[:h, h:] = 0.0  # the old channels see only the old ones
            mid.weight[:h, :h], mid.bias[:h] = old_seq[2].weight, old_seq[2].bias
            last.weight.zero_()
            last.weight[:, :h], last.bias[:] = old_seq[4].weight, old_seq[4].bias
    return out


@torch.no_grad()
def decoder_cache(model: VDM, crops: torch.Tensor, seed: int, batch: int = 16, calls: int = 1) -> dict:
    """The big network's decoder outputs at one z_0 draw per crop: x (uint8), loc and scale
    (x_tilde units, float32) and the raw colour coefficients; with calls > 1, averaged over
    that many flips of z_0 (the coder's z0_ensemble)."""
    gen = torch.Generator().manual_seed(seed)
    g0 = model.schedule(torch.tensor([0.0], dtype=torch.float64))[0]
    a0, s0 = torch.sqrt(alpha2(g0)), torch.sqrt(sigma2(g0))
    parts = {"x": [], "loc": [], "scale": [], "coef": []}
    for i in range(0, crops.shape[0], batch):
        x = crops[i : i + batch]
        z0 = a0.float() * pixels_to_unit(x) + s0.float() * torch.randn(x.shape, generator=gen)
        eps, aux = flip_ensembles(model.net, z0, g0.float().reshape(1), (calls,))[calls]
        loc, scale = _base_decoder(model, z0, g0, eps, aux)
        parts["x"].append(x.to(torch.uint8))
        parts["loc"].append(loc.float())
        parts["scale"].append(scale.float())
        parts["coef"].append(aux["channel_coef"].float())
    return {k: torch.cat(v) for k, v in parts.items()}


def _base_decoder(model: VDM, z0, g0, eps, aux) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of p(x | z_0) before the pixel context."""
    pixel_context = model.cfg.pixel_context
    model.cfg.pixel_context = False
    try:
        return model.decoder_params(z0, g0, eps, aux)
    finally:
        model.cfg.pixel_context = pixel_context


def recon_bits(model: VDM, cache: dict, idx) -> torch.Tensor:
    """-log2 p(x | z_0) per crop, summed over its pixels (teacher forced)."""
    x = cache["x"][idx].long()
    loc, scale = model.context_params(pixels_to_unit(x), cache["loc"][idx], cache["scale"][idx], cache["coef"][idx])
    return -discretized_logistic_logp(x, loc, scale).flatten(1).sum(1) / LN2


@torch.no_grad()
def heldout_bpd(model: VDM, cache: dict, batch: int = 16) -> float:
    n = cache["x"].shape[0]
    total = sum(float(recon_bits(model, cache, slice(i, i + batch)).sum()) for i in range(0, n, batch))
    return total / cache["x"].numel()


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """n crops (area-weighted over the images, half of them flipped), (n, 3, size, size) int64."""
    large = [im for im in images if min(im.shape[:2]) >= size]
    areas = np.array([im.shape[0] * im.shape[1] for im in large], dtype=np.float64)
    out = []
    for i in rng.choice(len(large), n, p=areas / areas.sum()):
        im = large[i]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        c = im[y : y + size, x : x + size]
        out.append(c[:, ::-1] if rng.random() < 0.5 else c)
    return torch.from_numpy(np.stack(out).astype(np.int64)).permute(0, 3, 1, 2).contiguous()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m vdmcodec.train_context", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=None, help="the model to start from (default: the shipped one)")
    ap.add_argument("--resume", default=None, help="a state.pt of this program")
    ap.add_argument("--hidden", type=int, default=32, help="hidden channels of a new context network")
    ap.add_argument("--widen", type=int, default=0,
                    help="widen the starting model's context network to this many hidden channels (same outputs)")
    ap.add_argument("--z0-ensemble", type=int, default=1, choices=(1, 2, 4),
                    help="cache the network's outputs averaged over this many flips of z_0, as the coder's "
                         "z0_ensemble does for images with their own context")
    ap.add_argument("--crops", type=int, default=1200, help="cached training crops")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--p-small", type=float, default=0.15, help="share of batches of whole 32x32 training images")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the time budget only)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--holdout-every", type=int, default=20)
    ap.add_argument("--holdout-match", nargs="*", default=list(HELD_APART),
                    help="also hold out files whose name contains one of these (default: the never-JPEG "
                         "photographs that the shipped network was not trained on), reported apart")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-id", default="vdmc-rgb-t64-ctx")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(args.checkpoint)
    model = with_context_net(loaded.model, args.hidden)
    if args.widen:
        model = widened(model, args.widen)
    meta = dict(loaded.meta)
    step = 0
    # files written with the starting model keep decoding with the new checkpoint (when only
    # the context differs, which is all that this program trains)
    start = str(loaded.path)
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        model = VDM(VDMConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        step, meta, start = state["step"], state["meta"], state.get("start", start)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()

    files = list_images(args.data)
    train_files, hold_files, apart = split_data(files, args.holdout_every, args.holdout_match)
    t0 = time.time()
    train_imgs = [load_rgb(f) for f in train_files]
    large = [im for im in train_imgs if min(im.shape[:2]) >= args.crop]
    calls = args.z0_ensemble
    cache = decoder_cache(model, random_crops(large, args.crops, args.crop, rng), seed=args.seed + step, calls=calls)
    # whole small images (CIFAR's 32x32) in their own cache: a batch holds one size
    small = [im for im in train_imgs if im.shape[:2] == (SMALL, SMALL)]
    small_cache = None
    if small and args.p_small > 0:
        small_cache = decoder_cache(model, torch.from_numpy(np.stack(small).astype(np.int64)).permute(0, 3, 1, 2),
                                    seed=args.seed + step + 1, calls=calls)
    hold_sets = eval_batches([load_rgb(f) for f in hold_files], args.crop)
    hold = decoder_cache(model, hold_sets[0], seed=12345, calls=calls)
    helds = {"heldout_recon_bpd": hold}
    if len(hold_sets) > 1 and hold_sets[1].shape[-1] == SMALL:
        helds[f"heldout_{SMALL}_recon_bpd"] = decoder_cache(model, hold_sets[1], seed=12345, calls=calls)
    if apart:
        crops = eval_batches([load_rgb(f) for f in apart], args.crop)[0]
        helds["apart_recon_bpd"] = decoder_cache(model, crops, seed=12345, calls=calls)
    print(f"cached {cache['x'].shape[0]} training and {hold['x'].shape[0]} held-out crops, "
          f"{len(apart)} files apart, in {time.time() - t0:.0f} s", file=sys.stderr)

    params = list(model.context_net.parameters()) + [model.context_weight, model.context_log_scale]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=args.lr)
    if args.resume and "opt" in state:
        opt.load_state_dict(state["opt"])
    log = open(out / "log.jsonl", "a")

    def record(**kv):
        rec = {"step": step, "wall": round(time.time() - t0, 1), **kv}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), file=sys.stderr)

    def held() -> dict:
        return {k: heldout_bpd(model, v) for k, v in helds.items()}

    record(**held())
    n = cache["x"].shape[0]
    deadline = time.time() + 60 * args.minutes
    last_eval = time.time()
    running = []
    while time.time() < deadline and not (args.max_steps and step >= args.max_steps):
        frac = 1.0 - max(0.0, deadline - time.time()) / (60 * args.minutes)
        for g in opt.param_groups:  # constant, then a linear decay over the last fifth
            g["lr"] = args.lr * min(1.0, 5.0 * (1.0 - frac))
        src = cache
        if small_cache is not None and rng.random() < args.p_small:
            src = small_cache  # as many pixels as a batch of crops
        batch = args.batch * (args.crop // src["x"].shape[-1]) ** 2
        idx = torch.from_numpy(rng.choice(src["x"].shape[0], min(batch, src["x"].shape[0]), replace=False))
        loss = recon_bits(model, src, idx).sum() / src["x"][idx].numel()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if time.time() - last_eval > 180:
            record(train_recon_bpd=float(np.mean(running)), **held())
            running, last_eval = [], time.time()
            save_state(out, model, opt, step, meta, start)
    record(train_recon_bpd=float(np.mean(running)) if running else None, **held())
    save_state(out, model, opt, step, meta, start)
    for p in model.parameters():
        p.requires_grad_(False)
    model.cfg.context_calls = calls  # the coder then gives every image the calls it was trained on
    meta = dict(meta, context_steps=step, context_note=f"context net (hidden {model.context_net.cfg.hidden}) trained "
                f"{step} steps on {n} cached crops at {calls} call(s) at z_0, network frozen")
    save_checkpoint(out / "model.pt", model, args.model_id, meta, earlier=earlier_models(start))
    return 0


def save_state(out: Path, model: VDM, opt, step: int, meta: dict, start: str) -> None:
    save_torch_atomic({"config": model.cfg.to_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                       "step": step, "meta": meta, "start": start}, out / "state.pt")


if __name__ == "__main__":
    sys.exit(main())
