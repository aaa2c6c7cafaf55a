"""The VDM: schedule, NELBO terms against the DESIGN.md formulas, training signal, checkpoints."""

from __future__ import annotations

import math
import struct
import zipfile

import numpy as np
import pytest
import torch

from helpers import crop_batch, kodak_crop, tiny_config
from vdmcodec.checkpoints import file_sha256, load_checkpoint, save_checkpoint
from vdmcodec.errors import CheckpointError
from vdmcodec.model.schedule import LearnedSchedule
from vdmcodec.model.vdm import VDM, discretized_logistic_logp, reverse_log_var

LN2 = math.log(2.0)


def fresh_model(steps: int = 8, seed: int = 0, scramble: bool = True) -> VDM:
    """A tiny VDM; `scramble` gives the zero-initialised output convolutions random weights so
    that eps_hat differs from z (as after training)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VDM(tiny_config(steps=steps))
        if scramble:
            with torch.no_grad():
                for name, p in model.net.named_parameters():
                    if name.endswith("conv2.weight") or name.startswith("out."):
                        p.normal_(0.0, 0.05)
    return model


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("steps", [4, 64, 1000])
def test_schedule_table_strictly_increasing_float64(steps):
    sched = LearnedSchedule()
    table = sched.table(steps)
    assert table.dtype == torch.float64 and table.shape == (steps + 1,)
    assert torch.all(torch.diff(table) > 0)
    assert table[0].item() == pytest.approx(-13.3, abs=1e-6)
    assert table[-1].item() == pytest.approx(5.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_schedule_monotone_after_perturbing_raw_weights(seed):
    gen = torch.Generator().manual_seed(seed)
    sched = LearnedSchedule()
    with torch.no_grad():
        for name in ("w1", "w2", "b2", "w3"):
            p = getattr(sched, name)
            p.add_(3.0 * torch.randn(p.shape, generator=gen))
        sched.gamma0.add_(torch.randn((), generator=gen))
        sched.gamma1.add_(torch.randn((), generator=gen))
    table = sched.table(256)
    assert torch.all(torch.diff(table) > 0), f"not increasing at {torch.nonzero(torch.diff(table) <= 0)}"
    # the endpoints are exactly the learned gamma0 and gamma1
    assert table[0].item() == pytest.approx(sched.gamma0.item(), abs=1e-9)
    assert table[-1].item() == pytest.approx(sched.gamma1.item(), abs=1e-9)
    # and the continuous schedule has a positive derivative everywhere
    t = torch.rand(64, generator=gen, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(sched(t).sum(), t)
    assert torch.all(grad > 0)


def test_schedule_stays_increasing_when_gamma1_falls_below_gamma0():
    sched = LearnedSchedule(gamma0=-3.0, gamma1=-8.0)
    table = sched.table(64)
    assert torch.all(torch.diff(table) > 0)
    assert table[-1].item() - table[0].item() == pytest.approx(1.0)  # MIN_SPAN


# ----------------------------------------------------------------------------- NELBO terms
def _check_terms(terms: dict, batch: int) -> None:
    for k in ("recon", "prior", "diffusion", "nelbo"):
        v = terms[k]
        assert v.shape == (batch,), k
        assert torch.all(torch.isfinite(v)), k
        assert torch.all(v >= 0), (k, v)
    assert torch.allclose(terms["nelbo"], terms["recon"] + terms["prior"] + terms["diffusion"])


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("source", ["random", "real"])
def test_terms_finite_and_non_negative(tiny_loaded, channels, source):
    model = tiny_loaded.model
    T = model.steps
    if source == "random":
        x = torch.randint(0, 256, (T, 3, 12, 20), generator=torch.Generator().manual_seed(1))
    else:
        x = crop_batch(T, 12, seed=3)
    if channels == 1:
        x = (x[:, :1] * 299 + x[:, 1:2] * 587 + x[:, 2:3] * 114 + 500) // 1000
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _check_terms(model.terms(x, generator=gen), T)  # stratified random steps
        _check_terms(model.terms(x, step_index=torch.arange(1, T + 1), generator=gen), T)  # every step
        # extreme pixels (all 0, all 255) are the tails of the pixel decoder
        ext = torch.zeros_like(x)
        ext[::2] = 255
        _check_terms(model.terms(ext, step_index=torch.full((T,), 1), generator=gen), T)


def test_terms_untrained_model_reasonable():
    """An untrained net predicts eps_hat = z; the NELBO is large but finite, and the prior
    and reconstruction terms are tiny at the default schedule ends."""
    model = fresh_model(scramble=False)
    with torch.no_grad():
        t = model.terms(crop_batch(4, 16), generator=torch.Generator().manual_seed(0))
    _check_terms(t, 4)
    assert torch.all(t["prior"] < 0.01) and torch.all(t["recon"] < 0.2)


def test_loss_decreases_on_fixed_batch():
    model = fresh_model(steps=8)
    x = crop_batch(4, 16, seed=5)
    steps = torch.tensor([1, 3, 5, 8])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now():
        return model.terms(x, step_index=steps, generator=torch.Generator().manual_seed(42))["nelbo"].mean()

    losses = []
    for _ in range(6):
        loss = loss_now()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_now().item()
    seq = losses + [final]
    assert all(b < a for a, b in zip(seq, seq[1:])), seq  # same noise and steps: a smooth objective
    assert final < losses[0] * 0.99, seq


# ----------------------------------------------------------------------------- diffusion term = KL sum
def reference_step_kl_bits(model: VDM, x: torch.Tensor, z: torch.Tensor, i: int) -> float:
    """KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i)) in bits, summed over dims, straight from
    DESIGN.md section 1 in float64 (p uses x_hat = (z_i - sigma_i eps_hat) / alpha_i, unclipped)."""
    T = model.steps
    g = model.schedule(torch.tensor([(i - 1) / T, i / T], dtype=torch.float64)).detach()
    a2 = torch.sigmoid(-g)
    s2 = torch.sigmoid(g)
    a_prev, a_i = a2[0].sqrt(), a2[1].sqrt()
    s2_prev, s2_i = s2[0], s2[1]
    a_ts = a_i / a_prev
    s2_ts = s2_i - a_ts**2 * s2_prev
    coef_z = a_ts * s2_prev / s2_i
    coef_x = a_prev * s2_ts / s2_i
    post_var = s2_ts * s2_prev / s2_i

    xt = (2.0 * x.double() + 1.0) / 256.0 - 1.0
    with torch.no_grad():
        eps_hat, aux = model.net(z, g[1].float().reshape(1), with_aux=True)
    eps_hat = eps_hat.double()
    var_p = post_var * torch.exp(reverse_log_var(aux["reverse_var"].double()))  # learned per-pixel variance
    zd = z.double()
    x_hat = (zd - s2_i.sqrt() * eps_hat) / a_i
    mu_q = coef_z * zd + coef_x * xt
    mu_p = coef_z * zd + coef_x * x_hat
    # KL of two Gaussians, written out
    kl = (0.5 * torch.log(var_p / post_var) + (post_var + (mu_q - mu_p) ** 2) / (2.0 * var_p) - 0.5).sum()
    return float(kl) / LN2


@pytest.mark.parametrize("use_trained", [True, False])
def test_diffusion_term_equals_sum_of_step_kls(tiny_loaded, use_trained):
    model = tiny_loaded.model if use_trained else fresh_model(steps=8, seed=3)
    T = model.steps
    x1 = torch.from_numpy(kodak_crop(10, 14).astype(np.int64)).permute(2, 0, 1)
    x = x1[None].repeat(T, 1, 1, 1)  # image k is evaluated at step k + 1
    steps = torch.arange(1, T + 1)
    seed = 1234
    with torch.no_grad():
        terms = model.terms(x, step_index=steps, generator=torch.Generator().manual_seed(seed))
    # the same draws as VDM.terms: e0 for z_0, then eps for z_i (no uniform draw: steps are given)
    gen = torch.Generator().manual_seed(seed)
    torch.randn(x.shape, generator=gen)
    eps = torch.randn(x.shape, generator=gen)
    xt = (2.0 * x.float() + 1.0) / 256.0 - 1.0
    g = model.schedule(steps.double() / T).detach()
    z = torch.sqrt(torch.sigmoid(-g)).float()[:, None, None, None] * xt + torch.sqrt(torch.sigmoid(g)).float()[:, None, None, None] * eps

    dims = x1.numel()
    ref = np.array([reference_step_kl_bits(model, x[k : k + 1], z[k : k + 1], k + 1) for k in range(T)]) / dims
    got = terms["diffusion"].double().numpy() / T  # VDM reports T * L_i
    # VDM.terms forms z_i and the squared error in float32, which limits the agreement to
    # float32 level (measured: ~3e-7); a wrong weight, step or clipping would be off by O(1)
    np.testing.assert_allclose(got, ref, rtol=5e-6, atol=0)
    assert got.sum() == pytest.approx(ref.sum(), rel=5e-6)
    assert ref.min() > 0


# ----------------------------------------------------------------------------- pixel decoder
@pytest.mark.parametrize("scale", [1e-6, 1e-4, 2.0**-8, 0.05, 1.0, 10.0])
def test_discretized_logistic_sums_to_one(scale):
    levels = torch.arange(256, dtype=torch.float64)[:, None]
    loc = torch.tensor([-1.3, -1.0, -0.5, 1.0 / 256.0, 0.0, 0.37, 0.999, 1.0, 2.0], dtype=torch.float64)
    logp = discretized_logistic_logp(levels.expand(256, len(loc)), loc[None].expand(256, len(loc)),
                                     torch.tensor(scale, dtype=torch.float64))
    assert torch.all(torch.isfinite(logp) | (logp == -math.inf))
    assert torch.all(logp <= 1e-12)
    total = torch.logsumexp(logp, dim=0)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-9, rtol=0)


def test_discretized_logistic_mode_at_location():
    x = torch.arange(256)
    loc = (2.0 * 77 + 1.0) / 256.0 - 1.0
    logp = discretized_logistic_logp(x, torch.tensor(loc), torch.tensor(0.01))
    assert int(torch.argmax(logp)) == 77


# ----------------------------------------------------------------------------- checkpoints
def fp16_rounded_copy(model: VDM) -> VDM:
    ref = VDM(model.cfg)
    ref.load_state_dict({k: (v.half().float() if k.startswith("net.") else v) for k, v in model.state_dict().items()})
    return ref.eval()


def test_save_load_is_bit_exact_against_fp16_rounded_weights(tmp_path):
    model = fresh_model(steps=8, seed=7)
    with torch.no_grad():
        model.decoder_log_scale.fill_(0.25)
        model.schedule.gamma0.fill_(-12.5)
    path = tmp_path / "m.pt"
    sha = save_checkpoint(path, model, "vdmc-test", {"note": "x", "steps": 3})
    loaded = load_checkpoint(path)
    ref = fp16_rounded_copy(model)

    assert loaded.model_id == "vdmc-test" and loaded.meta == {"note": "x", "steps": 3}
    assert loaded.sha256 == sha == file_sha256(path)
    assert loaded.model.cfg == model.cfg
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # the stored table is the schedule of exactly the stored weights
    assert loaded.gamma_table.dtype == torch.float64
    assert torch.equal(loaded.gamma_table, ref.schedule.table(8))
    assert torch.equal(loaded.gamma_table, loaded.model.schedule.table(8))

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 13, 22, generator=gen)
    gamma = torch.tensor([-11.0, 2.0])
    with torch.no_grad():
        out_loaded = loaded.model.net(z, gamma)
        out_ref = ref.net(z, gamma)
        out_orig = model.net(z, gamma)
    assert torch.equal(out_loaded, out_ref)
    assert not torch.equal(out_loaded, out_orig)  # fp16 rounding did happen (the comparison is not vacuous)
    with torch.no_grad():
        t_loaded = loaded.model.terms(crop_batch(2, 8), step_index=torch.tensor([1, 8]),
                                      generator=torch.Generator().manual_seed(5))
        t_ref = ref.terms(crop_batch(2, 8), step_index=torch.tensor([1, 8]), generator=torch.Generator().manual_seed(5))
    for k in t_ref:
        assert torch.equal(t_loaded[k], t_ref[k]), k


def test_checkpoint_is_weights_only_and_hash_stable(tmp_path, tiny_checkpoint):
    blob = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert blob["format"] == "vdmcodec-checkpoint" and blob["version"] == 1
    assert all(v.dtype == torch.float16 for k, v in blob["state_dict"].items()
               if k.startswith("net.") and v.is_floating_point())
    first = file_sha256(tiny_checkpoint)
    lm1 = load_checkpoint(tiny_checkpoint)
    lm2 = load_checkpoint(tiny_checkpoint)
    assert lm1.sha256 == lm2.sha256 == first == file_sha256(tiny_checkpoint)  # loading never rewrites
    # re-saving the loaded model gives the same weights (fp16 rounding is idempotent)
    again = tmp_path / "again.pt"
    save_checkpoint(again, lm1.model, lm1.model_id, lm1.meta)
    lm3 = load_checkpoint(again)
    for k, v in lm1.model.state_dict().items():
        assert torch.equal(lm3.model.state_dict()[k], v), k
    assert torch.equal(lm3.gamma_table, lm1.gamma_table)


class Arbitrary:
    """Any class outside torch's weights_only allow-list."""


def test_same_weights_saved_twice_give_same_sha256(tmp_path, tiny_loaded):
    a = save_checkpoint(tmp_path / "a.pt", tiny_loaded.model, "m", {})
    b = save_checkpoint(tmp_path / "b.pt", tiny_loaded.model, "m", {})
    assert a == b


def _rewrite_zip_member(src, dst, member_suffix: str, mutate) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(member_suffix):
                data = mutate(data)
            zout.writestr(info, data)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "empty", "flip_pickle", "missing"])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path, tiny_checkpoint, damage):
    raw = tiny_checkpoint.read_bytes()
    bad = tmp_path / "bad.pt"
    if damage == "truncate":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "text":
        bad.write_text("this is not a checkpoint\n")
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "flip_pickle":
        _rewrite_zip_member(tiny_checkpoint, bad, "data.pkl", lambda d: d[:10] + bytes([d[10] ^ 0xFF]) + d[11:])
    elif damage == "missing":
        bad = tmp_path / "does-not-exist.pt"
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_non_checkpoint_torch_files_raise_checkpoint_error(tmp_path, tiny_checkpoint):
    blob = torch.load(tiny_checkpoint, weights_only=True)
    cases = {
        "plain_dict.pt": {"state_dict": blob["state_dict"]},
        "tensor.pt": torch.zeros(3),
        "other_format.pt": {**blob, "format": "something-else"},
        "future_version.pt": {**blob, "version": 99},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)

    # a pickled arbitrary object must be refused by weights_only loading
    torch.save({"format": "vdmcodec-checkpoint", "version": 1, "x": Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def _flip_inside_largest_tensor(src, dst) -> None:
    """Flip one byte inside the stored data of the largest tensor, in place (as disk damage
    would: the zip's own CRC is left stale)."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x55
    dst.write_bytes(bytes(raw))


def test_checkpoint_with_damaged_weights_raises(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad_weights.pt"
    _flip_inside_largest_tensor(tiny_checkpoint, bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_checkpoint_whose_weights_do_not_fit_its_config_raises(tmp_path, tiny_checkpoint):
    blob = torch.load(tiny_checkpoint, weights_only=True)
    blob["config"]["net"]["channels"] = [8, 8, 8]
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_step_kl_is_smallest_at_the_matched_variance():
    """KL(N(m, s^2) || N(m', s^2 e^lam)) is minimised at lam = log(1 + r), where it equals
    1/2 log(1 + r): never more than the fixed-variance r/2."""
    from vdmcodec.model.vdm import step_kl

    r = torch.tensor([0.0, 0.01, 0.5, 4.0, 100.0], dtype=torch.float64)
    best = torch.log1p(r)
    assert torch.allclose(step_kl(r, best), 0.5 * torch.log1p(r))
    assert torch.allclose(step_kl(r, torch.zeros_like(r)), 0.5 * r)
    for d in (-0.3, 0.3):
        assert torch.all(step_kl(r, best + d) > step_kl(r, best))


def test_flip_ensembles_of_several_sizes_equal_each_size_alone():
    """One pass over the four flips gives the 1-, 2- and 4-call ensembles bit for bit (the
    encoder's fit compares them at the same z_0; the coder makes each alone)."""
    from vdmcodec.model.network import flip_ensemble, flip_ensembles

    torch.manual_seed(3)
    model = VDM(tiny_config(steps=8, decoder="xhat", pixel_context=True))
    with torch.no_grad():
        for name, p in model.net.named_parameters():  # scrambled: flips change the outputs
            if name.endswith("conv2.weight") or name.startswith("out."):
                p.normal_(0.0, 0.05)
    z = torch.randn(1, 3, 12, 10)
    gamma = torch.tensor([-5.0])
    with torch.no_grad():
        together = flip_ensembles(model.net, z, gamma, (1, 2, 4, 8), with_features=True)
        assert not torch.equal(together[1][0], together[4][0])
        for n in (1, 2, 4, 8):
            eps, aux = flip_ensemble(model.net, z, gamma, n, with_features=True)
            assert torch.equal(eps, together[n][0])
            assert aux.keys() == together[n][1].keys() and "features" in aux
            assert all(torch.equal(v, together[n][1][k]) for k, v in aux.items())


def test_the_eight_call_ensemble_adds_the_transposed_image_mapped_back():
    """Ensemble 8 (format 10): the four flips of z, then the four flips of z transposed,
    each output mapped back to z's layout (a transposed call's outputs transposed back)."""
    from vdmcodec.model.network import flip_ensemble

    torch.manual_seed(4)
    model = VDM(tiny_config(steps=8, decoder="xhat", pixel_context=True))
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if name.endswith("conv2.weight") or name.startswith("out."):
                p.normal_(0.0, 0.05)
    z = torch.randn(1, 3, 12, 10)
    zt = z.transpose(2, 3).contiguous()
    gamma = torch.tensor([-5.0])
    with torch.no_grad():
        four, _ = flip_ensemble(model.net, z, gamma, 4)
        four_t, _ = flip_ensemble(model.net, zt, gamma, 4)
        eight, aux = flip_ensemble(model.net, z, gamma, 8)
    assert eight.shape == z.shape and aux["decoder_log_scale"].shape == z.shape
    assert torch.allclose(eight, (four + four_t.transpose(2, 3)) / 2, atol=1e-6)
    assert not torch.allclose(eight, four, atol=1e-4)
