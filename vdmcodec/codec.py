"""Images <-> .vdmc bytes: the header, the classic fallback, verification and archives.

One ANS stack runs through all images of a file (an archive continues it across images).
Per image: the planes the model codes (grey or RGB) go on the stack as row regions; alpha,
palette images and the ICC profile go into classic sections of the container.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from . import __version__
from .checkpoints import (LoadedModel, checkpoint_dirs, default_checkpoint_path, file_sha256, load_checkpoint,
                          load_earlier)
from .coding.ans import ANS_NAME, ANS_VERSION, PRECISION_BITS, AnsStack, CoderInputError
from .coding.adapt import (WRITE_PACKING, FitBudget, fit_image_context, fit_shared_context, pack_deltas,
                           too_small_for_own_context, unpack_deltas)
from .coding.bands import (BAND_ROWS, MIN_BAND_IMAGE_ROWS, StripPlan, band_bits, code_strips, mixed_bits,
                           plan_strips)
from .coding.estimate import (WHOLE_MAX_PIXELS, DiffusionEstimate, estimate_diffusion, estimate_recon_bits,
                              float_step_model, recon_bits_by_row)
from .coding.film import FilmBudget, FilmDeltas, film_sizes, fit_film, pack_film, unpack_film
from .coding.chain import CONTEXT_ROWS, MAX_REGION_PIXELS, CheckedRegions, RegionStats, decode_image, encode_image, encode_region
from .coding.pixels import ContextWeights
from .coding.steps import StepModel, plan_from_strides
from .coding.classic import JXL_IMAGE_SETTINGS, LSQ_MAX_PIXELS, decode_rows, encode_rows
from .coding.grids import PARAM_SNAP
from .container import pack_container, share_image_fields, unpack_container
from .header import (DecodeSettings, archive_pixel_sha256, decode_settings, pixel_hash_matches,
                     short_pixel_hashes, writer_setup)
from .errors import (
    CheckpointError,
    CorruptFileError,
    EnvironmentMismatchError,
    ModelMismatchError,
    VerificationError,
)
from .image_io import RasterImage, decode_alpha, encode_alpha, pixel_sha256
from .metadata import ImageMetadata, pack_metadata, unpack_metadata

CODER_NAME = "vdm-bitsback-v1"

# Effort presets: which of the model's T steps the chain visits ((fraction of T, stride), ...;
# coding.steps.plan_from_strides) and how many network calls the first steps make.  The
# diffusion bits sit in the first quarter of the steps (benchmarks/experiments/ensemble_by_step):
# larger strides later cost little, an ensemble there gains little.
# "fit": the encoder's per-image context fit (coding.adapt.FitBudget): Adam steps, patch
# grid, and whether the context network's last layers are fitted too (4x4 patches against
# 3x3: 2.0898 against 2.0976 recon bpd on the held-apart never-JPEG photos, +1.5 s; 120 steps
# gained 0.001 more for +3 s; the whole image (max: 16x16 patches cover up to 0.79 MP)
# 2.0816 for 38-55 s of fitting; docs/RESULTS.md, session 8).
EFFORTS = {
    "fast": {"strides": ((0.25, 1), (0.375, 2), (0.625, 4), (1.0, 8)), "ensemble": 1, "z0_ensemble": 2,
             "fit": FitBudget(steps=40, patches=(3, 3), head=False, off=False), "film": FilmBudget(steps=0)},
    # the steps after the first quarter at strides 2, 4 and 8 (27 steps): +0.0002 bpd of diffusion
    # against strides 2 and 4 (32 steps) for 5 fewer calls (session 13, benchmarks/experiments/step_plans)
    # the context fit on 16 of 64 patches per step, 100 steps, and 200 FiLM steps: -0.006 and
    # -0.006 bpd for about 4 s each on held-apart photographs, at no cost to the decoder; 8
    # calls at z_0 (the flips of z_0 and of its transpose) instead of 4: -0.006 bpd for 4
    # calls more per region (session 15, benchmarks/experiments/fit_budget and effort_ablation)
    # the context fit without its "network off" candidate, which never won on six training
    # photos: 2 s less (session 18); a FiLM fit far below its keep line after 100 steps stops
    # there (coding.film.PROBE_KEEP_SHARE; session 19)
    "default": {"strides": ((0.25, 1), (0.375, 2), (0.625, 4), (1.0, 8)), "ensemble": 2, "z0_ensemble": 8,
                "fit": FitBudget(steps=100, patches=(8, 8), head=True, batch=16, off=False),
                "film": FilmBudget(steps=200, probe_at=(100,))},
    "max": {"strides": ((1.0, 1),), "ensemble": 4, "z0_ensemble": 8,
            "fit": FitBudget(steps=150, patches=(16, 16), head=True, batch=16), "film": FilmBudget(steps=200)},
}
# the network outputs an encode keeps for its verifying decode (Coder.remembering): every
# region is checked as soon as it is coded (coding.chain.CheckedRegions), so what must stay
# is one region's (MAX_REGION_PIXELS: about 0.2 GB in float32) and, for a small image, all
VERIFY_MEMO_BYTES = 768 << 20


# A single image whose bits-back file is estimated (after the per-image fits, before the
# chain: coding.estimate) to come out larger than its classic file by more than this share
# is stored classic without running the chain.  On 12 training photos (768x512 crops) the
# estimate was 0.967-1.007 times the real file, mean 0.992 (session 16,
# benchmarks/experiments/skip_estimate); with classic bands and the estimator of session 17
# 0.970-1.001, mean 0.994 (results/skip_estimate_s17b.json); session 18's 0.970-1.001, mean
# 0.993 (results/skip_estimate_s18.json).  A skip loses rate only where the estimate is over
# by more than the margin, and then only the excess; a chain run where the estimate is low
# costs its time (about 25 s of a Kodak image) and nothing else.  On those 12 photos under
# the estimators of sessions 16, 17 and 18 (48 estimates) a margin of 0 skipped no chain that
# would have won and spared 2-5 chains each; -0.4% skipped one winner (by 0.15%).  The
# estimate's low bias (0.7% on average) is what protects the winners.
CLASSIC_SKIP_MARGIN = 0.0
SKIP_MIN_PIXELS = 1 << 16  # smaller images: their chain is cheap, the sizes themselves decide
BITSBACK_HEADER_BYTES = 200  # about what a bits-back file's header and seed framing add to the estimate
# the chain's file against its estimate: 0.967-1.007 on 12 training photos, mean 0.992 (session 16)
BITSBACK_OVER_ESTIMATE = 1.008
# An image whose file is estimated before the per-image fits (first_look) above the skip line
# by more than this share is stored classic at once: on 22 training photos (768x512 crops)
# the fits (about 21 s of a Kodak image) took at most 3.1% off that estimate (after/first
# 0.969-1.008, mean 0.990: results/early_skip_s18.json, benchmarks/experiments/early_skip),
# so such an image would have been skipped after them as well.
FIRST_LOOK_MARGIN = 0.035
# Classic strips are priced at the sum of their bands' effort-9 codes until they are coded;
# the strip itself (the bands' run in one code, effort 10) came out up to 4.7% smaller on
# training photos (session 18), so a skip is decided on the estimate less this share of its
# strips' bits; where that does not skip, the strips are coded and priced exactly.
STRIP_PRICE_SLACK = 0.06
# An image whose first look gives every band of rows to the classic code is stored classic
# at once: on 22 training photos (768x512 crops; results/early_skip_s21.json) four looked so,
# all four still did after the fits, and their banded files were 3-8% above the whole image's
# JPEG XL (session 21), so the fits (about 20 s of a Kodak image) could not have changed them.
EVERY_BAND_SKIP = True
EARLY_SKIP = True  # benchmarks that measure the fits turn the skip before them off
ENSEMBLED_SHARE = 0.25  # the steps in this first share of T make the effort's `ensemble` calls


def effort_settings(effort: str, T: int, ensemble: int | None = None) -> dict:
    """Coder keyword arguments (plan, ensemble, ensemble_steps, z0_ensemble) of an EFFORTS
    preset for a model with T steps; ensemble: calls on the preset's ensembled steps instead
    of its own."""
    e = EFFORTS[effort]
    plan = plan_from_strides(T, e["strides"])
    first = sum(1 for j in plan[1:] if j <= max(1, round(ENSEMBLED_SHARE * T)))
    return {"plan": plan, "ensemble": e["ensemble"] if ensemble is None else ensemble, "ensemble_steps": first,
            "z0_ensemble": e["z0_ensemble"]}


@dataclass
class Coder:
    """A loaded model plus the compute setup that coding must reproduce exactly."""

    loaded: LoadedModel
    device: str = "cpu"
    threads: int = 0
    ensemble: int = 1  # network calls per diffusion step on the first ensemble_steps (StepModel.ensemble)
    adapt_context: bool = True  # fit each image's own pixel-context weights where they pay
    # hand bands of rows that a classic code takes more cheaply to it (coding.bands; single
    # images whose chain is estimated first)
    classic_bands: bool = True
    plan: tuple[int, ...] | None = None  # gamma-table indices the chain visits (None: all T steps)
    ensemble_steps: int | None = None  # None: every step
    z0_ensemble: int = 1  # network calls at z_0 for images with their own context (StepModel.z0_ensemble)
    fit: FitBudget = field(default_factory=FitBudget)  # the per-image context fit's budget
    film: FilmBudget = field(default_factory=FilmBudget)  # the per-image FiLM fit's (coding.film; none by default)
    # exact arithmetic (the model's exact tables: files that open on any machine); None: when
    # the model carries the tables
    exact: bool | None = None
    step_model: StepModel = field(init=False)
    checked: CheckedRegions | None = field(default=None, init=False)  # set by remembering()

    def __post_init__(self):
        self.threads = self.threads or default_threads()
        if self.exact is None:  # exact where the model can and the networks run on the CPU
            self.exact = self.loaded.exact is not None and not self.device.startswith("cuda")
        if self.exact and self.loaded.exact is None:
            raise ModelMismatchError(f"model {self.loaded.model_id} has no exact-arithmetic tables")
        if self.exact and self.device.startswith("cuda"):
            # its elementwise kernels run on the CPU, and cuDNN may pick inexact algorithms
            raise EnvironmentMismatchError("exact arithmetic runs on the CPU only; use --device cpu")
        self.loaded.model.to(self.device)
        self.step_model = self._step_model(self.plan, self.ensemble, self.ensemble_steps, self.z0_ensemble)
        self.plan, self.ensemble_steps = self.step_model.plan, self.step_model.ensemble_steps

    def _step_model(self, plan, ensemble, ensemble_steps, z0_ensemble) -> StepModel:
        return StepModel(self.loaded.model, self.loaded.gamma_table.numpy(), self.device, ensemble, plan,
                         ensemble_steps, z0_ensemble, exact=self.loaded.exact if self.exact else None)

    @classmethod
    def for_effort(cls, loaded: LoadedModel, effort: str = "default", ensemble: int | None = None, **kw) -> "Coder":
        """A coder with an EFFORTS preset's steps (what the command line uses); the bare
        constructor visits every step with one call."""
        kw.setdefault("fit", EFFORTS[effort]["fit"])
        kw.setdefault("film", EFFORTS[effort]["film"])
        return cls(loaded, **kw, **effort_settings(effort, len(loaded.gamma_table) - 1, ensemble))

    def use_steps(self, plan, ensemble: int, ensemble_steps: int | None, z0_ensemble: int = 1,
                  exact: bool | None = None) -> None:
        """Code with this plan, these ensembles and this arithmetic (a file's settings, when
        decoding; exact None: unchanged)."""
        exact = self.exact if exact is None else exact
        if exact and self.loaded.exact is None:
            raise ModelMismatchError(f"model {self.loaded.model_id} has no exact-arithmetic tables")
        if tuple(plan) != self.plan or exact != self.exact:
            self.exact = exact
            self.step_model = self._step_model(plan, ensemble, ensemble_steps, z0_ensemble)
        else:
            self.step_model.ensemble, self.step_model.ensemble_steps = ensemble, ensemble_steps
            self.step_model.z0_ensemble = z0_ensemble
        self.plan, self.ensemble, self.ensemble_steps = self.step_model.plan, ensemble, self.step_model.ensemble_steps
        self.z0_ensemble = z0_ensemble

    @contextmanager
    def remembering(self, verify: bool = True, budget_bytes: int | None = None):
        """Wrap an encode and its verifying decode: each region is decoded again as soon as
        it is coded (coding.chain.CheckedRegions), and the check of the whole file takes those
        outcomes where it meets the same stack and setup.  In exact arithmetic the region's
        check reuses the encoder's network outputs (coding.steps.NetworkMemo, budget_bytes of
        them; about half of compress's time).  Yields the memo (None in float arithmetic, or
        with verify False: then nothing is checked or kept)."""
        if not verify:
            yield None
            return
        with self.step_model.remembering(VERIFY_MEMO_BYTES if budget_bytes is None else budget_bytes) as memo:
            self.checked = CheckedRegions()
            try:
                yield memo
            finally:
                self.checked = None

    def activate(self) -> None:
        """Deterministic settings; the thread count is part of a float-arithmetic file (see
        DESIGN §4), any count gives an exact file's bits."""
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def compute(self) -> dict:
        return {
            "device": "cuda" if self.device.startswith("cuda") else "cpu",
            "threads": self.threads,
            "ensemble": self.ensemble,
            "ensemble_steps": self.ensemble_steps,
            "z0_ensemble": self.z0_ensemble,
            "arith": self.step_model.arith.name,
            "torch": str(torch.__version__),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__,
        }


def default_threads() -> int:
    """Coding threads: results differ in the last bit between thread counts, so this is
    recorded in every file and the decoder uses the same number."""
    env = os.environ.get("VDMCODEC_THREADS")
    return int(env) if env else max(1, min(os.cpu_count() or 1, 8))


@dataclass
class ImageReport:
    """Per-image numbers for --json and the benchmark."""

    name: str
    width: int
    height: int
    mode: str
    dims: int
    method: str
    nelbo_bits: float = 0.0
    exact_bits: int = 0
    implied_bits: float = 0.0
    seed_bytes: int = 0  # the classic codes inside a bits-back file: the seed and any bands (coding.bands)
    classic_rows: int = 0  # the rows they hold
    side_bytes: int = 0
    context_bytes: int = 0  # the image's own pixel-context weights (0: the model's)
    film_bytes: int = 0  # the image's own FiLM deltas of the network (0: the model's)
    regions: int = 0
    terms: dict = field(default_factory=dict)
    bitsback_bytes: int = 0  # a single image's bits-back file, also where a classic file replaced it
    estimated_bytes: int = 0  # its size as estimated before the chain (0: no estimate was made)
    estimate_s: float = 0.0  # the seconds that estimate took
    skipped_chain: bool = False  # stored classic on the estimate alone: no bits-back file was made
    skipped_before_fits: bool = False  # ... on the estimate made before the per-image fits (codec.first_look)
    estimate_partial: bool = False  # ... on its reconstruction alone: the NELBO columns hold that term only
    reporting_s: float = 0.0  # seconds spent only on this report (the classic rows' NELBO: seed_nelbo)


class _ClassicWins(Exception):
    """The estimate says the classic file wins: the chain is not run."""

    def __init__(self, report: ImageReport):
        super().__init__(report.name)
        self.report = report


# ------------------------------------------------------------------ encode
def compress_images(images: list[tuple[str, RasterImage]], coder: Coder, *, progress=None,
                    allow_fallback: bool = True, seed_nelbo: bool = True,
                    skip_margin: float | None = CLASSIC_SKIP_MARGIN) -> tuple[bytes, list[ImageReport]]:
    """All images into one .vdmc file (an archive when there are several).  seed_nelbo=False
    leaves out what only the NELBO report needs: running the classic seed rows through the
    chain (about 5% of a Kodak compress) and the regions' implied bits and diffusion term
    (about 1.5% of a large photo's); the reports then carry neither NELBO nor implied bits.

    A single image is also coded classically (allow_fallback) and the smaller file is kept;
    with skip_margin, the chain is not run when the bits-back file is estimated to be larger
    than the classic one by more than that share (inf: estimate, never skip; None: no estimate)."""
    coder.activate()
    stack = AnsStack()
    entries, sections, reports = [], [], []
    estimating = skip_margin is not None and images[0][1].width * images[0][1].height >= SKIP_MIN_PIXELS
    classic, bands = _classic_and_bands(coder, images, estimating) if allow_fallback else (None, None)
    give_up = 8.0 * len(classic) * (1.0 + skip_margin) if classic is not None and estimating else None
    shared = _shared_context(coder, images)
    for idx, (name, img) in enumerate(images):
        try:
            entry, report = _encode_one(stack, coder, idx, name, img, sections, progress, shared, seed_nelbo, give_up,
                                        bands)
        except _ClassicWins as won:
            won.report.method, won.report.skipped_chain = "classic", True
            return classic, [won.report]
        entries.append(entry)
        reports.append(report)
    words = stack.words()
    header = _header(coder, entries, archive=len(images) > 1, ans_words=len(words))
    if len(images) > 1:
        short_pixel_hashes(header, [pixel_sha256(img) for _, img in images])
    data = pack_container(share_image_fields(header), [("ans", words.astype("<u4").tobytes())] + sections)
    if classic is not None:
        reports[0].bitsback_bytes = len(data)
        if len(classic) < len(data):
            rep = reports[0]
            rep.method = "classic"
            rep.regions = rep.seed_bytes = rep.classic_rows = rep.exact_bits = 0
            rep.implied_bits = 0.0
            return classic, reports
    return data, reports


def _classic_and_bands(coder: Coder, images: list[tuple[str, RasterImage]],
                       estimating: bool) -> tuple[bytes | None, np.ndarray | None]:
    """The classic file of a single image (_classic_of_single) and, where its first look will
    price row bands (estimating: the chain may be skipped on an estimate), each band's JPEG
    XL bits (coding.bands.band_bits).  libjxl codes each on one core, so the bands are coded
    on this thread while a second one codes the whole image: about 1.25 s less of a Kodak
    image than one after the other (only the main thread ever runs the network)."""
    img = images[0][1] if len(images) == 1 else None
    if not (estimating and img is not None and img.planes is not None and _has_bands(coder, img.planes)):
        return _classic_of_single(coder, images), None
    with ThreadPoolExecutor(max_workers=1) as pool:
        whole = pool.submit(_classic_of_single, coder, images)
        bands = band_bits(np.ascontiguousarray(img.planes.transpose(2, 0, 1)))
        return whole.result(), bands


def _classic_of_single(coder: Coder, images: list[tuple[str, RasterImage]]) -> bytes | None:
    """The classic file of a single image the model codes (None for an archive, or an image
    whose planes are not the model's)."""
    if len(images) != 1 or images[0][1].planes is None:
        return None
    name, img = images[0]
    entry = _image_entry(name, img)
    _add_side_sections(0, img, entry, [], ImageReport(name, img.width, img.height, img.mode, 0, "classic"))
    return _classic_file(coder, images[0], entry)


SHARED_CONTEXT = "context_shared"


def _shared_context(coder: Coder, images: list[tuple[str, RasterImage]]) -> ContextWeights | None:
    """One set of context weights for the images of an archive that are too small for their
    own (coding.adapt.fit_shared_context), or None."""
    if not coder.adapt_context or len(images) < 2 or not getattr(coder.loaded.model.cfg, "pixel_context", False):
        return None
    small = [img.planes for _, img in images
             if img.planes is not None and too_small_for_own_context(coder.step_model, img.planes)]
    if len(small) < 2:
        return None
    return fit_shared_context(coder.step_model, small, budget=coder.fit)[0]


def _encode_one(stack, coder, idx, name, img: RasterImage, sections, progress,
                shared: ContextWeights | None = None, seed_nelbo: bool = True,
                give_up_bits: float | None = None, bands: np.ndarray | None = None) -> tuple[dict, ImageReport]:
    entry = _image_entry(name, img)
    report = ImageReport(name=name, width=img.width, height=img.height, mode=img.mode,
                         dims=img.width * img.height * _channels(img), method="classic")
    _add_side_sections(idx, img, entry, sections, report)
    if img.planes is None:
        entry["method"] = "classic"
        return entry, report
    look = None
    if give_up_bits is not None:
        look = first_look(coder, img, bands, give_up_bits if EARLY_SKIP and math.isfinite(give_up_bits) else None)
        report.estimated_bytes = look.estimated_bytes(report.side_bytes)
        report.estimate_s = look.seconds
        if EARLY_SKIP and look.above_the_line(report.side_bytes, give_up_bits):
            report.terms = {"recon": look.recon_bits, "prior": 0.0, "diffusion": look.diffusion.bits}
            report.nelbo_bits = look.model_bits
            report.skipped_before_fits = True
            report.estimate_partial = look.partial
            raise _ClassicWins(report)
    film = fit_film(coder.step_model, img.planes, coder.film)
    if film is not None:
        blob = pack_film(film)
        entry["film"] = f"film{idx}"
        sections.append((f"film{idx}", blob))
        report.film_bytes = len(blob)
    with coder.step_model.adapted(film):
        _encode_planes(stack, coder, idx, name, img, entry, report, sections, progress, shared, seed_nelbo,
                       give_up_bits, film, look)
    return entry, report


def _encode_planes(stack, coder, idx, name, img: RasterImage, entry: dict, report: ImageReport, sections, progress,
                   shared: ContextWeights | None, seed_nelbo: bool, give_up_bits: float | None = None,
                   film: FilmDeltas | None = None, look: "FirstLook | None" = None) -> None:
    """The pixel-context fit and the chain of one image's planes, with the network it codes
    with; _ClassicWins instead of the chain when its file is estimated above give_up_bits
    (look: the estimate made before the fits, which give_up_bits needs)."""
    weights, fit_info = None, {}
    if coder.adapt_context:
        weights, fit_info = fit_image_context(coder.step_model, img.planes, budget=coder.fit)
    if weights is not None:
        blob = pack_deltas(coder.step_model, weights)
        entry["pixel_context"] = f"context{idx}"
        sections.append((f"context{idx}", blob))
        report.context_bytes = len(blob)
    elif shared is not None and shared.log_scale.shape[1] == img.planes.shape[2] \
            and too_small_for_own_context(coder.step_model, img.planes):
        weights = shared
        entry["pixel_context"] = SHARED_CONTEXT
        if all(name != SHARED_CONTEXT for name, _ in sections):  # sent once, counted for its first user
            blob = pack_deltas(coder.step_model, shared)
            sections.append((SHARED_CONTEXT, blob))
            report.context_bytes = len(blob)
    strips = []
    if give_up_bits is not None:
        plans = _estimate_file(coder, img, weights, fit_info, film, report, look)
        if 8.0 * report.estimated_bytes - STRIP_PRICE_SLACK * sum(p.bits for p in plans) > give_up_bits:
            raise _ClassicWins(report)
        # the strips as the chain will push them, and the estimate with their real bytes
        strips = code_strips(np.ascontiguousarray(img.planes.transpose(2, 0, 1)), plans)
        report.estimated_bytes += int(round(sum(s.bits - p.bits for s, p in zip(strips, plans)) / 8.0))
        if 8.0 * report.estimated_bytes > give_up_bits:
            raise _ClassicWins(report)
    try:
        regions = encode_image(stack, coder.step_model, img.planes, progress=progress, weights=weights, strips=strips,
                               checked=coder.checked, account=seed_nelbo)
    except CoderInputError as exc:  # a latent fell outside its window: astronomically rare
        raise VerificationError(f"{name}: bits-back coding failed ({exc}); use a classic codec") from None
    entry["method"] = "bitsback"
    entry["layout"] = [_layout_item(r) for r in regions]
    report.method = "bitsback"
    report.regions = len(regions)
    _fill_accounting(report, regions, coder, img, weights, seed_nelbo)


def _channels(img: RasterImage) -> int:
    if img.planes is not None:
        return img.planes.shape[2] + (1 if img.alpha is not None else 0)
    return {"P": 1, "1": 1}.get(img.mode, 1)


def _image_entry(name: str, img: RasterImage) -> dict:
    return {
        "name": name,
        "width": img.width,
        "height": img.height,
        "mode": img.mode,
        "bit_depth": 1 if img.mode == "1" else 8,
        "planes": 0 if img.planes is None else int(img.planes.shape[2]),
        "pixel_sha256": pixel_sha256(img).hex(),
    }


def _add_side_sections(idx: int, img: RasterImage, entry: dict, sections: list, report: ImageReport) -> None:
    side = []
    if img.alpha is not None:
        side.append(("alpha", encode_alpha(img.alpha)))
    if img.classic is not None:
        side.append(("classic", img.classic))
    if img.icc_profile:
        side.append(("icc", img.icc_profile))
    if img.metadata:
        side.append(("meta", pack_metadata(img.metadata)))
    for kind, blob in side:
        entry[kind] = f"{kind}{idx}"
        sections.append((f"{kind}{idx}", blob))
        report.side_bytes += len(blob)


@dataclass(frozen=True)
class FirstLook:
    """The bits-back file estimated before any per-image fit: the model's own network and
    context weights (reconstruction at one z_0 draw, the diffusion estimate), and where the
    image has bands, the model's bits per row and each band's effort-9 classic bits."""

    recon_bits: float
    diffusion: DiffusionEstimate
    recon_rows: np.ndarray | None = None
    classic_bands: np.ndarray | None = None  # coding.bands.band_bits
    strips: tuple[StripPlan, ...] = ()  # the bands a classic code takes more cheaply, by this look
    seconds: float = 0.0
    partial: bool = False  # the reconstruction alone put it above the line: no diffusion estimate made

    def diffusion_less(self, saving_bits: float) -> DiffusionEstimate:
        """The diffusion estimate less a saving (the FiLM fit's), its rows scaled alike."""
        d = self.diffusion
        if saving_bits <= 0.0 or d.bits <= 0.0:
            return d
        scale = max(d.bits - saving_bits, 0.0) / d.bits
        return DiffusionEstimate(d.bits * scale, d.counted_dims, d.seconds, None if d.rows is None else d.rows * scale)

    @property
    def model_bits(self) -> float:
        return self.recon_bits + self.diffusion.bits

    @property
    def strip_bits(self) -> float:
        return sum(p.bits for p in self.strips)

    @property
    def mixed_bits(self) -> float:
        """The model's bits with the bands a classic code takes more cheaply at their classic bits."""
        if self.classic_bands is None:
            return self.model_bits
        return mixed_bits(self.model_rows, list(self.strips))

    def estimated_bytes(self, side_bytes: int) -> int:
        return int(round(self.mixed_bits / 8.0)) + side_bytes + BITSBACK_HEADER_BYTES

    @property
    def model_rows(self) -> np.ndarray | None:
        """The model's bits per row (reconstruction and diffusion), where the image has bands."""
        return None if self.classic_bands is None else self.recon_rows + self.diffusion.rows

    @property
    def every_band_classic(self) -> bool:
        """Whether every row goes to the classic strips by this look: the file would hold no
        bits-back region, only a banded classic code, never smaller than the whole image's."""
        if self.classic_bands is None or self.recon_rows is None:
            return False
        return sum(p.rows[1] - p.rows[0] for p in self.strips) >= len(self.recon_rows)

    def above_the_line(self, side_bytes: int, give_up_bits: float) -> bool:
        """Whether the image's bits-back file would be above give_up_bits even after the
        per-image fits: every band classic (EVERY_BAND_SKIP), or its estimate, less
        STRIP_PRICE_SLACK of its strips' bits, above the line raised by FIRST_LOOK_MARGIN."""
        if self.partial or (EVERY_BAND_SKIP and self.every_band_classic and math.isfinite(give_up_bits)):
            return True  # (inf: never skip)
        return (8.0 * self.estimated_bytes(side_bytes) - STRIP_PRICE_SLACK * self.strip_bits
                > give_up_bits * (1.0 + FIRST_LOOK_MARGIN))


def _has_bands(coder: Coder, planes: np.ndarray) -> bool:
    """Whether the estimates of these (H, W, C) planes weigh row bands for the classic code:
    images tall enough, whose diffusion estimate comes row by row (not the tiled large ones)."""
    h, w, _ = planes.shape
    return bool(coder.classic_bands) and h >= MIN_BAND_IMAGE_ROWS and h * w <= WHOLE_MAX_PIXELS


def first_look(coder: Coder, img: RasterImage, bands: np.ndarray | None = None,
               give_up_bits: float | None = None) -> FirstLook:
    """The estimate before the per-image fits (FirstLook) of an image the model codes
    (bands: its bands' classic bits where already coded, coding.bands.band_bits).  With
    give_up_bits, the reconstruction comes first, and where it alone (each band at the
    cheaper of it and the band's classic bits) is above that line, the diffusion estimate
    (most of a look's seconds) is not made: the look is `partial` (its diffusion 0)."""
    t0 = time.perf_counter()
    sm, planes = coder.step_model, img.planes
    recon_rows = None
    if _has_bands(coder, planes):
        recon_rows = recon_bits_by_row(sm, planes, None, z0_calls=1)  # a first look: one call at z_0 will do
        if bands is None:
            bands = band_bits(np.ascontiguousarray(planes.transpose(2, 0, 1)))
        recon = float(recon_rows.sum())
    else:
        recon = estimate_recon_bits(float_step_model(sm, z0_ensemble=1), planes, None)
    if give_up_bits is not None and _least_bits(recon, recon_rows, bands) > give_up_bits * (1.0 + FIRST_LOOK_MARGIN):
        none = DiffusionEstimate(0.0, 0, 0.0, None if recon_rows is None else np.zeros_like(recon_rows))
        return FirstLook(recon, none, recon_rows, bands, partial=True, seconds=time.perf_counter() - t0)
    diffusion = estimate_diffusion(sm, planes, None)
    if recon_rows is not None and diffusion.rows is not None:
        look = FirstLook(recon, diffusion, recon_rows, bands)
        plans = plan_strips(None, look.model_rows * BITSBACK_OVER_ESTIMATE, classic_bits=bands)
        return replace(look, strips=tuple(plans), seconds=time.perf_counter() - t0)
    if recon_rows is not None:  # a tiled diffusion estimate: the reconstruction as without bands
        recon = estimate_recon_bits(float_step_model(sm, z0_ensemble=1), planes, None)
    return FirstLook(recon, diffusion, seconds=time.perf_counter() - t0)


def _least_bits(recon: float, recon_rows: np.ndarray | None, bands: np.ndarray | None) -> float:
    """The fewest bits a bits-back file can take by a first look's reconstruction alone: each
    band of rows at the cheaper of the model's reconstruction and its classic bits."""
    if recon_rows is None or bands is None:
        return recon
    per_band = np.add.reduceat(recon_rows, np.arange(0, len(recon_rows), BAND_ROWS))
    return float(np.minimum(per_band, bands[:len(per_band)]).sum())


def _estimate_file(coder: Coder, img: RasterImage, weights: ContextWeights | None, fit_info: dict,
                   film: FilmDeltas | None, report: ImageReport, look: FirstLook) -> list[StripPlan]:
    """The bits-back file's size before the chain (report.estimated_bytes), after the per-image
    fits, from the estimate before them: reconstruction as the context fit measured it (the
    whole image at one z_0 draw, or a grid of tiles of a large one), the diffusion estimate
    less the FiLM fit's own estimate of its saving, the side data; and the bands of rows that
    go to the classic code instead (coding.bands), at their bands' effort-9 bits in place of
    the model's bits for those rows."""
    t0 = time.perf_counter()
    planes = img.planes
    recon_bpd = fit_info.get("held_out_bpd_fitted" if weights is not None else "held_out_bpd_model")
    if recon_bpd is None:  # no fit ran: the model's context as the chain will code (not the first look's one call)
        recon_bpd = estimate_recon_bits(coder.step_model, planes, weights) / planes.size
    recon_bits = recon_bpd * planes.size
    diffusion = look.diffusion_less(film.saving_bits if film is not None else 0.0)
    side = report.side_bytes + report.context_bytes + report.film_bytes + BITSBACK_HEADER_BYTES
    model_bits = recon_bits + diffusion.bits
    strips: list[StripPlan] = []
    if look.classic_bands is not None:
        rows = model_rows_after_fits(look, fit_info, recon_bits, diffusion)
        # the chain's file runs about BITSBACK_OVER_ESTIMATE above this estimate (region
        # borders, the seed)
        strips = plan_strips(None, rows * BITSBACK_OVER_ESTIMATE, classic_bits=look.classic_bands)
        model_bits = mixed_bits(rows, strips)
    report.estimated_bytes = int(round(model_bits / 8.0)) + side
    # the NELBO columns of a report whose chain is skipped: these estimates
    report.terms = {"recon": recon_bits, "prior": 0.0, "diffusion": diffusion.bits}
    report.nelbo_bits = sum(report.terms.values())
    report.estimate_s = look.seconds + time.perf_counter() - t0
    return strips


def model_rows_after_fits(look: FirstLook, fit_info: dict, recon_bits: float,
                          diffusion: DiffusionEstimate) -> np.ndarray:
    """The model's bits per row after the per-image fits: the context fit's reconstruction
    per row where it judged the whole image (else the first look's, scaled to recon_bits),
    and the diffusion rows as given."""
    recon_rows = fit_info.get("held_out_rows")
    if recon_rows is None or recon_rows.shape != look.recon_rows.shape:
        recon_rows = look.recon_rows
    return recon_rows * (recon_bits / recon_rows.sum()) + diffusion.rows


def _layout_item(r: RegionStats) -> dict:
    item = {"rows": list(r.rows), "kind": r.kind}
    if r.kind == "classic":
        item["bytes"] = r.classic_bytes
        item["codec"] = r.classic_codec
    return item


def _fill_accounting(report: ImageReport, regions: list[RegionStats], coder: Coder, img: RasterImage,
                     weights: ContextWeights | None, seed_nelbo: bool = True) -> None:
    """Exact bits, implied bits and the model's NELBO over the regions as coded.  A classic
    seed has no NELBO of its own, so its rows are run through the chain on a scratch stack."""
    for r in regions:
        report.exact_bits += r.exact_bits
        report.implied_bits += r.implied_bits
        report.seed_bytes += r.classic_bytes if r.kind == "classic" else 0
        report.classic_rows += r.rows[1] - r.rows[0] if r.kind == "classic" else 0
    report.nelbo_bits, report.terms = 0.0, {}  # the chain's, not the estimate's
    if not seed_nelbo:
        return  # no NELBO: neither the seed rows nor the regions were accounted
    t0 = time.perf_counter()
    terms = {"recon": 0.0, "prior": 0.0, "diffusion": 0.0}
    for r in regions:
        r_terms = _seed_terms(coder, img.planes, r.rows, weights) if r.kind == "classic" else r.terms
        for k in terms:
            terms[k] += r_terms[k]
    report.reporting_s = time.perf_counter() - t0
    report.nelbo_bits = sum(terms.values())
    report.terms = terms


def _seed_terms(coder: Coder, planes: np.ndarray, rows: tuple[int, int], weights: ContextWeights | None) -> dict:
    """NELBO terms of classically coded rows, as if they had been a region: run through the
    chain on a scratch stack, in chunks no larger than a region."""
    h, w, _ = planes.shape
    chunk = max(1, MAX_REGION_PIXELS // w)
    terms = {"recon": 0.0, "prior": 0.0, "diffusion": 0.0}
    for r0 in range(rows[0], rows[1], chunk):
        r1 = min(rows[1], r0 + chunk)
        x = np.ascontiguousarray(planes[r0:r1].transpose(2, 0, 1))
        below = np.ascontiguousarray(planes[r1 : r1 + CONTEXT_ROWS].transpose(2, 0, 1))
        scratch = AnsStack(np.random.default_rng(r0).integers(0, 2**32, 64 + 8 * x.size, dtype=np.uint32))
        for k, v in encode_region(scratch, coder.step_model, x, context=below, weights=weights).terms.items():
            terms[k] += v
    return terms


def _header(coder: Coder, entries: list[dict], *, archive: bool, ans_words: int) -> dict:
    g = coder.step_model.grids
    return {
        "generator": f"vdmcodec {__version__}",
        "archive": archive,
        "model": {"id": coder.loaded.model_id, "sha256": coder.loaded.sha256},
        "coder": {
            "name": CODER_NAME,
            "T": g.T,
            "plan": list(coder.plan),
            "ans": f"{ANS_NAME} {ANS_VERSION}",
            "precision_bits": PRECISION_BITS,
            "param_snap": PARAM_SNAP,
            "max_region_pixels": MAX_REGION_PIXELS,
            "context_rows": CONTEXT_ROWS,
            "context_packing": WRITE_PACKING,
        },
        "compute": coder.compute(),
        "ans_words": ans_words,
        "images": entries,
    }


def _check_pixel_hash(entry: dict, img: RasterImage) -> bytes:
    digest = pixel_sha256(img)
    if not pixel_hash_matches(entry, digest):
        raise VerificationError(
            f"{entry['name']}: decoded pixels do not match the stored hash (the file is corrupt, or this "
            f"machine's compute differs from the encoder's: {_compute_diff()})"
        )
    return digest


def _classic_file(coder: Coder, image: tuple[str, RasterImage], entry: dict) -> bytes:
    """The same image with its planes in a classic section instead of on the stack."""
    name, img = image
    codec, blob = encode_rows(np.ascontiguousarray(img.planes.transpose(2, 0, 1)), jxl_table=JXL_IMAGE_SETTINGS,
                              threads=coder.threads, lsq_max_pixels=LSQ_MAX_PIXELS)
    entry = {k: v for k, v in entry.items() if k not in ("layout", "pixel_context", "film")}
    entry["method"] = "classic-planes"
    entry["planes_section"] = "planes0"
    sections = [("planes0", blob)]
    if img.alpha is not None:
        sections.append(("alpha0", encode_alpha(img.alpha)))
    if img.icc_profile:
        sections.append(("icc0", img.icc_profile))
    if img.metadata:
        sections.append(("meta0", pack_metadata(img.metadata)))
    # nothing here needs the model or the coder, so the header leaves them out: at 32x32
    # every byte is 0.003 bpd
    header = {"generator": f"vdmcodec {__version__}", "archive": False, "ans_words": 0, "images": [entry]}
    return pack_container(header, sections)


# ------------------------------------------------------------------ decode
def find_model_for(want: str, mid: str = "?", checkpoint: str | None = None, device: str = "cpu") -> LoadedModel:
    """The checkpoint with file SHA-256 `want` (a file names its model by it; mid: the
    model's id, for messages): the one asked for, the default, or any shipped one with that
    hash, or a model that one of those carries."""
    tried = []
    if checkpoint is not None:
        lm = load_checkpoint(checkpoint, device)
        if lm.sha256 == want:
            return lm
        earlier = load_earlier(lm.path, want, device)  # a model the checkpoint carries
        if earlier is not None:
            return earlier
        raise ModelMismatchError(f"file needs model {mid} ({str(want)[:12]}), but {checkpoint} is {lm.model_id} "
                                 f"({lm.sha256[:12]}) and does not carry it")
    candidates = [default_checkpoint_path()]
    for d in checkpoint_dirs():
        candidates += sorted(d.glob("*.pt")) if d.is_dir() else []
    for p in candidates:
        if p in tried or not p.is_file():
            continue
        tried.append(p)
        if file_sha256(p) == want:
            return load_checkpoint(p, device)
    for p in tried:  # a model that a later checkpoint carries (checkpoints.load_earlier)
        try:
            lm = load_earlier(p, want, device)
        except CheckpointError:
            continue  # an unreadable stray file does not hide the others
        if lm is not None:
            return lm
    raise ModelMismatchError(f"file needs model {mid} (sha256 {str(want)[:12]}...), which is not installed here")


def decompress_bytes(data: bytes, *, checkpoint: str | None = None, device: str | None = None,
                     coder: Coder | None = None, progress=None) -> list[tuple[str, RasterImage]]:
    header, sections = unpack_container(data)
    try:
        return _decode_all(header, sections, checkpoint, device, coder, progress)
    except CoderInputError:
        # every checksum held, so the stream is the one written: the probabilities computed
        # here differ from the writer's (another CPU kernel set, thread count or library)
        raise EnvironmentMismatchError(
            "the file is intact by its checksums but does not decode here: this machine's arithmetic "
            f"most likely gives other probabilities than the writer's ({writer_setup(header)}; here "
            f"{_compute_diff()}); "
            "decode it on a machine like the one that wrote it") from None
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise CorruptFileError(f"file content is inconsistent ({type(exc).__name__}: {exc})") from None


def _decode_all(header, sections, checkpoint, device, coder, progress):
    images = header["images"]
    needs_model = any(e["method"] == "bitsback" for e in images)
    settings = decode_settings(header) if needs_model else None
    if needs_model and coder is None:
        coder = _coder_for_file(settings, checkpoint, device)
    elif needs_model and coder.loaded.sha256 != settings.model_sha256:
        raise ModelMismatchError("file was written with a different model than the one loaded")
    if coder is not None:
        if needs_model:
            coder.threads = default_threads() if settings.exact else settings.threads
            coder.use_steps(settings.plan_for(len(coder.loaded.gamma_table) - 1), settings.ensemble,
                            settings.ensemble_steps, settings.z0_ensemble, exact=settings.exact)
        coder.activate()
    words = np.frombuffer(sections.get("ans", b""), dtype="<u4").astype(np.uint32)
    if len(words) != header["ans_words"]:
        raise CorruptFileError("payload length does not match the header")
    stack = AnsStack(words) if len(words) else AnsStack()
    decoded = [None] * len(images)
    for idx in reversed(range(len(images))):
        decoded[idx] = _decode_one(stack, coder, images[idx], sections, progress,
                                   settings.context_rows if settings else 0,
                                   settings.context_packing if settings else "int8")
    if stack.num_bits() != 0:
        raise CorruptFileError("payload has bits left over after decoding")
    short = any("pixel_sha256" not in e for e in images)
    if short or "pixels_sha256" in header:
        if archive_pixel_sha256([pixel_sha256(img) for img in decoded]) != header["pixels_sha256"]:
            raise VerificationError(f"decoded pixels do not match the archive's hash ({_compute_diff()})")
    return [(e["name"], img) for e, img in zip(images, decoded)]


def _coder_for_file(settings: DecodeSettings, checkpoint, device) -> Coder:
    if device is None or device == "auto":
        device = "cuda" if settings.device == "cuda" and torch.cuda.is_available() else "cpu"
    if settings.device == "cuda" and not device.startswith("cuda"):
        raise EnvironmentMismatchError("file was encoded on a GPU; decoding needs a GPU of the same kind")
    if settings.device == "cpu" and device.startswith("cuda"):
        device = "cpu"  # a CPU-made file must decode on the CPU
    if settings.exact:
        device = "cpu"  # exact files decode on the CPU, whatever wrote them
    lm = find_model_for(settings.model_sha256, settings.model_id, checkpoint, device)
    return Coder(lm, device=device, threads=default_threads() if settings.exact else settings.threads,
                 ensemble=settings.ensemble, plan=settings.plan_for(len(lm.gamma_table) - 1),
                 ensemble_steps=settings.ensemble_steps, z0_ensemble=settings.z0_ensemble, exact=settings.exact)


def _decode_one(stack, coder, entry, sections, progress, context_rows: int, packing: str) -> RasterImage:
    h, w = int(entry["height"]), int(entry["width"])
    nplanes = int(entry["planes"])
    planes = None
    if entry["method"] == "bitsback":
        with coder.step_model.adapted(_image_film(coder, entry, sections)):
            planes = decode_image(stack, coder.step_model, h, w, nplanes, entry["layout"], progress=progress,
                                  context_rows=context_rows,
                                  weights=_image_context(coder, entry, sections, nplanes, packing),
                                  checked=coder.checked)
    elif entry["method"] == "classic-planes":
        planes = np.ascontiguousarray(decode_rows(sections[entry["planes_section"]], nplanes, h, w).transpose(1, 2, 0))
    alpha = decode_alpha(sections[entry["alpha"]], w, h) if entry.get("alpha") else None
    img = RasterImage(
        mode=entry["mode"], width=w, height=h, planes=planes, alpha=alpha,
        classic=sections[entry["classic"]] if entry.get("classic") else None,
        icc_profile=sections[entry["icc"]] if entry.get("icc") else None,
        metadata=_image_metadata(entry, sections),
    )
    _check_pixel_hash(entry, img)
    return img


def _image_metadata(entry: dict, sections: dict) -> ImageMetadata:
    if not entry.get("meta"):
        return ImageMetadata()
    try:
        return unpack_metadata(sections[entry["meta"]])
    except ValueError as exc:
        raise CorruptFileError(f"{entry['name']}: {exc}") from None


def _image_context(coder: Coder, entry: dict, sections: dict, nplanes: int, packing: str) -> ContextWeights | None:
    """The image's own pixel-context weights, if the encoder sent them (packed as the header says)."""
    if not entry.get("pixel_context"):
        return None
    cfg = coder.loaded.model.cfg
    if not cfg.pixel_context:
        raise CorruptFileError(f"{entry['name']}: pixel-context weights for a model without a pixel context")
    try:
        return unpack_deltas(coder.step_model, sections[entry["pixel_context"]], nplanes, packing)
    except ValueError as exc:
        raise CorruptFileError(f"{entry['name']}: {exc}") from None


def _image_film(coder: Coder, entry: dict, sections: dict) -> FilmDeltas | None:
    """The image's own FiLM deltas of the network, if the encoder sent them."""
    if not entry.get("film"):
        return None
    try:
        return unpack_film(sections[entry["film"]], film_sizes(coder.loaded.model.net))
    except (ValueError, AttributeError) as exc:
        raise CorruptFileError(f"{entry['name']}: FiLM deltas do not fit the model ({exc})") from None


def _compute_diff() -> str:
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}"


def verify_roundtrip(data: bytes, images: list[tuple[str, RasterImage]], coder: Coder, progress=None) -> None:
    """Decode what was just encoded and insist on identical pixels (compress's safety net)."""
    out = decompress_bytes(data, coder=coder, progress=progress)
    for (name, img), (_, back) in zip(images, out):
        if pixel_sha256(img) != pixel_sha256(back):
            raise VerificationError(f"{name}: verification failed, the file would not decode to the same pixels")
        if (img.icc_profile or None, img.metadata) != (back.icc_profile or None, back.metadata):
            raise VerificationError(f"{name}: verification failed, the metadata would not come back the same")
