"""How often float-arithmetic network outputs differ between kernel sets after snapping.

Runs the shipped model's float eps network on one latent (a Kodak-size 512x768 draw around a
photograph, at a few steps) in fresh processes under each setting, snaps the outputs to 2^-16
as the float coder does, and counts the values that differ from the default setting's: the
margin the exact arithmetic removes.

    python -m benchmarks.experiments.snap_margin ../shared/data/kodak/kodim05.png --json results/snap_margin_s11.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STEPS = (0, 4, 16, 48)
SETTINGS = {"default": {}, "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
            "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"}, "threads-1": {"THREADS": "1"}}

_CHILD = """
import sys, numpy as np, torch
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.coding.grids import PARAM_SNAP, snap
from vdmcodec.train import load_rgb
torch.set_num_threads(int(sys.argv[3]))
lm = load_checkpoint(None)
net = lm.model.net.to(memory_format=torch.channels_last)
x = load_rgb(sys.argv[1]).transpose(2, 0, 1)[None].astype(np.float64)
xt = (2 * x + 1) / 256 - 1
out = {}
for j in map(int, sys.argv[4].split(",")):
    g = float(lm.gamma_table[j])
    a, s = np.sqrt(1 / (1 + np.exp(g))), np.sqrt(1 / (1 + np.exp(-g)))
    z = np.round((a * xt + s * np.random.default_rng(j).standard_normal(xt.shape)) * 256) / 256
    with torch.no_grad():
        eps, aux = net(torch.from_numpy(z).float().contiguous(memory_format=torch.channels_last),
                       torch.tensor([g], dtype=torch.float32), with_aux=True)
    out[f"eps{j}"] = snap(eps.double().numpy(), PARAM_SNAP)
    out[f"var{j}"] = snap(aux["reverse_var"].double().numpy(), PARAM_SNAP)
np.savez(sys.argv[2], **out)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="snap_margin_"))
    arrays = {}
    for name, env in SETTINGS.items():
        env = dict(env)
        threads = env.pop("THREADS", "2")
        path = work / f"{name}.npz"
        r = subprocess.run([sys.executable, "-c", _CHILD, args.image, str(path), threads, ",".join(map(str, STEPS))],
                           env=dict(os.environ, **env), capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            return 1
        arrays[name] = dict(np.load(path))
    base = arrays["default"]
    report = {"image": args.image, "steps": list(STEPS), "settings": {}}
    for name, arr in arrays.items():
        if name == "default":
            continue
        rows = {k: float(np.mean(arr[k] != base[k])) for k in base}
        report["settings"][name] = {k: round(v, 6) for k, v in rows.items()}
        print(json.dumps({"setting": name, "fraction_differing": report["settings"][name]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
