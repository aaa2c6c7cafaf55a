"""Turn a training run's state.pt into a shipped checkpoint (EMA weights, fp16, gamma table).

    python -m vdmcodec.export runs/main/state.pt checkpoints/default.pt --model-id vdmc-rgb-t64
"""

from __future__ import annotations

import argparse
import sys

import torch

from .checkpoints import save_checkpoint
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


def export_state(state_path: str, out_path: str, model_id: str, extra_meta: dict | None = None) -> str:
    # the state file is our own training output, so full unpickling is acceptable here
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    model = VDM(VDMConfig.from_dict(state["config"]))
    model.load_state_dict(state["ema"])
    meta = _plain(dict(state.get("meta", {})))
    meta.update(_plain(extra_meta or {}))
    return save_checkpoint(out_path, model, model_id, meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vdmcodec.export", description=__doc__.split("\n")[0])
    p.add_argument("state")
    p.add_argument("out")
    p.add_argument("--model-id", default="vdmc-rgb-t64")
    args = p.parse_args(argv)
    sha = export_state(args.state, args.out, args.model_id)
    print(f"{args.out}: sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
