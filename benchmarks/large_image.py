"""Time and peak memory of one large photograph through the command line (issue 16).

No photograph of 12 or 24 MP ships with the project, so this builds one: a mosaic of the
largest training photographs (train/photos, each cropped to 1280x800, in name order, reused
when there are too few), of about the megapixels asked.  Then `vdmcodec compress` (with its
verifying decode) and `vdmcodec decompress` run as child processes, each timed, with its
peak resident memory read from the OS, and the decoded pixels are compared:

    python -m benchmarks.large_image --megapixels 12 --effort fast --json results/large_12mp.json

--bitsback runs the chain whatever the estimate says and keeps its file even where JPEG XL's
is smaller (no classic fallback), to time a large bits-back file's decode.  --no-skip runs
compress as the command line does (the classic file, the estimate, the fits, the chain and
its check; the smaller file kept) but never skips the chain: the compress time of a photo
whose chain runs, the decision included.  Both compress in text mode (no NELBO report).

Writes a JSON record with the settings, seconds, peak memory and sizes.

    python -m benchmarks.large_image --megapixels 24 --estimate-only --json results/large_24mp_estimate.json

--estimate-only stops where compress decides between the chain and the classic file: the
classic file, the per-image fits and the estimate of the bits-back file, in this process,
with their seconds, the peak memory and both sizes (no chain, no file written).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TILE = (1280, 800)  # width, height


def mosaic(photos: Path, megapixels: float) -> np.ndarray:
    files = sorted(p for p in photos.glob("*.png"))
    tiles = []
    for p in files:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.width >= TILE[0] and im.height >= TILE[1]:
                x, y = (im.width - TILE[0]) // 2, (im.height - TILE[1]) // 2
                tiles.append(np.asarray(im.crop((x, y, x + TILE[0], y + TILE[1]))))
    if not tiles:
        raise SystemExit(f"no photograph of at least {TILE[0]}x{TILE[1]} in {photos}")
    n = max(1, round(megapixels * 1e6 / (TILE[0] * TILE[1])))
    cols = max(1, round(np.sqrt(n * TILE[1] / TILE[0] * 4 / 3)))  # about 4:3
    rows = -(-n // cols)
    grid = [tiles[k % len(tiles)] for k in range(rows * cols)]
    return np.concatenate([np.concatenate(grid[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def run_child(args: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS (MB) and stdout of a child process: the first this process starts
    (ru_maxrss of children is the largest of any child so far)."""
    t = time.perf_counter()
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--effort", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", default=os.environ.get("VDMCODEC_DATA", "../shared/data") + "/train/photos")
    ap.add_argument("--json", required=True)
    ap.add_argument("--estimate-only", action="store_true", help="only up to the chain-or-classic decision")
    ap.add_argument("--bitsback", action="store_true",
                    help="the bits-back file whatever the estimate and the classic file (to time its decode)")
    ap.add_argument("--no-skip", action="store_true",
                    help="compress as the command line does (text mode), but run the chain whatever the estimate: "
                         "the time of a photo whose chain runs, the decision included")
    args = ap.parse_args(argv)
    pixels = mosaic(Path(args.photos), args.megapixels)
    if args.estimate_only:
        return estimate_only(pixels, args, argv)
    with tempfile.TemporaryDirectory() as tmp:
        src, vdmc, back = Path(tmp, "mosaic.png"), Path(tmp, "mosaic.vdmc"), Path(tmp, "back.png")
        Image.fromarray(pixels).save(src)
        cli = [sys.executable, "-m", "vdmcodec"]
        if args.bitsback or args.no_skip:
            enc_s, enc_mb, enc_out = run_child([sys.executable, "-m", "benchmarks.large_image", "--compress-child",
                                                "bitsback" if args.bitsback else "no-skip", str(src), str(vdmc),
                                                args.effort, str(args.threads)])
        else:
            enc_s, enc_mb, enc_out = run_child(cli + ["compress", str(src), "-o", str(vdmc), "--effort", args.effort,
                                                      "--threads", str(args.threads), "--json"])
        report = json.loads(enc_out.strip().splitlines()[-1])
        # a second child for the decode: ru_maxrss of children is a maximum over all of them,
        # so the decode's own peak is read in a fresh process
        code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                "subprocess.run(sys.argv[1:], check=True); "
                "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, *cli, "decompress", str(vdmc), "-o", str(back)],
                             check=True, capture_output=True, text=True).stdout.split()
        dec_s, dec_mb = float(out[-2]), float(out[-1]) / 1024.0
        with Image.open(back) as im:
            exact = bool(np.array_equal(np.asarray(im.convert("RGB")), pixels))
        nbytes = vdmc.stat().st_size
    h, w = pixels.shape[:2]
    rec = {"command": "python -m benchmarks.large_image " + " ".join(argv if argv is not None else sys.argv[1:]),
           "width": w, "height": h, "megapixels": w * h / 1e6, "effort": args.effort, "threads": args.threads,
           "bytes": nbytes, "bpd": 8 * nbytes / (w * h * 3), "exact": exact,
           # how it was stored, and the bits-back file's size (made, or estimated when the
           # chain was skipped): compress --json's fields
           **{k: report.get(k) for k in ("method", "bitsback_bytes", "estimated_bitsback_bytes", "skipped_chain")},
           "compress_with_check_s": enc_s, "compress_peak_rss_mb": enc_mb,
           "decompress_s": dec_s, "decompress_peak_rss_mb": dec_mb,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec))
    if not exact:
        raise SystemExit("decoded pixels differ")


def compress_child(mode: str, src: str, out: str, effort: str, threads: str) -> None:
    """A child process: `vdmcodec compress`'s work in text mode (the verifying decode
    included), with the chain run whatever the estimate; mode "bitsback": no classic file
    either (neither made nor kept), "no-skip": the classic file and the estimate are made as
    usual and the smaller file is kept.  Prints its report's fields as compress --json does."""
    from vdmcodec.checkpoints import load_checkpoint
    from vdmcodec.codec import Coder, compress_images, verify_roundtrip
    from vdmcodec.image_io import load_image

    img = load_image(src, max_pixels=1 << 30)
    coder = Coder.for_effort(load_checkpoint(None), effort, threads=int(threads))
    kw = dict(allow_fallback=False, skip_margin=None) if mode == "bitsback" else dict(skip_margin=float("inf"))
    with coder.remembering():
        data, (rep,) = compress_images([("mosaic", img)], coder, seed_nelbo=False, **kw)
        verify_roundtrip(data, [("mosaic", img)], coder)
    Path(out).write_bytes(data)
    print(json.dumps({"method": rep.method, "bitsback_bytes": rep.bitsback_bytes or len(data),
                      "estimated_bitsback_bytes": rep.estimated_bytes or None, "skipped_chain": False}))


def estimate_only(pixels: np.ndarray, args, argv) -> None:
    """What compress spends before it decides: skip_margin -1 skips the chain whatever the
    estimate, so the run ends with the classic file and the estimate's numbers (those after
    the per-image fits: the skip on the first look is turned off here)."""
    from vdmcodec import codec
    from vdmcodec.checkpoints import load_checkpoint
    from vdmcodec.codec import CLASSIC_SKIP_MARGIN, Coder, compress_images
    from vdmcodec.image_io import RasterImage

    h, w = pixels.shape[:2]
    coder = Coder.for_effort(load_checkpoint(None), args.effort, threads=args.threads)
    codec.EARLY_SKIP = False
    t = time.perf_counter()
    try:
        data, (rep,) = compress_images([("mosaic", RasterImage("RGB", w, h, pixels, None, None))], coder,
                                       skip_margin=-1.0)
    finally:
        codec.EARLY_SKIP = True
    rec = {"command": "python -m benchmarks.large_image " + " ".join(argv if argv is not None else sys.argv[1:]),
           "width": w, "height": h, "megapixels": w * h / 1e6, "effort": args.effort, "threads": args.threads,
           "seconds_to_decision": time.perf_counter() - t, "estimate_s": rep.estimate_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "classic_bytes": len(data), "classic_bpd": 8 * len(data) / (w * h * 3),
           "estimated_bitsback_bytes": rep.estimated_bytes, "estimated_bitsback_bpd": 8 * rep.estimated_bytes / (w * h * 3),
           "chain_would_run": rep.estimated_bytes <= len(data) * (1 + CLASSIC_SKIP_MARGIN),
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compress-child"]:
        raise SystemExit(compress_child(*sys.argv[2:7]))
    main()
