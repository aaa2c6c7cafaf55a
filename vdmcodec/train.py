"""Train a VDM on folders of images: `vdmcodec train` or `python -m vdmcodec.train`.

Random crops and flips, AdamW, EMA weights, gradient clipping, a wall-clock budget,
periodic checkpoints, --resume, a held-out evaluation, and a JSON-lines log of the three
NELBO terms in bits per dimension.  Uses CUDA (bf16 autocast for the network) when present
and torch.distributed when started by torchrun (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoints import read_checkpoint, save_checkpoint, save_torch_atomic
from .model.network import NetConfig
from .model.vdm import VDM, VDMConfig, upgrade_context_passes

from .files import IMAGE_SUFFIXES  # noqa: E402 (one list of image suffixes)


# never-JPEG photographs that neither trainer sees (train_context keeps the same default)
HELD_APART = ("waterloo_", "icinfo_")


def list_images(folders: list[str]) -> list[Path]:
    files = []
    for folder in folders:
        p = Path(folder)
        if p.is_file():
            files.append(p)
            continue
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return files


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class CropSampler:
    """Crops from large images (area-weighted) and whole small images (smaller than a crop)."""

    def __init__(self, images: list[np.ndarray], crop: int, rng: np.random.Generator, p_small: float, p_grey: float):
        self.large = [im for im in images if min(im.shape[:2]) >= crop]
        self.small = [im for im in images if min(im.shape[:2]) < crop]
        self.small_size = min((min(im.shape[:2]) for im in self.small), default=0)
        areas = np.array([im.shape[0] * im.shape[1] for im in self.large], dtype=np.float64)
        self.weights = areas / areas.sum() if len(areas) else None
        self.crop = crop
        self.rng = rng
        self.p_small = p_small if self.small and self.large else (1.0 if self.small else 0.0)
        self.p_grey = p_grey

    def _crop(self, im: np.ndarray, size: int) -> np.ndarray:
        h, w = im.shape[:2]
        y = self.rng.integers(0, h - size + 1)
        x = self.rng.integers(0, w - size + 1)
        out = im[y : y + size, x : x + size]
        if self.rng.random() < 0.5:
            out = out[:, ::-1]
        return out

    def batch(self, batch_size: int) -> torch.Tensor:
        """(B, C, H, W) uint8-valued int64 tensor; C = 1 for a greyscale batch."""
        if self.rng.random() < self.p_small:
            # same pixel count as a batch of crops
            n = max(1, batch_size * (self.crop // self.small_size) ** 2)
            idx = self.rng.integers(0, len(self.small), n)
            crops = [self._crop(self.small[i], self.small_size) for i in idx]
        else:
            idx = self.rng.choice(len(self.large), batch_size, p=self.weights)
            crops = [self._crop(self.large[i], self.crop) for i in idx]
        arr = np.stack(crops).astype(np.int64)
        if self.rng.random() < self.p_grey:
            arr = ((arr[..., 0] * 299 + arr[..., 1] * 587 + arr[..., 2] * 114 + 500) // 1000)[..., None]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def split_data(files: list[Path], every: int, apart_match=HELD_APART) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, held out, apart): files whose names contain one of `apart_match` are held
    apart (never trained on, judged on their own), and every `every`-th of the rest is held
    out; every trainer and diagnostic splits this one way."""
    apart = [f for f in files if any(m in f.name for m in apart_match)]
    train, hold = split_holdout([f for f in files if f not in apart], every)
    return train, hold, apart


def split_holdout(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """Every `every`-th file (in sorted order) is held out for evaluation."""
    hold = [f for i, f in enumerate(files) if i % every == every // 2]
    keep = [f for i, f in enumerate(files) if i % every != every // 2]
    return keep, hold


def eval_batches(images: list[np.ndarray], crop: int, max_large: int = 12, max_small: int = 64) -> list[torch.Tensor]:
    """Fixed crops of held-out images, grouped into batches of one size each: the centre of
    each quadrant of a large image (its centre if it is too small for four)."""
    large = [im for im in images if min(im.shape[:2]) >= crop][:max_large]
    small = [im for im in images if min(im.shape[:2]) < crop][:max_small]
    out = []
    if large:
        crops = []
        for im in large:
            h, w = im.shape[:2]
            if min(h, w) >= 2 * crop:
                corners = [(y, x) for y in ((h // 2 - crop) // 2, h // 2 + (h // 2 - crop) // 2)
                           for x in ((w // 2 - crop) // 2, w // 2 + (w // 2 - crop) // 2)]
            else:
                corners = [((h - crop) // 2, (w - crop) // 2)]
            crops += [im[y : y + crop, x : x + crop] for y, x in corners]
        out.append(torch.from_numpy(np.stack(crops).astype(np.int64)).permute(0, 3, 1, 2).contiguous())
    if small:
        s = min(min(im.shape[:2]) for im in small)
        out.append(torch.from_numpy(np.stack([im[:s, :s] for im in small]).astype(np.int64)).permute(0, 3, 1, 2).contiguous())
    return out


@torch.no_grad()
def evaluate(model: VDM, batches: list[torch.Tensor], device: torch.device, repeats: int = 4, seed: int = 0) -> dict:
    """Mean NELBO terms (bpd) over held-out batches, with a fixed seed and stratified steps;
    also "nelbo_<size>", the mean over the crops of each size (the large crops are the
    better guide for photos)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {"recon": 0.0, "prior": 0.0, "diffusion": 0.0, "nelbo": 0.0}
    by_size: dict[str, list[float]] = {}
    count = 0
    T = model.steps
    for rep in range(repeats):
        for xb in batches:
            b = xb.shape[0]
            size = by_size.setdefault(f"nelbo_{xb.shape[-1]}", [0.0, 0])
            steps = ((torch.arange(b) * T) // b + (rep * T) // (repeats * max(b, 1)) + rep) % T + 1
            for i in range(0, b, 16):
                terms = model.terms(xb[i : i + 16].to(device), step_index=steps[i : i + 16].to(device), generator=gen)
                for k in sums:
                    sums[k] += float(terms[k].sum())
                count += terms["nelbo"].shape[0]
                size[0] += float(terms["nelbo"].sum())
                size[1] += terms["nelbo"].shape[0]
    model.train()
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out.update({k: v[0] / max(v[1], 1) for k, v in by_size.items()})
    return out


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.mul_(d).add_(p.detach(), alpha=1 - d)


def setup_distributed() -> tuple[int, int, torch.device]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vdmcodec train", description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="+", help="folders (or files) of training images")
    p.add_argument("--out", default="runs/default", help="run folder: state.pt, model.pt, log.jsonl")
    p.add_argument("--resume", help="a run's state.pt (full resume) or a shipped checkpoint (weights only)")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this run")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--steps-T", type=int, default=64, help="diffusion steps T (training = coding)")
    net = NetConfig()  # one set of defaults: the network's own
    p.add_argument("--channels", default=",".join(map(str, net.channels)))
    p.add_argument("--down-blocks", default=",".join(map(str, net.down_blocks)))
    p.add_argument("--up-blocks", type=int, default=net.up_blocks)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--final-decay", type=float, default=0.25, help="last fraction of the budget with linear LR decay")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=20.0, help="gradient-norm clip (norms run 5-20 here; at 1.0 every step is clipped)")
    p.add_argument("--p-small", type=float, default=0.15, help="share of batches of whole small images")
    p.add_argument("--p-grey", type=float, default=0.1, help="share of greyscale batches")
    p.add_argument("--holdout-every", type=int, default=20)
    p.add_argument("--holdout-match", nargs="*", default=list(HELD_APART),
                   help="files whose names contain one of these are never trained on and are evaluated "
                        "apart (never-JPEG photographs kept for judging; the context trainer keeps the same)")
    p.add_argument("--freeze", nargs="*", default=[],
                   help="parameter-name prefixes not trained (e.g. context_net. : a context network "
                        "trained apart on ensembled calls at z_0 stays as it is)")
    p.add_argument("--eval-first", action="store_true", help="evaluate once before the first step (a baseline)")
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-id", default="vdmc-rgb")
    p.add_argument("--decoder", choices=("z0", "xhat"), default=None,
                   help="pixel decoder p(x | z_0); on --resume, 'xhat' upgrades a 'z0' model (default: keep; new runs: xhat)")
    p.add_argument("--variance-head", action="store_true",
                   help="on --resume, give a model without one the learned per-pixel reverse variance (new runs have it)")
    p.add_argument("--pixel-context", action="store_true",
                   help="upgrade to the two-pass, colour-ordered pixel decoder (new models have it)")
    p.add_argument("--context-passes", type=int, choices=(2, 4), default=None,
                   help="passes of the pixel context (new models: 4); on --resume, 4 upgrades a two-pass model")
    p.add_argument("--schedule-lr-mult", type=float, default=1.0,
                   help="learning-rate factor of the noise schedule (0 freezes it)")
    p.add_argument("--recon-share", type=float, default=0.25,
                   help="share of each batch on which the xhat decoder's term is computed (it costs a network call)")
    return p.parse_args(argv)


def load_grown(model: torch.nn.Module, weights: dict) -> bool:
    """Load weights into a model that may have grown since (new parameters, wider input
    convolutions, more output channels): old entries are copied into the leading slices, the
    rest is zero (new input channels, new outputs).  Returns True if nothing had to grow."""
    own = model.state_dict()
    exact = set(own) == set(weights)
    with torch.no_grad():
        for k, v in weights.items():
            if k not in own:
                exact = False
                continue
            v = v.float()
            if own[k].shape == v.shape:
                own[k].copy_(v)
            else:
                exact = False
                if k.endswith("weight") and own[k].dim() == 4 and own[k].shape[0] == v.shape[0]:
                    own[k].zero_()
                    own[k][:, : v.shape[1]].copy_(v)
                elif own[k].dim() == v.dim() and own[k].shape[1:] == v.shape[1:] and own[k].shape[0] > v.shape[0]:
                    own[k].zero_()
                    own[k][: v.shape[0]].copy_(v)
                else:
                    raise ValueError(f"cannot grow parameter {k} from {tuple(v.shape)} to {tuple(own[k].shape)}")
    return exact


def param_groups(model: VDM, schedule_lr_mult: float) -> list[dict]:
    """The noise schedule in its own group: its endpoints drift on noisy recon gradients
    (gamma0 rose from -9.0 to -7.8 in 45 minutes while the held-out NELBO got worse).
    Frozen parameters (requires_grad False) are in neither."""
    sched = [p for n, p in model.named_parameters() if n.startswith("schedule.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("schedule.") and p.requires_grad]
    return [{"params": rest, "lr_mult": 1.0}, {"params": sched, "lr_mult": schedule_lr_mult}]


def build_config(args) -> VDMConfig:
    net = NetConfig(
        channels=tuple(int(c) for c in args.channels.split(",")),
        down_blocks=tuple(int(c) for c in args.down_blocks.split(",")),
        up_blocks=args.up_blocks,
    )
    return VDMConfig(steps=args.steps_T, net=net)


def lr_at(args, step: int, frac_time: float) -> float:
    warm = min(1.0, (step + 1) / max(args.warmup, 1))
    start = 1.0 - args.final_decay
    decay = 1.0 if frac_time < start else max(0.1, 1.0 - 0.9 * (frac_time - start) / max(args.final_decay, 1e-9))
    return args.lr * warm * decay


def resume_config(args) -> tuple[dict | None, VDMConfig, dict]:
    """(the resumed state or None, the model config with this run's upgrades, the resumed
    run's step counts): a run's own state.pt (trusted: written by this program) or a shipped
    checkpoint (weights only)."""
    state = None
    prior_meta = {"steps": 0, "images_seen": 0, "wall_seconds": 0.0}
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        if state.get("format") == "vdmcodec-checkpoint":
            blob = read_checkpoint(args.resume)
            cfg = VDMConfig.from_dict(blob["config"])
            prior_meta.update({k: blob["meta"].get(k, prior_meta[k]) for k in prior_meta})
        else:
            cfg = VDMConfig.from_dict(state["config"])
            prior_meta.update(state["meta"])
    else:
        cfg = build_config(args)
    if args.decoder is not None:
        cfg.decoder = args.decoder
        cfg.net.decoder_head = args.decoder == "xhat"
        cfg.pixel_context = cfg.pixel_context and args.decoder == "xhat"
    if args.variance_head:
        cfg.net.variance_head = True
    if args.pixel_context:
        cfg.pixel_context = True
        cfg.net.channel_head = True
    if args.context_passes is not None:
        cfg.context_passes = args.context_passes
    cfg.validate()
    return state, cfg, prior_meta


def build_training(args, cfg: VDMConfig, state: dict | None, device):
    """(model, EMA, optimiser, state, frozen parameter names): the resumed weights loaded
    (grown where the model grew), the --freeze prefixes frozen, the optimiser's moments
    restored only on an exact resume with the same trainable parameters (else state loses
    its "optimizer", so the step count restarts the warm-up)."""
    model = VDM(cfg).to(device)
    exact_resume = True
    if state is not None:
        weights = state["state_dict"] if "state_dict" in state else state["model"]
        converted = upgrade_context_passes(weights, cfg.context_passes) if cfg.pixel_context else weights
        exact_resume = load_grown(model, converted) and converted is weights
    frozen = [n for n, p in model.named_parameters() if any(n.startswith(f) for f in args.freeze)]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    ema = EMA(model, args.ema)
    if state is not None and "ema" in state:
        load_grown(ema.shadow, upgrade_context_passes(state["ema"], cfg.context_passes) if cfg.pixel_context else state["ema"])
        ema.updates = state.get("ema_updates", 10_000)
    opt = torch.optim.AdamW(param_groups(model, args.schedule_lr_mult), lr=args.lr, weight_decay=args.weight_decay)
    if state is not None and "optimizer" in state and exact_resume \
            and [len(g["params"]) for g in state["optimizer"]["param_groups"]] \
            == [len(g["params"]) for g in opt.param_groups]:
        opt.load_state_dict(state["optimizer"])
        for g, fresh in zip(opt.param_groups, param_groups(model, args.schedule_lr_mult)):
            g["lr_mult"] = fresh["lr_mult"]  # this run's factors, not the saved run's
    else:  # a weights-only resume, a grown model, other frozen parameters or an older layout: fresh moments
        state = {k: v for k, v in (state or {}).items() if k != "optimizer"} or None
    return model, ema, opt, state, frozen


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed + rank)
    rng = np.random.default_rng(args.seed + 1000 * rank + int(time.time()) % 100000)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    files = list_images(args.data)
    if not files:
        print(f"no images under {args.data}", file=sys.stderr)
        return 2
    train_files, hold_files, apart = split_data(files, args.holdout_every, args.holdout_match)
    train_imgs = [load_rgb(f) for f in train_files]
    hold_imgs = [load_rgb(f) for f in hold_files]
    sampler = CropSampler(train_imgs, args.crop, rng, args.p_small, args.p_grey)
    eval_sets = eval_batches(hold_imgs, 128 if args.crop >= 64 else args.crop)
    apart_sets = eval_batches([load_rgb(f) for f in apart], 128 if args.crop >= 64 else args.crop) if apart else []

    state, cfg, prior_meta = resume_config(args)
    model, ema, opt, state, frozen = build_training(args, cfg, state, device)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_params = sum(p.numel() for p in model.net.parameters())
    log = open(out / "log.jsonl", "a") if rank == 0 else None

    def write_log(rec: dict):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    # the resumed run's meta first: its "params" is the old network's count
    write_log({**prior_meta, "event": "start", "config": cfg.to_dict(), "params": n_params, "args": vars(args),
               "world": world, "device": str(device), "train_files": len(train_files), "holdout_files": len(hold_files),
               "apart_files": len(apart), "frozen": len(frozen)})

    def run_eval(step_now: int, elapsed: float) -> dict:
        result = evaluate(ema.shadow, eval_sets, device)
        if apart_sets:
            result["apart_nelbo"] = evaluate(ema.shadow, apart_sets, device)["nelbo"]
        write_log({"event": "eval", "step": step_now, "elapsed": round(elapsed, 1), **result})
        return result

    t_start = time.time()
    budget = args.minutes * 60.0
    last_ckpt = last_eval = t_start
    step = 0
    run_sums = {"recon": 0.0, "prior": 0.0, "diffusion": 0.0, "nelbo": 0.0}
    run_n = 0
    last_eval_result = prior_meta.get("eval")
    if rank == 0 and args.eval_first:
        last_eval_result = run_eval(prior_meta["steps"], 0.0)
    amp = device.type == "cuda"

    def save(final: bool = False):
        if rank != 0:
            return
        meta = {
            "steps": prior_meta["steps"] + step,
            "images_seen": prior_meta["images_seen"] + step * args.batch * world,
            "wall_seconds": prior_meta["wall_seconds"] + (time.time() - t_start),
            "train_data": [str(d) for d in args.data],
            "holdout_every": args.holdout_every,
            "params": n_params,
            "eval": last_eval_result,
            "torch": str(torch.__version__),
        }
        save_torch_atomic(
            {"config": cfg.to_dict(), "model": model.state_dict(), "ema": ema.shadow.state_dict(),
             "ema_updates": ema.updates, "optimizer": opt.state_dict(), "meta": meta},
            out / "state.pt",
        )
        save_checkpoint(out / "model.pt", ema.shadow, args.model_id, meta)
        write_log({"event": "checkpoint", "final": final, **{k: meta[k] for k in ("steps", "images_seen", "wall_seconds")}})

    while True:
        elapsed = time.time() - t_start
        stop = elapsed >= budget or bool(args.max_steps and step >= args.max_steps)
        if world > 1:
            # rank 0 decides for everyone: ranks that stop at different steps would hang in
            # the next all-reduce, and the LR decay must use one clock
            flags = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=device)
            torch.distributed.broadcast(flags, 0)
            stop, elapsed = bool(flags[0].item()), float(flags[1].item())
        if stop:
            break
        lr = lr_at(args, prior_meta["steps"] + step if state is not None and "optimizer" in state else step, elapsed / budget)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        xb = sampler.batch(args.batch).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            terms = train_model(xb, recon_batch=max(1, round(args.recon_share * xb.shape[0])))
        loss = terms["nelbo"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        ema.update(model)
        step += 1
        for k in run_sums:
            run_sums[k] += float(terms[k].detach().mean())
        run_n += 1
        if step % 50 == 0 and rank == 0:
            g = model.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64, device=device)).tolist()
            write_log({"event": "train", "step": prior_meta["steps"] + step, "elapsed": round(time.time() - t_start, 1),
                       "lr": lr, "gnorm": float(gnorm), "gamma0": g[0], "gamma1": g[1],
                       **{k: v / run_n for k, v in run_sums.items()}})
            run_sums = dict.fromkeys(run_sums, 0.0)
            run_n = 0
        now = time.time()
        if rank == 0 and now - last_eval >= args.eval_minutes * 60.0:
            last_eval_result = run_eval(prior_meta["steps"] + step, now - t_start)
            last_eval = time.time()
        if now - last_ckpt >= args.ckpt_minutes * 60.0:
            save()
            last_ckpt = time.time()

    if rank == 0 and run_n:
        write_log({"event": "train", "step": prior_meta["steps"] + step, "elapsed": round(time.time() - t_start, 1),
                   **{k: v / run_n for k, v in run_sums.items()}})
    if rank == 0:
        last_eval_result = run_eval(prior_meta["steps"] + step, time.time() - t_start)
    save(final=True)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
