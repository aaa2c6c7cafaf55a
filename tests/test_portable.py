"""Files coded in exact arithmetic decode on other kernel sets and thread counts (issue 18).

Each file is written by the command line in a fresh process under one setting (the machine's
best kernels, ATen's portable kernels, oneDNN limited to SSE4.1; 1, 2 or 3 threads; numba's
generic CPU; numpy without its AVX-512 loops) and decoded in fresh processes under the
others, with the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import DEFAULT_CHECKPOINT, REPO

NPY_V3 = "X86_V4 AVX512_ICL AVX512_SPR"
SETTINGS = {
    "best-2": ({}, 2),
    "aten-default-1": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "sse41-3": ({"ONEDNN_MAX_CPU_ISA": "SSE41", "NUMBA_CPU_NAME": "generic", "NPY_DISABLE_CPU_FEATURES": NPY_V3}, 3),
}


def _cli(args: list[str], env: dict, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "VDMCODEC_THREADS": str(threads), "VDMCODEC_CHECKPOINT": str(DEFAULT_CHECKPOINT)}
    return subprocess.run([sys.executable, "-m", "vdmcodec", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_exact_files_decode_under_every_other_setting(tmp_path):
    src = REPO / "examples" / "chelsea-128x96.png"  # a photograph that goes through bits-back
    with Image.open(src) as im:
        pixels = np.asarray(im.convert("RGB"))
    for writer, (env, threads) in SETTINGS.items():
        vdmc = tmp_path / f"{writer}.vdmc"
        r = _cli(["compress", str(src), "-o", str(vdmc), "--no-verify", "--threads", str(threads)], env, threads)
        assert r.returncode == 0, r.stderr[-1500:]
        header = json.loads(_cli(["info", str(vdmc), "--json"], {}, 2).stdout)["header"]
        assert header["compute"]["arith"] == "exact1" and header["images"][0]["method"] == "bitsback"
        for reader, (renv, rthreads) in SETTINGS.items():
            if reader == writer:
                continue
            out = tmp_path / f"{writer}.{reader}.png"
            r = _cli(["decompress", str(vdmc), "-o", str(out)], renv, rthreads)
            assert r.returncode == 0, (writer, reader, r.stderr[-1500:])
            with Image.open(out) as im:
                assert np.array_equal(np.asarray(im.convert("RGB")), pixels), (writer, reader)
