"""The context trainer (network frozen, cached decoder outputs) end to end on tiny data."""

from __future__ import annotations

import json

import torch
from PIL import Image

from helpers import kodak_array
from test_decoder import scrambled
from vdmcodec.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from vdmcodec.train_context import main as train_context_main


def test_trains_the_context_and_ships_a_checkpoint_that_carries_the_start(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, idx in enumerate((2, 7, 13, 19, 21, 23)):
        Image.fromarray(kodak_array(idx)[100:164, 200:264]).save(data / f"crop{i}.png")
    for i in range(8):
        Image.fromarray(kodak_array(3 + i)[40:72, 60:92]).save(data / f"small{i}.png")
    start = tmp_path / "start.pt"
    save_checkpoint(start, scrambled("xhat", seed=1), "vdmc-test-start", {"steps": 0})
    out = tmp_path / "run"
    before = torch.get_num_threads()
    try:
        rc = train_context_main([str(data), "--out", str(out), "--checkpoint", str(start), "--crops", "12",
                                 "--crop", "48", "--batch", "2", "--max-steps", "40", "--hidden", "8",
                                 "--holdout-every", "4", "--threads", "1", "--lr", "1e-2", "--p-small", "0.3"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 40
    assert "heldout_recon_bpd" in log[-1] and "heldout_32_recon_bpd" in log[-1]
    assert log[-1]["train_recon_bpd"] < log[0]["heldout_recon_bpd"] + 1.0  # sane numbers, not NaN
    lm = load_checkpoint(out / "model.pt")
    net = lm.model.context_net
    assert net is not None and net.cfg.groups == "channel"
    assert any(float(w.abs().sum()) > 0 for w, _ in net.heads())  # the zero-started heads moved
    earlier = read_checkpoint(out / "model.pt")["earlier"]
    assert [e["model_id"] for e in earlier] == ["vdmc-test-start"]
    # resumable: a second call continues from the state
    rc = train_context_main([str(data), "--out", str(out), "--checkpoint", str(start), "--resume",
                             str(out / "state.pt"), "--crops", "12", "--crop", "48", "--batch", "2",
                             "--max-steps", "45", "--hidden", "8", "--holdout-every", "4", "--threads", "1"])
    torch.set_num_threads(before)
    assert rc == 0
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 45
