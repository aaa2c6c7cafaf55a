"""Turn a training run's state.pt (its EMA weights) or one of its model.pt snapshots into a
shipped checkpoint (fp16, gamma table), optionally with a fresh held-out evaluation.

    python -m vdmcodec.export runs/main/state.pt checkpoints/default.pt --model-id vdmc-rgb-t64
    python -m vdmcodec.export runs/main/model.pt checkpoints/default.pt --model-id vdmc-rgb-t64 --heldout DATA
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .checkpoints import FORMAT_NAME, earlier_models, half_state_dict, load_checkpoint, save_checkpoint
from .model.vdm import VDM, VDMConfig


def _plain(value):
    """Metadata as plain Python types (torch's version string is a str subclass that
    weights_only loading refuses)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def load_source(path: str) -> tuple[VDM, dict, list[dict]]:
    """The EMA model of a run's state.pt, or the model of a vdmcodec checkpoint, with its meta
    and the earlier models it carries (checkpoints.earlier_models)."""
    # the state file is our own training output, so full unpickling is acceptable here
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and state.get("format") == FORMAT_NAME:
        loaded = load_checkpoint(path)
        model = loaded.model
        for p in model.parameters():
            p.requires_grad_(True)
        return model, dict(loaded.meta), earlier_models(path)[1:]
    model = VDM(VDMConfig.from_dict(state["config"]))
    model.load_state_dict(state["ema"])
    return model, dict(state.get("meta", {})), []


def heldout_eval(model: VDM, data: list[str], holdout_every: int) -> dict:
    """The trainer's held-out evaluation (same files, crops and seed) of the weights as shipped
    (rounded to float16 as save_checkpoint stores them)."""
    from .train import eval_batches, evaluate, list_images, load_rgb, split_data

    rounded = VDM(model.cfg)
    rounded.load_state_dict({k: v.float() for k, v in half_state_dict(model).items()})
    _, hold, apart = split_data(list_images(data), holdout_every)  # as the trainer splits them
    result = evaluate(rounded, eval_batches([load_rgb(f) for f in hold], 128), torch.device("cpu"))
    if apart:
        result["apart_nelbo"] = evaluate(rounded, eval_batches([load_rgb(f) for f in apart], 128),
                                         torch.device("cpu"))["nelbo"]
    return result


def export_state(state_path: str, out_path: str, model_id: str, extra_meta: dict | None = None,
                 heldout: list[str] | None = None, holdout_every: int | None = None) -> tuple[str, dict]:
    """Write the checkpoint; returns its SHA-256 and the meta it carries."""
    model, meta, earlier = load_source(state_path)
    meta = _plain(meta)
    if heldout:
        meta["eval"] = heldout_eval(model, heldout, holdout_every or int(meta.get("holdout_every", 20)))
    meta.update(_plain(extra_meta or {}))
    return save_checkpoint(out_path, model, model_id, meta, earlier=earlier), meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vdmcodec.export", description=__doc__.split("\n")[0])
    p.add_argument("state")
    p.add_argument("out")
    p.add_argument("--model-id", default="vdmc-rgb-t64")
    p.add_argument("--heldout", nargs="+", metavar="DATA",
                   help="the training folders: evaluate on their held-out files and store it in meta['eval']")
    p.add_argument("--holdout-every", type=int, default=None, help="default: the run's")
    p.add_argument("--threads", type=int, default=0, help="torch threads for --heldout (0: all cores)")
    p.add_argument("--note", default=None, help="a line on how the model was made, kept in meta['note']")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    extra = {"note": args.note} if args.note else None
    sha, meta = export_state(args.state, args.out, args.model_id, extra, heldout=args.heldout,
                             holdout_every=args.holdout_every)
    print(f"{args.out}: sha256 {sha}")
    if args.heldout:
        print(json.dumps({k: round(v, 4) for k, v in meta["eval"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
