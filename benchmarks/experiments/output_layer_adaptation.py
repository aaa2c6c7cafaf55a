"""Per-image adaptation of the network's output layer, measured on the diffusion steps that
carry the bits (1..16): its bias, a scale and bias per output channel, or the whole layer
(eps and reverse-variance rows), fitted on one noise draw of 9 patches of an image and
evaluated on another draw.  Session 7 found it does not pay for its side data:

    python -m benchmarks.experiments.output_layer_adaptation \
        ../shared/data/train/lossless-misc/waterloo_sail.png ../shared/data/train/lossless-misc/waterloo_monarch.png

prints, per image, the bits per dim of steps 1..16 before and after each fit.  A diagnostic,
not a benchmark.
"""
import json
import math
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

from vdmcodec.checkpoints import load_checkpoint
from vdmcodec.model.network import fourier_features, rounding_eps, gamma_embedding
from vdmcodec.model.vdm import step_kl, reverse_log_var, pixels_to_unit
from vdmcodec.train import load_rgb
torch.set_num_threads(1)
lm = load_checkpoint(None)
net = lm.model.net
table = lm.gamma_table

def trunk(z, gamma):
    cfg = net.cfg
    b, _, h, w = z.shape
    gamma = gamma.reshape(-1).float().expand(b)
    emb = net.emb(gamma_embedding(gamma, cfg.emb_dim))
    x = z
    feats = [x, fourier_features(x, cfg.fourier_exponents)]
    e_round = rounding_eps(x, gamma)
    feats.append(e_round)
    x = torch.cat(feats, 1)
    h0 = net.stem(x)
    h1 = net.down1(F.pixel_unshuffle(F.silu(h0), 2))
    for blk in net.blocks1: h1 = blk(h1, emb)
    h2 = net.down2(F.pixel_unshuffle(F.silu(h1), 2))
    for blk in net.blocks2: h2 = blk(h2, emb)
    u1 = h1 + F.pixel_shuffle(net.up2(F.silu(h2)), 2)
    for blk in net.ublocks1: u1 = blk(u1, emb)
    u0 = h0 + F.pixel_shuffle(net.up1(F.silu(u1)), 2)
    u0 = net.head(F.silu(u0))
    gate = torch.sigmoid(net.round_gate(emb))[:, :, None, None]
    return F.silu(u0), gate, e_round

def patches(im, n=3, ph=64, pw=96):
    h, w = im.shape[:2]
    ys = np.linspace(0, h - ph, n).astype(int); xs = np.linspace(0, w - pw, n).astype(int)
    return torch.from_numpy(np.stack([im[y:y+ph, x:x+pw] for y in ys for x in xs]).astype(np.int64)).permute(0,3,1,2)

def samples(x, seed, steps):
    gen = torch.Generator().manual_seed(seed)
    xt = pixels_to_unit(x)
    out = []
    with torch.no_grad():
        for i in steps:
            g_t, g_s = table[i], table[i-1]
            a = math.sqrt(torch.sigmoid(-g_t)); s = math.sqrt(torch.sigmoid(g_t))
            eps = torch.randn(x.shape, generator=gen)
            z = a * xt + s * eps
            f, gate, er = trunk(z, g_t.float().reshape(1))
            out.append((f, gate, er, z, eps, float(torch.expm1(g_t - g_s))))
    return out

def bits(samples, W, B):
    tot = 0.0
    for f, gate, er, z, eps, w in samples:
        o = F.conv2d(f, W, B, padding=1)
        eps_hat = z + o[:, :3] + gate * (er - z)
        var_raw = o[:, 6:9]
        r = w * (eps - eps_hat) ** 2
        tot = tot + step_kl(r, reverse_log_var(var_raw)).sum()
    return tot / math.log(2)

W0, B0 = net.out.weight.detach().clone(), net.out.bias.detach().clone()
rows = torch.zeros(12, dtype=torch.bool); rows[0:3] = True; rows[6:9] = True
steps = list(range(1, 17))
for path in sys.argv[1:]:
    im = load_rgb(path)
    x = patches(im)
    t = time.time()
    fit_s, ev_s = samples(x, 1, steps), samples(x, 2, steps)
    t_cache = time.time() - t
    dims = x.numel()
    base = float(bits(ev_s, W0, B0)) / dims  # bits/dim of these steps, summed
    res = {"image": path.split('/')[-1], "cache_s": round(t_cache, 1), "steps1_16_bpd": round(base, 4)}
    for name in ("bias", "scale_bias", "full"):
        dW = torch.zeros_like(W0, requires_grad=name == "full")
        dB = torch.zeros_like(B0, requires_grad=True)
        sc = torch.zeros(12, requires_grad=name == "scale_bias")
        params = [dB] + ([dW] if name == "full" else []) + ([sc] if name == "scale_bias" else [])
        opt = torch.optim.Adam(params, lr=3e-3)
        t = time.time()
        for it in range(80):
            W = (W0 + dW * rows[:, None, None, None]) * torch.exp(sc * rows)[:, None, None, None]
            B = B0 + dB * rows
            loss = bits(fit_s, W, B) / dims
            opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            W = (W0 + dW * rows[:, None, None, None]) * torch.exp(sc * rows)[:, None, None, None]
            B = B0 + dB * rows
            after_fit = float(bits(fit_s, W, B)) / dims
            after = float(bits(ev_s, W, B)) / dims
        res[name] = {"eval_bpd": round(after, 4), "gain": round(base - after, 4), "fit_bpd": round(after_fit, 4), "s": round(time.time() - t, 1)}
    print(json.dumps(res), flush=True)
