"""Reading and writing raster images exactly, plus the file-system helpers the CLI shares.

The neural model only ever sees 8-bit planes (grey or RGB). Everything else a lossless
codec must give back -- alpha, palettes, 1-bit images, the ICC profile -- is carried
next to those planes in a :class:`RasterImage` and coded classically. No torch here:
``vdmcodec info`` and the tests must not pay for importing it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from vdmcodec.files import atomic_write_bytes, open_input
from vdmcodec.metadata import ImageMetadata, png_metadata, splice_png_chunks
from vdmcodec.errors import (
    CorruptFileError,
    InputNotFoundError,
    NotAnImageError,
    UnsupportedImageError,
    UsageError,
)

# Pillow's default bomb limit (~89 MP) would reject legitimate large photos with an
# exception we do not control; use our own, explicit limit instead, checked on the declared
# size before any pixel is decoded (a small file can declare a huge image).  Coding runs
# at minutes per megapixel, so the default refuses what would take many hours; callers
# (--max-pixels) may raise it up to Pillow's hard ceiling.
MAX_PIXELS = 1 << 26  # 67 megapixels: a 64 MP photo passes
PILLOW_MAX_PIXELS = 1 << 31
Image.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS

LOSSY_FORMATS = {"JPEG", "MPO", "JPEG2000"}  # sources whose pixels are already an approximation
PLANE_MODES = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}  # mode -> planes the model codes
ALPHA_MODES = {"LA", "RGBA"}
CLASSIC_MODES = {"P", "1"}  # coded as a PNG, not by the model
SUPPORTED_MODES = set(PLANE_MODES) | CLASSIC_MODES

# Why a mode is refused, in words a user recognises.
_MODE_HINTS = {
    "I;16": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "I": "32-bit integer, e.g. a 16-bit PNG",
    "F": "32-bit floating point",
    "CMYK": "CMYK colour",
    "YCbCr": "YCbCr colour",
    "LAB": "Lab colour",
    "HSV": "HSV colour",
    "PA": "palette with an alpha plane",
    "La": "premultiplied alpha",
    "RGBa": "premultiplied alpha",
    "RGBX": "RGB with a padding channel",
}

# suffix -> (Pillow format, modes that format stores exactly). Checked by experiment:
# WebP turns L into RGB, TIFF pads palettes to 256 entries, BMP/PPM drop alpha.
_SAVE_FORMATS = {
    ".png": ("PNG", SUPPORTED_MODES),
    ".webp": ("WEBP", {"RGB", "RGBA"}),
    ".tif": ("TIFF", {"L", "LA", "RGB", "RGBA", "1"}),
    ".tiff": ("TIFF", {"L", "LA", "RGB", "RGBA", "1"}),
    ".bmp": ("BMP", {"L", "RGB", "P", "1"}),
    ".pgm": ("PPM", {"L"}),
    ".ppm": ("PPM", {"RGB"}),
    ".pbm": ("PPM", {"1"}),
    ".pnm": ("PPM", {"L", "RGB", "1"}),
}
_SAVE_OPTIONS = {
    "PNG": {},
    # exact=True: without it libwebp rewrites the colour of fully transparent pixels.
    "WEBP": {"lossless": True, "quality": 100, "exact": True},
    "TIFF": {"compression": "tiff_adobe_deflate"},
    "BMP": {},
    "PPM": {},
}
_ICC_FORMATS = {"PNG", "WEBP", "TIFF"}

_PALETTE_MODE_KEY = "vdmcodec-palette-mode"
_ALPHA_PNG, _ALPHA_WEBP = 0, 1  # tag byte of encode_alpha's output
_WEBP_MAX_SIDE = 16383


@dataclass
class RasterImage:
    """An image split into what the neural model codes and what is coded classically."""

    mode: str  # PIL mode of the source: "L", "LA", "RGB", "RGBA", "P", "1"
    width: int
    height: int
    planes: np.ndarray | None  # uint8 (H, W, C), C=1 for L/LA, 3 for RGB/RGBA; None for P/1
    alpha: np.ndarray | None  # uint8 (H, W) for LA/RGBA, else None
    classic: bytes | None  # P/1 only: the whole image as a lossless PNG
    icc_profile: bytes | None = None
    metadata: ImageMetadata = ImageMetadata()  # EXIF, XMP, text, dpi, colour chunks (vdmcodec.metadata)
    # what the source held that is not kept (labels for the user; never stored)
    dropped: tuple[str, ...] = ()
    source_format: str | None = None  # Pillow's name for the source's format (never stored)

    def __post_init__(self) -> None:
        """Refuse inconsistent records early: a wrong shape would otherwise surface as a
        baffling error deep inside the model or as a silently wrong output file."""
        if self.mode not in SUPPORTED_MODES:
            raise ValueError(f"RasterImage: unsupported mode {self.mode!r}")
        if self.mode in CLASSIC_MODES:
            if self.classic is None or self.planes is not None or self.alpha is not None:
                raise ValueError(f"RasterImage: mode {self.mode} needs classic bytes only")
            return
        if self.classic is not None:
            raise ValueError(f"RasterImage: mode {self.mode} cannot carry classic bytes")
        shape = (self.height, self.width, PLANE_MODES[self.mode])
        self.planes = _checked_array(self.planes, shape, "planes")
        if self.mode in ALPHA_MODES:
            self.alpha = _checked_array(self.alpha, (self.height, self.width), "alpha")
        elif self.alpha is not None:
            raise ValueError(f"RasterImage: mode {self.mode} has no alpha plane")


def _checked_array(arr: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray:
    if arr is None or arr.dtype != np.uint8 or arr.shape != shape:
        got = None if arr is None else (arr.dtype, arr.shape)
        raise ValueError(f"RasterImage: {what} must be uint8 {shape}, got {got}")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- reading


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> RasterImage:
    """Read an image file exactly as stored (no EXIF rotation, no colour conversion); an
    image declaring more than max_pixels pixels is refused before it is decoded."""
    with open_input(path) as fh:
        data = _read_all(fh, str(path))
    return load_image_bytes(data, str(path), max_pixels)


def load_image_bytes(data: bytes, source: str, max_pixels: int = MAX_PIXELS) -> RasterImage:
    """load_image of a file's bytes already in memory (a worker handed them by Ray);
    source names the file in messages."""
    im = _decode_pil(io.BytesIO(data), source, max_pixels)
    with im:
        img = image_from_pil(im, source=source)
        meta, dropped = _source_metadata(im, data)
    img.metadata, img.dropped, img.source_format = meta, dropped, im.format
    return img


def _read_all(fh: BinaryIO, source: str) -> bytes:
    try:
        return fh.read()
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {source}: {exc.strerror or exc}") from None


# Pillow info keys that describe the encoding, not the content (nothing is lost without them),
# and those this module keeps in other ways (pixels, ICC profile, metadata items)
_ENCODING_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "progressive", "progression",
                  "adobe", "adobe_transform", "interlace", "compression", "loop", "duration", "background",
                  "transparency", "aspect", "icc_profile", "dpi", "exif", "xmp", "comment", "timestamp",
                  "resolution", "gamma", "srgb", "chromaticity", "frame", "blend", "disposal"}
# TIFF tags that carry content beyond the pixels, resolution and ICC profile
_TIFF_CONTENT_TAGS = {270: "ImageDescription", 271: "Make", 272: "Model", 305: "Software", 306: "DateTime",
                      315: "Artist", 700: "XMP", 33432: "Copyright", 33723: "IPTC", 34377: "Photoshop",
                      34665: "EXIF", 34853: "GPS"}


def _source_metadata(im: Image.Image, data: bytes) -> tuple[ImageMetadata, tuple[str, ...]]:
    """What the file holds beside its pixels and ICC profile: a PNG's ancillary chunks byte
    for byte; EXIF, XMP, comment and dpi of other formats; and labels for what is not kept."""
    if im.format == "PNG":
        return png_metadata(data), ()
    dropped = sorted(str(k) for k in im.info if k not in _ENCODING_INFO)
    if im.format == "TIFF":
        xmp = im.info.get("xmp")
        dropped += [f"TIFF {name}" for tag, name in _TIFF_CONTENT_TAGS.items()
                    if tag in getattr(im, "tag_v2", {}) and not (tag == 700 and xmp)]
    return info_metadata(im), tuple(dropped)


def info_metadata(im: Image.Image) -> ImageMetadata:
    """The EXIF, XMP, comment and dpi that Pillow put in an image's info (for an image
    handed over in memory, whose file bytes are not at hand)."""
    items, info = [], im.info
    exif = info.get("exif")
    if exif:
        items.append(("exif", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    xmp = info.get("xmp")
    if xmp:
        items.append(("xmp", xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)))
    comment = info.get("comment")
    if comment:
        items.append(("comment", comment.encode("utf-8") if isinstance(comment, str) else bytes(comment)))
    dpi = info.get("dpi")
    if dpi and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        items.append(("dpi", f"{float(dpi[0])!r},{float(dpi[1])!r}".encode("ascii")))
    return ImageMetadata(tuple(items))


def _decode_pil(fh: BinaryIO, source: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode with Pillow. Decoding happens here, inside the try, so that a
    truncated file fails as NotAnImageError rather than later as a raw Pillow error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fh)
            if im.width * im.height > max_pixels:
                raise UnsupportedImageError(
                    f"{source}: image declares {im.width}x{im.height} = {im.width * im.height:,} pixels, more "
                    f"than the limit of {max_pixels:,} (--max-pixels raises it)")
            _check_supported(im, source)  # before load(): no point decoding a refused image
            im.load()
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnsupportedImageError(f"{source}: image is larger than {PILLOW_MAX_PIXELS:,} pixels") from None
    except UnsupportedImageError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise NotAnImageError(f"{source} is not a readable image ({_plain(exc)})") from None


def _plain(exc: Exception) -> str:
    """Pillow's message without the Python object reprs it names the stream by."""
    text = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return text or type(exc).__name__


def _check_supported(im: Image.Image, source: str) -> None:
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise UnsupportedImageError(f"{source}: multi-frame images are not supported ({frames} frames)")
    if im.mode not in SUPPORTED_MODES:
        hint = f" ({_MODE_HINTS[im.mode]})" if im.mode in _MODE_HINTS else ""
        raise UnsupportedImageError(
            f"{source}: image mode {im.mode!r}{hint} is not supported; "
            f"supported are 8-bit {', '.join(sorted(SUPPORTED_MODES))}"
        )
    if im.width * im.height == 0:
        raise UnsupportedImageError(f"{source}: image is empty ({im.width}x{im.height})")
    depth = stored_bits_per_sample(im)
    if depth > 8:
        raise UnsupportedImageError(
            f"{source}: {depth}-bit samples are not supported (Pillow would cut them to 8 bits); "
            f"supported are 8-bit images")


def stored_bits_per_sample(im: Image.Image) -> int:
    """Bits per sample as stored in the file, read from the decoder's raw mode: Pillow opens a
    48-bit RGB PNG or TIFF as 8-bit "RGB" and would silently drop the low bytes."""
    for tile in getattr(im, "tile", None) or []:
        args = tile.args if hasattr(tile, "args") else tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and not raw.startswith(("BGR;", "RGB;15", "RGB;16N")):  # packed 5-6-5 pixels
            for bits in (32, 16, 12):
                if f";{bits}" in raw:
                    return bits
    return 8


def image_from_pil(im: Image.Image, *, source: str = "image") -> RasterImage:
    """Split a Pillow image into model planes, alpha and classic parts."""
    _check_supported(im, source)
    icc = im.info.get("icc_profile") or None
    if im.mode in CLASSIC_MODES:
        return RasterImage(im.mode, im.width, im.height, None, None, _classic_png(im), icc)
    im = _transparency_key_to_alpha(im)
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    n = PLANE_MODES[im.mode]
    alpha = arr[:, :, n] if im.mode in ALPHA_MODES else None
    return RasterImage(im.mode, im.width, im.height, arr[:, :, :n], alpha, None, icc)


def _transparency_key_to_alpha(im: Image.Image) -> Image.Image:
    """L/RGB images may mark one colour as transparent (PNG tRNS). Keeping only the planes
    would silently make those pixels opaque, so turn the key into a real alpha plane
    (Pillow's convert does exactly that and copies the colour planes unchanged)."""
    if im.info.get("transparency") is None or im.mode not in ("L", "RGB"):
        return im
    return im.convert("LA" if im.mode == "L" else "RGBA")


def _classic_png(im: Image.Image) -> bytes:
    """PNG keeps palette, palette transparency and 1-bit data exactly. Only an RGBA
    palette comes back as an RGB palette plus tRNS alpha, so note it in a text chunk
    and let _open_classic restore it."""
    info = None
    if im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        info = PngInfo()
        info.add_text(_PALETTE_MODE_KEY, "RGBA")
    return _png_bytes(im, pnginfo=info)


def _png_bytes(im: Image.Image, **opts) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True, **opts)
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing


def image_to_pil(img: RasterImage) -> Image.Image:
    """Rebuild the Pillow image; the inverse of image_from_pil."""
    if img.classic is not None:
        im = _open_classic(img)
    else:
        arr = img.planes if img.alpha is None else np.dstack([img.planes, img.alpha])
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if img.icc_profile:
        im.info["icc_profile"] = img.icc_profile
    return im


def _open_classic(img: RasterImage) -> Image.Image:
    """The classic PNG came out of a .vdmc file, so damage there is a corrupt file."""
    try:
        im = Image.open(io.BytesIO(img.classic))
        im.load()
    except Exception as exc:
        raise CorruptFileError(f"embedded {img.mode} image cannot be decoded ({exc})") from None
    if im.mode != img.mode or im.size != (img.width, img.height):
        raise CorruptFileError(
            f"embedded image is {im.mode} {im.width}x{im.height}, "
            f"expected {img.mode} {img.width}x{img.height}"
        )
    if im.info.pop(_PALETTE_MODE_KEY, None) == "RGBA":
        _restore_rgba_palette(im)
    return im


def _restore_rgba_palette(im: Image.Image) -> None:
    rgba = _palette_rgba(im)
    im.info.pop("transparency", None)
    im.putpalette(rgba.tobytes(), "RGBA")


def _palette_rgba(im: Image.Image) -> np.ndarray:
    """The palette as (n, 4) RGBA entries, whichever of Pillow's two ways of giving palette
    entries an alpha (RGBA palette or info["transparency"]) the image uses."""
    rgba = np.array(im.getpalette("RGBA"), dtype=np.uint8).reshape(-1, 4)
    trns = im.info.get("transparency")
    if isinstance(trns, int):  # shorthand for "only this entry is transparent"
        if trns < len(rgba):
            rgba[trns, 3] = 0
    elif isinstance(trns, bytes):
        alpha = np.frombuffer(trns, dtype=np.uint8)[: len(rgba)]
        rgba[: len(alpha), 3] = alpha
    return rgba


def save_image(img: RasterImage, path: str | os.PathLike, *, overwrite: bool = False) -> list[str]:
    """Write the image in the format named by the suffix (PNG when there is none), refusing
    any format that would not give back exactly the same pixels; returns labels of the
    metadata the format cannot hold (empty for PNG, which holds all of it)."""
    fmt = check_output_format(path, img.mode)
    data, dropped = _encode(image_to_pil(img), fmt, img)
    _verify_encoded(img, data, fmt, path)
    atomic_write_bytes(path, data, overwrite=overwrite)
    return dropped


def check_output_format(path: str | os.PathLike, mode: str) -> str:
    """The Pillow format the suffix names, if it stores a `mode` image exactly; else a
    UsageError naming the suffixes that do (checked before any decoding)."""
    fmt, modes = _format_for(path)
    if mode not in modes:
        ok = ", ".join(s for s, (_, m) in _SAVE_FORMATS.items() if mode in m)
        raise UsageError(f"{path}: {fmt} cannot store a {mode} image losslessly; use one of {ok}")
    return fmt


def _format_for(path: str | os.PathLike) -> tuple[str, set[str]]:
    suffix = Path(path).suffix.lower()
    if not suffix:
        return _SAVE_FORMATS[".png"]
    if suffix not in _SAVE_FORMATS:
        raise UsageError(
            f"{path}: cannot write {suffix!r} files losslessly; use one of {', '.join(_SAVE_FORMATS)}"
        )
    return _SAVE_FORMATS[suffix]


def _encode(im: Image.Image, fmt: str, img: RasterImage) -> tuple[bytes, list[str]]:
    """The file's bytes, with as much of img's metadata as the format holds, and labels of
    what it could not hold."""
    opts = dict(_SAVE_OPTIONS[fmt])
    if img.icc_profile and fmt in _ICC_FORMATS:
        opts["icc_profile"] = img.icc_profile
    meta, kept = img.metadata, set()
    if fmt == "WEBP":
        for key, value in (("exif", meta.exif()), ("xmp", meta.xmp())):
            if value:
                opts[key], kept = value, kept | {key}
    elif fmt in ("TIFF", "BMP") and meta.dpi():
        opts["dpi"], kept = meta.dpi(), {"dpi"}
    buf = io.BytesIO()
    im.save(buf, fmt, **opts)
    data = buf.getvalue()
    if fmt == "PNG":
        return splice_png_chunks(data, _png_chunks(meta)), []
    return data, [label for label, what in zip(meta.describe(), _kinds(meta)) if what not in kept]


def _plain_bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **_SAVE_OPTIONS[fmt])
    return buf.getvalue()


def _png_chunks(meta) -> list[tuple[int, bytes, bytes]]:
    """The metadata as PNG chunks: a PNG source's own chunks, or the other formats' items
    turned into the PNG's (eXIf, iTXt XMP, tEXt Comment, pHYs)."""
    chunks = meta.png_chunks()
    for name, data in meta.items:
        if name == "exif":
            chunks.append((0, b"eXIf", data))
        elif name == "xmp":
            chunks.append((0, b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + data))
        elif name == "comment":
            chunks.append((0, b"tEXt", b"Comment\x00" + data))
        elif name == "dpi":
            x, y = meta.dpi()
            chunks.append((0, b"pHYs", struct.pack(">IIB", round(x / 0.0254), round(y / 0.0254), 1)))
    return chunks


def _kinds(meta) -> list[str]:
    """Each metadata item's kind as the non-PNG writers know it (exif, xmp, dpi or other)."""
    out = []
    for name, data in meta.items:
        if name in ("exif", "xmp", "dpi"):
            out.append(name)
        elif name.startswith("png:") and name.endswith(":eXIf"):
            out.append("exif")
        elif name.endswith(":iTXt") and data.startswith(b"XML:com.adobe.xmp\x00"):
            out.append("xmp")
        elif name.endswith(":pHYs") and meta.dpi():
            out.append("dpi")
        else:
            out.append(name)
    return out


def _verify_encoded(img: RasterImage, data: bytes, fmt: str, path: str | os.PathLike) -> None:
    """Decode what is about to be written: the mode table cannot foresee everything (e.g.
    BMP silently drops palette transparency), and a lossless codec must not write a
    file that differs from what it decoded."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        back = image_from_pil(im)
    if back.mode != img.mode or pixel_sha256(back) != pixel_sha256(img):
        raise UsageError(
            f"{path}: {fmt} cannot store this {img.mode} image exactly "
            "(transparency or palette would change); use .png"
        )


# ----------------------------------------------------------------------------- hashing


def pixel_sha256(img: RasterImage) -> bytes:
    """SHA-256 of the decoded content, never of encoded bytes: two PNG encoders may write
    different bytes for the same pixels, and the hash must only change with the pixels."""
    h = hashlib.sha256(b"vdmcodec-pixels-v1")

    def field(b: bytes) -> None:  # length-prefixed, so field boundaries are unambiguous
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    field(img.mode.encode())
    field(struct.pack("<II", img.width, img.height))
    if img.classic is not None:
        for part in _classic_content(img):
            field(part)
    else:
        field(img.planes.tobytes())
        field(b"" if img.alpha is None else img.alpha.tobytes())
    return h.digest()


def _classic_content(img: RasterImage) -> list[bytes]:
    """Indices plus what they mean. For P the palette is hashed as effective RGBA entries,
    so that an RGBA palette and an RGB palette with tRNS alpha -- the same image, and what
    a PNG file turns the first into -- hash alike."""
    im = _open_classic(img)
    indices = np.asarray(im).astype(np.uint8).tobytes()
    if im.mode == "P":
        return [indices, _palette_rgba(im).tobytes()]
    return [indices, repr(im.info.get("transparency")).encode()]


# ----------------------------------------------------------------------------- alpha


def encode_alpha(alpha: np.ndarray) -> bytes:
    """Alpha planes are usually flat or sharp-edged, where classic coders beat the model;
    try PNG and lossless WebP and keep the smaller, tagged by a leading byte."""
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"alpha must be a uint8 (H, W) array, got {alpha.dtype} {alpha.shape}")
    im = Image.fromarray(np.ascontiguousarray(alpha))
    candidates = [bytes([_ALPHA_PNG]) + _png_bytes(im)]
    if max(alpha.shape) <= _WEBP_MAX_SIDE:
        candidates.append(bytes([_ALPHA_WEBP]) + _plain_bytes(im, "WEBP"))
    return min(candidates, key=len)


def decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    """Inverse of encode_alpha; any damage is reported as a corrupt file."""
    if not data or data[0] not in (_ALPHA_PNG, _ALPHA_WEBP):
        raise CorruptFileError("alpha plane has an unknown encoding")
    try:
        with Image.open(io.BytesIO(data[1:])) as im:
            im.load()
            # WebP stores grey as R=G=B; take one channel rather than a weighted mix.
            arr = np.asarray(im)[:, :, 0] if im.mode != "L" else np.asarray(im)
    except Exception as exc:
        raise CorruptFileError(f"alpha plane cannot be decoded ({exc})") from None
    if arr.shape != (height, width):
        raise CorruptFileError(f"alpha plane is {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
    return np.ascontiguousarray(arr, dtype=np.uint8)
