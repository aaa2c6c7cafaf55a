"""Which part of `--effort max` buys its bits: the default preset with one of max's settings.

    python -m benchmarks.experiments.effort_ablation IMAGES... --crop 768x512 --variants default ens4 ...

Each image (a centre crop) is compressed (no verifying decode) with the default preset and
with each variant, which changes settings of it, joined by `+`: `ens4` 4 calls on the first
quarter of steps, `allsteps` every step of T, `fitmax` max's context fit, `film200` max's FiLM
fit (session 14's max), `film=N` N FiLM steps, `fit=RxC:STEPS[:BATCH]` a context-fit budget
(benchmarks.experiments.fit_budget), `enssteps=N` the ensemble on the first N steps only,
`z0=N` N calls at z_0, `plan=END:STRIDE,...` the steps visited (as in
benchmarks.experiments.step_plans: `16:1,24:2,40:4,64:8` is the default's).  Prints and
writes (--json) the bits-back file's bytes and bpd (no classic fallback), encode seconds
and, with --decode, decode seconds per image and variant.  Choose on training images,
never on the benchmark sets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import EFFORTS, Coder, compress_images, decompress_bytes, effort_settings
from vdmcodec.coding.film import FilmBudget
from vdmcodec.coding.steps import plan_from_strides
from vdmcodec.image_io import RasterImage, load_image


def centre_crop(path: Path, width: int, height: int) -> RasterImage:
    planes = load_image(path).planes
    h, w, c = planes.shape
    y, x = max(0, (h - height) // 2) & ~1, max(0, (w - width) // 2)
    crop = np.ascontiguousarray(planes[y : y + height, x : x + width])
    return RasterImage("RGB" if c == 3 else "L", crop.shape[1], crop.shape[0], crop, None, None)


def write_rows(path: str | None, settings: dict, rows: list[dict]) -> None:
    """An experiment's JSON record: its settings and one row per measurement (None: none)."""
    if path:
        Path(path).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")


def crop_parser(doc: str, effort: bool = True) -> argparse.ArgumentParser:
    """The arguments of an experiment on centre crops of images: IMAGES..., --crop, --effort
    (where it takes one), --checkpoint, --threads, --json."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    if effort:
        p.add_argument("--effort", default="default")
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out")
    return p


def crop_coder(args: argparse.Namespace) -> Coder:
    """The coder of crop_parser's arguments (the default effort where it takes none), activated."""
    coder = Coder.for_effort(load_checkpoint(args.checkpoint), getattr(args, "effort", "default"), threads=args.threads)
    coder.activate()
    return coder


def run_on_crops(args: argparse.Namespace, measure, settings: dict | None = None) -> list[dict]:
    """measure(path, centre crop) -> row for each of args.images; each row printed (floats
    rounded) and the JSON record (write_rows) written again after each image."""
    width, height = map(int, args.crop.split("x"))
    common = {"images": [str(q) for q in args.images], "crop": args.crop, "checkpoint": args.checkpoint,
              "threads": args.threads}
    if hasattr(args, "effort"):
        common["effort"] = args.effort
    rows = []
    for path in args.images:
        row = measure(path, centre_crop(path, width, height))
        rows.append(row)
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        write_rows(args.json_out, {**common, **(settings or {})}, rows)
    return rows


def measure_crops(doc: str, measure, argv=None, settings: dict | None = None) -> list[dict]:
    """An experiment's whole run: crop_parser's arguments, crop_coder's coder, and
    measure(coder, image name, centre crop) -> row on each image (run_on_crops)."""
    args = crop_parser(doc).parse_args(argv)
    coder = crop_coder(args)
    return run_on_crops(args, lambda path, img: measure(coder, path.name, img), settings)


def variant_kwargs(variant: str, T: int) -> dict:
    """Coder keywords: the default preset with the variant's changes."""
    from benchmarks.experiments.fit_budget import parse_budget

    kw = effort_settings("default", T)
    kw["fit"], kw["film"] = EFFORTS["default"]["fit"], EFFORTS["default"]["film"]
    for name in variant.split("+"):
        if name == "ens4":
            kw["ensemble"] = 4
        elif name == "allsteps":
            kw["plan"] = plan_from_strides(T, EFFORTS["max"]["strides"])
        elif name == "fitmax":
            kw["fit"] = EFFORTS["max"]["fit"]
        elif name == "film200":
            kw["film"] = FilmBudget(steps=200)
        elif name.startswith("film="):
            kw["film"] = FilmBudget(steps=int(name[5:]))
        elif name.startswith("fit="):
            kw["fit"] = parse_budget(name[4:])
        elif name.startswith("enssteps="):
            kw["ensemble_steps"] = int(name[9:])
        elif name.startswith("z0="):
            kw["z0_ensemble"] = int(name[3:])
        elif name.startswith("plan="):
            from benchmarks.experiments.step_plans import plan_from_spec

            kw["plan"] = plan_from_spec(name[5:], T)
            kw["ensemble_steps"] = min(kw["ensemble_steps"], sum(1 for j in kw["plan"][1:] if j <= T // 4))
        elif name != "default":
            raise SystemExit(f"unknown variant {name}")
    return kw


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--crop", default="768x512")
    p.add_argument("--variants", nargs="+", default=["default", "ens4", "allsteps", "fitmax", "film200"])
    p.add_argument("--checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", action="store_true", help="also time a decode of each file")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    width, height = map(int, args.crop.split("x"))
    lm = load_checkpoint(args.checkpoint)
    T = len(lm.gamma_table) - 1
    rows = []
    for path in args.images:
        img = centre_crop(path, width, height)
        for name in args.variants:
            coder = Coder(lm, threads=args.threads, **variant_kwargs(name, T))
            t0 = time.perf_counter()
            data, reports = compress_images([(path.stem, img)], coder, seed_nelbo=False, allow_fallback=False)
            row = {"image": path.name, "variant": name, "bytes": len(data), "encode_s": time.perf_counter() - t0,
                   "bpd": 8 * len(data) / img.planes.size, "film_bytes": reports[0].film_bytes,
                   "network_calls": coder.step_model.network_calls()}
            if args.decode:
                t0 = time.perf_counter()
                decompress_bytes(data, coder=coder)
                row["decode_s"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(args.json_out, {"images": [str(p) for p in args.images], "crop": args.crop,
                               "checkpoint": args.checkpoint, "threads": args.threads, "model": lm.model_id}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
