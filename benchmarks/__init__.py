"""Benchmarks for vdmcodec against classic lossless codecs (``python -m benchmarks.compare``).

Needs the ``bench`` extra: imagecodecs (JPEG XL, JPEG-LS, JPEG 2000) and matplotlib (plots).
"""
