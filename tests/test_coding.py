"""Bits-back coding: exact round trips, stack algebra, codelengths, archives, damage, threads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import assert_roundtrip, assert_same_image, kodak_crop, noise_array, raster, tiny_config
from vdmcodec.codec import Coder, compress_images, decompress_bytes, effort_settings
from vdmcodec.coding.ans import AnsStack, categorical, windowed_gaussian
from vdmcodec.coding.chain import decode_region, encode_region
from vdmcodec.coding.steps import StepModel, check_plan, jump_log_var, plan_from_strides
from vdmcodec.coding.classic import encode_rows
from vdmcodec.coding.grids import MAX_HALF_WINDOW, PARAM_SNAP, snap
from vdmcodec.container import pack_container, unpack_container
from vdmcodec.checkpoints import load_checkpoint, save_checkpoint
from vdmcodec.coding.ans import CoderInputError
from vdmcodec.errors import CorruptFileError, EnvironmentMismatchError, ModelMismatchError, VerificationError
from vdmcodec.evaluate import image_nelbo
from vdmcodec.image_io import encode_alpha
from vdmcodec.model.vdm import VDM

HEADER_ALLOWANCE = 1024  # bytes of container framing + JSON header a classic-planes file may add


def seeded_stack(n_words: int = 4096, seed: int = 0) -> AnsStack:
    """A stack holding random bits (enough for any pop in these tests)."""
    words = np.random.default_rng(seed).integers(1, 2**32, n_words, dtype=np.uint32)
    return AnsStack(words)


def image(source: str, h: int, w: int, mode: str, seed: int = 0):
    rgb = noise_array(h, w, 3, seed) if source == "noise" else kodak_crop(h, w, index=1 + seed % 24)
    return raster(rgb, mode, seed)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("source", ["noise", "real"])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (33, 65), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_roundtrip_bitsback(coder, size, source, mode):
    h, w = size
    data, reports, _ = assert_roundtrip(coder, [image(source, h, w, mode)])
    rep = reports[0]
    assert rep.dims == h * w * (1 if mode == "L" else 3)
    assert math.isfinite(rep.nelbo_bits) and rep.nelbo_bits > 0
    # the report's exact bits (classic seed included) are the payload, up to the coder's head
    # state (one stack from empty; the seed is counted as 8 bits per byte)
    assert 0 <= 32 * unpack_container(data)[0]["ans_words"] - rep.exact_bits <= 64


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1"])
@pytest.mark.parametrize("size", [(1, 1), (33, 65)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_roundtrip_side_channels(coder, mode, size):
    assert_roundtrip(coder, [image("real", *size, mode, seed=3)])


def test_roundtrip_with_classic_fallback_allowed(coder):
    data, reports, _ = assert_roundtrip(coder, [image("real", 9, 7, "RGB")], allow_fallback=True)
    header, _ = unpack_container(data)
    assert header["images"][0]["method"] == ("classic-planes" if reports[0].method == "classic" else "bitsback")


def test_a_classic_file_replaces_a_larger_bitsback_one_and_the_report_keeps_both(coder):
    """A photograph-like crop the tiny test model codes badly: the classic file (the own
    least-squares code of the whole image, smaller than its JPEG XL) is kept, decodes
    exactly, and the report still gives the size of the bits-back file it replaced."""
    img = raster(kodak_crop(64, 96, index=4))
    data, reports, _ = assert_roundtrip(coder, [img], allow_fallback=True)
    header, sections = unpack_container(data)
    assert reports[0].method == "classic" and header["images"][0]["method"] == "classic-planes"
    assert sections["planes0"][0] == 7  # the least-squares pointer model's tag (coding.classic.TAG_LSQ_POINTERS)
    assert reports[0].bitsback_bytes > len(data)


def test_archive_of_three_images(coder):
    images = [
        ("wide.png", image("real", 7, 40, "RGB", seed=1)),
        ("grey.png", image("noise", 23, 9, "L", seed=2)),
        ("alpha.png", image("real", 16, 16, "RGBA", seed=3)),
    ]
    data, reports, out = assert_roundtrip(coder, images)
    header, _ = unpack_container(data)
    assert header["archive"] is True and len(header["images"]) == 3
    assert [(e["width"], e["height"]) for e in header["images"]] == [(40, 7), (9, 23), (16, 16)]
    # one stack runs through the archive: only the first image needs a classic seed
    kinds = [[reg["kind"] for reg in e["layout"]] for e in header["images"]]
    assert kinds[0][0] == "classic"
    assert all("classic" not in k for k in kinds[1:]), kinds


def _archive_header_with(data: bytes, change) -> bytes:
    header, sections = unpack_container(data)
    header = {k: v for k, v in header.items() if k != "sections"}
    change(header)
    return pack_container(header, list(sections.items()))


def test_archive_keeps_short_image_hashes_and_one_full_hash(coder):
    images = [(f"im{i}", image("real", 12, 10, "RGB", seed=20 + i)) for i in range(3)]
    data, _, _ = assert_roundtrip(coder, images)
    header, _ = unpack_container(data)
    assert all(len(e["pixel_sha256_short"]) == 4 and "pixel_sha256" not in e for e in header["images"])
    assert len(header["pixels_sha256"]) == 64

    def wrong_image_hash(h):
        e = h["images"][1]
        e["pixel_sha256_short"] = ("0" if e["pixel_sha256_short"][0] != "0" else "1") + e["pixel_sha256_short"][1:]

    with pytest.raises(VerificationError, match="im1"):
        decompress_bytes(_archive_header_with(data, wrong_image_hash), coder=coder)
    with pytest.raises(VerificationError, match="archive"):
        decompress_bytes(_archive_header_with(data, lambda h: h.update(pixels_sha256="0" * 64)), coder=coder)
    with pytest.raises(CorruptFileError):  # short hashes need the archive's hash
        decompress_bytes(_archive_header_with(data, lambda h: h.pop("pixels_sha256")), coder=coder)


def test_archive_with_palette_image_in_the_middle(coder):
    images = [image("real", 12, 10, "RGB", seed=4), image("real", 5, 6, "P", seed=5), image("noise", 3, 8, "L", seed=6)]
    assert_roundtrip(coder, images)


# ----------------------------------------------------------------------------- stack algebra
def assert_pop_push_restores(codec, stack: AnsStack):
    before = stack.words()
    symbols = codec.pop(stack)
    assert not np.array_equal(stack.words(), before)  # the pop did take bits
    codec.push(stack, symbols)
    np.testing.assert_array_equal(stack.words(), before)
    return symbols


def assert_push_pop_restores(codec, stack: AnsStack, symbols: np.ndarray):
    before = stack.words()
    codec.push(stack, symbols)
    np.testing.assert_array_equal(codec.pop(stack), symbols)
    np.testing.assert_array_equal(stack.words(), before)


def test_windowed_gaussian_pop_push_is_identity():
    rng = np.random.default_rng(1)
    n, half = 2000, 3000
    mean = rng.uniform(-5e4, 5e4, n)
    std = np.exp(rng.uniform(np.log(0.3), np.log(300.0), n))
    codec = windowed_gaussian(mean, std, half)
    stack = seeded_stack(seed=1)
    sym = assert_pop_push_restores(codec, stack)
    assert np.all(np.abs(sym - np.rint(mean)) <= half)
    assert np.abs((sym - mean) / std).max() < 8.0  # draws follow the Gaussian, not the window
    assert_push_pop_restores(codec, stack, sym)
    # a symbol outside the window is refused before it reaches the Rust core
    bad = sym.copy()
    bad[0] = int(np.rint(mean[0])) + half + 1
    with pytest.raises(ValueError):
        codec.push(stack, bad)


def test_categorical_pop_push_is_identity():
    rng = np.random.default_rng(2)
    n, k = 1500, 37
    probs = rng.dirichlet(np.full(k, 0.3), n)
    probs[:, 5] = 1e-12  # near-empty entries, as the pixel tables have
    offset = rng.integers(0, 200, n)
    codec = categorical(probs, offset)
    stack = seeded_stack(seed=2)
    sym = assert_pop_push_restores(codec, stack)
    assert np.all((sym >= offset) & (sym < offset + k))
    assert_push_pop_restores(codec, stack, sym)


def test_bytes_pop_push_is_identity():
    stack = seeded_stack(seed=3)
    before = stack.words()
    data = stack.pop_bytes(777)
    assert len(data) == 777
    stack.push_bytes(data)
    np.testing.assert_array_equal(stack.words(), before)
    payload = bytes(range(256)) * 3
    stack.push_bytes(payload)
    assert stack.pop_bytes(len(payload)) == payload
    np.testing.assert_array_equal(stack.words(), before)


def test_step_model_codecs_pop_push_are_identities(coder):
    sm: StepModel = coder.step_model
    x = np.ascontiguousarray(kodak_crop(9, 13).transpose(2, 0, 1))
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    stack = seeded_stack(seed=4)
    q0, _, _ = sm.q_z0(xt)
    k0 = assert_pop_push_restores(q0, stack).reshape(x.shape)
    px = sm.p_pixels(k0)
    assert_pop_push_restores(px, stack)
    assert_push_pop_restores(px, stack, x.ravel().astype(np.int32))
    k_prev = k0
    for i in range(1, sm.T + 1):
        qi, _, _ = sm.q_forward(k_prev, i)
        k = assert_pop_push_restores(qi, stack).reshape(x.shape)
        pi, _, _ = sm.p_reverse(k, i, *sm.step_outputs(k, i))
        assert_pop_push_restores(pi, stack)
        assert_push_pop_restores(pi, stack, k_prev.ravel())
        k_prev = k
    prior, _, _ = sm.p_prior(x.size)
    assert_pop_push_restores(prior, stack)


def test_decode_region_restores_the_stack(coder):
    """Bits back: encoding a region then decoding it leaves exactly the initial bits."""
    x = np.ascontiguousarray(kodak_crop(11, 19, index=5).transpose(2, 0, 1))
    stack = seeded_stack(seed=5)
    before = stack.words()
    encode_region(stack, coder.step_model, x)
    np.testing.assert_array_equal(decode_region(stack, coder.step_model, x.shape), x)
    np.testing.assert_array_equal(stack.words(), before)


def test_grids_follow_design_rules(coder):
    g = coder.step_model.grids
    assert np.all(np.diff(g.gamma) > 0)
    assert np.all(np.log2(g.delta) == np.round(np.log2(g.delta)))  # powers of two
    assert g.delta[0] <= g.sigma[0] / 4
    for i in range(1, g.T + 1):
        assert g.delta[i] <= g.sigma_ts[i] / 4
        assert g.delta[i - 1] <= g.post_s[i] / 4
    assert max(g.q_half.max(), g.p_half.max(), g.prior_half) <= MAX_HALF_WINDOW


# ----------------------------------------------------------------------------- codelengths
@pytest.fixture(scope="module")
def calibrated_step_model():
    """A tiny untrained VDM at T = 64: fine steps keep p(z_{i-1}|z_i) close to q, so no symbol
    lands in the far tails where the coder's 2^-24 probability floor caps its cost."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VDM(tiny_config(steps=64)).eval().requires_grad_(False)
    return StepModel(model, model.schedule.table(64).numpy())


@pytest.mark.parametrize("source,h,w", [("real", 16, 16), ("noise", 16, 16), ("real", 12, 28)])
def test_exact_codelength_matches_implied_bits(calibrated_step_model, source, h, w):
    x = np.ascontiguousarray(image(source, h, w, "RGB", seed=7).planes.transpose(2, 0, 1))
    stack = seeded_stack(n_words=40 * x.size, seed=6)
    start = stack.num_bits()
    stats = encode_region(stack, calibrated_step_model, x)
    assert stats.exact_bits == stack.num_bits() - start
    assert abs(stats.exact_bits - stats.implied_bits) <= 32 + 1e-3 * stats.exact_bits, (
        stats.exact_bits, stats.implied_bits)
    # and the expected codelength (NELBO) is close to the realised one
    assert stats.implied_bits == pytest.approx(stats.nelbo_bits, rel=0.1)


def test_exact_codelength_never_exceeds_implied_bits(coder):
    """Any model, however poor: the coder never spends more than -log2 P + log2 Q (its
    probability floor can only make far-tail symbols cheaper)."""
    x = np.ascontiguousarray(kodak_crop(16, 16, index=3).transpose(2, 0, 1))
    stack = seeded_stack(n_words=40 * x.size, seed=7)
    stats = encode_region(stack, coder.step_model, x)
    assert stats.exact_bits <= stats.implied_bits + 32 + 1e-3 * stats.exact_bits


@pytest.mark.parametrize("seed", [0, 1])
def test_coder_nelbo_agrees_with_training_objective(calibrated_step_model, seed):
    """image_nelbo (coder grids, clipped x_hat), encode_region's own estimate and VDM.terms
    (continuous latents) estimate the same discrete-time NELBO."""
    sm = calibrated_step_model
    planes = kodak_crop(24, 24, index=seed + 1)
    x = np.ascontiguousarray(planes.transpose(2, 0, 1))
    ev = image_nelbo(sm, planes, seed=seed)
    region = encode_region(seeded_stack(n_words=40 * x.size, seed=seed), sm, x)
    xb = torch.from_numpy(x.astype(np.int64))[None].repeat(sm.T, 1, 1, 1)
    with torch.no_grad():
        terms = sm.model.terms(xb, step_index=torch.arange(1, sm.T + 1), generator=torch.Generator().manual_seed(seed))
    objective = float(terms["nelbo"].mean())
    assert ev["dims"] == x.size and all(math.isfinite(v) and v >= 0 for v in ev["terms"].values())
    assert ev["nelbo_bpd"] == pytest.approx(objective, rel=0.1)
    assert region.nelbo_bits / x.size == pytest.approx(objective, rel=0.1)
    assert ev["terms"]["recon"] == pytest.approx(float(terms["recon"].mean()), rel=0.2)


def test_pixel_tables_stay_within_valid_levels():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VDM(tiny_config(steps=8, gamma0=-3.0)).eval().requires_grad_(False)
    sm = StepModel(model, model.schedule.table(8).numpy())
    xt = (2.0 * np.array([0.0, 3.0, 128.0, 250.0, 255.0]) + 1.0) / 256.0 - 1.0
    xt = np.tile(xt, (3, 1, 1))  # (C, H, W): the xhat decoder runs the network at z_0
    k0 = np.rint(sm.grids.alpha[0] * xt / sm.grids.delta[0]).astype(np.int32)
    x = np.rint((xt + 1.0) * 128.0 - 0.5).astype(np.int32)
    for probs, offset in sm.p_pixels(k0).tables(x):
        assert np.all(offset >= 0) and np.all(offset + probs.shape[1] <= 256)


# ----------------------------------------------------------------------------- damage
def repack(data: bytes, mutate_words) -> bytes:
    """The same file with its ANS words changed but every CRC valid again."""
    header, sections = unpack_container(data)
    words = np.frombuffer(sections["ans"], dtype="<u4").copy()
    words = mutate_words(words)
    header = {k: v for k, v in header.items() if k != "sections"}
    header["ans_words"] = len(words)
    secs = [(s, words.astype("<u4").tobytes() if s == "ans" else sections[s]) for s in sections]
    return pack_container(header, secs)


@pytest.fixture(scope="module")
def encoded(coder):
    img = image("real", 33, 65, "RGB", seed=8)
    data, _ = compress_images([("img0", img)], coder, allow_fallback=False)
    return data


def test_flipped_payload_byte_is_a_corrupt_file(coder, encoded):
    header, _ = unpack_container(encoded)
    ans_start = len(encoded) - header["sections"][0]["bytes"]
    bad = bytearray(encoded)
    bad[ans_start + 100] ^= 0x10
    with pytest.raises(CorruptFileError):
        decompress_bytes(bytes(bad), coder=coder)


def test_intact_file_that_decodes_differently_here_is_not_called_corrupt(coder, encoded, monkeypatch):
    """Another machine's arithmetic (here: the network's weights nudged after encoding) makes
    an intact file fail as a compute-setup mismatch (exit 13) or a pixel-hash mismatch
    (exit 12) naming both setups, never as a corrupt file."""
    net = coder.loaded.model.net
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.3)
        with pytest.raises((EnvironmentMismatchError, VerificationError)) as info:
            decompress_bytes(encoded, coder=coder)
    finally:
        net.load_state_dict(saved)
    assert "torch" in str(info.value)

    def other_arithmetic(*a, **k):
        raise CoderInputError("symbol outside its coding window")

    monkeypatch.setattr("vdmcodec.codec._decode_all", other_arithmetic)
    with pytest.raises(EnvironmentMismatchError, match="intact"):
        decompress_bytes(encoded, coder=coder)


def _flip(pos_fn, bit):
    def mutate(w):
        w = w.copy()
        w[pos_fn(len(w))] ^= np.uint32(1 << bit)
        return w
    return mutate


@pytest.mark.parametrize("mutate", [
    _flip(lambda n: 0, 0), _flip(lambda n: 0, 31), _flip(lambda n: n // 3, 7), _flip(lambda n: n // 2, 20),
    _flip(lambda n: n - 1, 0), _flip(lambda n: n - 1, 31), _flip(lambda n: n - 2, 13),
    lambda w: np.concatenate([w[:-1], np.zeros(1, np.uint32)]),  # a zero last word
    lambda w: w[1:],  # a word lost from the start (with a matching header)
    lambda w: w[:-1],  # ... or the end
    lambda w: np.concatenate([w, w[-1:]]),  # an extra word
], ids=["w0b0", "w0b31", "third", "middle", "lastb0", "lastb31", "penult", "zero_last", "drop_first",
        "drop_last", "extra"])
def test_corrupted_payload_with_valid_crcs_never_decodes(coder, encoded, mutate):
    """A payload changed with its CRCs recomputed (a buggy or hostile writer) never gives an
    image; where a latent falls outside its window it reads as what an intact file that
    fails to decode almost always is, another machine's arithmetic (exit 13)."""
    bad = repack(encoded, mutate)
    with pytest.raises((CorruptFileError, VerificationError, EnvironmentMismatchError)):
        decompress_bytes(bad, coder=coder)


def test_payload_length_mismatch_is_a_corrupt_file(coder, encoded):
    header, sections = unpack_container(encoded)
    header = {k: v for k, v in header.items() if k != "sections"}
    header["ans_words"] += 1
    with pytest.raises(CorruptFileError):
        decompress_bytes(pack_container(header, list(sections.items())), coder=coder)


def test_file_refuses_a_different_model(encoded, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = VDM(tiny_config(steps=8))
    save_checkpoint(tmp_path / "other.pt", other, "vdmc-other", {})
    other_coder = Coder(load_checkpoint(tmp_path / "other.pt"), threads=1)
    with pytest.raises(ModelMismatchError):
        decompress_bytes(encoded, coder=other_coder)
    with pytest.raises(ModelMismatchError):
        decompress_bytes(encoded, checkpoint=str(tmp_path / "other.pt"))


# ----------------------------------------------------------------------------- threads
def test_decoder_uses_thread_count_from_file(tiny_loaded, tiny_checkpoint, restore_threads):
    img = image("real", 40, 24, "RGB", seed=9)
    data, _ = compress_images([("img0", img)], Coder(tiny_loaded, threads=1), allow_fallback=False)
    header, _ = unpack_container(data)
    assert header["compute"]["threads"] == 1

    torch.set_num_threads(2)
    fresh = Coder(tiny_loaded, threads=2)
    out = decompress_bytes(data, coder=fresh)
    assert torch.get_num_threads() == header["compute"]["threads"]
    assert_same_image(img, out[0][1])

    torch.set_num_threads(2)  # and without a coder: the model is found by its checkpoint path
    out = decompress_bytes(data, checkpoint=str(tiny_checkpoint))
    assert torch.get_num_threads() == 1
    assert_same_image(img, out[0][1])


def test_two_thread_file_decodes_from_a_one_thread_process(tiny_loaded, restore_threads):
    img = image("noise", 3, 5, "L", seed=10)  # tiny: two threads compete with the training job
    data, _, _ = assert_roundtrip(Coder(tiny_loaded, threads=2), [img], decode_coder=Coder(tiny_loaded, threads=1))
    assert unpack_container(data)[0]["compute"]["threads"] == 2
    assert torch.get_num_threads() == 2


# ----------------------------------------------------------------------------- network ensemble
@pytest.mark.parametrize("calls", [2, 4])
def test_ensemble_file_roundtrips_and_decodes_with_the_files_setting(tiny_loaded, calls):
    img = image("real", 33, 40, "RGB", seed=11)
    one_call = Coder(tiny_loaded, threads=1)
    data, reports, _ = assert_roundtrip(Coder(tiny_loaded, threads=1, ensemble=calls), [img], decode_coder=one_call)
    assert unpack_container(data)[0]["compute"]["ensemble"] == calls
    assert one_call.step_model.ensemble == calls  # taken from the file, not from the coder handed in
    plain, plain_reports = compress_images([("img0", img)], Coder(tiny_loaded, threads=1), allow_fallback=False)
    assert unpack_container(plain)[0]["compute"]["ensemble"] == 1
    assert reports[0].nelbo_bits != plain_reports[0].nelbo_bits  # the ensemble really changed P


def test_ensemble_averages_flipped_network_outputs(tiny_loaded):
    sm = StepModel(tiny_loaded.model, tiny_loaded.gamma_table.numpy(), ensemble=2)
    k = np.random.default_rng(0).integers(-300, 300, (3, 12, 10)).astype(np.int32)
    eps2, lam2 = sm.step_outputs(k, 3)
    sm.ensemble = 1
    eps1, lam1 = sm.step_outputs(k, 3)
    eps1f, lam1f = sm.step_outputs(np.ascontiguousarray(k[:, :, ::-1]), 3)
    assert not np.allclose(eps2, eps1)
    np.testing.assert_allclose(eps2, 0.5 * (eps1 + eps1f[:, :, ::-1]), atol=1e-5)
    assert np.isfinite(lam2).all() and not np.allclose(lam2, lam1)


def test_unknown_ensemble_size_is_refused(tiny_loaded, encoded, coder):
    with pytest.raises(ValueError):
        Coder(tiny_loaded, threads=1, ensemble=3)
    header, sections = unpack_container(encoded)
    header = {k: v for k, v in header.items() if k != "sections"}
    header["compute"] = {**header["compute"], "ensemble": 3}
    with pytest.raises(CorruptFileError):
        decompress_bytes(pack_container(header, list(sections.items())), coder=coder)


def test_files_without_plan_or_ensemble_fields_decode_every_step_with_one_call(coder, encoded):
    """What files written before these fields mean (the decoding coder set otherwise first)."""
    header, sections = unpack_container(encoded)
    header = {k: v for k, v in header.items() if k != "sections"}
    header["compute"] = {k: v for k, v in header["compute"].items() if k not in ("ensemble", "ensemble_steps")}
    header["coder"] = {k: v for k, v in header["coder"].items() if k != "plan"}
    T = coder.step_model.T
    coder.use_steps((0, 2, T), 4, 1)
    try:
        out = decompress_bytes(pack_container(header, list(sections.items())), coder=coder)
        assert (coder.step_model.ensemble, coder.step_model.plan) == (1, tuple(range(T + 1)))
        assert coder.step_model.ensemble_steps == T
    finally:
        coder.use_steps(range(T + 1), 1, None)
    assert out[0][1].width == 65


# ----------------------------------------------------------------------------- step plans
def test_plans_from_strides_and_their_checks():
    assert plan_from_strides(64, ((0.25, 1), (0.5, 2), (1.0, 4))) == tuple(range(17)) + tuple(range(18, 33, 2)) + tuple(range(36, 65, 4))
    assert plan_from_strides(8, ((1.0, 1),)) == tuple(range(9))
    assert plan_from_strides(4, ((0.25, 1), (0.5, 2), (1.0, 4))) == (0, 1, 2, 4)
    for bad in ((0, 2, 1, 8), (1, 8), (0, 4), (0, 4, 4, 8), (0,)):
        with pytest.raises(ValueError):
            check_plan(bad, 8)
    # default: the first quarter one by one, then strides 2, 4 and 8 (27 steps, as fast's)
    assert effort_settings("default", 64)["plan"] == tuple(range(17)) + (18, 20, 22, 24, 28, 32, 36, 40, 48, 56, 64)
    assert effort_settings("default", 64)["ensemble_steps"] == 16
    # at z_0 (2, 4, 4 calls) + every step (twice on the ensembled first quarter)
    assert [StepModel(*_tiny_tables(), **effort_settings(e, 64)).network_calls() for e in ("fast", "default", "max")] == [29, 51, 120]


def _tiny_tables():
    model = VDM(tiny_config(steps=64))
    return model, model.schedule.table(64).detach().numpy()


def test_jump_variance_rescales_the_one_step_error():
    lam = np.array([-0.5, 0.0, 0.3, 4.0])
    assert np.array_equal(jump_log_var(lam[1:], 1.0), snap(lam[1:], PARAM_SNAP))
    out = jump_log_var(lam, 3.0)
    np.testing.assert_allclose(out, np.log1p(3.0 * np.maximum(np.expm1(lam), 0.0)), atol=2.0**-16)
    assert np.isfinite(out).all() and (out >= 0).all()


def test_plan_file_roundtrips_and_decodes_with_the_files_plan(tiny_loaded):
    """A plan that skips steps, with an ensemble on its first step: the decoder takes both from
    the file; the NELBO of fewer steps differs from all steps'."""
    img = image("real", 21, 30, "RGB", seed=12)
    T = len(tiny_loaded.gamma_table) - 1
    plan = (0, 1, 2, 4, T)
    other = Coder(tiny_loaded, threads=1)
    data, reports, _ = assert_roundtrip(Coder(tiny_loaded, threads=1, plan=plan, ensemble=2, ensemble_steps=1), [img],
                                        decode_coder=other)
    header = unpack_container(data)[0]
    assert (header["coder"]["plan"], header["coder"]["T"], header["compute"]["ensemble_steps"]) == (list(plan), 4, 1)
    assert other.step_model.plan == plan and other.step_model.ensemble_steps == 1
    full, full_reports = compress_images([("img0", img)], Coder(tiny_loaded, threads=1), allow_fallback=False)
    assert unpack_container(full)[0]["coder"]["plan"] == list(range(T + 1))
    assert reports[0].nelbo_bits != full_reports[0].nelbo_bits


@pytest.mark.parametrize("change", [{"plan": [0, 3, 5]}, {"plan": [0, 5, 2, 8]}, {"plan": "x"}, {"T": 3}])
def test_bad_plan_in_header_is_a_corrupt_file(coder, encoded, change):
    header, sections = unpack_container(encoded)
    header = {k: v for k, v in header.items() if k != "sections"}
    header["coder"] = {**header["coder"], **change}
    with pytest.raises(CorruptFileError):
        decompress_bytes(pack_container(header, list(sections.items())), coder=coder)


# ----------------------------------------------------------------------------- classic fallback
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("source", ["noise", "real"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (8, 8), (16, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiny_image_file_never_larger_than_classic_code(coder, size, source, mode):
    img = image(source, *size, mode, seed=11)
    data, reports, _ = assert_roundtrip(coder, [img], allow_fallback=True)
    classic = len(encode_rows(np.ascontiguousarray(img.planes.transpose(2, 0, 1)))[1])
    side = len(encode_alpha(img.alpha)) if img.alpha is not None else 0
    assert len(data) <= classic + side + HEADER_ALLOWANCE, (len(data), classic, side, reports[0].method)


# ----------------------------------------------------------------------------- the shipped model
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_default_checkpoint_roundtrip_and_codelength(default_checkpoint, mode):
    lm = load_checkpoint(default_checkpoint)
    coder = Coder(lm, threads=1)
    img = image("real", 40, 48, mode, seed=12)
    data, reports, _ = assert_roundtrip(coder, [img])
    rep = reports[0]
    # decoding with the model found by the file's model hash among the installed checkpoints
    assert_same_image(img, decompress_bytes(data)[0][1])
    x = np.ascontiguousarray(img.planes.transpose(2, 0, 1))
    stats = encode_region(seeded_stack(n_words=40 * x.size, seed=13), coder.step_model, x)
    assert abs(stats.exact_bits - stats.implied_bits) <= 32 + 1e-3 * stats.exact_bits
    assert rep.exact_bits == pytest.approx(rep.implied_bits, rel=0.02, abs=64)


def test_regions_grow_with_the_deficit_they_really_reach(coder, monkeypatch):
    """After the first region, sizes follow the last region's real deficit, so an image
    takes fewer regions than with the conservative bound alone, and still decodes.  (A
    photograph: on a synthetic flat area the real deficit reaches the bound.)"""
    from vdmcodec.coding import chain

    planes = kodak_crop(96, 40, index=12, real=True)

    def regions_and_roundtrip():
        stack = AnsStack()
        regions = chain.encode_image(stack, coder.step_model, planes)
        layout = [{"rows": list(r.rows), "kind": r.kind, "bytes": r.classic_bytes} for r in regions]
        back = chain.decode_image(stack, coder.step_model, 96, 40, 3, layout)
        np.testing.assert_array_equal(back, planes)
        assert stack.num_bits() == 0
        return regions

    adaptive = regions_and_roundtrip()
    monkeypatch.setattr(chain, "DEFICIT_SAFETY", 1e9)  # every region at the conservative size
    conservative = regions_and_roundtrip()
    sizes = lambda regions: {r.rows[0]: r.rows[1] - r.rows[0] for r in regions}  # noqa: E731
    a, b = sizes(adaptive), sizes(conservative)
    assert len(adaptive) <= len(conservative)
    assert any(a[row] > b[row] for row in a.keys() & b.keys()), (sorted(a.items()), sorted(b.items()))
    assert all(r.low_bits >= chain.LOW_WATER_BITS for r in adaptive if r.kind == "bitsback")


def test_a_region_that_overreaches_is_coded_again_conservatively(coder, monkeypatch):
    from vdmcodec.coding import chain

    planes = kodak_crop(48, 40, index=14)
    restores = []
    original = AnsStack.restore
    monkeypatch.setattr(AnsStack, "restore", lambda self, saved: (restores.append(1), original(self, saved)))
    monkeypatch.setattr(chain, "DEFICIT_SAFETY", 0.2)  # far too optimistic: regions run dry
    stack = AnsStack()
    regions = chain.encode_image(stack, coder.step_model, planes)
    assert restores
    layout = [{"rows": list(r.rows), "kind": r.kind, "bytes": r.classic_bytes} for r in regions]
    np.testing.assert_array_equal(chain.decode_image(stack, coder.step_model, 48, 40, 3, layout), planes)


@pytest.mark.parametrize("height", [37, 64])
def test_every_region_starts_at_an_even_row(coder, height):
    """An image's own context fit learns its pixel grid at even offsets (its patches start
    there); a region that starts at an odd row would see that grid shifted."""
    from vdmcodec.coding import chain

    planes = kodak_crop(height, 40, index=5)
    stack = AnsStack()
    regions = chain.encode_image(stack, coder.step_model, planes)
    assert len(regions) >= 3
    assert all(r.rows[0] % 2 == 0 for r in regions), [r.rows for r in regions]
    assert regions[-1].rows[1] == height
    layout = [{"rows": list(r.rows), "kind": r.kind, "bytes": r.classic_bytes} for r in regions]
    np.testing.assert_array_equal(chain.decode_image(stack, coder.step_model, height, 40, 3, layout), planes)


def test_even_rows_rounds_down_but_never_below_two_and_ends_the_image():
    from vdmcodec.coding.chain import even_rows

    assert even_rows(0, 7, 100) == 6
    assert even_rows(10, 1, 100) == 2
    assert even_rows(10, 0, 100) == 2
    assert even_rows(96, 3, 99) == 3  # the last region ends the image, odd or not
    assert even_rows(98, 5, 99) == 1


@pytest.mark.parametrize("damage", [lambda d: d[:1] + bytes(len(d) - 1), lambda d: d[: len(d) // 2]])
def test_a_damaged_classic_strip_is_a_value_error(damage):
    from vdmcodec.coding.classic import decode_rows

    x = np.ascontiguousarray(kodak_crop(2, 64, index=3).transpose(2, 0, 1))
    _, data = encode_rows(x)
    with pytest.raises(ValueError):
        decode_rows(damage(data), 3, 2, 64)


@pytest.mark.parametrize("channels", [1, 3])
def test_classic_strips_take_the_smallest_code_and_round_trip(channels):
    """A photograph's seed strip (18 rows of 768): every tag decodes to the same pixels and
    the smallest is kept; on a photograph that is JPEG XL (format 10), below WebP's size."""
    from vdmcodec.coding import classic

    x = np.ascontiguousarray(kodak_crop(18, 768, index=5, top=0, left=0).transpose(2, 0, 1))[:channels]
    codec, data = classic.encode_rows(x)
    assert np.array_equal(classic.decode_rows(data, channels, 18, 768), x)
    jxl = bytes([classic.TAG_JXL]) + classic.imagecodecs.jpegxl_encode(
        x[0] if channels == 1 else np.ascontiguousarray(x.transpose(1, 2, 0)), lossless=True, effort=9)
    assert np.array_equal(classic.decode_rows(jxl, channels, 18, 768), x)
    assert len(data) <= len(jxl)
    if channels == 3:
        assert codec == "jxl"
    with pytest.raises(ValueError, match="wrong size"):  # a strip of another size or channel count
        classic.decode_rows(jxl, 4 - channels, 18, 768)


def test_classic_docstring_examples_run():
    import doctest

    from vdmcodec.coding import classic

    assert doctest.testmod(classic, raise_on_error=True).attempted > 0
