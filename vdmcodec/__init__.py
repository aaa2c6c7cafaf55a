"""vdmcodec: lossless image compression with a variational diffusion model and bits-back ANS.

The Python API (vdmcodec.api; imported on first use, so that `import vdmcodec` stays light):
`compress(image) -> bytes`, `decompress(data) -> numpy array`, `decompress_image(data) -> PIL
image` and `load_model(...)` to reuse one model across calls.
"""

__version__ = "0.1.0"
__all__ = ["compress", "decompress", "decompress_image", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vdmcodec' has no attribute {name!r}")
