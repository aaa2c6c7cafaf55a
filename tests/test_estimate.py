"""The estimate before the chain, and the skip of the chain when the classic file wins by it."""

from __future__ import annotations

import doctest

from dataclasses import replace

import numpy as np
import pytest

from helpers import kodak_crop, raster
from vdmcodec import codec
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder, compress_images, decompress_bytes
from vdmcodec.coding import estimate
from vdmcodec.coding.bands import StripPlan
from vdmcodec.coding.estimate import diffusion_by_step, estimate_diffusion, patch_mosaic
from vdmcodec.coding.film import FilmDeltas
from vdmcodec.container import unpack_container
from vdmcodec.image_io import pixel_sha256


def test_docstring_examples_run():
    assert doctest.testmod(estimate, raise_on_error=True).attempted > 0


def test_patch_mosaic_counts_only_patch_centres_and_takes_small_images_whole():
    x = np.arange(3 * 300 * 400, dtype=np.int64).reshape(3, 300, 400).astype(np.uint8)
    tiles, mask = patch_mosaic(x, grid=(2, 3), patch=40, margin=10)
    assert tiles.shape == (3, 6 * 60, 60) and mask.shape == (360, 60) and int(mask.sum()) == 6 * 40 * 40
    assert np.array_equal(tiles[:, :60], x[:, :60, :60])  # the first tile: the top left corner, margin and all
    small = x[:, :50, :50]
    whole, all_counted = patch_mosaic(small, grid=(2, 3), patch=40, margin=10)
    assert whole is small and all_counted.all()


def test_small_image_estimate_is_the_whole_image_sum(coder):
    """Where the mosaic would not be a sample, the whole image is summed: the estimate then
    equals the NELBO's diffusion term at the same noise draw."""
    planes = kodak_crop(24, 32, index=3)
    est = estimate_diffusion(coder.step_model, planes, seed=5)
    again = estimate_diffusion(coder.step_model, planes, seed=5)
    assert est.bits == again.bits > 0 and est.counted_dims == planes.size
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    sm = coder.step_model
    whole = diffusion_by_step(sm, x, None, range(1, sm.grids.T + 1), np.random.default_rng(5)).sum()
    assert est.bits == pytest.approx(whole, rel=1e-12)
    assert est.rows.shape == (24,) and est.rows.sum() == pytest.approx(est.bits, rel=1e-12)


def test_the_estimate_spreads_over_rows_where_the_whole_image_was_computed(coder, monkeypatch):
    """coding.bands decides by the model's bits per row: the diffusion estimate's rows sum
    to it (the first steps' share of each row, scaled), and are None on tiled large images."""
    planes = kodak_crop(512, 384, index=7, top=0, left=0)
    est = estimate_diffusion(coder.step_model, planes, seed=2)
    assert est.counted_dims < planes.size  # the patch mosaic, not the whole image
    assert est.rows.shape == (512,) and np.all(est.rows > 0)
    assert est.rows.sum() == pytest.approx(est.bits, rel=1e-9)
    monkeypatch.setattr(estimate, "WHOLE_MAX_PIXELS", 1 << 14)
    assert estimate_diffusion(coder.step_model, planes, seed=2).rows is None


def test_reconstruction_by_row_in_strips_agrees_with_the_whole(default_checkpoint, monkeypatch):
    sm = Coder.for_effort(load_checkpoint(default_checkpoint), "fast", threads=2).step_model
    planes = kodak_crop(64, 96, index=9, real=True)
    whole = estimate.recon_bits_by_row(sm, planes, None, seed=3)
    monkeypatch.setattr(estimate, "RECON_ROWS_STRIP_PIXELS", 32 * 96)  # two strips of 32 rows, other z_0 draws
    strips = estimate.recon_bits_by_row(sm, planes, None, seed=3)
    assert whole.shape == strips.shape == (64,) and np.all(whole > 0)
    fsm = estimate.float_step_model(sm)
    assert whole.sum() == pytest.approx(estimate.estimate_recon_bits(fsm, planes, None, seed=3), rel=1e-9)
    assert strips.sum() == pytest.approx(whole.sum(), rel=0.02)  # the strips' borders lose a little context


def test_a_skipped_chain_stores_the_classic_file_which_decodes(coder):
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    data, (rep,) = compress_images([("img0", img)], coder, skip_margin=-1.0)  # any estimate is "too large"
    assert rep.method == "classic" and rep.skipped_chain and rep.bitsback_bytes == 0
    assert rep.estimated_bytes > 0 and rep.nelbo_bits > 0 and set(rep.terms) == {"recon", "prior", "diffusion"}
    header, _ = unpack_container(data)
    assert header["images"][0]["method"] == "classic-planes"
    ((_, back),) = decompress_bytes(data, coder=coder)
    assert pixel_sha256(back) == pixel_sha256(img)


def test_an_image_far_above_the_skip_line_is_stored_before_the_fits(coder, monkeypatch):
    """The first look (the model's own network and context weights) decides alone where it
    is above the skip line by more than FIRST_LOOK_MARGIN: no fit runs."""
    def no_fit(*args, **kw):
        raise AssertionError("a fit ran for an image stored classic on the first look")

    monkeypatch.setattr(codec, "fit_film", no_fit)
    monkeypatch.setattr(codec, "fit_image_context", no_fit)
    monkeypatch.setattr(codec, "_least_bits", lambda *a: 0.0)  # the reconstruction alone never decides
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    _, (rep,) = compress_images([("img0", img)], coder, skip_margin=-1.0)
    assert rep.skipped_chain and rep.skipped_before_fits and rep.method == "classic" and not rep.estimate_partial
    assert rep.estimated_bytes > 0 and rep.estimate_s > 0 and rep.terms["diffusion"] > 0


def test_where_the_reconstruction_alone_is_above_the_line_no_diffusion_estimate_is_made(coder, monkeypatch):
    """A JPEG decode's own code is far below any bits-back file: the first look's one network
    call at z_0 shows it, and the diffusion estimate (most of a look's seconds) is spared."""
    def no_diffusion(*args, **kw):
        raise AssertionError("the diffusion was estimated for an image the reconstruction alone decides")

    monkeypatch.setattr(codec, "estimate_diffusion", no_diffusion)
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    _, (rep,) = compress_images([("img0", img)], coder, skip_margin=-1.0)
    assert rep.skipped_chain and rep.skipped_before_fits and rep.estimate_partial
    assert rep.terms["diffusion"] == 0.0 and rep.terms["recon"] > 0


def test_within_the_first_look_margin_the_fits_run_and_the_estimate_after_them_decides(coder, monkeypatch):
    monkeypatch.setattr(codec, "EARLY_SKIP", False)
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    fitted = []
    real_fit = codec.fit_image_context
    monkeypatch.setattr(codec, "fit_image_context", lambda *a, **kw: fitted.append(1) or real_fit(*a, **kw))
    _, (rep,) = compress_images([("img0", img)], coder, skip_margin=-1.0)
    assert fitted and rep.skipped_chain and not rep.skipped_before_fits


def test_the_estimate_after_the_fits_takes_the_film_fits_saving_off_the_first_look(coder, monkeypatch):
    """The diffusion term is estimated once, before the fits; the FiLM fit's own paired
    estimate of its saving is taken off it (rows alike) rather than estimating again."""
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    look = codec.first_look(coder, img)
    less = look.diffusion_less(0.25 * look.diffusion.bits)
    assert less.bits == pytest.approx(0.75 * look.diffusion.bits)
    assert less.rows.sum() == pytest.approx(less.bits) and look.diffusion_less(0.0) is look.diffusion
    report = codec.ImageReport("img0", 256, 256, "RGB", img.planes.size, "bitsback")
    film = FilmDeltas((np.zeros(2, np.int64),), saving_bits=0.25 * look.diffusion.bits)
    codec._estimate_file(coder, img, None, {"held_out_bpd_model": 3.0}, film, report, look)
    assert report.terms["diffusion"] == pytest.approx(less.bits)
    assert report.terms["recon"] == pytest.approx(3.0 * img.planes.size)


def test_the_bands_coded_beside_the_classic_file_are_those_the_first_look_would_code(coder, monkeypatch):
    """compress codes the whole image's classic file on a second thread while it codes the
    bands' (both libjxl, one core each): the same bytes and bits as one after the other, and
    the first look takes those bands instead of coding them again."""
    img = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    x = np.ascontiguousarray(img.planes.transpose(2, 0, 1))
    classic, bands = codec._classic_and_bands(coder, [("img0", img)], estimating=True)
    assert classic == codec._classic_of_single(coder, [("img0", img)])
    assert np.array_equal(bands, codec.band_bits(x)) and bands.shape == (4,)
    assert codec._classic_and_bands(coder, [("img0", img)], estimating=False)[1] is None
    assert codec._classic_and_bands(coder, [("a", img), ("b", img)], estimating=True) == (None, None)
    looks = []
    real_look = codec.first_look
    monkeypatch.setattr(codec, "first_look", lambda c, i, b=None, g=None: looks.append(b) or real_look(c, i, b, g))
    coded = []
    real_bands = codec.band_bits
    monkeypatch.setattr(codec, "band_bits", lambda *a, **kw: coded.append(1) or real_bands(*a, **kw))
    _, (rep,) = compress_images([("img0", img)], coder, skip_margin=-1.0)
    assert rep.skipped_chain and len(looks) == 1 and np.array_equal(looks[0], bands) and len(coded) == 1


def test_the_first_look_decides_on_its_estimate_less_the_strip_slack_above_the_raised_line():
    rows = np.full(128 + 64, 10.0)  # three bands of 64 rows, the model's 640 bits each
    plans = (StripPlan((64, 128), 500.0),)
    look = codec.FirstLook(recon_bits=float(rows.sum()) / 2, diffusion=estimate.DiffusionEstimate(
        float(rows.sum()) / 2, 0, 0.0, rows / 2), recon_rows=rows / 2, classic_bands=np.array([700.0, 500.0, 900.0]),
        strips=plans)
    assert look.mixed_bits == pytest.approx(640.0 + 500.0 + 640.0)
    line = (8.0 * look.estimated_bytes(10) - codec.STRIP_PRICE_SLACK * 500.0) / (1.0 + codec.FIRST_LOOK_MARGIN)
    assert look.above_the_line(10, line - 1.0) and not look.above_the_line(10, line + 1.0)


def test_a_first_look_with_every_band_classic_skips_whatever_its_estimate():
    rows = np.full(128, 10.0)  # two bands of 64 rows
    half = rows / 2
    diffusion = estimate.DiffusionEstimate(float(half.sum()), 0, 0.0, half)
    every = codec.FirstLook(float(half.sum()), diffusion, half, np.array([100.0, 100.0]),
                            strips=(StripPlan((0, 128), 200.0),))
    some = replace(every, strips=(StripPlan((64, 128), 100.0),))
    assert every.every_band_classic and not some.every_band_classic
    assert every.above_the_line(10, 1e9) and not some.above_the_line(10, 1e9)
    assert not codec.FirstLook(1.0, diffusion).every_band_classic  # no bands: the estimate decides
    assert not every.above_the_line(10, float("inf"))  # a margin of inf never skips


def test_small_images_and_no_margin_always_run_the_chain(coder):
    small = raster(kodak_crop(64, 96, index=4))
    _, (rep,) = compress_images([("img0", small)], coder, skip_margin=-1.0)
    assert not rep.skipped_chain and rep.bitsback_bytes > 0 and rep.estimated_bytes == 0
    big = raster(kodak_crop(256, 256, index=4, top=0, left=0))
    _, (rep,) = compress_images([("img0", big)], coder, skip_margin=None)
    assert not rep.skipped_chain and rep.bitsback_bytes > 0 and rep.estimated_bytes == 0


def test_an_estimate_that_never_skips_still_keeps_the_smaller_file(coder):
    img = raster(kodak_crop(256, 256, index=7, top=0, left=0))
    data, (rep,) = compress_images([("img0", img)], coder, skip_margin=float("inf"))
    classic = codec._classic_of_single(coder, [("img0", img)])
    assert not rep.skipped_chain and rep.estimated_bytes > 0 and rep.bitsback_bytes > 0
    assert len(data) == min(len(classic), rep.bitsback_bytes)


def test_estimate_is_within_two_percent_of_the_shipped_models_file(default_checkpoint):
    """The estimate that decides the skip, against the bits-back file it predicts (a photo
    crop, the shipped model at the fast effort: no FiLM fit)."""
    coder = Coder.for_effort(load_checkpoint(default_checkpoint), "fast", threads=2)
    img = raster(kodak_crop(256, 384, index=5, top=100, left=200))
    _, (rep,) = compress_images([("img0", img)], coder, skip_margin=float("inf"), seed_nelbo=False)
    assert rep.bitsback_bytes > 0 and not rep.skipped_chain
    assert abs(rep.estimated_bytes / rep.bitsback_bytes - 1.0) < 0.02, (rep.estimated_bytes, rep.bitsback_bytes)


def test_large_images_take_the_first_steps_on_a_dense_mosaic_and_agree_with_the_whole(coder, monkeypatch):
    """Above WHOLE_MAX_PIXELS the first steps run on a dense grid of patches, each with its
    margin (bounded memory at 24 MP); the estimate stays close to the one from the whole image."""
    planes = kodak_crop(512, 768, index=1, top=0, left=0)
    whole = estimate_diffusion(coder.step_model, planes, seed=1)
    monkeypatch.setattr(estimate, "WHOLE_MAX_PIXELS", 1 << 16)
    monkeypatch.setattr(estimate, "LARGE_GRID", (6, 6))  # 36 patches of 48 x 48 (a fifth of the image)
    tiled = estimate_diffusion(coder.step_model, planes, seed=1)
    assert tiled.rows is None
    assert tiled.bits != whole.bits and abs(tiled.bits / whole.bits - 1.0) < 0.05, (tiled.bits, whole.bits)
