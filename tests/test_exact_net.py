"""The exact eps network (vdmcodec.model.exact_net): bit for bit the numpy reference, the same
bits under every kernel set and thread count, and close to the float network."""

from __future__ import annotations

import doctest
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vdmcodec.model import exact_ops as ops
from vdmcodec.model.exact_net import EXACT_SUM, ExactNet, export_exact
from vdmcodec.model.exact_ref import ReferenceNet

from data_paths import SHARED_DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION = SHARED_DATA / "train" / "photos" / "lomiri-wallpapers-16.04-Bridge.png"
HELD_APART = SHARED_DATA / "train" / "lossless-misc" / "waterloo_sail.png"
needs_data = pytest.mark.skipif(not HELD_APART.exists(), reason="the shared data sets are not there (set VDMCODEC_DATA)")


def test_docstring_examples_run():
    assert doctest.testmod(ops, raise_on_error=True).attempted > 0


def _centre(path: str, side: int) -> np.ndarray:
    from vdmcodec.train import load_rgb
    im = load_rgb(path)
    y, x = (im.shape[0] - side) // 2, (im.shape[1] - side) // 2
    return np.ascontiguousarray(im[y : y + side, x : x + side])


@pytest.fixture(scope="module")
def exported(model):
    """The shipped model's network, exported with one small calibration crop (a training
    photo), or a random crop where the data sets are absent."""
    if CALIBRATION.exists():
        calib = [_centre(CALIBRATION, 64)]
    else:
        calib = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    return export_exact(model.model.net, model.gamma_table.numpy(), calib)


@pytest.fixture(scope="module")
def model():
    from vdmcodec.checkpoints import load_checkpoint
    return load_checkpoint(None)


def _outputs(net: ExactNet, z: np.ndarray, step: int) -> dict:
    eps, aux = net(torch.from_numpy(z), step, with_aux=True, with_features=True)
    return {"eps": eps.numpy(), **{k: v.numpy() for k, v in aux.items()}}


def _assert_equals_reference(net: ExactNet, float_net, z: np.ndarray, step: int) -> None:
    got = _outputs(net, z, step)
    eps, aux, feats = ReferenceNet(net.state, float_net)(z, step)
    want = {"eps": eps, **aux, "features": feats}
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def random_z(shape, seed: int) -> np.ndarray:
    return (np.round(np.random.default_rng(seed).standard_normal(shape) * 256) / 256).astype(np.float32)


@pytest.mark.parametrize("step,shape", [(0, (1, 3, 20, 28)), (9, (1, 3, 17, 13)), (40, (1, 1, 12, 16)), (64, (2, 3, 8, 8))])
def test_the_fast_path_equals_the_numpy_reference_on_random_latents(model, exported, step, shape):
    _assert_equals_reference(exported, model.model.net, random_z(shape, step), step)


@needs_data
@pytest.mark.parametrize("step", [0, 3, 30])
def test_the_fast_path_equals_the_numpy_reference_on_a_photo(model, exported, step):
    x = _centre(HELD_APART, 32).transpose(2, 0, 1)[None].astype(np.float64)
    g = exported.step_consts[step]
    alpha, sigma = float(g[0]), 1.0 / float(g[2])
    z = alpha * ((2 * x + 1) / 256 - 1) + sigma * np.random.default_rng(step).standard_normal(x.shape)
    _assert_equals_reference(exported, model.model.net, (np.round(z * 256) / 256).astype(np.float32), step)


def test_without_numba_the_numpy_steps_give_the_same_bits(exported, monkeypatch):
    z = random_z((1, 3, 16, 24), 5)
    want = _outputs(exported, z, 2)
    monkeypatch.setattr(ops, "numba", None)
    got = _outputs(exported, z, 2)
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.skipif(ops.numba is None, reason="numba is not installed")
def test_the_fused_kernels_equal_the_numpy_steps_on_hard_values():
    """Ties of the rounding, huge and tiny values, signed zeros, the clamp edges."""
    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 7.90531, 15.81, 1e-30, -1e-30, 3e38, -3e38,
                        1e6, -1e6, 2047.5, -2047.5], dtype=np.float32)
    h = np.concatenate([special, (rng.standard_normal(4000) * 10).astype(np.float32)]).reshape(-1, 3)[:1339]
    m = (rng.random(3) * 2).astype(np.float32)
    o = rng.standard_normal(3).astype(np.float32)
    mult, in_max = np.float32(97.3), np.float32(2047)
    out = np.empty((1,) + h.shape, dtype=np.float32)
    ops._act_nb(h, mult, in_max, out)
    assert np.array_equal(out[0], ops.act_np(h, mult, in_max))
    ops._affine_act_nb(h, m, o, mult, in_max, out)
    assert np.array_equal(out[0], ops.affine_act_np(h, m, o, mult, in_max))
    ops._affine_add_nb(h, m, o, h[::-1].copy(), out)
    assert np.array_equal(out[0], ops.affine_add_np(h, m, o, h[::-1]))
    split = np.empty((3,) + h.shape[:1] + (1,), dtype=np.float32)
    ops._act_nb(h, mult, in_max, split)
    assert np.array_equal(split[:, :, 0].T, ops.act_np(h, mult, in_max))


def test_silu_is_within_3e_6_of_the_real_function():
    x = np.linspace(-40, 40, 400001)
    err = np.abs(ops.silu(x.astype(np.float32)).astype(np.float64) - x / (1 + np.exp(-x)))
    assert err.max() < 3e-6


def test_every_convolution_meets_the_exact_sum_bound(exported):
    """sum |w| |x| < 2^24 for every output of every group: the float32 sums are exact."""
    for name, layer in exported.layers.items():
        w = layer.weight.double()
        assert torch.equal(w, torch.round(w)), name
        cin = w.shape[1] // layer.groups
        bound = (w.abs() * layer.in_bound.double()[None, :, None, None]).reshape(w.shape[0], layer.groups, cin, -1)
        assert float(bound.sum(dim=(2, 3)).max()) < EXACT_SUM, name
        assert float(layer.in_bound.max()) == layer.in_max


_DIGEST = """
import hashlib, sys, torch, numpy as np
sys.path.insert(0, {root!r})
from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.exact_net import ExactNet
torch.set_num_threads(int(sys.argv[2]))
net = ExactNet(torch.load(sys.argv[1], weights_only=False), load_checkpoint(None).model.net)
z = torch.from_numpy(np.load(sys.argv[3]))
h = hashlib.sha256()
for step in (0, 5, 40):
    eps, aux = net(z, step, with_aux=True, with_features=True)
    for t in [eps] + [aux[k] for k in sorted(aux)]:
        h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_the_same_bits_under_every_kernel_set_and_thread_count(exported, tmp_path):
    """Fresh processes under ATen's portable kernels, oneDNN limited to SSE4.1, numba's
    generic CPU target, and 1, 2 or 3 threads give the bits of this process."""
    state, zpath = tmp_path / "exact.pt", tmp_path / "z.npy"
    torch.save(exported.state, state)
    z = random_z((1, 3, 44, 60), 11)
    np.save(zpath, z)
    want = hashlib.sha256()
    for step in (0, 5, 40):
        eps, aux = exported(torch.from_numpy(z), step, with_aux=True, with_features=True)
        for t in [eps] + [aux[k] for k in sorted(aux)]:
            want.update(t.contiguous().numpy().tobytes())
    settings = [({}, 2), ({}, 1), ({}, 3), ({"ATEN_CPU_CAPABILITY": "default"}, 2),
                ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, 1), ({"NUMBA_CPU_NAME": "generic"}, 2)]
    for env, threads in settings:
        out = subprocess.run([sys.executable, "-c", _DIGEST.format(root=ROOT), str(state), str(threads), str(zpath)],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == want.hexdigest(), (env, threads)


@needs_data
def test_the_exact_networks_nelbo_is_close_to_the_float_networks(model, exported):
    from vdmcodec.codec import Coder
    from vdmcodec.evaluate import image_nelbo
    sm = Coder.for_effort(model, "default", adapt_context=False).step_model
    planes = _centre(HELD_APART, 48)
    float_bpd = image_nelbo(sm, planes)["nelbo_bpd"]
    sm.exact_net = exported
    exact_bpd = image_nelbo(sm, planes)["nelbo_bpd"]
    assert abs(exact_bpd - float_bpd) < 0.01 * float_bpd


def test_tables_that_do_not_fit_the_weights_are_refused(model, exported):
    """A checkpoint whose weight scales were tampered with (or whose weights changed) would let
    a sum round: loading refuses it instead of coding with it."""
    state = dict(exported.state, layers=dict(exported.state["layers"]))
    stem = dict(state["layers"]["stem"])
    stem["weight_scale"] = stem["weight_scale"] / 64.0
    state["layers"]["stem"] = stem
    with pytest.raises(ValueError, match="do not fit"):
        ExactNet(state, model.model.net)


# ---- the context network and the whole coder in exact arithmetic
@pytest.fixture(scope="module")
def exact_model(model):
    from vdmcodec.export_exact import build_exact_model
    rng = np.random.default_rng(1)
    if CALIBRATION.exists():
        calib = [_centre(CALIBRATION, 48)]
    else:
        calib = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)]
    return build_exact_model(model, calib)


def test_the_context_network_equals_its_numpy_reference(model, exact_model):
    from vdmcodec.model.exact_context import ExactContextNet
    from vdmcodec.model.exact_ref import reference_context_refine
    from vdmcodec.model.vdm import pass_classes
    ctx = exact_model.context
    rng = np.random.default_rng(2)
    h, w = 11, 14
    u = rng.standard_normal((3, h, w)) * 3
    loc = rng.uniform(-5, 260, (3, h, w))
    scale = np.exp(rng.uniform(-1, 3, (3, h, w)))
    uq, lq, sq = ExactContextNet.input_levels(u, loc, scale)
    inp = np.concatenate([uq * (rng.random((3, h, w)) < 0.5), lq, sq])[None].astype(np.float32)
    hidden = model.model.context_net.cfg.hidden
    own = (rng.standard_normal((2, hidden, 1, 1)) * 0.1, rng.standard_normal(2) * 0.1)
    for g, head in ((0, None), (5, own), (len(ctx.groups) - 1, None)):
        p = ctx.groups[g][0]
        classes = pass_classes(ctx.state["passes"])[p]
        got = ctx.refine(g, torch.from_numpy(inp), classes, (h, w), head)
        want = reference_context_refine(ctx.state, model.model.context_net, g, inp, classes, (h, w), head)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), g
        assert np.abs(got[0]).max() > 0  # the group computes something


def test_exact_files_round_trip_and_cost_about_the_float_rate(model, exact_model):
    from dataclasses import replace

    from vdmcodec.codec import Coder, compress_images, decompress_bytes
    from vdmcodec.container import unpack_container
    from vdmcodec.image_io import RasterImage
    rng = np.random.default_rng(3)
    pixels = np.clip(np.cumsum(rng.integers(-9, 10, (24, 30, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    grey = np.ascontiguousarray(pixels[:16, :20, 1:2])
    images = [("x", RasterImage("RGB", 30, 24, pixels, None, None, None)),
              ("g", RasterImage("L", 20, 16, grey, None, None, None))]
    lm = replace(model, exact=exact_model)
    sizes = {}
    for exact in (False, True):
        coder = Coder.for_effort(lm, "fast", exact=exact, adapt_context=False, threads=2)
        data, _ = compress_images(images, coder, allow_fallback=False)
        header, _ = unpack_container(data)
        assert header["compute"]["arith"] == ("exact1" if exact else "float")
        coder.threads = 1  # an exact file decodes with any thread count
        back = decompress_bytes(data, coder=coder)
        assert np.array_equal(back[0][1].planes, pixels) and np.array_equal(back[1][1].planes, grey)
        sizes[exact] = len(data)
    assert abs(sizes[True] - sizes[False]) <= 0.02 * sizes[False] + 8


def test_an_earlier_model_shares_the_exact_tables_it_has_in_common(model, tmp_path):
    """A checkpoint whose context was retrained carries the model it came from with only the
    exact tables that differ (the big network's 0.9 MB are the same), and rebuilds that
    model's tables whole: its content hash, which covers them, checks out."""
    from vdmcodec.checkpoints import (earlier_models, file_sha256, load_earlier, read_checkpoint,
                                      save_checkpoint)

    blob = read_checkpoint(model.path)
    old_path, new_path = model.path, tmp_path / "new.pt"  # the shipped model is the old one
    # as if the context network's tables had changed (a scale that the weights do not bound)
    ctx = dict(blob["exact"]["context"], feature_scale=2.0 * blob["exact"]["context"]["feature_scale"])
    exact_new = dict(blob["exact"], context=ctx)
    kept = model.model.context_weight.detach().clone()
    with torch.no_grad():
        model.model.context_weight.add_(2.0**-8)
    try:
        save_checkpoint(new_path, model.model, "vdmc-test-new", {}, earlier=earlier_models(old_path),
                        exact=exact_new)
    finally:
        with torch.no_grad():
            model.model.context_weight.copy_(kept)
    entry, = read_checkpoint(new_path)["earlier"][:1]
    assert entry["model_id"] == model.model_id and "net" in entry["exact_same"]
    assert set(entry["exact"]) == {"context"}
    back = load_earlier(new_path, file_sha256(old_path))
    assert back is not None and back.exact is not None
    assert earlier_models(new_path)[1]["exact"].keys() == blob["exact"].keys()


def test_a_checkpoint_refuses_exact_tables_that_do_not_fit_its_weights(model, tmp_path):
    """save_checkpoint checks the tables against the weights as stored (float16): tables
    fitted to other weights are refused at write time, not found unloadable later."""
    from vdmcodec.checkpoints import read_checkpoint, save_checkpoint
    from vdmcodec.errors import CheckpointError

    blob = read_checkpoint(model.path)
    net = model.model.context_net.nets[0][0]
    kept = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.mul_(1.5)  # as if the tables had been fitted before the weights moved
    try:
        with pytest.raises(CheckpointError, match="exact tables"):
            save_checkpoint(tmp_path / "bad.pt", model.model, "vdmc-test-bad", {}, exact=blob["exact"])
    finally:
        with torch.no_grad():
            net.weight.copy_(kept)
    assert not (tmp_path / "bad.pt").exists()


# ---- compress's check in exact arithmetic reuses the encoder's network outputs
def test_network_memo_examples_run():
    from vdmcodec.coding import steps
    assert doctest.testmod(steps, raise_on_error=True).attempted > 0


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.cumsum(rng.integers(-9, 10, (h, w, 3)), axis=1) + 128, 0, 255).astype(np.uint8)


def test_the_verifying_decode_reuses_every_network_output_and_still_compares_pixels(model, exact_model):
    from dataclasses import replace

    from vdmcodec.codec import Coder, compress_images, verify_roundtrip
    from vdmcodec.errors import VerificationError
    from vdmcodec.image_io import RasterImage
    pixels = _textured(26, 30, 4)
    image = [("x", RasterImage("RGB", 30, 26, pixels, None, None, None))]
    coder = Coder.for_effort(replace(model, exact=exact_model), "fast", exact=True, adapt_context=False, threads=2)
    plain, _ = compress_images(image, coder, allow_fallback=False)
    with coder.remembering() as memo:
        data, _ = compress_images(image, coder, allow_fallback=False)
        stored, misses = memo.bytes, memo.misses
        assert stored > 0 and memo.hits > 0  # each region's check, right after its encode
        verify_roundtrip(data, image, coder)
        assert memo.misses == misses  # the check fed the network nothing new
        other = [("x", RasterImage("RGB", 30, 26, _textured(26, 30, 5), None, None, None))]
        with pytest.raises(VerificationError):
            verify_roundtrip(data, other, coder)
    assert data == plain and coder.step_model.memo is None  # the same file; nothing kept after


def test_each_region_is_checked_as_it_is_coded_and_the_files_check_takes_the_outcomes(model, exact_model):
    """Compress decodes every region right after pushing it; the check of the whole file then
    meets the same stacks and takes those outcomes, decoding nothing of the chain again."""
    from dataclasses import replace

    from vdmcodec.codec import Coder, compress_images, verify_roundtrip
    from vdmcodec.container import unpack_container
    from vdmcodec.image_io import RasterImage
    image = [("x", RasterImage("RGB", 40, 46, _textured(46, 40, 6), None, None, None))]
    coder = Coder.for_effort(replace(model, exact=exact_model), "fast", exact=True, adapt_context=False, threads=2)
    with coder.remembering() as memo:
        data, _ = compress_images(image, coder, allow_fallback=False)
        layout = unpack_container(data)[0]["images"][0]["layout"]
        regions = sum(1 for r in layout if r["kind"] == "bitsback")
        checked = coder.checked
        assert regions >= 2 and checked.regions == regions and checked.taken == 0
        misses = memo.misses
        verify_roundtrip(data, image, coder)
        assert checked.taken == regions and memo.misses == misses
    assert coder.checked is None


def test_a_region_that_does_not_decode_stops_compress(model, exact_model, monkeypatch):
    from dataclasses import replace

    from vdmcodec.codec import Coder, compress_images
    from vdmcodec.coding import chain
    from vdmcodec.errors import VerificationError
    from vdmcodec.image_io import RasterImage
    real = chain.decode_region

    def off_by_one(*args, **kw):
        x = real(*args, **kw)
        x[0, 0, 0] ^= 1
        return x

    monkeypatch.setattr(chain, "decode_region", off_by_one)
    image = [("x", RasterImage("RGB", 30, 26, _textured(26, 30, 4), None, None, None))]
    coder = Coder.for_effort(replace(model, exact=exact_model), "fast", exact=True, adapt_context=False, threads=2)
    with coder.remembering(), pytest.raises(VerificationError, match="region"):
        compress_images(image, coder, allow_fallback=False)


def test_a_checked_outcome_is_taken_only_for_its_own_stack_setup_and_context(coder):
    from vdmcodec.coding.ans import AnsStack
    from vdmcodec.coding.chain import CheckedRegions, encode_region
    sm = coder.step_model
    x = _textured(6, 8, 7).transpose(2, 0, 1).copy()
    context = _textured(2, 8, 8).transpose(2, 0, 1).copy()
    stack = AnsStack()
    stack.push_bytes(bytes(range(256)) * 8)
    before = stack.words()
    encode_region(stack, sm, x, context=context)
    checked = CheckedRegions()
    checked.check(stack, before, sm, x, context, None)
    after = stack.words()
    assert checked.take(stack, sm, x.shape, context[:, :1], None) is None  # another context
    other = AnsStack(after)
    other.push_bytes(b"!")
    assert checked.take(other, sm, x.shape, context, None) is None  # another stack
    assert np.array_equal(stack.words(), after)
    assert np.array_equal(checked.take(stack, sm, x.shape, context, None), x)
    assert np.array_equal(stack.words(), before) and checked.taken == 1


def test_float_arithmetic_keeps_nothing_for_its_check(coder):
    with coder.remembering() as memo:
        assert memo is None and coder.step_model.memo is None


def test_the_memo_drops_its_oldest_outputs_first():
    from vdmcodec.coding.steps import NetworkMemo
    memo = NetworkMemo(budget_bytes=3 * 4 * 16)  # three float32 eps of (1, 4, 4)
    keys = [memo.key(np.full((1, 4, 4), i, np.float32), 1, 1, False) for i in range(4)]
    for i, key in enumerate(keys):
        memo.put(key, (np.full((1, 4, 4), float(i)), {}))
    assert memo.get(keys[0]) is None and all(memo.get(k) is not None for k in keys[1:])
    assert memo.bytes == 3 * 64
    memo.put(memo.key(np.zeros((1, 4, 4), np.float32), 2, 1, False), (np.full((1, 4, 4), 0.1), {}))
    assert memo.bytes == 3 * 64 - 64 + 128 - 64  # 0.1 is kept in float64 (not exact in float32)
