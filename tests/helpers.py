"""Shared helpers for the model, coding and training tests: images and the one round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vdmcodec.codec import Coder, compress_images, decompress_bytes
from vdmcodec.image_io import RasterImage, image_from_pil, pixel_sha256
from vdmcodec.model.network import NetConfig
from vdmcodec.model.vdm import VDM, VDMConfig

REPO = Path(__file__).resolve().parents[1]
from data_paths import KODAK  # noqa: E402
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "default.pt"


def tiny_config(steps: int = 8, **kw) -> VDMConfig:
    """A VDM small enough that a forward pass on a 64x64 crop takes about a millisecond."""
    net = NetConfig(channels=(4, 8, 8), down_blocks=(1, 1), up_blocks=1, emb_dim=16)
    return VDMConfig(steps=steps, net=net, **kw)


def kodak_array(index: int = 1, real: bool = False) -> np.ndarray:
    """A whole Kodak image as (H, W, 3) uint8 (read-only source folder); where the shared data
    sets are absent (a clean clone), a synthetic photograph of the same size instead, so the
    round trips still run on something photo-like (real: skip instead, for a test whose
    property is one of photographs)."""
    path = KODAK / f"kodim{index:02d}.png"
    if not path.exists():
        if real:
            import pytest

            pytest.skip(f"{path} is not there (set VDMCODEC_DATA)")
        return synthetic_photo(index)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def synthetic_photo(seed: int, h: int = 512, w: int = 768) -> np.ndarray:
    """A deterministic photo-like (H, W, 3) uint8 image: smooth shading at several scales,
    objects with hard edges, a colour cast per object, correlated channels and sensor-like
    grain."""
    rng = np.random.default_rng(1000 + seed)
    img = np.zeros((h, w), np.float64)
    for cells, amp in ((3, 60.0), (12, 25.0), (48, 8.0)):  # smooth fields, bilinearly upsampled
        grid = rng.standard_normal((cells + 1, cells + 1)) * amp
        yi, xi = np.linspace(0, cells, h), np.linspace(0, cells, w)
        y0, x0 = np.minimum(yi.astype(int), cells - 1), np.minimum(xi.astype(int), cells - 1)
        fy, fx = (yi - y0)[:, None], (xi - x0)[None, :]
        img += ((1 - fy) * (1 - fx) * grid[y0][:, x0] + (1 - fy) * fx * grid[y0][:, x0 + 1]
                + fy * (1 - fx) * grid[y0 + 1][:, x0] + fy * fx * grid[y0 + 1][:, x0 + 1])
    rgb = np.repeat(img[:, :, None], 3, axis=2) + 128.0 + rng.normal(0, 20, 3)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(12):  # objects: discs and boxes with their own colour and texture
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 120)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if rng.random() < 0.5 else \
            (abs(yy - cy) < r) & (abs(xx - cx) < r * rng.uniform(0.3, 2.0))
        stripes = 10.0 * np.sin((yy * rng.uniform(-0.3, 0.3) + xx * rng.uniform(-0.3, 0.3)))
        rgb[mask] = (rgb[mask] * 0.4 + rng.uniform(20, 230, 3) + stripes[mask][:, None])
    grain = rng.normal(0, 2.5, (h, w, 1)) + rng.normal(0, 1.0, (h, w, 3))
    return np.clip(np.rint(rgb + grain), 0, 255).astype(np.uint8)


def kodak_crop(h: int, w: int, index: int = 1, top: int = 200, left: int = 300, real: bool = False) -> np.ndarray:
    arr = kodak_array(index, real=real)
    assert top + h <= arr.shape[0] and left + w <= arr.shape[1]
    return np.ascontiguousarray(arr[top : top + h, left : left + w])


def crop_batch(n: int, size: int, seed: int = 0, index: int = 1) -> torch.Tensor:
    """n random size x size crops of one Kodak image as a (n, 3, size, size) int64 batch."""
    arr = kodak_array(index)
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, arr.shape[0] - size, n)
    xs = rng.integers(0, arr.shape[1] - size, n)
    crops = np.stack([arr[y : y + size, x : x + size] for y, x in zip(ys, xs)])
    return torch.from_numpy(crops.astype(np.int64)).permute(0, 3, 1, 2).contiguous()


def noise_array(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def to_mode(rgb: np.ndarray, mode: str, seed: int = 0) -> Image.Image:
    """A Pillow image of the given mode made from (H, W, 3) pixels (alpha is random noise)."""
    im = Image.fromarray(rgb, "RGB")
    if mode == "RGB":
        return im
    if mode == "L":
        return im.convert("L")
    if mode == "P":
        return im.quantize(colors=16)
    if mode == "1":
        return im.convert("1")
    alpha = Image.fromarray(np.random.default_rng(seed + 7).integers(0, 256, rgb.shape[:2], dtype=np.uint8), "L")
    base = im if mode == "RGBA" else im.convert("L")
    base = base.convert(mode)
    base.putalpha(alpha)
    return base


def raster(rgb: np.ndarray, mode: str = "RGB", seed: int = 0) -> RasterImage:
    return image_from_pil(to_mode(rgb, mode, seed))


def train_steps(model: VDM, batch: torch.Tensor, steps: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A few AdamW steps on random crops (fresh noise every step); returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = model.terms(batch, generator=gen)["nelbo"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def assert_same_image(a: RasterImage, b: RasterImage) -> None:
    assert (b.mode, b.width, b.height) == (a.mode, a.width, a.height)
    assert pixel_sha256(b) == pixel_sha256(a)
    for field in ("planes", "alpha"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), field


def assert_roundtrip(coder: Coder, images, *, allow_fallback: bool = False, decode_coder: Coder | None = None,
                     checkpoint: str | None = None):
    """Compress with compress_images, decompress with decompress_bytes, insist on exact pixels.

    `images` is a list of RasterImage or of (name, RasterImage).  The fallback to a classic
    file is off by default so that the bits-back chain is what gets tested; images with
    planes must then have gone through it.  Decoding uses `decode_coder` (default: `coder`),
    or loads the model afresh from `checkpoint` when that is given.
    Returns (file bytes, reports, decoded images).
    """
    named = [im if isinstance(im, tuple) else (f"img{i}", im) for i, im in enumerate(images)]
    data, reports = compress_images(named, coder, allow_fallback=allow_fallback)
    assert len(reports) == len(named)
    if not allow_fallback:
        for (_, img), rep in zip(named, reports):
            assert rep.method == ("classic" if img.planes is None else "bitsback")
    if checkpoint is not None:
        out = decompress_bytes(data, checkpoint=checkpoint)
    else:
        out = decompress_bytes(data, coder=decode_coder or coder)
    assert [name for name, _ in out] == [name for name, _ in named]
    for (_, img), (_, back) in zip(named, out):
        assert_same_image(img, back)
    return data, reports, out
