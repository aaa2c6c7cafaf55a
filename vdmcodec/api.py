"""The Python API: images in, `.vdmc` bytes out, and back.

    >>> import numpy as np, vdmcodec
    >>> a = (np.arange(12 * 16 * 3) % 251).astype(np.uint8).reshape(12, 16, 3)
    >>> data = vdmcodec.compress(a)
    >>> data[:8] == b"\\x89VDMC\\r\\n\\x1a"
    True
    >>> bool((vdmcodec.decompress(data) == a).all())
    True

Errors are the command line's (`vdmcodec.errors`), raised as exceptions: a
`NotAnImageError` for data that is not an image, `UnsupportedImageError` for an array of
another shape or dtype, `CorruptFileError` for damaged `.vdmc` bytes, `ModelMismatchError`
for a file whose model is not installed, `VerificationError` if a compress would not decode
to the same pixels.

    >>> vdmcodec.decompress(data[:-3])
    Traceback (most recent call last):
    ...
    vdmcodec.errors.CorruptFileError: input is truncated (the sections need ..., only ... are present)

Loading the model takes a second or two: `load_model` once and pass it to every call.

    >>> model = vdmcodec.load_model(effort="fast", threads=1)
    >>> g = np.full((8, 8), 200, dtype=np.uint8)
    >>> bool((vdmcodec.decompress(vdmcodec.compress(g, model=model), model=model) == g).all())
    True
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from .errors import NotAnImageError, UnsupportedImageError

if TYPE_CHECKING:
    from .codec import Coder

ImageLike = Union[np.ndarray, Image.Image]
ARRAY_MODES = {2: "L", 3: "RGB", 4: "RGBA"}  # channels (or ndim 2) -> the PIL mode it means


def load_model(checkpoint: str | os.PathLike | None = None, *, effort: str = "default", threads: int = 0,
               device: str = "cpu") -> "Coder":
    """The model and coder settings, loaded once for many calls (pass it as `model=`).

    checkpoint: a file or a model id of the installed models (None: the shipped default);
    effort: "fast", "default" or "max"; threads: CPU threads (0: the machine's default);
    device: "cpu", or "cuda" for float-arithmetic files that need a like machine to decode."""
    from .checkpoints import load_checkpoint
    from .codec import EFFORTS, Coder

    if effort not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(EFFORTS)}, not {effort!r}")
    return Coder.for_effort(load_checkpoint(checkpoint, device=device), effort, device=device, threads=threads)


def compress(image: ImageLike, *, model: "Coder | None" = None, effort: str = "default", verify: bool = True,
             name: str = "image") -> bytes:
    """A `.vdmc` file's bytes for one image.

    image: a uint8 numpy array H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA), or a PIL
    image of any supported mode (L, LA, RGB, RGBA, P, 1; its ICC profile, EXIF, XMP, comment
    and dpi from its `info` kept; `vdmcodec compress` of the file keeps a PNG's chunks byte
    for byte).  verify: decode the bytes before returning them and insist on the same pixels
    (as the command line always does).  effort applies when no model is given."""
    from .codec import compress_images, verify_roundtrip
    from .image_io import image_from_pil, info_metadata

    coder = model if model is not None else load_model(effort=effort)
    im = _as_pil(image)
    img = image_from_pil(im, source=name)
    img.metadata = info_metadata(im)
    with coder.remembering(verify):
        data, _ = compress_images([(name, img)], coder)
        if verify:
            verify_roundtrip(data, [(name, img)], coder)
    return data


def decompress(data: bytes, *, model: "Coder | None" = None) -> np.ndarray:
    """The pixels of a one-image `.vdmc` file as a uint8 array: H x W for grey (and for P
    and 1 images: palette indices, 0/1), H x W x 2 for LA, x 3 for RGB, x 4 for RGBA.  Use
    `decompress_image` for the mode, palette and metadata."""
    return np.asarray(decompress_image(data, model=model))


def decompress_image(data: bytes, *, model: "Coder | None" = None) -> Image.Image:
    """The PIL image of a one-image `.vdmc` file, with its mode, palette, ICC profile and
    metadata (EXIF, XMP, text) in `info` as a PNG writer would take them."""
    from .codec import decompress_bytes
    from .errors import UsageError
    from .image_io import image_to_pil

    images = decompress_bytes(bytes(data), coder=model)
    if len(images) != 1:
        raise UsageError(f"the file is an archive of {len(images)} images: use the command line to extract it")
    img = images[0][1]
    im = image_to_pil(img)
    for key, value in (("exif", img.metadata.exif()), ("xmp", img.metadata.xmp()), ("dpi", img.metadata.dpi())):
        if value:
            im.info[key] = value
    return im


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise NotAnImageError(f"expected a numpy array or a PIL image, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UnsupportedImageError(f"arrays must be uint8, not {image.dtype}")
    key = 2 if image.ndim == 2 else image.shape[2] if image.ndim == 3 and image.shape[2] in (3, 4) else None
    if key is None or image.shape[0] < 1 or image.shape[1] < 1:
        raise UnsupportedImageError(f"arrays must be H x W, H x W x 3 or H x W x 4, not {image.shape}")
    return Image.fromarray(np.ascontiguousarray(image), ARRAY_MODES[key])
