"""The pixel decoder p(x | z_0): the "xhat" decoder (network estimate and per-pixel scale),
the old "z0" decoder that earlier checkpoints use, and the upgrade from one to the other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_roundtrip, crop_batch, kodak_crop, raster, tiny_config, train_steps
from vdmcodec.checkpoints import load_checkpoint, save_checkpoint
from vdmcodec.codec import Coder
from vdmcodec.coding.pixels import PixelContext
from vdmcodec.coding.steps import StepModel
from vdmcodec.model.context_net import ContextNetConfig
from vdmcodec.model.vdm import VDM, VDMConfig, alpha2, pass_map_np, sigma2, upgrade_context_passes
from vdmcodec.train import load_grown


def scrambled(decoder: str, seed: int = 0, context: bool | None = None, passes: int = 4, net: bool = False) -> VDM:
    """A tiny model whose zero-initialised outputs are random, as after training.
    context: the multi-pass, colour-ordered pixel decoder (default: with "xhat"); net: with
    a context network (context_net.py) too."""
    context = decoder == "xhat" if context is None else context
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cfg = tiny_config(steps=8, decoder=decoder, pixel_context=context, context_passes=passes,
                          context_net=ContextNetConfig(hidden=8, passes=passes) if net else None)
        cfg.net.decoder_head = decoder == "xhat"
        cfg.net.variance_head = decoder == "xhat"
        cfg.net.channel_head = context
        model = VDM(cfg)
        with torch.no_grad():
            for name, p in model.net.named_parameters():
                if name.endswith("conv2.weight") or name.startswith("out."):
                    p.normal_(0.0, 0.05)
            if context:
                model.context_weight.normal_(0.0, 0.1)
                model.context_log_scale.normal_(0.0, 0.2)
            if net:
                for block in model.context_net.nets:
                    block[-1].weight.normal_(0.0, 0.3)
    return model.eval()


def test_configs_without_decoder_field_load_as_z0_decoder():
    d = VDMConfig().to_dict()
    del d["decoder"]
    del d["net"]["decoder_head"]
    del d["pixel_context"]
    del d["net"]["channel_head"]
    cfg = VDMConfig.from_dict(d)
    assert cfg.decoder == "z0" and cfg.net.decoder_head is False
    assert cfg.pixel_context is False and cfg.net.channel_head is False
    assert VDMConfig.from_dict(VDMConfig().to_dict()).decoder == "xhat"


def test_unknown_decoder_is_rejected():
    d = VDMConfig().to_dict()
    d["decoder"] = "magic"
    with pytest.raises(ValueError, match="decoder"):
        VDMConfig.from_dict(d)


def test_recon_subset_is_the_full_term_rescaled():
    model = scrambled("xhat")
    x = crop_batch(4, 16, seed=3)
    with torch.no_grad():
        full = model.terms(x, generator=torch.Generator().manual_seed(5))
        part = model.terms(x, generator=torch.Generator().manual_seed(5), recon_batch=1)
    assert torch.all(part["recon"][1:] == 0)
    assert float(part["recon"][0]) == pytest.approx(4 * float(full["recon"][0]), rel=1e-5)
    assert torch.allclose(part["diffusion"], full["diffusion"], rtol=1e-5)


def test_recon_term_trains_the_network_and_its_scale_head():
    model = scrambled("xhat")
    x = crop_batch(2, 16, seed=1)
    model.terms(x, generator=torch.Generator().manual_seed(0))["recon"].sum().backward()
    grad = model.net.out.weight.grad
    c = model.cfg.net.image_channels
    assert grad[:c].abs().sum() > 0 and grad[c:].abs().sum() > 0  # location (eps) and scale rows


@pytest.mark.slow
def test_shipped_model_xhat_decoder_beats_z0_location():
    """On real pixels the network's estimate at z_0 is a better centre than z_0 / alpha_0, and
    the pixel context (neighbours and colours coded before) improves on it again."""
    from helpers import DEFAULT_CHECKPOINT
    from vdmcodec.model.vdm import discretized_logistic_logp

    model = load_checkpoint(DEFAULT_CHECKPOINT).model
    assert model.cfg.decoder == "xhat"
    x = torch.from_numpy(kodak_crop(64, 96, index=5)).permute(2, 0, 1)[None].long()
    g0 = model.schedule(torch.tensor([0.0], dtype=torch.float64))[0].detach()
    a0, s0 = torch.sqrt(alpha2(g0)), torch.sqrt(sigma2(g0))
    z0 = (a0 * ((2.0 * x.double() + 1.0) / 256.0 - 1.0) + s0 * torch.randn(x.shape, dtype=torch.float64)).float()
    with torch.no_grad():
        loc, scale = model.decoder_params(z0, g0, x=x)
        xhat_bits = -discretized_logistic_logp(x, loc, scale).mean() / np.log(2.0)
        z0_bits = -discretized_logistic_logp(x, z0.double() / a0, model.decoder_scale(g0)).mean() / np.log(2.0)
        assert model.cfg.pixel_context
        model.cfg.pixel_context = False  # the same network's estimate without the pixel context
        try:
            base_loc, base_scale = model.decoder_params(z0, g0)
        finally:
            model.cfg.pixel_context = True
        base_bits = -discretized_logistic_logp(x, base_loc, base_scale).mean() / np.log(2.0)
    assert float(xhat_bits) < float(z0_bits) - 0.1, (float(xhat_bits), float(z0_bits))
    assert float(xhat_bits) < float(base_bits) - 0.1, (float(xhat_bits), float(base_bits))


@pytest.mark.parametrize("context,passes,net", [(False, 2, False), (True, 2, False), (True, 4, False),
                                                (True, 4, True), (True, 2, True)])
def test_coder_pixel_distribution_matches_training_decoder(context, passes, net):
    """The coder's p(x | z_0), pixel by pixel in its coding order, is the decoder that
    training optimised (same loc and scale; teacher-forced with the true pixels)."""
    model = scrambled("xhat", context=context, passes=passes, net=net)
    sm = StepModel(model, model.schedule.table(8).numpy())
    x = np.transpose(kodak_crop(12, 20), (2, 0, 1))
    g = sm.grids
    xt = (2.0 * x.astype(np.float64) + 1.0) / 256.0 - 1.0
    k0 = np.rint((g.alpha[0] * xt + g.sigma[0] * np.random.default_rng(0).standard_normal(xt.shape)) / g.delta[0])
    k0 = k0.astype(np.int32)
    loc, scale = sm.p_pixels(k0).params(x)
    z0 = torch.from_numpy(k0 * g.delta[0]).float()[None]
    g0 = torch.tensor(g.gamma[0], dtype=torch.float64)
    with torch.no_grad():
        t_loc, t_scale = model.decoder_params(z0, g0, x=torch.from_numpy(x.astype(np.int64))[None])
    t_loc_levels = (t_loc[0] + 1.0) * 128.0 - 0.5
    assert np.allclose(loc, t_loc_levels.numpy(), atol=2e-3)
    assert np.allclose(scale, t_scale[0].numpy() * 128.0, rtol=1e-3)
    if net:  # the network moved the scales of the later passes (not only per pass)
        pm = pass_map_np(x.shape[1], x.shape[2], passes)
        assert np.ptp(scale[:, pm == 1] / sm.pixel_params(k0)[1][:, pm == 1]) > 0.1
    assert np.ptp(scale) > 0  # per-pixel, not one scale for all
    if context:  # the context really moved every later pass: not the base decoder
        base_loc, _, _ = sm.pixel_params(k0)
        pm = pass_map_np(x.shape[1], x.shape[2], passes)
        for p in range(1, passes):
            assert np.abs(loc - base_loc)[:, pm == p].mean() > 1e-2, p


@pytest.mark.parametrize("passes", [2, 4])
def test_each_pass_sees_only_pixels_of_earlier_passes(passes):
    """The coder's shift for pass p changes with the pixels of earlier passes and with no other."""
    rng = np.random.default_rng(passes)
    c, h, w = 3, 7, 9
    ctx = PixelContext(weight=rng.normal(size=((passes - 1), c, c, 5, 5)), log_scale=np.zeros((passes, c)),
                       coef=np.zeros((3, h, w)))
    pm = pass_map_np(h, w, passes)
    # (even, even), (odd, odd), (even, odd), (odd, even) on 7 x 9: 4*5, 3*4, 4*4, 3*5
    assert np.bincount(pm.ravel()).tolist() == ([32, 31] if passes == 2 else [20, 12, 16, 15])
    loc, scale = rng.normal(128, 5, (c, h, w)), rng.uniform(1, 3, (c, h, w))
    x = rng.integers(100, 156, (c, h, w)).astype(np.float64)
    for p in range(1, passes):
        base = ctx.spatial_shift(p, x, loc, scale, pm)
        later = x + 7.0 * (pm >= p)
        assert np.array_equal(base[:, pm == p], ctx.spatial_shift(p, later, loc, scale, pm)[:, pm == p])
        earlier = x + 7.0 * (pm < p)
        assert np.all(base[:, pm == p] != ctx.spatial_shift(p, earlier, loc, scale, pm)[:, pm == p])
        assert np.all(base[:, pm != p] == 0)


def assert_same_terms(old: VDM, new: VDM, rtol: float) -> None:
    """Both models give the same NELBO terms on the same crops and noise."""
    x = crop_batch(2, 16, seed=4)
    with torch.no_grad():
        t_old = old.terms(x, generator=torch.Generator().manual_seed(0))
        t_new = new.terms(x, generator=torch.Generator().manual_seed(0))
    for k in ("recon", "prior", "diffusion"):
        assert torch.allclose(t_old[k], t_new[k], rtol=rtol), k


def test_two_pass_model_upgrades_to_four_passes_without_changing_a_term():
    """Passes 1 and 2 of four are the old anchors and passes 3 and 4 the old second pass, which
    keep the old weights on the old anchors only: every pixel keeps its distribution."""
    old = scrambled("xhat", passes=2, seed=3)
    new = VDM(tiny_config(steps=8, decoder="xhat", context_passes=4)).eval()
    assert load_grown(new, upgrade_context_passes(old.state_dict(), 4)) is True
    assert_same_terms(old, new, rtol=1e-9)
    four = new.state_dict()
    assert upgrade_context_passes(four, 4) is four  # already four passes: left alone
    with pytest.raises(ValueError, match="passes"):
        upgrade_context_passes(old.state_dict(), 3)


def test_configs_without_context_passes_are_two_pass():
    d = VDMConfig().to_dict()
    assert d["context_passes"] == 4
    del d["context_passes"]
    assert VDMConfig.from_dict(d).context_passes == 2
    d["context_passes"] = 3
    with pytest.raises(ValueError, match="context_passes"):
        VDMConfig.from_dict(d)


def test_pixel_context_upgrade_keeps_every_term():
    """Zero context weights, scales and colour coefficients are the decoder without context."""
    old = scrambled("xhat", context=False)
    new = VDM(tiny_config(steps=8, decoder="xhat", pixel_context=True)).eval()
    assert load_grown(new, old.state_dict()) is False
    assert_same_terms(old, new, rtol=1e-6)


def test_pixel_context_needs_the_xhat_decoder():
    d = tiny_config(steps=8, decoder="z0").to_dict()
    d["pixel_context"] = True
    with pytest.raises(ValueError, match="pixel_context"):
        VDMConfig.from_dict(d)


def test_context_decoder_learns_from_neighbours():
    """On real pixels, fitting only the context weights, scales and colour coefficients lowers
    the reconstruction term: the already-coded pixels carry information about the rest."""
    model = scrambled("xhat", context=False, seed=1)
    new = VDM(tiny_config(steps=8, decoder="xhat", pixel_context=True))
    load_grown(new, model.state_dict())
    x = torch.from_numpy(np.stack([np.transpose(kodak_crop(24, 24, index=i), (2, 0, 1)) for i in (1, 5)]).astype(np.int64))
    params = [new.context_weight, new.context_log_scale]
    opt = torch.optim.Adam(params, lr=0.05)

    def recon() -> torch.Tensor:
        return new.terms(x, generator=torch.Generator().manual_seed(3))["recon"].mean()

    with torch.no_grad():
        before = float(recon())
    for _ in range(30):
        opt.zero_grad()
        recon().backward()
        opt.step()
    with torch.no_grad():
        after = float(recon())
    assert after < before - 0.05, (before, after)


def test_z0_model_upgrades_to_xhat_and_variance_heads_without_changing_eps():
    old = scrambled("z0")
    cfg = tiny_config(steps=8, decoder="xhat")
    assert cfg.net.decoder_head and cfg.net.variance_head
    new = VDM(cfg).eval()
    assert load_grown(new, old.state_dict()) is False
    z = torch.randn(1, 3, 8, 12)
    gamma = torch.tensor([-2.0])
    with torch.no_grad():
        eps_old = old.net(z, gamma)
        eps_new, aux = new.net(z, gamma, with_aux=True)
    assert torch.allclose(eps_old, eps_new, atol=1e-6)  # 9 output channels block differently
    assert all(torch.count_nonzero(v) == 0 for v in aux.values())
    x = crop_batch(2, 16, seed=2)
    with torch.no_grad():
        t_old = old.terms(x, generator=torch.Generator().manual_seed(0))
        t_new = new.terms(x, generator=torch.Generator().manual_seed(0))
    # zero new heads: lambda = 0 is the fixed-variance model, so the diffusion term is unchanged
    assert torch.allclose(t_old["diffusion"], t_new["diffusion"], rtol=1e-5)


@pytest.mark.parametrize("decoder,context,passes,net", [("z0", False, 2, False), ("xhat", False, 2, False),
                                                        ("xhat", True, 2, False), ("xhat", True, 4, False),
                                                        ("xhat", True, 4, True)])
def test_roundtrip_with_each_decoder(tmp_path, decoder, context, passes, net):
    model = scrambled(decoder, seed=2, context=context, passes=passes, net=net)
    path = tmp_path / f"{decoder}.pt"
    save_checkpoint(path, model, f"vdmc-test-{decoder}", {"steps": 0})
    coder = Coder(load_checkpoint(path), threads=1)
    assert coder.loaded.model.cfg.decoder == decoder
    assert coder.loaded.model.cfg.pixel_context == context
    assert not context or coder.loaded.model.cfg.context_passes == passes
    assert (coder.loaded.model.context_net is not None) == net
    grey = raster(kodak_crop(14, 17, index=7), mode="L")
    assert_roundtrip(coder, [raster(kodak_crop(21, 19)), raster(kodak_crop(9, 33, index=3)), grey])


def test_fresh_context_network_keeps_every_term():
    """A model given a new context network (its last layer zero) codes as it did before."""
    from vdmcodec.train_context import with_context_net

    old = scrambled("xhat", seed=5)
    new = with_context_net(old, hidden=8).eval()
    assert new.context_net is not None
    assert_same_terms(old, new, rtol=1e-6)


def test_files_of_the_starting_model_decode_with_the_checkpoint_that_grew_from_it(tmp_path, monkeypatch):
    """A checkpoint made from another by training only its context carries that model as a
    difference, so files naming the old model decode with the new checkpoint alone."""
    from vdmcodec.checkpoints import earlier_models, file_sha256
    from vdmcodec.codec import compress_images, decompress_bytes, find_model_for
    from vdmcodec.train_context import with_context_net

    old_path, new_path = tmp_path / "old" / "a.pt", tmp_path / "new" / "b.pt"
    save_checkpoint(old_path, scrambled("xhat", seed=3), "vdmc-test-old", {"steps": 0})
    new = with_context_net(load_checkpoint(old_path).model, hidden=8)
    with torch.no_grad():
        new.context_weight.add_(0.05)
        new.context_net.nets[0][-1].weight.normal_(0.0, 0.3)
    save_checkpoint(new_path, new, "vdmc-test-new", {"steps": 0}, earlier=earlier_models(old_path))
    img = raster(kodak_crop(16, 24, index=5))
    data, _ = compress_images([("a", img)], Coder(load_checkpoint(old_path), threads=1), allow_fallback=False)
    old_path.unlink()
    monkeypatch.setenv("VDMCODEC_CHECKPOINT", str(new_path))
    from vdmcodec.container import unpack_container
    lm = find_model_for(unpack_container(data)[0]["model"]["sha256"])
    assert lm.model_id == "vdmc-test-old" and lm.model.context_net is None
    assert lm.sha256 != file_sha256(new_path)
    (_, back), = decompress_bytes(data)
    assert np.array_equal(back.planes, img.planes)
    # and a newer checkpoint passes it on
    newer_path = tmp_path / "newer.pt"
    save_checkpoint(newer_path, load_checkpoint(new_path).model, "vdmc-test-newer", {},
                    earlier=earlier_models(new_path))
    assert load_earlier_ids(newer_path) == ["vdmc-test-new", "vdmc-test-old"]


def load_earlier_ids(path) -> list[str]:
    from vdmcodec.checkpoints import read_checkpoint

    return [e["model_id"] for e in read_checkpoint(path).get("earlier", [])]


@pytest.mark.parametrize("passes", [2, 4])
def test_channel_groups_see_only_what_is_coded_before_them(passes):
    """Group (p, c) of the channel context network changes with the residuals of earlier
    passes and of channels before c in pass p, and with nothing coded later."""
    model = scrambled("xhat", passes=passes, net=True)
    rng = np.random.default_rng(passes + 10)
    c, h, w = 3, 9, 11
    ctx = PixelContext.from_model(model, rng.normal(size=(3, h, w)), c)
    pm = pass_map_np(h, w, passes)
    loc, scale = rng.normal(128, 5, (c, h, w)), rng.uniform(1, 3, (c, h, w))
    x = rng.integers(100, 156, (c, h, w)).astype(np.float64)
    chans = np.arange(c)[:, None, None]
    for p, ch in model.context_net.groups:
        before = (pm < p) | ((pm == p) & (chans < ch))
        base = ctx.group_refine(p, ch, x, loc, scale, pm)
        later = ctx.group_refine(p, ch, x + 7.0 * ~before, loc, scale, pm)
        earlier = ctx.group_refine(p, ch, x + 7.0 * before, loc, scale, pm)
        for b, l, e in zip(base, later, earlier):
            assert np.array_equal(b, l), (p, ch)
            assert np.abs(b - e)[pm == p].mean() > 1e-3, (p, ch)
            assert np.all(b[pm != p] == 0)
