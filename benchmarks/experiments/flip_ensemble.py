"""Would a flip ensemble of the network pay? The trainer's held-out 128x128 crops, with the
network's outputs (eps and every extra head) averaged over flipped copies of z at every step,
the decoder's call at z_0 included (the coder's `--ensemble` leaves that one alone).

    python -m benchmarks.experiments.flip_ensemble checkpoints/default.pt --sets none h hv

none: one call (as coded today); h: identity and horizontal flip (2 calls); hv: all four
flips (4 calls).  The trainer's own `evaluate` (fixed crops, step indices and noise), so the
differences between sets are paired.  Training data only: never Kodak.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.network import flip_ensemble
from vdmcodec.train import eval_batches, evaluate, list_images, load_rgb, split_data

SETS = {"none": 1, "h": 2, "hv": 4}  # network calls (network.ENSEMBLE_FLIPS)


class Ensembled(torch.nn.Module):
    """A network whose every call (diffusion steps and the decoder at z_0) is a flip ensemble."""

    def __init__(self, net: torch.nn.Module, calls: int):
        super().__init__()
        self.inner, self.calls, self.cfg = net, calls, net.cfg

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, with_aux: bool = False):
        eps, aux = flip_ensemble(self.inner, z, gamma, self.calls)
        return (eps, aux) if with_aux else eps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["none", "h"])
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    large = [im for im in (load_rgb(f) for f in hold) if min(im.shape[:2]) >= 128]
    batch = eval_batches(large, 128)[0]
    model = load_checkpoint(args.checkpoint).model.eval()
    net = model.net
    for name in args.sets:
        model.net = Ensembled(net, SETS[name])
        terms = evaluate(model, [batch], torch.device("cpu"))
        print(json.dumps({"checkpoint": args.checkpoint, "flips": name, "calls": SETS[name],
                          "crops": batch.shape[0], **terms}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
