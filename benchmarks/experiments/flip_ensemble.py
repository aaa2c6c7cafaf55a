"""Would a flip ensemble of the network pay? The trainer's held-out 128x128 crops, with the
network's outputs (eps and every extra head) averaged over flipped copies of z.

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
from vdmcodec.train import eval_batches, evaluate, list_images, load_rgb, split_holdout

FLIP_SETS = {"none": [()], "h": [(), (3,)], "hv": [(), (3,), (2,), (2, 3)]}


class FlipEnsemble(torch.nn.Module):
    """The mean of a network's outputs over flipped inputs (flipped back)."""

    def __init__(self, net: torch.nn.Module, flips: list[tuple[int, ...]]):
        super().__init__()
        self.inner, self.flips, self.cfg = net, flips, net.cfg

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, with_aux: bool = False):
        eps_sum, aux_sum = 0.0, None
        for dims in self.flips:
            eps, aux = self.inner(torch.flip(z, dims) if dims else z, gamma, with_aux=True)
            if dims:
                eps, aux = torch.flip(eps, dims), {k: torch.flip(v, dims) for k, v in aux.items()}
            eps_sum = eps_sum + eps
            aux_sum = aux if aux_sum is None else {k: aux_sum[k] + v for k, v in aux.items()}
        n = len(self.flips)
        eps, aux = eps_sum / n, {k: v / n for k, v in aux_sum.items()}
        return (eps, aux) if with_aux else eps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--sets", nargs="+", choices=sorted(FLIP_SETS), default=["none", "h"])
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, hold = split_holdout(list_images([args.data]), 20)
    large = [im for im in (load_rgb(f) for f in hold) if min(im.shape[:2]) >= 128]
    batch = eval_batches(large, 128)[0]
    model = load_checkpoint(args.checkpoint).model.eval()
    net = model.net
    for name in args.sets:
        model.net = FlipEnsemble(net, FLIP_SETS[name])
        terms = evaluate(model, [batch], torch.device("cpu"))
        print(json.dumps({"checkpoint": args.checkpoint, "flips": name, "calls": len(FLIP_SETS[name]),
                          "crops": batch.shape[0], **terms}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
