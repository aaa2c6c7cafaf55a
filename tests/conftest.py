"""Session fixtures: a tiny, briefly trained VDM saved as a real checkpoint, and a Coder on it."""

from __future__ import annotations

import pytest
import torch

from helpers import DEFAULT_CHECKPOINT, crop_batch, tiny_config, train_steps
from vdmcodec.checkpoints import load_checkpoint, save_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.model.vdm import VDM

TINY_TRAIN_STEPS = 30


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs the shipped checkpoint checkpoints/default.pt")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """A training job shares the two cores: tests run single-threaded unless they say otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a tiny VDM (T = 8) trained for a few steps on Kodak crops, saved with save_checkpoint."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VDM(tiny_config(steps=8))
    losses = train_steps(model, crop_batch(8, 16, seed=0), TINY_TRAIN_STEPS, lr=3e-3)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, "vdmc-tiny-test", {"steps": TINY_TRAIN_STEPS})
    return path


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def coder(tiny_loaded):
    return Coder(tiny_loaded, threads=1)


@pytest.fixture(scope="session")
def default_checkpoint():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"{DEFAULT_CHECKPOINT} is not there (train and ship a model first)")
    return DEFAULT_CHECKPOINT
