"""The own least-squares code's mixing pass alone, on stored predictions: for choosing contexts.

    python -m benchmarks.experiments.lsq_mixing dump IMAGES... --out DIR [--halve-chroma]
    python -m benchmarks.experiments.lsq_mixing run DIR [--model 3] [--against 2] [--json OUT]

The least squares take most of the own code's time, and a change to the mixed model
(coding.lsqcm: its contexts, mixers, maps) does not change them.  `dump` runs them once per
image (coding.lsq.analyse and choose_scales, as lsq.encode does) and stores the pixels, the
predictions, error bins and scale table as DIR/NAME.npz; `run` codes every stored image's
samples with the mixed model `--model` (lsqcm.encode_samples: exactly the bytes the file
holds after its scale table) and prints each image's bytes and their change against the
model `--against`, and the total.  To try a change to lsqcm, edit it and run again: about
25 s for 13 training images where a whole encode takes minutes.  (After editing lsqcm, the
decoder's cached walk is stale: see its module docstring.)  --halve-chroma stores the image
with its chroma halved as a camera JPEG or a PhotoCD keeps it (lsq_vs_jxl.halve_chroma).
Choose on training images, never on the benchmark sets (session 27 chose the pointer
contexts so: docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vdmcodec.coding import lsq, lsqcm

from .effort_ablation import write_rows
from .lsq_vs_jxl import halve_chroma


def dump_predictions(x: np.ndarray, path: Path, threads: int = 2) -> None:
    """Store RGB pixels (H, W, 3) with their least-squares predictions, bins and scale table."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    values, mus, bins, chan_of = lsq.analyse(x, threads=threads)
    idx = lsq.choose_scales(values, mus, bins, chan_of, x.shape[2])
    np.savez(path, x=x, mus=mus, bins=bins, idx=idx)


def mixed_bytes(path: Path, model: int) -> int:
    """The mixed model's code of a dumped image: the bytes lsq.encode writes after the table."""
    z = np.load(path)
    x = z["x"]
    state = lsqcm.new_state(26 * x.size + 1024)
    order = lsq._order(x.shape[2], None)
    lsqcm.encode_samples(x, order, lsq.DIFF, z["mus"], z["bins"], lsq.SCALES[z["idx"]], 0, model, *state)
    return len(lsqcm.flush(state[-2], state[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("images", nargs="+", type=Path)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--halve-chroma", action="store_true")
    d.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--model", type=int, default=lsq.MODEL_POINTERS)
    r.add_argument("--against", type=int, default=lsq.MODEL_MIXED)
    r.add_argument("--json", dest="json_out")
    a = p.parse_args()
    if a.command == "dump":
        a.out.mkdir(parents=True, exist_ok=True)
        for path in a.images:
            with Image.open(path) as im:
                x = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if a.halve_chroma:
                x = halve_chroma(x)
            dump_predictions(x, a.out / f"{path.stem}{'_halved' if a.halve_chroma else ''}.npz", a.threads)
            print(f"{path.name}: {x.shape[1]}x{x.shape[0]}", flush=True)
        return
    rows, total, base = [], 0, 0
    t0 = time.perf_counter()
    for path in sorted(a.folder.glob("*.npz")):
        n, b = mixed_bytes(path, a.model), mixed_bytes(path, a.against)
        rows.append({"image": path.stem, "bytes": n, "against_bytes": b})
        total, base = total + n, base + b
        print(f"{path.stem:40s} {n:9d} {100 * (n / b - 1):+7.2f}%", flush=True)
    print(f"{'total':40s} {total:9d} {100 * (total / max(base, 1) - 1):+7.2f}%  ({time.perf_counter() - t0:.0f} s)")
    write_rows(a.json_out, {"folder": str(a.folder), "model": a.model, "against": a.against}, rows)


if __name__ == "__main__":
    main()
