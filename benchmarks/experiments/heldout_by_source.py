"""The trainer's held-out 128x128 crops, with the NELBO terms split by source folder, for
one or more checkpoints (which data a change helped).

    python -m benchmarks.experiments.heldout_by_source OLD.pt checkpoints/default.pt

Same crops, step indices and seed as the trainer's `evaluate` (4 repeats).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.train import eval_batches, list_images, load_rgb, split_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, hold, _ = split_data(list_images([args.data]), 20)  # the trainers' held-out files
    large = [(f, im) for f in hold for im in [load_rgb(f)] if min(im.shape[:2]) >= 128]
    batch = eval_batches([im for _, im in large], 128)[0]
    sources = [f.parent.name for f, im in large for _ in range(4 if min(im.shape[:2]) >= 256 else 1)]
    for spec in args.checkpoints:
        model = load_checkpoint(spec).model.eval()
        T, n = model.steps, batch.shape[0]
        gen = torch.Generator().manual_seed(0)
        sums: dict[str, dict[str, float]] = {}
        with torch.no_grad():
            for rep in range(4):
                steps = ((torch.arange(n) * T) // n + (rep * T) // (4 * n) + rep) % T + 1
                terms = model.terms(batch, step_index=steps, generator=gen)
                for i, src in enumerate(sources):
                    d = sums.setdefault(src, {"recon": 0.0, "diffusion": 0.0, "nelbo": 0.0, "crops": 0})
                    for k in ("recon", "diffusion", "nelbo"):
                        d[k] += float(terms[k][i]) / 4
                    d["crops"] += 0.25
        out = {src: {k: (v / d["crops"] if k != "crops" else int(v)) for k, v in d.items()} for src, d in sums.items()}
        print(json.dumps({"checkpoint": spec, "by_source": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
