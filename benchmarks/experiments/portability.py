"""Today's margin: does a file written under one CPU kernel set decode under the others?

    python -m benchmarks.experiments.portability ../shared/data/kodak/kodim23.png \\
        --json results/portability_s8.json

Writes the image once in a child process with this machine's default kernels, then decodes
the file in fresh child processes under each setting: the same (the control),
ATen's portable kernels (ATEN_CPU_CAPABILITY=default), oneDNN limited to SSE4.1
(ONEDNN_MAX_CPU_ISA=SSE41), and both; reports each decode's exit code and message (0:
exact; 12: wrong pixels caught by the hash; 13: the coder hit an impossible symbol) and
seconds.  A diagnostic for the exact-arithmetic issue, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "same": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "both": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    # exact-arithmetic files only (a float file pins its thread count; these change nothing there)
    "threads-1": {"VDMCODEC_THREADS": "1"},
    "threads-3": {"VDMCODEC_THREADS": "3"},
    "numba-generic": {"NUMBA_CPU_NAME": "generic"},
    "numpy-x86-v3": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},  # numpy without its AVX-512 loops
    "all-portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "VDMCODEC_THREADS": "1",
                     "NUMBA_CPU_NAME": "generic", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
}


def vdmcodec(args: list[str], env: dict) -> tuple[int, str, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "vdmcodec", *args], capture_output=True, text=True,
                       env=dict(os.environ, **env))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vdmcodec:")]
    return r.returncode, lines[-1] if lines else "", time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--effort", default="default")
    ap.add_argument("--settings", nargs="*", default=None, help="default: all (float files: the kernel sets)")
    ap.add_argument("--checkpoint", default=None, help="a model (default: the shipped one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="portability_"))
    out = {"command": "python -m benchmarks.experiments.portability " + " ".join(argv or sys.argv[1:]), "images": []}
    for img in args.images:
        vdmc = work / (Path(img).stem + ".vdmc")
        ck = ["--checkpoint", args.checkpoint] if args.checkpoint else []
        code, msg, enc_s = vdmcodec(["compress", img, "-o", str(vdmc), "--no-verify", "--threads", args.threads,
                                     "--effort", args.effort, *ck], {})
        rec = {"image": img, "encode": {"exit": code, "message": msg, "seconds": enc_s}, "decodes": {}}
        for name in args.settings or list(SETTINGS):
            png = work / f"{Path(img).stem}.{name}.png"
            code, msg, dec_s = vdmcodec(["decompress", str(vdmc), "-o", str(png), "-f", *ck], SETTINGS[name])
            rec["decodes"][name] = {"exit": code, "message": msg[:300], "seconds": dec_s}
            print(json.dumps({"image": img, "setting": name, "exit": code, "seconds": round(dec_s, 1),
                              "message": msg[:160]}), flush=True)
        out["images"].append(rec)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
