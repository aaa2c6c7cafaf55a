"""Benchmark vdmcodec against classic lossless codecs.

    python -m benchmarks.compare DIR... [--limit N] [--json OUT.json] [--markdown OUT.md]
        [--plot OUT.png] [--device auto|cpu|cuda] [--checkpoint PATH] [--codecs LIST]
        [--no-vdmc] [--archive-small] [--eval-nelbo] [--threads N]

Each DIR is one data set.  Every image is coded by every selected codec and decoded again;
a codec whose output does not decode to exactly the input pixels is a failure (exit code 1).

bpd (bits per dimension) always counts the whole encoded file: 8 * bytes / (W * H * channels).
For vdmcodec the model's NELBO over the regions as coded is reported beside it, and the
overhead (file minus NELBO).  Sets of 32x32 images (or any set with --archive-small) are also
coded as one vdmcodec archive, where one ANS stack runs through all images.

Progress goes to stderr, the Markdown table to stdout.  The vdmcodec side (torch) is only
imported when it is used, so --no-vdmc runs without it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import classic

VDMC = "vdmc"
VDMC_LABEL = "vdmcodec"
ALL_CODECS = list(classic.CODECS) + [VDMC]
ALIASES = {"all": ALL_CODECS, "jxl": ["jxl-e7", "jxl-e9"], "classic": list(classic.CODECS), "vdmcodec": [VDMC]}
IMAGE_SUFFIXES = {".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".gif", ".jpg", ".jpeg"}
SMALL_SIDE = 32  # sets whose images are all 32x32 also get an archive run
_CHANNEL_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_CONVERT = {"1": "L", "P": None, "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}  # None: RGB or RGBA


class BenchmarkError(Exception):
    """A problem with the benchmark's own setup (no images, no checkpoint, ...)."""


# ----------------------------------------------------------------------------- data


@dataclass
class BenchImage:
    name: str
    path: str
    pixels: np.ndarray  # uint8 (H, W, C), C in 1..4: what every codec codes
    source_mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def dims(self) -> int:
        return int(self.pixels.size)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass
class Dataset:
    name: str
    path: str
    images: list[BenchImage]
    skipped: list[dict]


def load_pixels(path: Path) -> tuple[np.ndarray, str, list[str]]:
    """Pixels exactly as stored (no EXIF rotation, no colour management) as (H, W, C).
    Palette and 1-bit images are expanded to L/RGB/RGBA; the ICC profile is ignored, so
    every codec codes the same samples."""
    notes = []
    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise ValueError(f"multi-frame image ({im.n_frames} frames)")
        im.load()
        mode = im.mode
        if mode not in _CHANNEL_MODES:
            if mode not in _CONVERT:
                raise ValueError(f"unsupported mode {mode!r} (8-bit L, LA, RGB, RGBA, P, 1 only)")
            target = _CONVERT[mode]
            if target is None:  # palette: keep alpha only if the palette has transparency
                target = "RGBA" if im.has_transparency_data else "RGB"
            im = im.convert(target)
            notes.append(f"converted {mode} -> {target}")
        if im.info.get("icc_profile"):
            notes.append("icc profile ignored")
        if "transparency" in im.info and im.mode in ("L", "RGB"):
            notes.append("tRNS colour key ignored")
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.uint8), mode, notes


def load_dataset(folder: str, limit: int | None, name: str) -> Dataset:
    root = Path(folder)
    if not root.is_dir():
        raise BenchmarkError(f"not a folder: {folder}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], []
    for p in files:
        if limit is not None and len(images) >= limit:
            break
        try:
            pixels, mode, notes = load_pixels(p)
        except Exception as exc:  # Pillow raises many types
            skipped.append({"file": p.name, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        images.append(BenchImage(p.name, str(p), pixels, mode, notes))
    if not images:
        raise BenchmarkError(f"no readable images in {folder}")
    return Dataset(name, str(root), images, skipped)


def dataset_names(folders: list[str]) -> list[str]:
    names, seen = [], {}
    for f in folders:
        base = Path(f).resolve().name or "data"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


# ----------------------------------------------------------------------------- memory


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux: clear_refs 5), so that the next reading is
    the peak of one run rather than of the whole process so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process (since the last reset) in MiB."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if sys.platform == "darwin":
            kb //= 1024
    return kb / 1024.0


def rss_mb() -> float | None:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


class MemoryProbe:
    """Peak RSS of the process during one run (the process's whole peak where it cannot be reset)."""

    def __enter__(self):
        reset_peak_rss()
        self.before = rss_mb()
        return self

    def __exit__(self, *exc):
        self.peak = peak_rss_mb()
        return False

    def record(self) -> dict:
        return {"peak_rss_mb": round(self.peak, 1), "rss_before_mb": None if self.before is None else round(self.before, 1)}


# ----------------------------------------------------------------------------- classic side


def run_classic(key: str, img: BenchImage, threads: int) -> dict:
    res: dict[str, Any] = {"codec": key}
    probe = MemoryProbe()
    try:
        with probe:
            run = classic.run_codec(key, img.pixels, threads=threads)
    except classic.UnsupportedInputError as exc:
        res.update(status="unsupported", lossless=None, error=str(exc))
        return res
    except classic.NotLosslessError as exc:
        res.update(status="failed", lossless=False, error=str(exc))
        return res
    except Exception as exc:
        res.update(status="failed", lossless=False, error=f"{type(exc).__name__}: {exc}")
        return res
    res.update(status="ok", lossless=True, error=None)
    res.update(_size_time(len(run.data), run.encode_s, run.decode_s, img.dims, img.megapixels))
    res.update(probe.record())
    return res


def _reporting_s(reports: list) -> float:
    """Seconds compress spent only on these reports (codec.ImageReport.reporting_s)."""
    return float(sum(getattr(r, "reporting_s", 0.0) for r in reports))


def _size_time(nbytes: int, enc: float, dec: float, dims: int, mp: float) -> dict:
    return {
        "bytes": int(nbytes),
        "bpd": 8.0 * nbytes / dims,
        "encode_s": enc,
        "decode_s": dec,
        "encode_s_per_mp": enc / mp,
        "decode_s_per_mp": dec / mp,
    }


# ----------------------------------------------------------------------------- vdmcodec side


def default_threads() -> int:
    """vdmcodec's default coding thread count (same rule as vdmcodec.codec.default_threads,
    repeated here so that the classic side does not import torch)."""
    env = os.environ.get("VDMCODEC_THREADS")
    return int(env) if env else max(1, min(os.cpu_count() or 1, 8))


class VdmcRunner:
    """The neural codec through the library API.  Importing torch happens here, only."""

    def __init__(self, checkpoint: str | None, device: str, threads: int, show_progress: bool = True,
                 allow_fallback: bool = True, effort: str = "default", skip_margin: str | None = None):
        import torch

        from vdmcodec import codec as vcodec
        from vdmcodec import container, image_io
        from vdmcodec.checkpoints import load_checkpoint

        self.torch = torch
        self.vcodec = vcodec
        self.image_io = image_io
        self.container = container
        self.allow_fallback = allow_fallback
        # the chain's skip when the classic file is estimated to win (codec.CLASSIC_SKIP_MARGIN);
        # "none": always code bits-back; "inf": estimate, never skip
        self.skip_margin = vcodec.CLASSIC_SKIP_MARGIN if skip_margin is None else (
            None if skip_margin == "none" else float(skip_margin))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchmarkError("--device cuda asked for, but torch sees no GPU")
        self.device = device
        try:
            self.loaded = load_checkpoint(checkpoint, device)
        except Exception as exc:
            raise BenchmarkError(f"cannot load the vdmcodec checkpoint ({exc}); pass --checkpoint PATH or --no-vdmc") from None
        self.coder = vcodec.Coder.for_effort(self.loaded, effort, device=device, threads=threads)
        self.effort = effort
        self.coder.activate()
        self.T = int(self.coder.step_model.T)
        self.show_progress = show_progress
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny round trip, so that one-time costs (lazy torch init, first allocations)
        are not charged to the first image."""
        tiny = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
        raster = self.image_io.RasterImage("RGB", 4, 4, tiny, None, None, None)
        data, _ = self.vcodec.compress_images([("warm-up", raster)], self.coder, allow_fallback=False)
        self.vcodec.decompress_bytes(data, coder=self.coder)

    def info(self) -> dict:
        lm = self.loaded
        cfg = lm.model.cfg
        return {
            "path": _display_path(lm.path),
            "model_id": lm.model_id,
            "sha256": lm.sha256,
            "meta": lm.meta,
            "config": cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg),
            "parameters": int(sum(p.numel() for p in lm.model.parameters())),
            "T": int(self.coder.plan[-1]),
            "steps": self.T,
            "effort": self.effort,
            "skip_margin": self.skip_margin,
            "plan": list(self.coder.plan),
            "ensemble": self.coder.ensemble,
            "ensemble_steps": self.coder.ensemble_steps,
            "device": self.device,
            "threads": self.coder.threads,
            "torch_threads": int(self.torch.get_num_threads()),
            "compute": self.coder.compute(),
        }

    def raster(self, img: BenchImage):
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[img.channels]
        n = 1 if mode in ("L", "LA") else 3
        alpha = img.pixels[:, :, n] if mode in ("LA", "RGBA") else None
        return self.image_io.RasterImage(mode, img.width, img.height, img.pixels[:, :, :n], alpha, None, None)

    def _progress(self, label: str, pixels: int):
        if not self.show_progress:
            return None, None
        bar = tqdm(total=self.T * pixels, desc=label, unit="px·step", unit_scale=True, leave=False,
                   file=sys.stderr, position=1, mininterval=1.0)
        return bar, bar.update

    def _code(self, items: list, label: str, pixels: int) -> tuple[bytes, list, list, float, float, float]:
        """Encode, the verifying decode as compress runs it (in exact arithmetic it reuses the
        encoder's network outputs: Coder.remembering), then a plain decode as decompress runs
        it: (data, reports, decoded, encode s, decode s, verify s).  The encode seconds leave out
        what compress spent only on the reports' NELBO of classic rows, which a compress without
        --json does not spend (_reporting_s)."""
        bar, cb = self._progress(f"{label} enc", pixels)
        try:
            with self.coder.remembering():
                t0 = time.perf_counter()
                data, reports = self.vcodec.compress_images(items, self.coder, progress=cb,
                                                            allow_fallback=self.allow_fallback,
                                                            skip_margin=self.skip_margin)
                t1 = time.perf_counter()
                self.vcodec.verify_roundtrip(data, items, self.coder)
                verify_s = time.perf_counter() - t1
        finally:
            if bar:
                bar.close()
        bar, cb = self._progress(f"{label} dec", pixels)
        try:
            t2 = time.perf_counter()
            out = self.vcodec.decompress_bytes(data, coder=self.coder, progress=cb)
            t3 = time.perf_counter()
        finally:
            if bar:
                bar.close()
        return data, reports, out, t1 - t0 - _reporting_s(reports), t3 - t2, verify_s

    def _same(self, items: list, out: list) -> bool:
        if len(out) != len(items):
            return False
        sha = self.image_io.pixel_sha256
        return all(n1 == n2 and sha(a) == sha(b) for (n1, a), (n2, b) in zip(items, out))

    def run_image(self, img: BenchImage, eval_nelbo: bool = False) -> dict:
        res: dict[str, Any] = {"codec": VDMC}
        raster = self.raster(img)
        items = [(img.name, raster)]
        probe = MemoryProbe()
        try:
            with probe:
                data, reports, out, enc, dec, ver = self._code(items, img.name, img.width * img.height)
        except Exception as exc:  # VerificationError, CorruptFileError, ...: a failed round trip
            res.update(status="failed", lossless=False, error=f"{type(exc).__name__}: {exc}")
            return res
        ok = self._same(items, out)
        res.update(status="ok" if ok else "failed", lossless=ok,
                   error=None if ok else "decoded pixels differ from the input")
        res.update(_size_time(len(data), enc, dec, img.dims, img.megapixels))
        res.update(verify_s=ver, compress_with_verify_s=enc + ver, reporting_s=_reporting_s(reports))
        res.update(self._accounting(reports[0], len(data), img.dims))
        res["container"] = self.layout(data)
        res.update(probe.record())
        if eval_nelbo:
            res["eval"] = self.eval_nelbo(raster)
        return res

    def _accounting(self, rep, nbytes: int, dims: int) -> dict:
        if rep.dims != dims:
            warnings.warn(f"{rep.name}: vdmcodec counts {rep.dims} dims, the benchmark {dims}")
        nelbo_bits = float(rep.nelbo_bits)
        return {
            "method": rep.method,
            "regions": int(rep.regions),
            "nelbo_bits": nelbo_bits,
            "nelbo_bpd": nelbo_bits / dims,
            "overhead_bpd": 8.0 * nbytes / dims - nelbo_bits / dims,
            "overhead_bytes": nbytes - nelbo_bits / 8.0,
            "exact_bits": int(rep.exact_bits),
            "implied_bits": float(rep.implied_bits),
            "implied_bpd": float(rep.implied_bits) / dims,
            "seed_bytes": int(rep.seed_bytes),
            "classic_rows": int(getattr(rep, "classic_rows", 0)),
            "side_bytes": int(rep.side_bytes),
            "context_bytes": int(getattr(rep, "context_bytes", 0)),
            "film_bytes": int(getattr(rep, "film_bytes", 0)),
            # the bits-back file, also where the classic one (smaller) replaced it
            "bitsback_bytes": int(getattr(rep, "bitsback_bytes", 0)),
            "bitsback_bpd": 8.0 * int(getattr(rep, "bitsback_bytes", 0)) / dims,
            # the bits-back file's size estimated before the chain (0: none), and whether the
            # chain was skipped on it (then bitsback_bytes is 0)
            "estimated_bytes": int(getattr(rep, "estimated_bytes", 0)),
            "estimate_s": float(getattr(rep, "estimate_s", 0.0)),
            "skipped_chain": bool(getattr(rep, "skipped_chain", False)),
            "skipped_before_fits": bool(getattr(rep, "skipped_before_fits", False)),
            # skipped on the reconstruction term alone: nelbo_bits and terms hold only that term
            "estimate_partial": bool(getattr(rep, "estimate_partial", False)),
            "terms_bpd": {k: float(v) / dims for k, v in rep.terms.items()},
            "report_dims": int(rep.dims),
        }

    def layout(self, data: bytes) -> dict:
        """Where a file's bytes go: the fixed prefix + JSON header + CRC, and each section."""
        header, sections = self.container.unpack_container(data)
        payload = sum(len(v) for v in sections.values())
        return {
            "header_bytes": len(data) - payload,
            "section_bytes": {k: len(v) for k, v in sections.items()},
            "methods": [e.get("method") for e in header.get("images", [])],
        }

    def eval_nelbo(self, raster) -> dict:
        from vdmcodec.evaluate import image_nelbo

        if raster.planes is None:
            return {"error": "no model planes"}
        t0 = time.perf_counter()
        r = image_nelbo(self.coder.step_model, raster.planes)
        return {
            "nelbo_bits": float(r["nelbo_bits"]),
            "nelbo_bpd": float(r["nelbo_bpd"]),  # per model-coded dim (alpha excluded)
            "dims": int(r["dims"]),
            "terms_bpd": {k: float(v) for k, v in r["terms"].items()},
            "seconds": time.perf_counter() - t0,
        }

    def run_archive(self, images: list[BenchImage]) -> dict:
        items = [(img.name, self.raster(img)) for img in images]
        dims = sum(img.dims for img in images)
        mp = sum(img.megapixels for img in images)
        res: dict[str, Any] = {"codec": VDMC, "images": len(images), "dims": dims, "megapixels": mp}
        probe = MemoryProbe()
        try:
            with probe:
                data, reports, out, enc, dec, ver = self._code(items, "archive", sum(i.width * i.height for i in images))
        except Exception as exc:
            res.update(status="failed", lossless=False, error=f"{type(exc).__name__}: {exc}")
            return res
        ok = self._same(items, out)
        nelbo_bits = float(sum(r.nelbo_bits for r in reports))
        res.update(status="ok" if ok else "failed", lossless=ok,
                   error=None if ok else "decoded pixels differ from the input")
        res.update(_size_time(len(data), enc, dec, dims, mp))
        res.update(verify_s=ver, compress_with_verify_s=enc + ver)
        res.update({
            "nelbo_bits": nelbo_bits,
            "nelbo_bpd": nelbo_bits / dims,
            "overhead_bpd": 8.0 * len(data) / dims - nelbo_bits / dims,
            "overhead_bytes": len(data) - nelbo_bits / 8.0,
            "methods": _count(r.method for r in reports),
            "seed_bytes": int(sum(r.seed_bytes for r in reports)),
            "regions": int(sum(r.regions for r in reports)),
            "container": self.layout(data),
        })
        res.update(probe.record())
        return res


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ----------------------------------------------------------------------------- summaries


def summarize(images: list[dict], codec: str) -> dict:
    rows = [im["results"][codec] for im in images if codec in im["results"]]
    ok = [(im, im["results"][codec]) for im in images if im["results"].get(codec, {}).get("status") == "ok"]
    s: dict[str, Any] = {
        "images": len(rows),
        "ok": len(ok),
        "failed": sum(r["status"] == "failed" for r in rows),
        "unsupported": sum(r["status"] == "unsupported" for r in rows),
    }
    s["complete"] = s["ok"] == len(images)
    if not ok:
        return s
    dims = sum(im["dims"] for im, _ in ok)
    mp = sum(im["megapixels"] for im, _ in ok)
    nbytes = sum(r["bytes"] for _, r in ok)
    enc = sum(r["encode_s"] for _, r in ok)
    dec = sum(r["decode_s"] for _, r in ok)
    s.update({
        "bpd_mean": float(np.mean([r["bpd"] for _, r in ok])),
        "bpd_total": 8.0 * nbytes / dims,
        "bytes_total": nbytes,
        "dims_total": dims,
        "megapixels_total": mp,
        "encode_s_total": enc,
        "decode_s_total": dec,
        "encode_s_per_mp": enc / mp,
        "decode_s_per_mp": dec / mp,
        "peak_rss_mb_max": max(r.get("peak_rss_mb", 0.0) for _, r in ok),
    })
    if codec == VDMC:
        for key in ("nelbo_bpd", "overhead_bpd", "overhead_bytes", "implied_bpd"):
            s[key + "_mean"] = float(np.mean([r[key] for _, r in ok]))
        if all(r.get("bitsback_bytes") for _, r in ok):  # single-image files, every one coded bits-back first
            s["bitsback_bpd_mean"] = float(np.mean([r["bitsback_bpd"] for _, r in ok]))
        elif all(r.get("bitsback_bytes") or r.get("estimated_bytes") for _, r in ok):
            # the model's own files where the chain ran, their estimates where it was skipped
            s["bitsback_or_estimated_bpd_mean"] = float(np.mean(
                [8.0 * (r.get("bitsback_bytes") or r["estimated_bytes"]) / r["report_dims"] for _, r in ok]))
        s["skipped_chain"] = sum(1 for _, r in ok if r.get("skipped_chain"))
        s["skipped_before_fits"] = sum(1 for _, r in ok if r.get("skipped_before_fits"))
        s["estimate_partial"] = sum(1 for _, r in ok if r.get("estimate_partial"))
        both = [(r["estimated_bytes"], r["bitsback_bytes"]) for _, r in ok
                if r.get("estimated_bytes") and r.get("bitsback_bytes")]
        if both:  # how far the estimate that decides the skip was from the file it estimated
            err = [e / b - 1.0 for e, b in both]
            s["estimate_error_mean"], s["estimate_error_min"], s["estimate_error_max"] = \
                float(np.mean(err)), float(min(err)), float(max(err))
        s["nelbo_bpd_total"] = sum(r["nelbo_bits"] for _, r in ok) / dims
        if all("compress_with_verify_s" in r for _, r in ok):
            s["compress_with_verify_s_mean"] = float(np.mean([r["compress_with_verify_s"] for _, r in ok]))
            s["decode_s_mean"] = float(np.mean([r["decode_s"] for _, r in ok]))
        s["methods"] = _count(r["method"] for _, r in ok)
        evals = [r["eval"]["nelbo_bpd"] for _, r in ok if "nelbo_bpd" in r.get("eval", {})]
        if evals:
            s["eval_nelbo_bpd_mean"] = float(np.mean(evals))
    return s


# ----------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "memory_gb": None if mem_kb is None else round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": _loadavg(),
        "peak_rss_resettable": reset_peak_rss(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def package_versions() -> dict:
    out: dict[str, Any] = {}
    for dist in ("vdmcodec", "torch", "numpy", "constriction", "pillow", "imagecodecs", "matplotlib", "tqdm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if out["vdmcodec"] is None:  # a source checkout that is not pip-installed
        try:
            import vdmcodec

            out["vdmcodec"] = vdmcodec.__version__
        except ImportError:
            pass
    libs = {}
    if classic.imagecodecs is not None:
        for lib in ("jpegxl", "jpegls", "jpeg2k", "webp", "png"):
            fn = getattr(classic.imagecodecs, f"{lib}_version", None)
            try:
                libs[lib] = fn() if fn else None
            except Exception:
                libs[lib] = None
    try:
        from PIL import features

        libs["pillow_webp"] = features.version("webp")
        libs["pillow_zlib"] = features.version("zlib")
    except Exception:
        pass
    out["libraries"] = libs
    return out


# ----------------------------------------------------------------------------- output


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _fmt_time(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}"


def codec_label(key: str) -> str:
    return VDMC_LABEL if key == VDMC else classic.CODECS[key].label


def table_rows(result: dict) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(row label, [(bpd, enc s/MP, dec s/MP) per data set])."""
    rows = []
    datasets = result["datasets"]
    for key in result["settings"]["codecs"]:
        cells = []
        for ds in datasets:
            cells.append(_cells(ds, key, result["codecs"].get(key, {})))
        rows.append((codec_label(key), cells))
        if key == VDMC:
            if any("bitsback_bpd_mean" in ds["summary"].get(VDMC, {}) for ds in datasets):
                rows.append((f"{VDMC_LABEL}: bits-back files alone (before the classic fallback)",
                             [(_fmt(ds["summary"].get(VDMC, {}).get("bitsback_bpd_mean")), "", "") for ds in datasets]))
            if any("bitsback_or_estimated_bpd_mean" in ds["summary"].get(VDMC, {}) for ds in datasets):
                rows.append((f"{VDMC_LABEL}: bits-back files alone, estimated where the chain was skipped",
                             [(_fmt(ds["summary"].get(VDMC, {}).get("bitsback_or_estimated_bpd_mean")), "", "")
                              for ds in datasets]))
            skipped = sum(ds["summary"].get(VDMC, {}).get("skipped_chain", 0) for ds in datasets)
            partial = sum(ds["summary"].get(VDMC, {}).get("estimate_partial", 0) for ds in datasets)
            rows.append((f"{VDMC_LABEL}: model NELBO (as coded" + (f"; estimated on the {skipped} images whose chain "
                         "was skipped" + (f", on {partial} the reconstruction term only" if partial else "") + ")"
                         if skipped else ")"),
                         [(_fmt(ds["summary"].get(VDMC, {}).get("nelbo_bpd_mean")), "", "") for ds in datasets]))
            if any("compress_with_verify_s_mean" in ds["summary"].get(VDMC, {}) for ds in datasets):
                rows.append((f"{VDMC_LABEL}: s per image, compress with its check / decompress",
                             [("", _fmt_time(ds["summary"].get(VDMC, {}).get("compress_with_verify_s_mean")),
                               _fmt_time(ds["summary"].get(VDMC, {}).get("decode_s_mean"))) for ds in datasets]))
            if any("eval_nelbo_bpd_mean" in ds["summary"].get(VDMC, {}) for ds in datasets):
                rows.append((f"{VDMC_LABEL}: model NELBO (whole image, --eval-nelbo)",
                             [(_fmt(ds["summary"].get(VDMC, {}).get("eval_nelbo_bpd_mean")), "", "") for ds in datasets]))
            if any(ds.get("archive") for ds in datasets):
                cells = []
                for ds in datasets:
                    a = ds.get("archive")
                    if not a:
                        cells.append(("", "", ""))
                    elif a["status"] != "ok":
                        cells.append(("FAILED", "", ""))
                    else:
                        cells.append((_fmt(a["bpd"]), _fmt_time(a["encode_s_per_mp"]), _fmt_time(a["decode_s_per_mp"])))
                rows.append((f"{VDMC_LABEL}: whole set as one archive", cells))
    return rows


def _cells(ds: dict, key: str, codec_info: dict) -> tuple[str, str, str]:
    if codec_info.get("available") is False:
        return ("unavailable", "", "")
    s = ds["summary"].get(key)
    if not s or not s.get("ok"):
        if s and s.get("failed"):
            return ("FAILED", "", "")
        return ("n/a", "", "")
    bpd = _fmt(s["bpd_mean"])
    if not s["complete"]:
        bpd += f" ({s['ok']}/{len(ds['images'])})"
    return (bpd, _fmt_time(s["encode_s_per_mp"]), _fmt_time(s["decode_s_per_mp"]))


def header_line(settings: dict) -> str:
    m = settings["machine"]
    threads = settings.get("torch_threads")
    mach = f"{m['cpu_model']}, {m['cpu_count']} cores"
    mach += f", torch threads {threads}" if threads is not None else ", vdmcodec not run"
    return f"Command: `{settings['command']}` · Date: {settings['date']} · Machine: {mach}"


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [header_line(settings), ""]
    head = ["Codec"]
    align = ["---"]
    for ds in result["datasets"]:
        n = len(ds["images"])
        head += [f"{ds['name']} (n={n}) bpd", "enc s/MP", "dec s/MP"]
        align += ["---:", "---:", "---:"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| " + " | ".join(align) + " |")
    for label, cells in table_rows(result):
        flat = [c for cell in cells for c in cell]
        lines.append("| " + " | ".join([label] + flat) + " |")
    lines.append("")
    notes = ("bpd = 8 × file bytes / (width × height × channels), mean over images; every file was decoded "
             "and compared with the input pixels. s/MP = seconds per megapixel (total time / total megapixels).")
    load = settings["machine"].get("load_average")
    if load:
        notes += f" Load average at start: {', '.join(map(str, load))}."
    lines.append(notes)
    failures = result.get("failures") or []
    if failures:
        lines.append("")
        lines.append(f"**{len(failures)} failure(s):** " + "; ".join(
            f"{f['dataset']}/{f['image']} {f['codec']}: {f['error']}" for f in failures[:10]))
    return "\n".join(lines) + "\n"


def plot(result: dict, out: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no plot written"
    datasets = result["datasets"]
    series = []  # (label, [bpd or nan per data set])
    for key in result["settings"]["codecs"]:
        vals = [ds["summary"].get(key, {}).get("bpd_mean", float("nan")) for ds in datasets]
        series.append((codec_label(key), vals))
        if key == VDMC:
            series.append((f"{VDMC_LABEL} NELBO",
                           [ds["summary"].get(VDMC, {}).get("nelbo_bpd_mean", float("nan")) for ds in datasets]))
            if any(ds.get("archive") for ds in datasets):
                series.append((f"{VDMC_LABEL} archive",
                               [(ds.get("archive") or {}).get("bpd", float("nan")) if (ds.get("archive") or {}).get("status") == "ok"
                                else float("nan") for ds in datasets]))
    n = len(series)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(datasets) * (0.5 + 0.45 * n)), 4.5))
    x = np.arange(len(datasets))
    for i, (label, vals) in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, vals, width, label=label)
        for b, v in zip(bars, vals):
            if math.isfinite(v):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{ds['name']} (n={len(ds['images'])})" for ds in datasets])
    ax.set_ylabel("bits per dimension (whole file)")
    ax.set_title("Lossless compression: bpd per codec (lower is better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _write_text(path: str, text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


# ----------------------------------------------------------------------------- main


def parse_codecs(spec: str | None, no_vdmc: bool) -> list[str]:
    if spec is None:
        keys = list(ALL_CODECS)
    else:
        keys = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            part = part.lower()
            names = ALIASES.get(part, [part])
            for k in names:
                if k not in ALL_CODECS:
                    raise argparse.ArgumentTypeError(
                        f"unknown codec {part!r}; choose from {', '.join(ALL_CODECS + list(ALIASES))}")
                if k not in keys:
                    keys.append(k)
        keys.sort(key=ALL_CODECS.index)
    if no_vdmc and VDMC in keys:
        keys.remove(VDMC)
    if not keys:
        raise argparse.ArgumentTypeError("no codec selected")
    return keys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders of images, one data set each")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N images of each folder (sorted by name)")
    p.add_argument("--json", metavar="OUT.json", help="write every number and the run settings here")
    p.add_argument("--markdown", metavar="OUT.md", help="write the Markdown table here (it is always printed)")
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of bpd per codec and data set")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="vdmcodec device")
    p.add_argument("--checkpoint", metavar="PATH", help="vdmcodec checkpoint (default: the shipped one)")
    p.add_argument("--codecs", metavar="LIST",
                   help=f"comma-separated, from {', '.join(ALL_CODECS)} (aliases: {', '.join(ALIASES)}); default all")
    p.add_argument("--no-vdmc", action="store_true", help="classic codecs only (torch is not imported)")
    p.add_argument("--archive-small", action="store_true",
                   help="also code every set as one vdmcodec archive (automatic for sets of 32x32 images)")
    p.add_argument("--no-fallback", action="store_true",
                   help="keep vdmcodec's bits-back file even where its classic fallback would be smaller")
    p.add_argument("--eval-nelbo", action="store_true", help="also evaluate vdmcodec's whole-image NELBO (no coding)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for vdmcodec (torch) and the multi-threaded classic codecs (JPEG XL, JPEG 2000); "
                        "default: vdmcodec's default (VDMCODEC_THREADS or min(cores, 8))")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument("--effort", default="default", choices=["fast", "default", "max"], help="vdmcodec's --effort")
    p.add_argument("--skip-margin", default=None,
                   help="skip the bits-back chain when its file is estimated this share above the classic one "
                        "(default: vdmcodec's; 'none': always code bits-back; 'inf': estimate, never skip)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    codecs = parse_codecs(args.codecs, args.no_vdmc)
    threads = args.threads or default_threads()
    if args.limit is not None and args.limit < 1:
        raise BenchmarkError("--limit must be at least 1")
    datasets = [load_dataset(d, args.limit, n) for d, n in zip(args.dirs, dataset_names(args.dirs))]
    show = not args.no_progress

    codec_info: dict[str, dict] = {}
    avail = classic.available_codecs()
    for key in codecs:
        if key == VDMC:
            continue
        c = classic.CODECS[key]
        codec_info[key] = {"label": c.label, "library": c.library, "available": avail[key] is None,
                           "reason": avail[key]}
        if avail[key] is not None:
            print(f"note: {c.label} unavailable: {avail[key]}", file=sys.stderr)

    vdmc = None
    if VDMC in codecs:
        vdmc = VdmcRunner(args.checkpoint, args.device, threads, show_progress=show,
                          allow_fallback=not args.no_fallback, effort=args.effort, skip_margin=args.skip_margin)
        codec_info[VDMC] = {"label": VDMC_LABEL, "library": "vdmcodec", "available": True, "reason": None}

    settings = {
        "command": "python -m benchmarks.compare " + shlex.join(argv),
        "argv": list(argv),
        "args": vars(args),
        "codecs": codecs,
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(),
        "threads": threads,
        "torch_threads": None,
        "checkpoint": None,
    }
    if vdmc is not None:
        settings["checkpoint"] = vdmc.info()
        settings["torch_threads"] = settings["checkpoint"]["torch_threads"]

    out_sets, failures = [], []
    total = sum(len(ds.images) for ds in datasets) * len(codecs)
    archive_sets = set()
    if vdmc is not None:
        for ds in datasets:
            if args.archive_small or all(i.width == SMALL_SIDE and i.height == SMALL_SIDE for i in ds.images):
                archive_sets.add(ds.name)
    total += len(archive_sets)
    bar = tqdm(total=total, desc="benchmark", unit="run", file=sys.stderr, disable=not show, position=0)
    t_start = time.perf_counter()
    try:
        for ds in datasets:
            images_out = []
            for img in ds.images:
                entry = {
                    "name": img.name, "path": img.path, "width": img.width, "height": img.height,
                    "channels": img.channels, "dims": img.dims, "megapixels": img.megapixels,
                    "source_mode": img.source_mode, "notes": img.notes, "results": {},
                }
                for key in codecs:
                    bar.set_postfix_str(f"{ds.name}/{img.name} {key}")
                    if key == VDMC:
                        res = vdmc.run_image(img, eval_nelbo=args.eval_nelbo)
                    elif codec_info[key]["available"]:
                        res = run_classic(key, img, threads)
                    else:
                        res = {"codec": key, "status": "unavailable", "lossless": None, "error": codec_info[key]["reason"]}
                    entry["results"][key] = res
                    if res["status"] == "failed":
                        failures.append({"dataset": ds.name, "image": img.name, "codec": key, "error": res["error"]})
                    bar.update(1)
                images_out.append(entry)
            archive = None
            if ds.name in archive_sets:
                bar.set_postfix_str(f"{ds.name} archive")
                archive = vdmc.run_archive(ds.images)
                if archive["status"] == "failed":
                    failures.append({"dataset": ds.name, "image": "(archive)", "codec": VDMC, "error": archive["error"]})
                bar.update(1)
            out_sets.append({
                "name": ds.name,
                "path": ds.path,
                "skipped": ds.skipped,
                "images": images_out,
                "archive": archive,
                "summary": {key: summarize(images_out, key) for key in codecs},
            })
    finally:
        bar.close()
    settings["machine"]["load_average_end"] = _loadavg()
    settings["wall_seconds"] = time.perf_counter() - t_start
    return {"settings": settings, "codecs": codec_info, "datasets": out_sets, "failures": failures}


def _display_path(path) -> str:
    """A path relative to the working folder where possible: results must not carry this
    machine's absolute paths."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(path).name


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_codecs(args.codecs, args.no_vdmc)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        result = run(args, argv)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = _jsonable(result)
    table = markdown(result)
    if args.json:
        _write_text(args.json, json.dumps(result, indent=1) + "\n")
    if args.markdown:
        _write_text(args.markdown, table)
    if args.plot:
        msg = plot(result, args.plot)
        if msg:
            print(f"warning: {msg}", file=sys.stderr)
    sys.stdout.write(table)
    sys.stdout.flush()
    if result["failures"]:
        print(f"error: {len(result['failures'])} run(s) failed or were not lossless", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
