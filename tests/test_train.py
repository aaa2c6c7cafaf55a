"""The trainer end to end on a few tiny crops: outputs, log, resume, and a 2-process gloo run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO, kodak_array
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.train import main as train_main

TINY_ARGS = ["--channels", "4,8,8", "--down-blocks", "1,1", "--steps-T", "4", "--batch", "2", "--crop", "16",
             "--max-steps", "3", "--minutes", "1", "--holdout-every", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four small PNG crops from different Kodak images (the second one is held out)."""
    d = tmp_path_factory.mktemp("train_data")
    for i, idx in enumerate((2, 7, 13, 19)):
        Image.fromarray(kodak_array(idx)[100:140, 200:236]).save(d / f"crop{i}.png")
    return d


def read_log(run_dir) -> list[dict]:
    with open(run_dir / "log.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_trainer(args: list[str], monkeypatch) -> int:
    before = torch.get_num_threads()
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    try:
        return train_main(args)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    with pytest.MonkeyPatch.context() as mp:
        rc = run_trainer([str(data_dir), "--out", str(out), *TINY_ARGS], mp)
    assert rc == 0
    return out


def test_run_writes_state_model_and_log(first_run):
    assert (first_run / "state.pt").exists() and (first_run / "model.pt").exists()
    state = torch.load(first_run / "state.pt", map_location="cpu", weights_only=True)
    assert state["meta"]["steps"] == 3
    assert {"model", "ema", "optimizer", "config"} <= set(state)

    lm = load_checkpoint(first_run / "model.pt")
    assert lm.model.cfg.steps == 4 and tuple(lm.model.cfg.net.channels) == (4, 8, 8)
    assert tuple(lm.model.cfg.net.down_blocks) == (1, 1)
    assert lm.meta["steps"] == 3 and lm.gamma_table.shape == (5,)
    assert torch.all(torch.diff(lm.gamma_table) > 0)

    log = read_log(first_run)
    events = [r["event"] for r in log]
    assert events[0] == "start" and log[0]["train_files"] == 3 and log[0]["holdout_files"] == 1
    assert "eval" in events and "checkpoint" in events
    evals = [r for r in log if r["event"] == "eval"]
    for k in ("recon", "prior", "diffusion", "nelbo"):
        assert all(math.isfinite(r[k]) and r[k] >= 0 for r in evals), k
    final = [r for r in log if r["event"] == "checkpoint"][-1]
    assert final["final"] is True and final["steps"] == 3
    assert final["images_seen"] == 3 * 2


def test_short_run_logs_its_training_loss(first_run):
    train = [r for r in read_log(first_run) if r["event"] == "train"]
    assert train and train[-1]["step"] == 3 and math.isfinite(train[-1]["nelbo"])


@pytest.mark.parametrize("source", ["state.pt", "model.pt"])
def test_resume_continues_step_count(first_run, data_dir, tmp_path, monkeypatch, source):
    out = tmp_path / "run2"
    rc = run_trainer([str(data_dir), "--out", str(out), "--resume", str(first_run / source), *TINY_ARGS], monkeypatch)
    assert rc == 0
    log = read_log(out)
    assert log[0]["event"] == "start" and log[0]["steps"] == 3
    final = [r for r in log if r["event"] == "checkpoint"][-1]
    assert final["steps"] == 6
    before, after = load_checkpoint(first_run / "model.pt"), load_checkpoint(out / "model.pt")
    assert after.meta["steps"] == 6
    assert before.model.cfg == after.model.cfg
    assert any(not torch.equal(a, b) for a, b in zip(before.model.state_dict().values(),
                                                    after.model.state_dict().values()))


def test_two_process_gloo_run(data_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vdmcodec.train", str(data_dir), "--out", str(out), *TINY_ARGS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert log[0]["event"] == "start" and log[0]["world"] == 2
    final = [r for r in log if r["event"] == "checkpoint"][-1]
    assert final["steps"] == 3 and final["images_seen"] == 3 * 2 * 2
    lm = load_checkpoint(out / "model.pt")
    assert lm.meta["steps"] == 3
    assert all(torch.isfinite(v).all() for v in lm.model.state_dict().values())


def test_heldout_crops_four_per_large_image_and_means_per_size():
    from helpers import tiny_config
    from vdmcodec.model.vdm import VDM
    from vdmcodec.train import eval_batches, evaluate

    big, mid, small = kodak_array(3)[:80, :90], kodak_array(4)[:50, :60], kodak_array(5)[:12, :12]
    batches = eval_batches([big, mid, small], 32)
    assert [tuple(b.shape) for b in batches] == [(5, 3, 32, 32), (1, 3, 12, 12)]  # 4 + 1 crops, 1 small
    np.testing.assert_array_equal(batches[0][0].permute(1, 2, 0).numpy(), big[4:36, 6:38])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VDM(tiny_config(steps=4))
    res = evaluate(model, batches, torch.device("cpu"), repeats=1)
    assert res["nelbo"] == pytest.approx((5 * res["nelbo_32"] + res["nelbo_12"]) / 6)
    assert res["nelbo_32"] != res["nelbo_12"]


def test_schedule_lr_mult_zero_freezes_the_schedule(first_run, data_dir, tmp_path, monkeypatch):
    """Also on an exact resume, where the restored optimiser state carries the first run's
    factors."""
    out = tmp_path / "frozen"
    rc = run_trainer([str(data_dir), "--out", str(out), "--resume", str(first_run / "state.pt"),
                      "--schedule-lr-mult", "0", *TINY_ARGS], monkeypatch)
    assert rc == 0
    # the trained (not EMA) weights: an EMA of a constant moves by rounding
    start = torch.load(first_run / "state.pt", map_location="cpu", weights_only=True)["model"]
    end = torch.load(out / "state.pt", map_location="cpu", weights_only=True)["model"]
    sched = [k for k in start if k.startswith("schedule.")]
    assert sched and all(torch.equal(start[k], end[k]) for k in sched)
    before, after = load_checkpoint(first_run / "model.pt"), load_checkpoint(out / "model.pt")
    assert after.model.cfg.pixel_context and after.model.cfg.net.channel_head  # new models have it
    assert any(not torch.equal(a, b) for k, (a, b) in
               ((k, (v, after.model.state_dict()[k])) for k, v in before.model.state_dict().items()) if k.startswith("net."))


def test_resume_upgrades_a_two_pass_context_to_four(data_dir, tmp_path, monkeypatch):
    two = tmp_path / "two"
    assert run_trainer([str(data_dir), "--out", str(two), "--context-passes", "2", *TINY_ARGS], monkeypatch) == 0
    assert load_checkpoint(two / "model.pt").model.cfg.context_passes == 2
    four = tmp_path / "four"
    rc = run_trainer([str(data_dir), "--out", str(four), "--resume", str(two / "state.pt"), "--context-passes", "4",
                      *TINY_ARGS], monkeypatch)
    assert rc == 0
    model = load_checkpoint(four / "model.pt").model
    assert model.cfg.context_passes == 4 and tuple(model.context_weight.shape) == (9, 3, 5, 5)
    assert tuple(model.context_log_scale.shape) == (4, 3)
    assert torch.load(four / "state.pt", map_location="cpu", weights_only=True)["meta"]["steps"] == 6


def test_export_a_snapshot_with_a_fresh_heldout_eval(first_run, data_dir, tmp_path):
    from vdmcodec.export import main as export_main
    from vdmcodec.train import eval_batches, evaluate, list_images, load_rgb, split_holdout

    out = tmp_path / "shipped.pt"
    before = torch.get_num_threads()
    try:
        assert export_main([str(first_run / "model.pt"), str(out), "--model-id", "vdmc-test-export",
                            "--heldout", str(data_dir), "--holdout-every", "3", "--threads", "1",
                            "--note", "made by a test"]) == 0
    finally:
        torch.set_num_threads(before)
    src, shipped = load_checkpoint(first_run / "model.pt"), load_checkpoint(out)
    assert shipped.model_id == "vdmc-test-export"
    assert all(torch.equal(v, shipped.model.state_dict()[k]) for k, v in src.model.state_dict().items())
    _, hold = split_holdout(list_images([str(data_dir)]), 3)
    expect = evaluate(shipped.model, eval_batches([load_rgb(f) for f in hold], 128), torch.device("cpu"))
    assert shipped.meta["eval"]["nelbo"] == pytest.approx(expect["nelbo"], rel=1e-9)
    assert shipped.meta["steps"] == src.meta["steps"] and shipped.meta["note"] == "made by a test"


def test_frozen_parameters_stay_and_held_apart_files_are_only_evaluated(first_run, data_dir, tmp_path, monkeypatch):
    """--freeze keeps a prefix's weights as resumed (a context network trained apart);
    --holdout-match files are never sampled for training and get their own evaluation."""
    out = tmp_path / "frozen_ctx"
    rc = run_trainer([str(data_dir), "--out", str(out), "--resume", str(first_run / "state.pt"),
                      "--freeze", "context_", "--holdout-match", "crop3", "--eval-first", *TINY_ARGS], monkeypatch)
    assert rc == 0
    start = torch.load(first_run / "state.pt", map_location="cpu", weights_only=True)["model"]
    end = torch.load(out / "state.pt", map_location="cpu", weights_only=True)["model"]
    frozen = [k for k in start if k.startswith("context_")]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("net."))
    log = read_log(out)
    starts = [r for r in log if r["event"] == "start"]
    assert starts[-1]["apart_files"] == 1 and starts[-1]["train_files"] == 2 and starts[-1]["holdout_files"] == 1
    evals = [r for r in log if r["event"] == "eval"]
    assert evals[0]["elapsed"] == 0.0 and all(math.isfinite(r["apart_nelbo"]) for r in evals)
