"""Per-image pixel-context weights: fitted by the encoder, sent in the file, read by the decoder."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from helpers import assert_roundtrip, kodak_crop, raster
from test_decoder import scrambled
from vdmcodec.checkpoints import load_checkpoint, save_checkpoint
from vdmcodec.codec import Coder, compress_images, decompress_bytes
from vdmcodec.coding import adapt
from vdmcodec.coding.pixels import ContextWeights
from vdmcodec.container import pack_container, unpack_container
from vdmcodec.errors import CorruptFileError
from vdmcodec.model.vdm import discretized_logistic_logp


@pytest.fixture(scope="module")
def coder4(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt") / "four.pt"
    save_checkpoint(path, scrambled("xhat", seed=5, passes=4), "vdmc-test-adapt", {"steps": 0})
    return Coder(load_checkpoint(path), threads=1)


def test_deltas_pack_and_unpack_exactly(coder4):
    sm = coder4.step_model
    rng = np.random.default_rng(0)
    for channels, size in ((3, 3 * 75 * 3 + 12), (1, 3 * 25 + 4)):
        base_w, base_ls = adapt.model_weights(sm, channels)
        w = ContextWeights(weight=base_w + rng.integers(-127, 128, base_w.shape) * adapt.DELTA_STEP,
                           log_scale=base_ls + rng.integers(-127, 128, base_ls.shape) * adapt.DELTA_STEP)
        blob = adapt.pack_deltas(sm, w, "int8")
        assert len(blob) == size
        back = adapt.unpack_deltas(sm, blob, channels, "int8")
        assert np.array_equal(back.weight, w.weight) and np.array_equal(back.log_scale, w.log_scale)
        with pytest.raises(ValueError, match="bytes"):
            adapt.unpack_deltas(sm, blob[:-1], channels, "int8")


def test_small_images_are_not_fitted(coder4):
    weights, info = adapt.fit_image_context(coder4.step_model, kodak_crop(32, 32, index=9))
    assert weights is None and "skipped" in info


def test_fitted_weights_code_the_image_for_less(coder4):
    x = kodak_crop(96, 128, index=9)
    weights, info = adapt.fit_image_context(coder4.step_model, x)
    assert info["patch_bpd_fitted"] < info["patch_bpd_model"] - 0.01, info
    linear = info["candidates"]["linear"]  # the only candidate without a context network
    # linear weights, log-scales, the colour coefficients' shifts per pass and the read-out of
    # the network's last features (9 outputs from the tiny network's 4 features and a bias)
    assert adapt.feature_head_shape(coder4.step_model, 3) == (9, 5)
    # costed as they are written (Rice codes: less than a byte each)
    assert linear["cost_bits"] == 8 * (len(adapt.pack_deltas(coder4.step_model, weights)) + adapt.HEADER_BYTES) \
        if weights is not None else linear["cost_bits"] < 8 * (225 * 3 + 12 + 12 + 45 + adapt.HEADER_BYTES)
    # the fit saw the whole crop, so it is kept only when its saving beats the side data twice over
    assert (weights is not None) == (linear["saving_bits"] > adapt.KEEP_IF_SAVING_OVER_COST * linear["cost_bits"])
    assert info["choice"] == ("linear" if weights is not None else "model")


@pytest.fixture
def always_adapt(monkeypatch):
    """Every fit is kept, and 'too small for its own' means under 300 dims."""
    monkeypatch.setattr(adapt, "KEEP_IF_SAVING_OVER_COST", -1e9)
    monkeypatch.setattr(adapt, "too_small_for_own_context", lambda sm, planes: planes.size < 300)
    monkeypatch.setattr("vdmcodec.codec.too_small_for_own_context", lambda sm, planes: planes.size < 300)


def test_roundtrip_with_each_images_own_weights(coder4, always_adapt):
    rgb, grey = raster(kodak_crop(30, 26, index=4)), raster(kodak_crop(17, 21, index=6), mode="L")
    data, reports, _ = assert_roundtrip(coder4, [rgb, grey])
    header, sections = unpack_container(data)
    assert [e.get("pixel_context") for e in header["images"]] == ["context0", "context1"]
    assert header["coder"]["context_packing"] == "rice"  # Rice codes, smaller than a byte per number
    assert len(sections["context0"]) < 225 * 3 + 12 + 12 + 45 and len(sections["context1"]) < 75 + 4
    assert adapt.unpack_deltas(coder4.step_model, sections["context0"], 3, "rice").feature_head is not None
    assert [r.context_bytes for r in reports] == [len(sections["context0"]), len(sections["context1"])]
    plain = Coder(coder4.loaded, threads=1, adapt_context=False)
    data_plain, _, _ = assert_roundtrip(plain, [rgb, grey])
    assert "pixel_context" not in unpack_container(data_plain)[0]["images"][0]


def test_damaged_weights_section_is_a_corrupt_file(coder4, always_adapt):
    data, _ = compress_images([("a.png", raster(kodak_crop(20, 24, index=2)))], coder4, allow_fallback=False)
    header, sections = unpack_container(data)
    header = {k: v for k, v in header.items() if k != "sections"}
    for bad in (sections["context0"][:-1], b""):
        damaged = pack_container(header, [(k, bad if k == "context0" else v) for k, v in sections.items()])
        with pytest.raises(CorruptFileError):
            decompress_bytes(damaged, coder=coder4)


@pytest.fixture(scope="module")
def coder_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt") / "net.pt"
    save_checkpoint(path, scrambled("xhat", seed=6, passes=4, net=True), "vdmc-test-adapt-net", {"steps": 0})
    return Coder(load_checkpoint(path), threads=1)


def head_bytes(coder) -> int:
    return sum(w.size + b.size for w, b in adapt.model_head(coder.step_model))


def test_deltas_with_the_networks_last_layers_pack_and_unpack_exactly(coder_net):
    sm = coder_net.step_model
    rng = np.random.default_rng(1)
    base_w, base_ls = adapt.model_weights(sm, 3)
    head = tuple((w + rng.integers(-127, 128, w.shape) * adapt.HEAD_DELTA_STEP,
                  b + rng.integers(-127, 128, b.shape) * adapt.HEAD_DELTA_STEP) for w, b in adapt.model_head(sm))
    gains = 1.0 + rng.integers(-127, 128, (11, 2)) * adapt.GAIN_STEP
    w = ContextWeights(weight=base_w, log_scale=base_ls + adapt.DELTA_STEP, head=head, gains=gains)
    blob = adapt.pack_deltas(sm, w, "int8")
    net = sm.model.context_net
    assert len(blob) == 3 * 75 * 3 + 12 + 22 + 11 * 2 * (net.cfg.hidden + 1) == 687 + 22 + head_bytes(coder_net)
    back = adapt.unpack_deltas(sm, blob, 3, "int8")
    assert np.array_equal(back.log_scale, w.log_scale) and np.array_equal(back.gains, gains)
    for (bw, bb), (ww, wb) in zip(back.head, head):
        assert np.array_equal(bw, ww) and np.array_equal(bb, wb)
    short = adapt.unpack_deltas(sm, blob[: 687 + 22], 3, "int8")  # linear weights and gains only
    assert short.head is None and np.array_equal(short.gains, gains)
    with pytest.raises(ValueError, match="bytes"):
        adapt.unpack_deltas(sm, blob[:-1], 3, "int8")


def test_colour_coefficient_shifts_pack_and_unpack_with_or_without_the_head(coder_net):
    sm = coder_net.step_model
    rng = np.random.default_rng(2)
    base_w, base_ls = adapt.model_weights(sm, 3)
    shifts = rng.integers(-127, 128, (4, 3)) * adapt.COEF_STEP
    head = tuple((w, b + adapt.HEAD_DELTA_STEP) for w, b in adapt.model_head(sm))
    for h in (None, head):
        w = ContextWeights(weight=base_w, log_scale=base_ls, head=h, coef_shift=shifts)
        blob = adapt.pack_deltas(sm, w, "int8")
        assert len(blob) == 687 + 22 + 12 + (0 if h is None else head_bytes(coder_net))
        back = adapt.unpack_deltas(sm, blob, 3, "int8")
        assert np.array_equal(back.coef_shift, shifts) and (back.head is None) == (h is None)
        if h is not None:
            assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(back.head, head))
    assert adapt.unpack_deltas(sm, blob[: 687 + 22], 3, "int8").coef_shift is None  # an older file's layout


def _coder_and_torch_bits(sm, weights: ContextWeights, baseline: ContextWeights | None, torch_kwargs):
    """Bits per dim of a Kodak crop under `weights` by the coder (numpy, in coding order)
    and by the fit's torch path (torch_kwargs(aux): the weights' extra parts), and by the
    coder under `baseline`, at one z_0 draw."""
    x = np.ascontiguousarray(kodak_crop(24, 32, index=7).transpose(2, 0, 1))
    g = sm.grids
    xt = (2.0 * x + 1.0) / 256.0 - 1.0
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * np.random.default_rng(4).standard_normal(xt.shape)) / g.delta[0])
    k0 = k0.astype(np.int32)
    coder_bits = sm.p_pixels(k0, weights=weights).bits(x) / x.size
    plain_bits = sm.p_pixels(k0, weights=baseline).bits(x) / x.size
    loc, scale, aux = sm.pixel_params(k0, calls=sm.z0_calls(weights), features=True)
    with torch.no_grad():
        lo, sc = sm.model.context_params(torch.from_numpy(xt)[None], torch.from_numpy((loc + 0.5) / 128.0 - 1.0)[None],
                                         torch.from_numpy(scale / 128.0)[None], torch.from_numpy(aux["channel_coef"])[None],
                                         **torch_kwargs(aux))
        torch_bits = float(-discretized_logistic_logp(torch.from_numpy(x.astype(np.int64))[None], lo, sc).mean()) / math.log(2)
    return coder_bits, torch_bits, plain_bits


def test_colour_coefficient_shifts_agree_between_fit_and_coder(coder_net):
    """The fit's torch path and the coder's numpy path give the same bits with shifts."""
    sm = coder_net.step_model
    base_w, base_ls = adapt.model_weights(sm, 3)
    shifts = np.random.default_rng(3).integers(-60, 60, (4, 3)) * adapt.COEF_STEP
    with_shift = ContextWeights(weight=base_w, log_scale=base_ls, coef_shift=shifts)
    coder_bits, torch_bits, plain_bits = _coder_and_torch_bits(
        sm, with_shift, None, lambda aux: {"coef_shift": torch.from_numpy(shifts)})
    assert abs(coder_bits - plain_bits) > 1e-3  # the shifts matter
    assert coder_bits == pytest.approx(torch_bits, abs=2e-3)


def test_feature_read_out_packs_and_unpacks_with_the_other_parts(coder_net):
    sm = coder_net.step_model
    rng = np.random.default_rng(5)
    base_w, base_ls = adapt.model_weights(sm, 3)
    shape = adapt.feature_head_shape(sm, 3)
    feat = rng.integers(-127, 128, shape) * adapt.FEATURE_STEP
    shifts = rng.integers(-127, 128, (4, 3)) * adapt.COEF_STEP
    head = tuple((w, b + adapt.HEAD_DELTA_STEP) for w, b in adapt.model_head(sm))
    for h in (None, head):
        w = ContextWeights(weight=base_w, log_scale=base_ls, head=h, coef_shift=shifts, feature_head=feat)
        blob = adapt.pack_deltas(sm, w, "int8")
        assert len(blob) == 687 + 22 + 12 + (0 if h is None else head_bytes(coder_net)) + feat.size
        back = adapt.unpack_deltas(sm, blob, 3, "int8")
        assert np.array_equal(back.feature_head, feat) and np.array_equal(back.coef_shift, shifts)
        assert (back.head is None) == (h is None)
    assert adapt.feature_head_shape(sm, 1) is None  # one-channel images have none


def test_feature_read_out_agrees_between_fit_and_coder(coder_net):
    """The fit's torch path and the coder's numpy path give the same bits with a read-out of
    the network's features (at the same number of calls at z_0), and it matters."""
    sm = coder_net.step_model
    base_w, base_ls = adapt.model_weights(sm, 3)
    feat = np.random.default_rng(6).integers(-100, 100, adapt.feature_head_shape(sm, 3)) * adapt.FEATURE_STEP
    with_feat = ContextWeights(weight=base_w, log_scale=base_ls, feature_head=feat)
    sm.z0_ensemble = 4  # as the default effort codes such an image
    try:
        coder_bits, torch_bits, plain_bits = _coder_and_torch_bits(
            sm, with_feat, ContextWeights(weight=base_w, log_scale=base_ls),
            lambda aux: {"feature_head": torch.from_numpy(feat), "features": torch.from_numpy(aux["features"])[None]})
    finally:
        sm.z0_ensemble = 1
    assert abs(coder_bits - plain_bits) > 1e-3
    assert coder_bits == pytest.approx(torch_bits, abs=2e-3)


def test_roundtrip_with_each_images_own_network_layers(coder_net, monkeypatch, always_adapt):
    """Forced to send the network's last layers too, the files still decode exactly."""
    fit = adapt.fit_image_context

    def with_head(sm, planes, seed=0, budget=adapt.FitBudget()):
        weights, info = fit(sm, planes, seed, budget)
        assert weights is not None and info["patch_bpd_fitted"] < info["patch_bpd_model"]
        if weights.head is None:  # the head fit lost on these patches: send a moved head anyway
            weights = ContextWeights(weights.weight, weights.log_scale,
                                     tuple((w, b + adapt.HEAD_DELTA_STEP) for w, b in adapt.model_head(sm)))
        return weights, info

    monkeypatch.setattr("vdmcodec.codec.fit_image_context", with_head)
    rgb, grey = raster(kodak_crop(30, 26, index=4)), raster(kodak_crop(17, 21, index=6), mode="L")
    data, _, _ = assert_roundtrip(coder_net, [rgb, grey])
    sections = unpack_container(data)[1]
    back = adapt.unpack_deltas(coder_net.step_model, sections["context0"], 3, "rice")
    assert back.head is not None and back.gains is not None


def test_archive_of_small_images_shares_one_context(coder4, always_adapt):
    """Images too small for their own weights share one section in an archive; it decodes."""
    imgs = [raster(kodak_crop(8, 10, index=i, top=50 + 7 * i, left=80)) for i in range(1, 6)]
    big = raster(kodak_crop(30, 26, index=8))  # large enough for its own (forced here)
    data, reports, _ = assert_roundtrip(coder4, imgs + [big])
    header, sections = unpack_container(data)
    names = [e.get("pixel_context") for e in header["images"]]
    assert names[:5] == ["context_shared"] * 5 and names[5] == "context5"
    assert reports[0].context_bytes == len(sections["context_shared"]) and reports[1].context_bytes == 0
    assert list(sections).count("context_shared") == 1


def test_shared_context_is_skipped_where_it_does_not_pay(coder4):
    """Without forcing, two tiny images cannot pay for 687 bytes of weights."""
    imgs = [raster(kodak_crop(12, 14, index=i)) for i in (2, 3)]
    data, _, _ = assert_roundtrip(coder4, imgs)
    assert all("pixel_context" not in e for e in unpack_container(data)[0]["images"])


@contextlib.contextmanager
def heads_scaled(coder, factor: float):
    """The context network's last layers multiplied by factor (outputs far too large), then
    put back."""
    net = coder.loaded.model.context_net
    saved = [(w.clone(), b.clone()) for w, b in net.heads()]
    try:
        with torch.no_grad():
            for w, b in net.heads():
                w.mul_(factor)
                b.mul_(factor)
        yield
    finally:
        with torch.no_grad():
            for (w, b), (w0, b0) in zip(net.heads(), saved):
                w.copy_(w0)
                b.copy_(b0)


def test_the_fit_turns_down_a_context_network_that_hurts(coder_net, monkeypatch):
    """A network whose outputs are made ten times too large codes worse; the fit's gains
    bring it back (towards off): the fit codes the patches for clearly less than the same
    fit with the gains held at one."""
    with heads_scaled(coder_net, 10.0):
        x = kodak_crop(96, 128, index=9)
        _, info = adapt.fit_image_context(coder_net.step_model, x, budget=adapt.FitBudget(head=False))
        monkeypatch.setattr(adapt, "GAIN_LR", 0.0)
        _, held = adapt.fit_image_context(coder_net.step_model, x, budget=adapt.FitBudget(head=False))
    assert info["patch_bpd_fitted"] < held["patch_bpd_fitted"] - 0.05, (info, held)


def test_a_large_image_is_judged_on_pixels_beside_the_fitted_patches():
    """The fit sees a few patches; the whole image (or, when large, a grid of tiles)
    judges it, so a fit that only suits its patches is not kept."""
    mid = np.zeros((3, 300, 400))
    patches = adapt._patches(mid, adapt.FitBudget().patches)
    assert len(patches) == 16 and adapt._held_out(mid, patches)[0] is mid
    big = np.zeros((3, 2000, 3000))
    tiles = adapt._held_out(big, adapt._patches(big))
    side = round(math.sqrt(adapt.HELD_OUT_PIXELS / (adapt.HELD_OUT_TILE[0] * adapt.HELD_OUT_TILE[1])))
    assert len(tiles) == side * side == 64 and tiles[0].shape == (3,) + adapt.HELD_OUT_TILE
    small = np.zeros((3, 60, 80))
    assert adapt._held_out(small, adapt._patches(small)) is None  # the fit saw it whole


def test_groups_turned_off_skip_the_network_and_decode_exactly(coder_net, monkeypatch, always_adapt):
    """Gains of zero turn a group's network off (its shift and scale change are zero, the
    network is not run); files with half the groups off decode exactly."""
    fit = adapt.fit_image_context

    def half_off(sm, planes, seed=0, budget=adapt.FitBudget()):
        weights, info = fit(sm, planes, seed, budget)
        gains = np.ones((adapt.n_gains(sm) // 2, 2))
        gains[::2] = 0.0
        calls.clear()  # from here on, only the coder runs the network
        return ContextWeights(weights.weight, weights.log_scale, gains=gains), info

    calls = []
    monkeypatch.setattr("vdmcodec.codec.fit_image_context", half_off)
    features = coder_net.loaded.model.context_net.features
    monkeypatch.setattr(coder_net.loaded.model.context_net, "features",
                        lambda g, *a, **k: calls.append(g) or features(g, *a, **k))
    data, _, _ = assert_roundtrip(coder_net, [raster(kodak_crop(30, 26, index=5))])
    assert calls and all(g % 2 == 1 for g in calls)
    gains = adapt.unpack_deltas(coder_net.step_model, unpack_container(data)[1]["context0"], 3, "rice").gains
    assert not gains[::2].any() and (gains[1::2] == 1.0).all()


def test_a_network_that_hurts_everywhere_is_turned_off(coder_net, monkeypatch):
    """With the network's outputs made far too large, the held-out pixels choose a fit that
    turns it off or down, not the shipped network."""
    with heads_scaled(coder_net, 30.0):
        x = kodak_crop(200, 300, index=3)
        weights, info = adapt.fit_image_context(coder_net.step_model, x, budget=adapt.FitBudget(steps=30, head=False))
    assert weights is not None and info["choice"] in ("off", "linear"), info
    assert info["held_out_bpd_fitted"] < info["held_out_bpd_model"] - 0.05, info
    assert info["candidates"]["off"]["held_out_bpd"] < info["held_out_bpd_model"], info


def test_without_the_off_candidate_the_linear_fit_turns_a_hurting_network_down(coder_net):
    """FitBudget(off=False), the default effort's: one candidate fewer, and the linear fit's
    gains still turn down a network that hurts."""
    with heads_scaled(coder_net, 30.0):
        x = kodak_crop(200, 300, index=3)
        budget = adapt.FitBudget(steps=30, head=False, off=False)
        weights, info = adapt.fit_image_context(coder_net.step_model, x, budget=budget)
    assert set(info["candidates"]) == {"linear"}, info
    assert weights is not None and info["held_out_bpd_fitted"] < info["held_out_bpd_model"] - 0.05, info


def test_a_batched_fit_steps_on_patches_drawn_afresh_and_still_fits(coder_net, monkeypatch):
    """FitBudget.batch: every Adam step sees `batch` of the patches (a different draw each
    step), and the fit still finds what the held-out pixels want (here: a network whose
    outputs are far too large turned down)."""
    model = coder_net.loaded.model
    sizes, firsts = [], []
    context_params = model.context_params

    def recording(xt, *a, **k):
        sizes.append(xt.shape[0])
        firsts.append(float(xt[:, :, 0, 0].sum()))
        return context_params(xt, *a, **k)

    monkeypatch.setattr(model, "context_params", recording)
    budget = adapt.FitBudget(steps=30, patches=(4, 4), head=False, batch=4)
    with heads_scaled(coder_net, 30.0):
        weights, info = adapt.fit_image_context(coder_net.step_model, kodak_crop(200, 300, index=3), budget=budget)
    steps = [f for n, f in zip(sizes, firsts) if n == 4]
    assert len(steps) == 2 * 30 and sizes.count(16) >= 1  # two candidates (linear, off); the rest see all 16
    assert len(set(steps)) > 10  # the draws differ from step to step
    assert weights is not None and info["held_out_bpd_fitted"] < info["held_out_bpd_model"] - 0.05, info


def test_model_trained_on_ensembled_calls_gives_them_to_every_image(tmp_path, monkeypatch):
    """A model whose context saw z0_ensemble calls at z_0 (VDMConfig.context_calls) codes an
    image with the model's own weights at those calls too; the decoder, loading the model
    afresh, agrees, and the config of a one-call model keeps its old form (and hash)."""
    model = scrambled("xhat", seed=6, passes=4, net=True)
    assert "context_calls" not in model.cfg.to_dict()
    model.cfg.context_calls = 4
    path = tmp_path / "calls4.pt"
    save_checkpoint(path, model, "vdmc-test-calls4", {"steps": 0})
    coder = Coder(load_checkpoint(path), threads=1, z0_ensemble=4)
    assert coder.loaded.model.cfg.context_calls == 4
    assert coder.step_model.z0_calls(None) == 4
    seen = []
    pixel_params_each = type(coder.step_model).pixel_params_each

    def spy(self, k0, context, calls, features=False):
        seen.append(tuple(calls))
        return pixel_params_each(self, k0, context, calls, features)

    monkeypatch.setattr(type(coder.step_model), "pixel_params_each", spy)
    rgb = raster(kodak_crop(20, 24, index=3))
    data, _, _ = assert_roundtrip(Coder(load_checkpoint(path), threads=1, z0_ensemble=4, adapt_context=False),
                                  [rgb], checkpoint=str(path))
    assert seen and all(calls == (4,) for calls in seen)  # encode and decode alike
    assert "pixel_context" not in unpack_container(data)[0]["images"][0]


def _same_weights(a: ContextWeights, b: ContextWeights) -> bool:
    def same(x, y):
        if x is None or y is None:
            return x is None and y is None
        if isinstance(x, tuple):
            return all(same(p, q) for p, q in zip(x, y))
        return np.array_equal(x, y)
    return all(same(getattr(a, f), getattr(b, f)) for f in ("weight", "log_scale", "head", "gains", "coef_shift",
                                                           "feature_head"))


def test_rice_packing_gives_back_every_layout_and_is_smaller_on_small_steps(coder_net):
    """Each layout of parts (shifts, last layers, read-out) through the Rice packing gives the
    int8 packing's weights back; small steps cost a few bits, large ones about a byte."""
    sm = coder_net.step_model
    rng = np.random.default_rng(7)
    base_w, base_ls = adapt.model_weights(sm, 3)
    for spread in (2, 127):
        steps = lambda shape: np.clip(np.rint(rng.laplace(0, spread / 3, shape)), -127, 127)  # noqa: E731
        head = tuple((w + steps(w.shape) * adapt.HEAD_DELTA_STEP, b + steps(b.shape) * adapt.HEAD_DELTA_STEP)
                     for w, b in adapt.model_head(sm))
        shifts = steps((4, 3)) * adapt.COEF_STEP
        feat = steps(adapt.feature_head_shape(sm, 3)) * adapt.FEATURE_STEP
        for cs, h, fh in ((None, None, None), (shifts, None, None), (shifts, head, None), (shifts, head, feat),
                          (None, head, None), (shifts, None, feat)):
            w = ContextWeights(weight=base_w + steps(base_w.shape) * adapt.DELTA_STEP, log_scale=base_ls, head=h,
                               gains=1.0 + steps((11, 2)) * adapt.GAIN_STEP, coef_shift=cs, feature_head=fh)
            raw, rice = adapt.pack_deltas(sm, w, "int8"), adapt.pack_deltas(sm, w, "rice")
            back = adapt.unpack_deltas(sm, rice, 3, "rice")
            assert _same_weights(back, adapt.unpack_deltas(sm, raw, 3, "int8")) and _same_weights(back, w)
            assert len(rice) < (0.5 if spread == 2 else 1.05) * len(raw)
    with pytest.raises(ValueError, match="layout"):
        adapt.unpack_deltas(sm, bytes([4]) + rice[1:], 3, "rice")  # a read-out without the shifts
    with pytest.raises(ValueError, match="layout"):
        adapt.unpack_deltas(sm, bytes([1]) + rice[1:], 1, "rice")  # shifts for one plane
    with pytest.raises(ValueError, match="Rice"):
        adapt.unpack_deltas(sm, rice[:-3], 3, "rice")


def test_rice_parts_refuse_streams_that_do_not_fit():
    from vdmcodec.coding import rice
    import doctest
    assert doctest.testmod(rice, raise_on_error=True).attempted > 0
    blob = rice.pack_parts([np.arange(-20, 20)])
    with pytest.raises(ValueError, match="early"):
        rice.unpack_parts(blob[:-2], [40])
    with pytest.raises(ValueError, match="left over"):
        rice.unpack_parts(blob + b"\x00", [40])
    with pytest.raises(ValueError, match="int8"):
        rice.pack_parts([np.array([128])])
