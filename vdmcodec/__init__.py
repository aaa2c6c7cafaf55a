"""vdmcodec: lossless image compression with a variational diffusion model and bits-back ANS."""

__version__ = "0.1.0"
