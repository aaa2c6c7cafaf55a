"""Where the seconds go: a per-stage profile of compress (with its verifying decode) and of
decompress, on one image, from cProfile's cumulative times.

    python -m benchmarks.profile_stages ../shared/data/kodak/kodim23.png --threads 2 \\
        --json results/profile_s8.json

Stages (cumulative seconds of the functions named; they nest, so they do not add up):
the big network (EpsNet.forward) and the step model around it, the pixel decoder (its
network's groups, tables), the per-image context fit, ANS calls, the classic seed, the
NELBO accounting of seed rows (computed only for reporting), the container, and the
verifying decode.  cProfile slows Python-heavy parts a little; the network is C++.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

# stage -> (file suffix, function name) whose cumulative time is the stage's
STAGES = {
    "network (EpsNet.forward)": ("model/network.py", "forward"),
    "network in exact arithmetic (ExactNet)": ("model/exact_net.py", "__call__"),
    "step model: network outputs (every step and z_0, memo included)": ("coding/steps.py", "_nets"),
    "pixel decoder: parameters of p(x|z0)": ("coding/steps.py", "pixel_params"),
    "pixel decoder: context network groups": ("coding/pixels.py", "group_refine"),
    "pixel decoder: linear spatial context": ("coding/pixels.py", "spatial_shift"),
    "pixel decoder: probability tables": ("coding/pixels.py", "_table"),
    "FiLM fit (encoder only)": ("coding/film.py", "fit_film"),
    "context fit (encoder only)": ("coding/adapt.py", "fit_image_context"),
    "diffusion estimate (encoder only)": ("coding/estimate.py", "estimate_diffusion"),
    "classic bands: JPEG XL of every band and the strips (encoder only)": ("coding/bands.py", "plan_strips"),
    "classic file of the whole image (encoder only)": ("codec.py", "_classic_file"),
    "ANS: Gaussian push/pop": ("coding/ans.py", "push_gaussian|pop_gaussian"),
    "ANS: categorical push/pop": ("coding/ans.py", "push_categorical|pop_categorical"),
    "classic seed rows": ("coding/chain.py", "_push_classic_seed"),
    "accounting: seed rows' NELBO (reporting only)": ("codec.py", "_seed_terms"),
    "container pack/unpack": ("container.py", "pack_container|unpack_container"),
    "encode regions": ("coding/chain.py", "encode_region"),
    "decode regions": ("coding/chain.py", "decode_region"),
    "region checks inside the encode (compress)": ("coding/chain.py", "check"),
    "verifying decode of the file (compress)": ("codec.py", "verify_roundtrip"),
}


def _line_of(fn) -> int:
    import inspect

    return inspect.getsourcelines(fn)[1]


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    from vdmcodec.model.network import EpsNet

    lines = {"model/network.py": _line_of(EpsNet.forward)}  # ResBlock.forward is also "forward"
    out = {k: 0.0 for k in STAGES}
    for (fname, line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for stage, (suffix, names) in STAGES.items():
            if fname.replace("\\", "/").endswith(suffix) and func in names.split("|") \
                    and lines.get(suffix, line) == line:
                out[stage] += ct
    # a recursive-free sum: cProfile's cumulative time already excludes re-entry double counts
    return out


def profiled(fn) -> tuple[float, dict[str, float]]:
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - t
    return wall, stage_seconds(pstats.Stats(prof, stream=io.StringIO()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--effort", default="default")
    ap.add_argument("--bitsback", action="store_true",
                    help="run the chain whatever the estimate and keep its file (as large_image --bitsback)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from vdmcodec.checkpoints import load_checkpoint
    from vdmcodec.codec import Coder, compress_images, decompress_bytes, verify_roundtrip
    from vdmcodec.image_io import load_image

    coder = Coder.for_effort(load_checkpoint(None), args.effort, threads=args.threads)
    img = load_image(args.image, max_pixels=1 << 30)
    forced = dict(allow_fallback=False, skip_margin=None, seed_nelbo=False) if args.bitsback else {}
    box = {}

    def compress():
        # as the command line does it: the check reuses the encoder's network outputs (exact)
        with coder.remembering() as memo:
            data, _ = compress_images([(Path(args.image).stem, img)], coder, **forced)
            verify_roundtrip(data, [(Path(args.image).stem, img)], coder)
            if memo is not None:
                box["memo"] = {"hits": memo.hits, "misses": memo.misses, "bytes": memo.bytes}
        box["data"] = data

    enc_wall, enc = profiled(compress)
    dec_wall, dec = profiled(lambda: decompress_bytes(box["data"], coder=coder))
    rec = {"command": "python -m benchmarks.profile_stages " + " ".join(argv if argv is not None else sys.argv[1:]),
           "image": args.image, "effort": args.effort, "bitsback_forced": args.bitsback, "threads": args.threads, "bytes": len(box["data"]),
           "compress_with_verify_s": enc_wall, "decompress_s": dec_wall,
           "stages_compress_s": enc, "stages_decompress_s": dec,
           "network_calls_per_region": coder.step_model.network_calls(), "verify_memo": box.get("memo")}
    print(f"compress with verify {enc_wall:.1f} s, decompress {dec_wall:.1f} s ({args.image}, {args.effort}); "
          f"network outputs kept for the check: {box.get('memo')}")
    print("| stage | compress+verify s | decompress s |\n|---|---:|---:|")
    for k in STAGES:
        print(f"| {k} | {enc[k]:.1f} | {dec[k]:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
