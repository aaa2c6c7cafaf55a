"""tools/gpu_train.sh, the one command for a lent GPU, run end to end on the CPU with tiny settings."""

from __future__ import annotations

import os
import subprocess

from PIL import Image

from helpers import REPO, kodak_array
from vdmcodec.checkpoints import load_checkpoint


def test_gpu_script_continues_a_checkpoint_and_exports_one(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    for i, idx in enumerate((2, 7, 13, 19)):
        Image.fromarray(kodak_array(idx)[100:140, 200:236]).save(data / f"crop{i}.png")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), DATA=str(data), MINUTES="1", RESUME=str(tiny_checkpoint), BATCH="2",
               MODEL_ID="vdmc-test-gpu", EXTRA="--max-steps 2 --crop 16 --threads 1 --holdout-every 3")
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lm = load_checkpoint(out / "default.pt")
    assert lm.model_id == "vdmc-test-gpu"
    assert lm.meta["steps"] >= 2 and "gpu_train.sh" in lm.meta["note"]
    assert (out / "run" / "state.pt").exists()
