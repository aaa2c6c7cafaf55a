"""Slow checks on the shipped checkpoint (run with `python -m pytest -m slow`)."""

from __future__ import annotations

import pytest

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.evaluate import image_nelbo

from helpers import assert_roundtrip, kodak_crop, raster


@pytest.mark.slow
def test_kodak_crop_file_size_is_close_to_nelbo(default_checkpoint):
    """A 96x256 Kodak crop: exact round trip, and the whole file (header, classic seed and
    coder overhead included) within 3% + 200 bytes of the model's NELBO over the regions as
    coded; that NELBO within 10% of the whole-image NELBO (the cost of coding in regions)."""
    coder = Coder(load_checkpoint(default_checkpoint), threads=2)
    img = raster(kodak_crop(96, 256, index=23, top=200, left=200))
    data, reports, _ = assert_roundtrip(coder, [img])
    rep = reports[0]
    assert rep.method == "bitsback"
    file_bits = 8 * len(data)
    assert file_bits <= 1.03 * rep.nelbo_bits + 1600
    whole = image_nelbo(coder.step_model, img.planes)
    assert rep.nelbo_bits <= 1.10 * whole["nelbo_bits"]
