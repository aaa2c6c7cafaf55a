"""coding.jpegxl: libjxl's modular settings through ctypes, and the fallback to imagecodecs."""

from __future__ import annotations

import doctest

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from helpers import REPO
from vdmcodec.coding import jpegxl
from vdmcodec.coding.jpegxl import JxlSettings, encode_lossless

BEST = JxlSettings(9, group_size=3, tree_percent=100, prev_channels=3)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(REPO / "examples" / "chelsea-128x96.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def test_docstring_examples_run():
    assert doctest.testmod(jpegxl, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("grey", [False, True])
def test_modular_settings_round_trip_exactly_and_code_a_photo_smaller(photo, grey):
    """The settings reach libjxl: on a photograph they beat imagecodecs' own effort 9."""
    x = np.ascontiguousarray(photo[..., 1]) if grey else photo
    code = encode_lossless(x, BEST)
    assert np.array_equal(imagecodecs.jpegxl_decode(code), x)
    assert len(code) < len(imagecodecs.jpegxl_encode(x, lossless=True, effort=9))


def test_default_settings_give_imagecodecs_bytes_and_threads_change_nothing(photo):
    assert encode_lossless(photo, JxlSettings(9)) == imagecodecs.jpegxl_encode(photo, lossless=True, effort=9)
    assert encode_lossless(photo, BEST, threads=2) == encode_lossless(photo, BEST)


def test_without_the_library_or_with_a_refused_setting_imagecodecs_codes_it(photo, monkeypatch):
    plain = imagecodecs.jpegxl_encode(photo, lossless=True, effort=9)
    assert encode_lossless(photo, JxlSettings(9, group_size=7)) == plain  # libjxl takes 0..3
    monkeypatch.setattr(jpegxl, "_libjxl", lambda: None)
    assert encode_lossless(photo, BEST) == plain


def test_output_longer_than_one_chunk_is_drained_whole(photo, monkeypatch):
    """A stream larger than the output buffer comes out in pieces that join up."""
    lib = jpegxl._libjxl()
    if lib is None:
        pytest.skip("this imagecodecs build exposes no libjxl symbols")
    whole = encode_lossless(photo, BEST)
    drain = jpegxl._drain
    monkeypatch.setattr(jpegxl, "_drain", lambda lib, enc, chunk: drain(lib, enc, 512))
    pieces = encode_lossless(photo, BEST)
    assert len(pieces) > 4 * 512 and pieces == whole
