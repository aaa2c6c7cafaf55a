"""Slow checks on the shipped checkpoint (run with `python -m pytest -m slow`)."""

from __future__ import annotations

import pytest

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.evaluate import image_nelbo

from helpers import assert_roundtrip, kodak_crop, raster


@pytest.mark.slow
def test_kodak_crop_file_size_is_close_to_nelbo(default_checkpoint):
    """A 96x256 Kodak crop: exact round trip, and the file's sections (classic seed, side data
    and coder overhead included) within 3% + 200 bytes of the model's NELBO over the regions
    as coded, its header under 1 kB; that NELBO within 10% of the whole-image NELBO (the cost
    of coding in regions).  (The header, about 700 bytes, is 2.4% of a crop this small.)"""
    from vdmcodec.container import unpack_container

    coder = Coder(load_checkpoint(default_checkpoint), threads=2)
    img = raster(kodak_crop(96, 256, index=23, top=200, left=200))
    data, reports, _ = assert_roundtrip(coder, [img])
    rep = reports[0]
    assert rep.method == "bitsback"
    section_bits = 8 * sum(len(v) for v in unpack_container(data)[1].values())
    assert section_bits <= 1.03 * rep.nelbo_bits + 1600
    assert len(data) - section_bits // 8 < 1024
    whole = image_nelbo(coder.step_model, img.planes)
    assert rep.nelbo_bits <= 1.10 * whole["nelbo_bits"]


@pytest.mark.slow
def test_default_effort_codes_a_kodak_crop_smaller_than_the_plain_chain(default_checkpoint):
    """The command line's default (every image's own pixel context where it pays, the step
    plan that skips steps late in the chain, 2 calls on the first quarter of the steps)
    against every step with one call and the model's context (both with the default's
    calls at z_0): both exact, the default
    smaller (the image's own context goes in only where it pays: on this 128x192 crop it
    does not, against its 1.4 kB); the plan alone (one call, model's context) within 0.01
    bpd of every step."""
    lm = load_checkpoint(default_checkpoint)
    img = raster(kodak_crop(128, 192, index=1, top=100, left=300))
    default = Coder.for_effort(lm, "default", threads=2)
    # the default's calls at z_0, which a model trained on them gives every image
    plain = Coder(lm, threads=2, adapt_context=False, z0_ensemble=default.z0_ensemble)
    plain_data, plain_rep, _ = assert_roundtrip(plain, [img])
    data, rep, _ = assert_roundtrip(default, [img])
    assert len(data) < len(plain_data)
    plan_only = Coder.for_effort(lm, "default", ensemble=1, threads=2, adapt_context=False)
    dims = img.planes.size
    assert abs(image_nelbo(plan_only.step_model, img.planes)["nelbo_bpd"]
               - image_nelbo(plain.step_model, img.planes)["nelbo_bpd"]) < 0.01
    print(f"plain {8 * len(plain_data) / dims:.4f} bpd, default {8 * len(data) / dims:.4f} bpd")


@pytest.mark.slow
def test_files_of_the_previous_shipped_model_still_decode(default_checkpoint):
    """s7_model_s5_chelsea.vdmc was written with vdmc-rgb-t64-s5, which the shipped checkpoint
    carries as a difference (checkpoints.load_earlier): it decodes to the example's pixels."""
    from pathlib import Path

    import numpy as np

    from vdmcodec.codec import decompress_bytes
    from vdmcodec.image_io import load_image

    here = Path(__file__).resolve().parent
    data = (here / "data" / "s7_model_s5_chelsea.vdmc").read_bytes()
    ((_, img),) = decompress_bytes(data)
    assert np.array_equal(img.planes, load_image(here.parent / "examples" / "chelsea-128x96.png").planes)
