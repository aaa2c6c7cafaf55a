"""coding.ycc: JPEG decodes coded in the decoder's own YCbCr planes, exact on every image."""

from __future__ import annotations

import doctest
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, noise_array
from vdmcodec.coding import classic, jpegcoef, lsq, ycc


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    with Image.open(REPO / "examples" / "chelsea-128x96.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg_decode(x: np.ndarray, quality: int = 90, subsampling: int = 2) -> np.ndarray:
    """x through Pillow's JPEG (libjpeg-turbo) encoder and decoder."""
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def assert_ycc_roundtrip(x: np.ndarray, **kw) -> bytes:
    """The shared round-trip helper: encode, decode, compare every pixel."""
    data = ycc.encode(x, **kw)
    assert data is not None
    np.testing.assert_array_equal(ycc.decode(data, x.shape[0], x.shape[1]), x)
    return data


def test_docstring_examples_run():
    assert doctest.testmod(ycc, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("subsampling,mode", [(0, ycc.WHOLE), (1, ycc.HALF_ROWS), (2, ycc.HALF)])  # 4:4:4, 4:2:2, 4:2:0
def test_every_pixel_of_a_jpeg_decode_has_its_ycbcr_and_the_code_is_much_smaller(photo, subsampling, mode):
    x = jpeg_decode(photo, subsampling=subsampling)
    planes, escapes = ycc.to_planes(x)
    assert not escapes.any()
    np.testing.assert_array_equal(ycc.to_rgb(planes), x)
    data = assert_ycc_roundtrip(x)
    assert data[0] == mode | ycc.COEF_LUMA | ycc.COEF_CHROMA | ycc.COEF_MODEL2  # Y, Cb, Cr as the JPEG's coefficients
    assert len(data) < 0.6 * len(lsq.encode(x))  # the RGB code of the same pixels


@pytest.mark.parametrize("subsampling,fy,shape", [(2, 2, (48, 64, 2)), (1, 1, (96, 64, 2))])
def test_half_resolution_chroma_is_found_and_pays(photo, monkeypatch, subsampling, fy, shape):
    x = jpeg_decode(photo, subsampling=subsampling)
    planes, escapes = ycc.to_planes(x)
    found, low = ycc.half_chroma(x, planes, escapes)
    assert found == fy and low.shape == shape
    planes2, escapes2 = ycc.with_chroma(x, ycc.upsample(low, *x.shape[:2], fy))
    assert escapes2.mean() < 0.02  # the descent finds (nearly) the decoder's own samples
    ok = ~escapes2
    np.testing.assert_array_equal(ycc.to_rgb(planes2)[ok], x[ok])
    half = assert_ycc_roundtrip(x)
    monkeypatch.setattr(ycc, "SUBSAMPLED_MISFIT", -1.0)  # never half: the whole planes
    whole = assert_ycc_roundtrip(x)
    coefs = ycc.MODE_BITS
    assert half[0] & ~coefs == (ycc.HALF if fy == 2 else ycc.HALF_ROWS) and whole[0] & ~coefs == ycc.WHOLE
    assert len(half) < 0.95 * len(whole)


@pytest.mark.parametrize("quality,subsampling", [(50, 2), (90, 2), (95, 2), (90, 1)])
def test_with_the_tables_quality_the_chroma_is_found_exactly_and_with_fewer_escapes(photo, quality, subsampling):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        x, file_table = np.asarray(im.convert("RGB"), dtype=np.uint8), np.array(im.quantization[1])
    planes, escapes = ycc.to_planes(x)
    clamped = ((x == 0) | (x == 255)).any(axis=2)
    table = ycc._chroma_table(jpegcoef.table_of(planes[:, :, 0], ~(escapes | clamped)))
    np.testing.assert_array_equal(table, file_table)  # read off Y's table: the file's own chroma table
    fy, low = ycc.half_chroma_dct(x, planes, escapes, table)
    assert fy == (2 if subsampling == 2 else 1)
    for c in (0, 1):  # the planes are the table's IDCT of their coefficients: no residual
        np.testing.assert_array_equal(jpegcoef.project(low[:, :, c], table), low[:, :, c])
    _, exact = ycc.with_chroma(x, ycc.upsample(low, *x.shape[:2], fy))
    _, descent = ycc.with_chroma(x, ycc.upsample(ycc.half_chroma(x, planes, escapes)[1], *x.shape[:2], fy))
    assert exact.sum() <= descent.sum()
    data = assert_ycc_roundtrip(x)
    assert data[0] & ycc.COEF_CHROMA


def test_chroma_at_full_resolution_is_not_taken_for_half(photo):
    x = jpeg_decode(photo, subsampling=0)
    planes, escapes = ycc.to_planes(x)
    assert ycc.half_chroma(x, planes, escapes) is None


def test_edited_pixels_are_escapes_and_round_trip(photo):
    x = jpeg_decode(photo).copy()
    rng = np.random.default_rng(3)
    ys, xs = rng.integers(0, x.shape[0], 40), rng.integers(0, x.shape[1], 40)
    x[ys, xs] = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    _, escapes = ycc.to_planes(x)
    assert 0 < escapes.sum() <= 40
    assert_ycc_roundtrip(x)


def test_clamped_pixels_find_a_triple_and_saturated_colours_round_trip(photo):
    # strong colours push R, G or B past the range, where libjpeg clamps them
    x = np.clip(photo.astype(np.int64) * 3 - 200, 0, 255).astype(np.uint8)
    x = jpeg_decode(x)
    assert ((x == 0) | (x == 255)).any(axis=2).mean() > 0.2
    planes, escapes = ycc.to_planes(x)
    assert escapes.mean() < 0.01
    ok = ~escapes
    np.testing.assert_array_equal(ycc.to_rgb(planes)[ok], x[ok])
    assert_ycc_roundtrip(x)


def test_pixels_that_are_no_jpeg_decode_are_left_to_the_rgb_code():
    x = noise_array(30, 40, 3, seed=5)
    assert ycc.encode(x) is None
    assert_ycc_roundtrip(x, max_escape_share=1.0)  # still exact when forced


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (23, 1), (17, 29)])
def test_odd_shapes_round_trip(photo, shape):
    x = jpeg_decode(photo)[: shape[0], : shape[1]].copy()
    assert_ycc_roundtrip(x, max_escape_share=1.0)


def test_the_classic_code_takes_the_ycbcr_planes_of_a_jpeg_decode(photo):
    x = jpeg_decode(photo)
    name, blob = classic.encode_rows(np.ascontiguousarray(x.transpose(2, 0, 1)), lsq_max_pixels=1 << 20)
    assert name == "lsq-ycc" and blob[0] == classic.TAG_YCC
    np.testing.assert_array_equal(classic.decode_rows(blob, 3, *x.shape[:2]), x.transpose(2, 0, 1))
    # a grey strip never carries it
    with pytest.raises(ValueError):
        classic.decode_rows(blob, 1, *x.shape[:2])


def test_damaged_codes_raise_value_error(photo):
    x = jpeg_decode(photo).copy()
    x[5, 5] = (255, 0, 255)  # one escape
    data = assert_ycc_roundtrip(x)
    (n,) = struct.unpack_from("<I", data, 1)
    head = data[:1]
    modes = (b"\x07", b"\x08", b"\x18", b"\x11")  # unknown, whole chroma alone, model 2 without its bits
    cut = [data[:4], data[: 5 + n - 1], head + struct.pack("<I", len(data)) + data[5:],
           head + data[1:5] + b"\0" * n + data[5 + n:]]
    for bad in [b""] + [m + data[1:] for m in modes] + cut:
        with pytest.raises(ValueError):
            ycc.decode(bad, *x.shape[:2])
    # an escape section whose count promises more escapes than it holds, or than the image has
    raw = zlib.decompress(data[5:5 + n])
    for count in (2, x.shape[0] * x.shape[1] + 1):
        section = zlib.compress(struct.pack("<I", count) + raw[4:])
        with pytest.raises(ValueError):
            ycc.decode(head + struct.pack("<I", len(section)) + section + data[5 + n:], *x.shape[:2])
    with pytest.raises(ValueError):
        ycc.decode(data[: len(data) - 5], *x.shape[:2])  # the planes' code cut short
