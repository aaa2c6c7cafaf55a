"""Bands of rows handed to the classic code inside a bits-back image (coding.bands)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from helpers import assert_same_image, kodak_crop, raster
from vdmcodec import codec
from vdmcodec.coding import bands, chain
from vdmcodec.coding.ans import AnsStack
from vdmcodec.coding.bands import ClassicStrip, StripPlan, band_bits, code_strips, mixed_bits, plan_strips
from vdmcodec.coding.classic import decode_rows
from vdmcodec.container import unpack_container


def test_docstring_examples_run():
    assert doctest.testmod(bands, raise_on_error=True).attempted > 0


def strip_of(planes: np.ndarray, r0: int, r1: int) -> ClassicStrip:
    """Rows [r0, r1) of (H, W, C) planes, coded as compress codes a planned strip."""
    (strip,) = code_strips(np.ascontiguousarray(planes.transpose(2, 0, 1)), [StripPlan((r0, r1), 0.0)])
    return strip


def encode_and_decode(coder, planes, strips):
    stack = AnsStack()
    regions = chain.encode_image(stack, coder.step_model, planes, strips=strips)
    layout = [{"rows": list(r.rows), "kind": r.kind, "bytes": r.classic_bytes} for r in regions]
    h, w, c = planes.shape
    np.testing.assert_array_equal(chain.decode_image(stack, coder.step_model, h, w, c, layout), planes)
    assert stack.num_bits() == 0
    return regions


@pytest.mark.parametrize("spans", [[(32, 48)], [(0, 16), (64, 96)], [(40, 42), (88, 96)]])
def test_strips_anywhere_decode_exactly_and_no_region_crosses_one(coder, spans):
    planes = kodak_crop(96, 40, index=12, real=True)
    strips = [strip_of(planes, *s) for s in spans]
    regions = encode_and_decode(coder, planes, strips)
    for s in strips:
        (hit,) = [r for r in regions if r.rows == s.rows]
        assert hit.kind == "classic" and hit.classic_bytes == len(s.data)
        assert all(r.rows[1] <= s.rows[0] or r.rows[0] >= s.rows[1] for r in regions if r is not hit)
    assert all(r.rows[0] % 2 == 0 for r in regions)
    assert [r.rows for r in regions] == sorted(r.rows for r in regions)  # coded top to bottom, tiling the image
    assert regions[0].rows[0] == 0 and regions[-1].rows[1] == 96
    assert all(a.rows[1] == b.rows[0] for a, b in zip(regions, regions[1:]))


def test_a_strip_too_small_to_pay_for_a_region_is_followed_by_a_seed(coder):
    planes = kodak_crop(64, 40, index=3, real=True)
    regions = encode_and_decode(coder, planes, [strip_of(planes, 0, 2)])
    assert regions[0].rows == (0, 2) and regions[0].kind == "classic"
    assert regions[1].kind == "classic" and regions[1].rows[0] == 2  # the seed after it
    assert any(r.kind == "bitsback" for r in regions)


def test_flat_rows_go_to_the_classic_code_and_noisy_ones_stay():
    rng = np.random.default_rng(0)
    x = np.empty((3, 256, 96), dtype=np.uint8)
    x[:, :128] = 120  # JPEG XL codes this in a few bytes
    x[:, 128:] = rng.integers(0, 256, (3, 128, 96))  # ~8 bits per value for any classic code
    model_rows = np.full(256, 2.0 * 3 * 96)  # the model at 2 bits per value everywhere
    plans = plan_strips(x, model_rows)
    assert [p.rows for p in plans] == [(0, 128)]
    assert plans[0].bits == pytest.approx(band_bits(x)[:2].sum())  # priced at its bands' effort-9 codes
    assert plan_strips(None, model_rows, classic_bits=band_bits(x)) == plans
    assert mixed_bits(model_rows, plans) == pytest.approx(model_rows[128:].sum() + plans[0].bits)
    (strip,) = code_strips(x, plans)
    assert strip.rows == (0, 128) and strip.bits <= plans[0].bits  # coded at effort 10: no larger
    np.testing.assert_array_equal(decode_rows(strip.data, 3, 128, 96), x[:, :128])
    assert plan_strips(x[:, :100], model_rows[:100]) == []  # too short to split


def test_compress_codes_the_planned_strips_and_the_file_decodes(coder, monkeypatch):
    img = raster(kodak_crop(96, 40, index=12, real=True))
    monkeypatch.setattr(codec, "SKIP_MIN_PIXELS", 0)
    monkeypatch.setattr(codec, "MIN_BAND_IMAGE_ROWS", 0)
    planned = [strip_of(img.planes, 48, 64)]

    def plan(x, rows, classic_bits=None):
        assert rows.shape == (96,) and np.all(rows > 0)  # the model's estimated bits of every row
        assert classic_bits.shape == (2,)  # each band's effort-9 bits, from the first look
        return [StripPlan((48, 64), 1.0)]

    monkeypatch.setattr(codec, "plan_strips", plan)
    # a classic file that never wins: the estimate runs and the chain codes the image
    monkeypatch.setattr(codec, "_classic_of_single", lambda coder, images: bytes(1 << 20))
    data, (report,) = codec.compress_images([("img0", img)], coder, skip_margin=0.01)
    assert report.method == "bitsback" and report.estimated_bytes > 0
    assert_same_image(img, codec.decompress_bytes(data, coder=coder)[0][1])
    header, _ = unpack_container(data)
    layout = header["images"][0]["layout"]
    assert {"rows": [48, 64], "kind": "classic", "bytes": len(planned[0].data), "codec": planned[0].codec} in layout
    assert report.seed_bytes >= len(planned[0].data)
    # the strip was priced at 1 bit when planned; the estimate counts the bytes it was coded in
    assert report.estimated_bytes > len(planned[0].data)


def _seed(x: np.ndarray, need: float) -> tuple[int, chain.RegionStats, bytes]:
    """_push_classic_seed on an empty stack: the row after the seed, its stats and its bytes."""
    stack, regions = AnsStack(), []
    end = chain._push_classic_seed(stack, x, need, regions)
    return end, regions[0], stack.pop_bytes(regions[0].classic_bytes)


def test_the_seed_of_cheap_rows_takes_the_most_rows_and_decodes():
    """Rows that cost far less than a quarter of what a region of them needs (these about 3.2
    bits per value against a region's 20): no count short of the most pays, so the search
    goes there at once, and the seed decodes to the rows."""
    x = np.ascontiguousarray(kodak_crop(256, 256, index=3, real=True).transpose(2, 0, 1))
    end, seed, data = _seed(x, 20.0)
    assert end == seed.rows[1] == chain.even_rows(0, 256 // 8, 256)
    np.testing.assert_array_equal(decode_rows(data, 3, end, 256), x[:, :end])


def test_a_seed_of_costly_rows_stops_at_the_first_count_that_pays():
    """Noise costs more per row than a region of a quarter of the rows needs: the seed stops
    at the first count whose code pays for that region; the count before it did not."""
    from vdmcodec.coding.classic import encode_rows
    x = np.random.default_rng(1).integers(0, 256, (3, 400, 64), dtype=np.uint8)
    need = 20.0
    end, seed, data = _seed(x, need)
    counts = [2, 4, 6, 8, 12, 18, 26, 38]

    def pays(rows: int, nbytes: int) -> bool:
        return 8 * nbytes >= chain.STACK_MARGIN_BITS + need * 64 * 3 * max(2, rows // 4)

    assert end in counts[1:] and pays(end, len(data)) and len(data) == seed.classic_bytes
    before = counts[counts.index(end) - 1]
    assert not pays(before, len(encode_rows(x[:, :before], webp_max_pixels=0)[1]))
    np.testing.assert_array_equal(decode_rows(data, 3, end, 64), x[:, :end])
