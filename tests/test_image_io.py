"""Exactness and error behaviour of vdmcodec.image_io (no torch needed)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from vdmcodec.errors import (
    CorruptFileError,
    InputNotFoundError,
    NotAnImageError,
    OutputExistsError,
    OutputNotWritableError,
    UnsupportedImageError,
    UsageError,
)
from vdmcodec.image_io import (
    RasterImage,
    atomic_write_bytes,
    decode_alpha,
    encode_alpha,
    image_from_pil,
    image_to_pil,
    load_image,
    pixel_sha256,
    save_image,
)

from data_paths import KODAK  # noqa: E402
SIZES = [(1, 1), (17, 5), (33, 65)]
MODES = ["L", "LA", "RGB", "RGBA", "P", "1"]


# ----------------------------------------------------------------------------- helpers


def make_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random content, so that any off-by-one in plane handling shows up."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode == "P":
        im = Image.frombytes("P", size, rng.integers(0, 13, (h, w), dtype=np.uint8).tobytes())
        im.putpalette(rng.integers(0, 256, 13 * 3, dtype=np.uint8).tobytes())
        return im
    channels = len(mode)
    return Image.frombytes(mode, size, rng.integers(0, 256, (h, w, channels), dtype=np.uint8).tobytes())


def assert_same(got: Image.Image, want: Image.Image) -> None:
    assert got.mode == want.mode
    assert got.size == want.size
    assert got.tobytes() == want.tobytes()
    if want.mode == "P":
        assert got.palette.mode == want.palette.mode
        assert got.getpalette(want.palette.mode) == want.getpalette(want.palette.mode)
    assert got.info.get("transparency") == want.info.get("transparency")
    assert got.info.get("icc_profile") == want.info.get("icc_profile")


def write_with_pillow(im: Image.Image, path: Path, **opts) -> Path:
    im.save(path, **opts)
    return path


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
def test_png_round_trip_every_mode_and_odd_size(tmp_path, mode, size):
    src = write_with_pillow(make_image(mode, size), tmp_path / "in.png")
    original = Image.open(src)
    original.load()

    img = load_image(src)
    assert (img.mode, img.width, img.height) == (mode, *size)
    assert_same(image_to_pil(img), original)

    save_image(img, tmp_path / "out.png")
    assert_same(Image.open(tmp_path / "out.png"), original)
    assert pixel_sha256(load_image(tmp_path / "out.png")) == pixel_sha256(img)


def test_planes_and_alpha_layout():
    im = make_image("RGBA", (17, 5))
    img = image_from_pil(im)
    arr = np.asarray(im)
    assert img.planes.shape == (5, 17, 3) and img.planes.flags.c_contiguous
    assert np.array_equal(img.planes, arr[:, :, :3])
    assert np.array_equal(img.alpha, arr[:, :, 3]) and img.classic is None

    grey = image_from_pil(make_image("LA", (17, 5)))
    assert grey.planes.shape == (5, 17, 1) and grey.alpha.shape == (5, 17)
    pal = image_from_pil(make_image("P", (17, 5)))
    assert pal.planes is None and pal.alpha is None and pal.classic.startswith(b"\x89PNG")


@pytest.mark.parametrize("transparency", [4, bytes([0, 128, 255, 7, 0])])
def test_palette_transparency_survives(tmp_path, transparency):
    im = make_image("P", (33, 65))
    src = write_with_pillow(im, tmp_path / "in.png", transparency=transparency)
    original = Image.open(src)
    original.load()
    assert original.info["transparency"] == transparency

    img = load_image(src)
    assert_same(image_to_pil(img), original)
    save_image(img, tmp_path / "out.png")
    assert_same(Image.open(tmp_path / "out.png"), original)


def test_rgba_palette_is_kept_in_memory_and_in_files(tmp_path):
    im = make_image("P", (17, 5))
    rgba = np.random.default_rng(1).integers(0, 256, (13, 4), dtype=np.uint8)
    rgba[5, 3] = 0
    im.putpalette(rgba.tobytes(), "RGBA")

    back = image_to_pil(image_from_pil(im))
    assert_same(back, im)

    save_image(image_from_pil(im), tmp_path / "out.png")
    on_disk = Image.open(tmp_path / "out.png")
    assert on_disk.tobytes() == im.tobytes()
    assert np.array_equal(np.asarray(on_disk.convert("RGBA")), np.asarray(im.convert("RGBA")))


def test_gif_palette_image(tmp_path):
    im = make_image("P", (17, 5))
    src = write_with_pillow(im, tmp_path / "in.gif", transparency=2)
    original = Image.open(src)
    original.load()
    assert_same(image_to_pil(load_image(src)), original)


def test_colour_key_transparency_becomes_alpha(tmp_path):
    """A tRNS colour key on L/RGB must not be silently dropped."""
    arr = np.array([[0, 7, 7], [200, 7, 1]], dtype=np.uint8)
    src = write_with_pillow(Image.fromarray(arr), tmp_path / "key.png", transparency=7)
    img = load_image(src)
    assert img.mode == "LA"
    assert np.array_equal(img.planes[:, :, 0], arr)
    assert np.array_equal(img.alpha, np.where(arr == 7, 0, 255))

    rgb = make_image("RGB", (17, 5))
    key = rgb.getpixel((3, 2))
    src = write_with_pillow(rgb, tmp_path / "rgbkey.png", transparency=key)
    img = load_image(src)
    assert img.mode == "RGBA" and img.alpha[2, 3] == 0
    assert np.array_equal(img.planes, np.asarray(rgb))


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_icc_profile_preserved(tmp_path, mode):
    icc = srgb_profile()
    src = write_with_pillow(make_image(mode, (17, 5)), tmp_path / "in.png", icc_profile=icc)
    img = load_image(src)
    assert img.icc_profile == icc
    save_image(img, tmp_path / "out.png")
    assert Image.open(tmp_path / "out.png").info["icc_profile"] == icc


@pytest.mark.parametrize("name,box", [("kodim01.png", (100, 200, 164, 248)), ("kodim23.png", (0, 0, 33, 65))])
def test_kodak_crops(tmp_path, name, box):
    if not (KODAK / name).exists():
        pytest.skip(f"{KODAK / name} not available")
    with Image.open(KODAK / name) as full:
        crop = full.crop(box)
    src = write_with_pillow(crop, tmp_path / "crop.png")
    img = load_image(src)
    assert img.mode == "RGB" and img.planes.shape == (box[3] - box[1], box[2] - box[0], 3)
    save_image(img, tmp_path / "out.png")
    assert_same(Image.open(tmp_path / "out.png"), crop)


# ----------------------------------------------------------------------------- other output formats

LOSSLESS_TARGETS = [
    (".webp", "RGB"), (".webp", "RGBA"),
    (".tiff", "L"), (".tif", "LA"), (".tiff", "RGB"), (".tiff", "RGBA"), (".tiff", "1"),
    (".bmp", "L"), (".bmp", "RGB"), (".bmp", "P"), (".bmp", "1"),
    (".pgm", "L"), (".ppm", "RGB"), (".pbm", "1"), (".pnm", "RGB"),
]


@pytest.mark.parametrize("suffix,mode", LOSSLESS_TARGETS)
def test_other_formats_are_exact(tmp_path, suffix, mode):
    img = image_from_pil(make_image(mode, (33, 65)))
    if mode == "RGBA":
        img.alpha[:10] = 0  # libwebp rewrites colours under zero alpha unless told not to
    out = tmp_path / f"out{suffix}"
    save_image(img, out)
    back = load_image(out)
    assert back.mode == mode and pixel_sha256(back) == pixel_sha256(img)


@pytest.mark.parametrize("suffix,mode", [(".webp", "L"), (".webp", "P"), (".tiff", "P"), (".bmp", "RGBA"),
                                         (".bmp", "LA"), (".ppm", "L"), (".pgm", "RGB"), (".pbm", "L")])
def test_format_that_cannot_hold_mode_is_refused(tmp_path, suffix, mode):
    with pytest.raises(UsageError, match=mode):
        save_image(image_from_pil(make_image(mode, (17, 5))), tmp_path / f"out{suffix}")
    assert folder_listing(tmp_path) == []


def test_palette_transparency_refused_where_format_would_drop_it(tmp_path):
    im = make_image("P", (17, 5))
    im.info["transparency"] = 3
    with pytest.raises(UsageError, match="exactly"):
        save_image(image_from_pil(im), tmp_path / "out.bmp")
    assert folder_listing(tmp_path) == []


def test_unknown_suffix_is_refused_and_no_suffix_means_png(tmp_path):
    img = image_from_pil(make_image("RGB", (17, 5)))
    with pytest.raises(UsageError, match="jpg"):
        save_image(img, tmp_path / "out.jpg")
    save_image(img, tmp_path / "noext")
    assert Image.open(tmp_path / "noext").format == "PNG"


# ----------------------------------------------------------------------------- unsupported / bad inputs


def test_16_bit_png_is_unsupported(tmp_path):
    arr = (np.arange(17 * 5, dtype=np.uint16) * 700).reshape(5, 17)
    src = write_with_pillow(Image.fromarray(arr), tmp_path / "deep.png")
    with pytest.raises(UnsupportedImageError, match="mode 'I"):
        load_image(src)


@pytest.mark.parametrize("shape,fmt", [((6, 9, 3), "png"), ((6, 9, 4), "png"), ((6, 9, 2), "png"),
                                       ((6, 9, 3), "tiff")])
def test_16_bit_colour_files_are_refused_not_cut_to_8_bits(tmp_path, shape, fmt):
    """Pillow opens a 48-bit RGB PNG as 8-bit RGB; its real bit depth is read instead."""
    imagecodecs = pytest.importorskip("imagecodecs")
    arr = (np.random.default_rng(0).random(shape) * 65535).astype(np.uint16)
    src = tmp_path / f"deep.{fmt}"
    src.write_bytes(imagecodecs.png_encode(arr) if fmt == "png" else imagecodecs.tiff_encode(arr))
    with pytest.raises(UnsupportedImageError, match="16-bit samples"):
        load_image(src)


def test_8_bit_files_are_read_as_8_bit(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    arr = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    src = tmp_path / "plain.png"
    src.write_bytes(imagecodecs.png_encode(arr))
    assert np.array_equal(load_image(src).planes, arr)


def test_cmyk_tiff_is_unsupported(tmp_path):
    src = write_with_pillow(Image.new("CMYK", (17, 5), (1, 2, 3, 4)), tmp_path / "cmyk.tiff")
    with pytest.raises(UnsupportedImageError, match="CMYK"):
        load_image(src)


def test_animated_gif_is_unsupported(tmp_path):
    frames = [make_image("P", (17, 5), seed=s) for s in range(3)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(UnsupportedImageError, match="frames"):
        load_image(src)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"])
def test_unsupported_modes_from_pil(mode):
    with pytest.raises(UnsupportedImageError, match=mode):
        image_from_pil(Image.new(mode, (3, 2)))


def test_text_file_is_not_an_image(tmp_path):
    src = tmp_path / "notes.png"
    src.write_text("hello, I am not a picture\n")
    with pytest.raises(NotAnImageError):
        load_image(src)


def test_empty_file_is_not_an_image(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(NotAnImageError):
        load_image(tmp_path / "empty.png")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_png_is_not_an_image(tmp_path, keep):
    src = write_with_pillow(make_image("RGB", (33, 65)), tmp_path / "full.png")
    data = src.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(NotAnImageError):
        load_image(cut)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputNotFoundError):
        load_image(tmp_path)


def test_too_many_pixels_is_refused(tmp_path, monkeypatch):
    src = write_with_pillow(make_image("L", (33, 65)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnsupportedImageError, match="larger"):
        load_image(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # beyond 2x: Pillow's hard error
    with pytest.raises(UnsupportedImageError, match="larger"):
        load_image(src)


def test_large_images_allowed_by_default():
    assert Image.MAX_IMAGE_PIXELS >= 64 * 1024 * 1024


def test_inconsistent_raster_image_is_rejected():
    with pytest.raises(ValueError):
        RasterImage("RGB", 4, 3, np.zeros((3, 4, 1), np.uint8), None, None, None)
    with pytest.raises(ValueError):
        RasterImage("RGBA", 4, 3, np.zeros((3, 4, 3), np.uint8), None, None, None)
    with pytest.raises(ValueError):
        RasterImage("P", 4, 3, None, None, None, None)


def test_damaged_classic_bytes_are_corrupt():
    img = image_from_pil(make_image("P", (17, 5)))
    img.classic = img.classic[:40]
    with pytest.raises(CorruptFileError):
        image_to_pil(img)


# ----------------------------------------------------------------------------- atomic writes


def test_existing_output_is_not_touched(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    img = image_from_pil(make_image("RGB", (17, 5)))
    with pytest.raises(OutputExistsError, match="out.png"):
        save_image(img, target)
    assert target.read_bytes() == b"precious"
    assert folder_listing(tmp_path) == ["out.png"]

    save_image(img, target, overwrite=True)
    assert pixel_sha256(load_image(target)) == pixel_sha256(img)
    assert folder_listing(tmp_path) == ["out.png"]


def test_missing_folder_is_not_writable(tmp_path):
    with pytest.raises(OutputNotWritableError, match="missing"):
        atomic_write_bytes(tmp_path / "missing" / "x.vdmc", b"data", overwrite=False)


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OutputNotWritableError, match="No space"):
        atomic_write_bytes(tmp_path / "x.vdmc", b"data", overwrite=True)
    assert folder_listing(tmp_path) == []


def test_replacing_a_folder_fails_cleanly(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputNotWritableError):
        atomic_write_bytes(tmp_path / "dir", b"data", overwrite=True)
    with pytest.raises(OutputExistsError):
        atomic_write_bytes(tmp_path / "dir", b"data", overwrite=False)
    assert folder_listing(tmp_path) == ["dir"]


def test_interrupt_during_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "x.vdmc", b"data", overwrite=False)
    assert folder_listing(tmp_path) == []


def test_without_hard_links_exclusive_write_still_works(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    atomic_write_bytes(tmp_path / "a.vdmc", b"one", overwrite=False)
    assert (tmp_path / "a.vdmc").read_bytes() == b"one"
    with pytest.raises(OutputExistsError):
        atomic_write_bytes(tmp_path / "a.vdmc", b"two", overwrite=False)
    assert (tmp_path / "a.vdmc").read_bytes() == b"one"
    assert folder_listing(tmp_path) == ["a.vdmc"]


def test_written_file_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "x.vdmc", b"data", overwrite=False)
    finally:
        os.umask(old)
    assert (tmp_path / "x.vdmc").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- hashing and alpha


@pytest.mark.parametrize("mode", MODES)
def test_pixel_hash_equal_for_equal_images(mode):
    a, b = make_image(mode, (17, 5)), make_image(mode, (17, 5))
    assert pixel_sha256(image_from_pil(a)) == pixel_sha256(image_from_pil(b))


@pytest.mark.parametrize("mode", MODES)
def test_pixel_hash_changes_with_one_pixel(mode):
    a = make_image(mode, (17, 5))
    b = a.copy()
    px = a.getpixel((16, 4))
    if isinstance(px, tuple):
        b.putpixel((16, 4), tuple((v + 1) % 256 for v in px))
    elif mode == "1":
        b.putpixel((16, 4), 255 - px)
    else:
        b.putpixel((16, 4), (px + 1) % 13)
    assert pixel_sha256(image_from_pil(a)) != pixel_sha256(image_from_pil(b))


def test_pixel_hash_sees_alpha_palette_and_transparency():
    a = make_image("RGBA", (17, 5))
    img, other = image_from_pil(a), image_from_pil(a)
    other.alpha[0, 0] ^= 1
    assert pixel_sha256(img) != pixel_sha256(other)

    p = make_image("P", (17, 5))
    q = p.copy()
    pal = q.getpalette()
    pal[0] ^= 1
    q.putpalette(pal)
    assert pixel_sha256(image_from_pil(p)) != pixel_sha256(image_from_pil(q))
    q = p.copy()
    q.info["transparency"] = 0
    assert pixel_sha256(image_from_pil(p)) != pixel_sha256(image_from_pil(q))


def test_pixel_hash_ignores_png_encoding():
    """Same pixels written by a different PNG encoder setting: same hash."""
    import io

    im = make_image("P", (33, 65))
    img = image_from_pil(im)
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=0)
    other = RasterImage("P", 33, 65, None, None, buf.getvalue(), None)
    assert other.classic != img.classic
    assert pixel_sha256(other) == pixel_sha256(img)


@pytest.mark.parametrize("kind", ["noise", "flat", "shape"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_alpha_round_trip(kind, size):
    w, h = size
    rng = np.random.default_rng(3)
    if kind == "noise":
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "flat":
        alpha = np.full((h, w), 255, np.uint8)
    else:
        alpha = np.full((h, w), 255, np.uint8)
        alpha[h // 3 :, w // 4 :] = 0
        alpha[h // 2, :] = 128
    data = encode_alpha(alpha)
    assert data[0] in (0, 1)
    out = decode_alpha(data, w, h)
    assert out.dtype == np.uint8 and np.array_equal(out, alpha)


def test_alpha_decode_errors():
    data = encode_alpha(np.zeros((5, 17), np.uint8))
    with pytest.raises(CorruptFileError):
        decode_alpha(data, 17, 6)
    with pytest.raises(CorruptFileError):
        decode_alpha(b"\x07" + data[1:], 17, 5)
    with pytest.raises(CorruptFileError):
        decode_alpha(data[: len(data) // 2], 17, 5)
    with pytest.raises(CorruptFileError):
        decode_alpha(b"", 17, 5)


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, vdmcodec.image_io, vdmcodec.container; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def declared_size_png(path, width: int, height: int):
    """A few hundred bytes of PNG whose header declares width x height (its data is short)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR fields, then its CRC
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_declared_huge_image_is_refused_before_decoding(tmp_path):
    src = declared_size_png(tmp_path / "bomb.png", 12000, 12000)
    with pytest.raises(UnsupportedImageError, match="144,000,000 pixels"):
        load_image(src)
    with pytest.raises(NotAnImageError):  # allowed by a raised limit, it is then just short data
        load_image(src, max_pixels=200_000_000)
