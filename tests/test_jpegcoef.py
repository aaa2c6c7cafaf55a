"""coding.jpegcoef: a JPEG decode's luma as the JPEG's own DCT coefficients, exact on every plane."""

from __future__ import annotations

import doctest
import io

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, noise_array
from vdmcodec.coding import jpegcoef, lsq, ycc


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(REPO / "examples" / "chelsea-128x96.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg(x: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoded RGB, the JPEG's luminance table in natural order) through Pillow's JPEG, 4:4:4."""
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality, subsampling=0)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8), np.array(im.quantization[0], dtype=np.int64)


def assert_roundtrip(plane: np.ndarray, care: np.ndarray | None = None, free: np.ndarray | None = None,
                     model: int = 2) -> bytes:
    """The shared round-trip helper: encode, decode, compare (free pixels: the IDCT's value)."""
    care = np.ones(plane.shape, bool) if care is None else care
    code, used = jpegcoef.encode(plane, care, free, model=model)
    keep = np.ones(plane.shape, bool) if free is None else ~free
    np.testing.assert_array_equal(used[keep], plane[keep])
    np.testing.assert_array_equal(jpegcoef.decode(code, *plane.shape, model=model), used)
    return code


def luma_of(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    planes, escapes = ycc.to_planes(x)
    assert not escapes.any()
    return planes[:, :, 0], ~((x == 0) | (x == 255)).any(axis=2)


def test_docstring_examples_run():
    assert doctest.testmod(jpegcoef, raise_on_error=True).attempted > 0


def test_the_integer_idct_gives_back_pillows_decode(photo):
    # the coefficients recovered from the pixels, through islow, are libjpeg's own samples
    x, table = jpeg(photo, 90)
    y, care = luma_of(x)
    coefs = jpegcoef.coefficients(y.astype(np.int64), care, table)
    out = np.zeros(y.shape, dtype=np.int64)
    jpegcoef.idct_plane(coefs, table, out)
    assert (out == y).mean() > 0.99


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_the_table_is_found_from_the_pixels_and_the_code_is_far_smaller(photo, quality):
    x, table = jpeg(photo, quality)
    y, care = luma_of(x)
    padded = y.astype(np.int64)  # 96 x 128: whole blocks
    q = jpegcoef.estimate_table(jpegcoef.dct_blocks(padded - 128.0), padded, care)
    # every step that shapes a nonzero coefficient of this image is the JPEG's own (or a
    # multiple of it where only such multiples occur); the rest are never used
    coefs = jpegcoef.coefficients(padded, care, q)
    out = np.zeros(y.shape, dtype=np.int64)
    jpegcoef.idct_plane(coefs, q, out)
    assert (out == y).mean() > 0.97  # the rest: clamped pixels, a step no clean block shows
    used = (coefs != 0).reshape(-1, 64).any(axis=0)
    assert ((q % table == 0) | ~used).all()
    code = assert_roundtrip(y, care)
    assert len(code) < 0.6 * len(lsq.encode(y))  # (a 128x96 plane: 0.33-0.56)


@pytest.mark.parametrize("quality", [30, 75, 90, 95])
def test_both_models_round_trip_and_the_second_is_smaller(photo, quality):
    x, _ = jpeg(photo, quality)
    y, care = luma_of(x)
    assert len(assert_roundtrip(y, care, model=2)) < len(assert_roundtrip(y, care, model=1))


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 95, 100])
def test_the_ijg_tables_are_libjpegs_and_the_estimate_finds_them(photo, quality):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=quality, subsampling=0)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        x, tables = np.asarray(im.convert("RGB"), dtype=np.uint8), im.quantization
    np.testing.assert_array_equal(jpegcoef.ijg_table(quality, chroma=False), tables[0])
    np.testing.assert_array_equal(jpegcoef.ijg_table(quality, chroma=True), tables[1])
    y, care = luma_of(x)
    found = jpegcoef.table_of(y, care)
    used = (jpegcoef.fit(y, care, tables[0])[1] != 0).reshape(-1, 64).any(axis=0)
    np.testing.assert_array_equal(found[used], np.array(tables[0])[used])  # even at q95-100 (few exact blocks)
    if quality >= 50:
        assert jpegcoef.ijg_quality(found) == quality


def test_projection_gives_a_plane_the_idct_gives(photo):
    x, table = jpeg(photo, 75)
    plane = (96 + noise_array(16, 24, 1, seed=4)[:, :, 0] // 4).astype(np.uint8)  # whole blocks, nothing clamps
    once = jpegcoef.project(plane, table)
    assert np.abs(once - plane).mean() > 1  # noise is no JPEG plane
    np.testing.assert_array_equal(jpegcoef.project(once.astype(np.uint8), table), once)
    assert len(assert_roundtrip(once.astype(np.uint8))) < 0.5 * len(assert_roundtrip(plane))


@pytest.mark.parametrize("model", [1, 2])
def test_any_plane_round_trips_through_the_residual(model):
    plane = noise_array(21, 34, 1, seed=2)[:, :, 0]  # nothing like a JPEG: every block missed
    assert_roundtrip(plane, model=model)


@pytest.mark.parametrize("model", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (23, 1), (17, 29), (8, 8)])
def test_odd_shapes_round_trip(photo, shape, model):
    x, _ = jpeg(photo, 75)
    y, care = luma_of(x)
    assert_roundtrip(np.ascontiguousarray(y[: shape[0], : shape[1]]), care[: shape[0], : shape[1]], model=model)


def test_free_pixels_take_the_idcts_value(photo):
    x, _ = jpeg(photo, 75)
    y, care = luma_of(x)
    y = y.copy()
    free = np.zeros(y.shape, bool)
    rng = np.random.default_rng(1)
    free[rng.integers(0, y.shape[0], 12), rng.integers(0, y.shape[1], 12)] = True
    y[free] = 255 - y[free]  # damage them: they must not cost residual bits
    code = assert_roundtrip(y, care & ~free, free)
    clean = assert_roundtrip(luma_of(x)[0], care)
    assert len(code) < 1.1 * len(clean)  # (their blocks are no longer clean: a step may go unseen)


def test_damaged_codes_raise_value_error(photo):
    x, _ = jpeg(photo, 75)
    y, care = luma_of(x)
    code = assert_roundtrip(y, care)
    zero_step = b"\0" + code[1:]
    for bad in (b"", code[:70], code[:-1], zero_step, code[:len(code) // 2]):
        with pytest.raises(ValueError):
            jpegcoef.decode(bad, *y.shape)
    # words that are no code: the walk reads padding, and the result is refused or is some plane
    rng = np.random.default_rng(0)
    junk = code[:64] + rng.integers(0, 256, len(code) - 64, dtype=np.uint8).tobytes()
    try:
        out = jpegcoef.decode(junk, *y.shape)
    except ValueError:
        return
    assert out.shape == y.shape and out.dtype == np.uint8
