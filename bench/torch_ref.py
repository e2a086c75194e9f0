#!/usr/bin/env python
"""PyTorch reference implementation of the nanoar benchmark workloads.

Used only for side-by-side comparison with nanoar; torch is never a dependency
of nanoar itself.

    python bench/torch_ref.py                    # all workloads, one subprocess each
    python bench/torch_ref.py --only chargpt     # a single workload, in-process
    python bench/torch_ref.py --device cuda --steps 50

Output: one JSON object per line and workload on stdout, with the keys
name, impl ("torch"), device, ms_median, ms_min, ms_max, items_per_s,
peak_rss_mib, torch_version, threads, plus descriptive extras (unit of
items_per_s, batch, timed, optimizer, note, other_cpu_cores, ...).
items_per_s = items per timed call / median time, where items are examples
(train/eval workloads) or generated values (sampling: 2048 timesteps, 16*784
or 100*784 pixels).

Workloads: made, made-eval, pixelcnn, wavenet, chargpt, chargpt-sdpa,
sample-wavenet-naive, sample-wavenet-cached (alias for both: sample-wavenet),
sample-pixelcnn, sample-made.

Timing: train/eval workloads run `--warmup` (3) untimed steps and then
`--steps` (20) timed steps; sampling workloads run one (shortened) untimed
generation and `--sample-reps` (3) timed ones. Everything is float32 and
uses all cores (torch.set_num_threads(os.cpu_count()); threadpoolctl, if
installed, sets the other native pools to the same). On CUDA every timed
region ends with torch.cuda.synchronize(), and TF32 is switched off for
matmuls and cuDNN convolutions. Gradient-free work runs under
torch.no_grad().

peak_rss_mib is getrusage(RUSAGE_SELF).ru_maxrss, i.e. the peak resident set
of the *whole process* (interpreter + torch import + model + data +
activations). That is why, by default, every workload runs in a fresh
subprocess of this script, so the figure is per workload;
`rss_after_import_mib` is the peak right after `import torch`, for reference.

Shared machines: `other_cpu_cores` is the average number of cores other
processes kept busy during the workload (from /proc/stat). With every core in
one OpenMP team, one busy core can slow torch down by 10x or more, so treat
any record with other_cpu_cores well above 0 as contaminated. `--wait-quiet S`
waits up to S seconds for a quiet machine before each workload.

Architecture choices (mirror these exactly in the NumPy implementation):

* Initialisation: torch defaults everywhere. Linear/Conv weight and bias
  ~ U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with fan_in = in_features or
  in_channels * kernel_size (the *unmasked* fan-in); Embedding ~ N(0, 1);
  LayerNorm weight = 1, bias = 0, eps = 1e-5. Masks are applied in every
  forward pass (weight * mask), so masked weights keep their initial value
  but never matter and get zero gradient.
* Losses are the exact NLL in nats per example: summed over dimensions
  (pixels / time steps / tokens), averaged over the batch.
* Optimiser: torch.optim.Adam(lr=1e-3) (betas 0.9/0.999, eps 1e-8) for MADE,
  PixelCNN and WaveNet; torch.optim.AdamW(lr=1e-3, weight_decay=0.01 (the
  torch default), applied to all parameters) for chargpt.
  A train step = zero_grad + forward + loss + backward + optimiser step.
* MADE: degrees of the inputs are 1..D (natural ordering). Hidden degrees,
  layer by layer, are drawn as in Germain et al. (2015):
  numpy.random.RandomState(0).randint(low, D, size=H) with low = min of the
  previous layer's degrees (values in [low, D-1]; low = 1 for the first
  hidden layer, 4 for the second with seed 0), first hidden layer first.
  Hidden mask M[k, d] = deg_out[k] >= deg_in[d], output mask
  M[d, k] = deg_input[d] > deg_hidden[k]. No direct input->output
  connections. Bernoulli head on the raw logits.
* PixelCNN: masks for a k x k kernel with centre c = k // 2: rows < c fully
  open, row c open for columns < c (type A) or <= c (type B), rows > c closed.
  One input channel, so there is no channel grouping in the masks. Inputs
  are the raw {0, 1} pixels. Zero padding ("same" convolutions).
* WaveNet: the input column at time t is onehot(x[t-1]) and the column at
  t = 0 is the zero vector (a "start" column); i.e. we one-hot x, left-pad
  by one zero step and drop the last step. Then the first causal conv
  (k=2, left zero pad 1) sees x[t-2], x[t-1], never x[t]. Each dilated conv
  left-pads its input with `dilation` zero columns. Gate: the first 64 output
  channels of the dilated conv go through tanh, the last 64 through sigmoid.
  The residual and skip 1x1 convs both read the gated activation z; the
  residual output is added to the layer's input; skips are summed over
  layers (no skip from the first causal conv). Receptive field: 1025 input
  columns.
* chargpt: pre-LN blocks x = x + attn(ln1(x)); x = x + mlp(ln2(x)); fused
  qkv projection (128 -> 384, split in that order: q, k, v), heads = 4 of
  dimension 32, explicit attention softmax(q k^T / sqrt(32), causal -inf mask)
  @ v, output projection 128 -> 128; MLP 128 -> 512 -> GELU (exact erf form)
  -> 128; final LayerNorm; untied head 128 -> 65. No biases in any Linear;
  LayerNorms keep their bias. Learned position embedding (64, 128) added to
  the token embedding (65, 128). Targets are the next token (sequences of 65
  random tokens, input = s[:, :64], target = s[:, 1:]).
  The `chargpt-sdpa` workload is identical but uses
  F.scaled_dot_product_attention(is_causal=True) instead.

* Sampling: sample-made / sample-pixelcnn start from all-zero inputs and fill
  one pixel per full forward pass (natural order / raster order), drawing
  bernoulli(sigmoid(logit)). WaveNet sampling starts from the zero start
  column and draws from softmax(logits) by inverse CDF; naive = `trunk` on the
  last min(t+1, 1025) input columns at every step (all 2048 steps timed
  unless --naive-steps), cached = `FastWaveNet` (see there).

Data are random, fixed once per workload (seeded) and reused at every step:
Bernoulli(0.5) pixels, uniform integers.
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib():
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


import numpy as np  # noqa: E402  (only for the MADE degree draw)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RSS_AFTER_IMPORT_MIB = _rss_mib()


# --------------------------------------------------------------------------
# MADE
# --------------------------------------------------------------------------

def made_masks(D, hidden, seed=0):
    """Germain et al. masks for the natural ordering; returns [(out, in) masks]."""
    rng = np.random.RandomState(seed)
    degrees = [np.arange(1, D + 1)]
    for H in hidden:
        degrees.append(rng.randint(degrees[-1].min(), D, size=H))
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append(degrees[0][:, None] > degrees[-1][None, :])
    return [torch.from_numpy(m.astype(np.float32)) for m in masks]


class MaskedLinear(nn.Linear):
    def __init__(self, mask):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    def __init__(self, D=784, hidden=(500, 500), seed=0):
        super().__init__()
        self.layers = nn.ModuleList(MaskedLinear(m) for m in made_masks(D, hidden, seed))

    def forward(self, x):  # logits of p(x_d = 1 | x_<d)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)

    def nll(self, x):
        logits = self(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


# --------------------------------------------------------------------------
# PixelCNN
# --------------------------------------------------------------------------

class MaskedConv2d(nn.Conv2d):
    def __init__(self, c_in, c_out, k, mask_type):
        super().__init__(c_in, c_out, k, padding=k // 2)
        c = k // 2
        mask = torch.zeros(1, 1, k, k)
        mask[:, :, :c, :] = 1
        mask[:, :, c, : c + (mask_type == "B")] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    def __init__(self, channels=64, n_res=5):
        super().__init__()
        self.conv_a = MaskedConv2d(1, channels, 7, "A")
        self.res = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(n_res))
        self.out1 = nn.Conv2d(channels, channels, 1)
        self.out2 = nn.Conv2d(channels, 1, 1)

    def forward(self, x):  # (B, 1, H, W) -> logits (B, 1, H, W)
        h = F.relu(self.conv_a(x))
        for conv in self.res:
            h = h + F.relu(conv(h))
        return self.out2(F.relu(self.out1(h)))

    def nll(self, x):
        logits = self(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


# --------------------------------------------------------------------------
# WaveNet
# --------------------------------------------------------------------------

class WaveNet(nn.Module):
    def __init__(self, n_classes=256, channels=64, n_layers=10):
        super().__init__()
        self.n_classes = n_classes
        self.dilations = [2**i for i in range(n_layers)]
        self.causal = nn.Conv1d(n_classes, channels, 2)
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, 2, dilation=d) for d in self.dilations)
        self.res = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in self.dilations)
        self.skip = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in self.dilations)
        self.head1 = nn.Conv1d(channels, channels, 1)
        self.head2 = nn.Conv1d(channels, n_classes, 1)

    @property
    def receptive_field(self):  # input columns seen by one output column
        return 1 + sum(self.dilations) + 1

    def shifted_inputs(self, x):
        """(B, T) ints -> (B, C, T) one-hot columns; column t = onehot(x[t-1]), column 0 = 0."""
        onehot = F.one_hot(x, self.n_classes).to(torch.float32).transpose(1, 2)
        return F.pad(onehot, (1, 0))[:, :, :-1]

    def trunk(self, inp):
        """(B, C, T) input columns -> (B, n_classes, T) logits; column t sees inp[..., <= t]."""
        h = self.causal(F.pad(inp, (1, 0)))
        skips = 0
        for d, dil, res, skip in zip(self.dilations, self.dilated, self.res, self.skip):
            a, b = dil(F.pad(h, (d, 0))).chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(z)
            skips = skips + skip(z)
        return self.head2(F.relu(self.head1(F.relu(skips))))

    def forward(self, x):  # logits of p(x[t] | x[<t])
        return self.trunk(self.shifted_inputs(x))

    def nll(self, x):
        logits = self(x)
        return F.cross_entropy(logits, x, reduction="sum") / x.shape[0]


def sample_categorical(logits, generator=None):
    """Inverse-CDF draw from softmax(logits) per row (B, K) -> (B,) ints.

    (torch.multinomial gives the same distribution but costs ~60 us per call
    here, a large share of one cached WaveNet step.)
    """
    cdf = F.softmax(logits, dim=1).cumsum(1)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[1] - 1)[:, 0]


@torch.no_grad()
def wavenet_sample_naive(model, T, batch=1, generator=None):
    """Rerun the network on the last receptive-field window at every step."""
    device = model.head2.weight.device
    rf = model.receptive_field
    inp = torch.zeros(batch, model.n_classes, T + 1, device=device)  # column 0 = start
    out = torch.empty(batch, T, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    for t in range(T):
        logits = model.trunk(inp[:, :, max(0, t + 1 - rf): t + 1])[:, :, -1]
        x_t = sample_categorical(logits, generator)
        out[:, t] = x_t
        inp[rows, x_t, t + 1] = 1.0  # column t + 1 = onehot(x[t])
    return out


class FastWaveNet:
    """Cached ("fast WaveNet", Paine et al. 2016) incremental sampling for a `WaveNet`.

    Each layer keeps a circular queue of its last `dilation` inputs, so every step
    computes exactly one column per layer. Algebraically identical to `trunk`
    (checked to ~1e-7 on the logits), just rearranged:
      * the first causal conv on one-hot columns is a row lookup in two
        (257, C) tables (tap t-1 and tap t); row 256 is the zero "start" column;
      * each k=2 dilated conv is one matmul on cat([h[t - d], h[t]]);
      * the skip 1x1 convs of all layers are one matmul on the concatenated
        gated activations, done once per step after the last layer.
    """

    def __init__(self, model):
        C, K = model.head1.weight.shape[0], model.n_classes
        w, b = model.causal.weight.detach(), model.causal.bias.detach()
        zero = torch.zeros(1, C, device=w.device)
        self.tap_prev = torch.cat([w[:, :, 0].T, zero])      # (K + 1, C)
        self.tap_cur = torch.cat([w[:, :, 1].T, zero])       # (K + 1, C)
        self.causal_bias = b
        self.dilated = [(c.bias.detach(), torch.cat([c.weight[:, :, 0], c.weight[:, :, 1]], 1).T.detach())
                        for c in model.dilated]                # (2C,), (2C, 2C)
        self.res = [(r.bias.detach(), r.weight[:, :, 0].T.detach()) for r in model.res]
        self.skip_w = torch.cat([s.weight[:, :, 0].T for s in model.skip]).detach()  # (L*C, C)
        self.skip_b = sum(s.bias for s in model.skip).detach()
        self.head1 = (model.head1.bias.detach(), model.head1.weight[:, :, 0].T.detach())
        self.head2 = (model.head2.bias.detach(), model.head2.weight[:, :, 0].T.detach())
        self.model, self.C, self.start = model, C, K

    def init_state(self, batch):
        """Queues start as zeros (= the zero left padding of `trunk`)."""
        device, C = self.skip_w.device, self.C
        start = torch.full((batch,), self.start, dtype=torch.long, device=device)
        return dict(prev=start, cur=start,  # x[t-2], x[t-1] (or the start column)
                    queues=[torch.zeros(d, batch, C, device=device) for d in self.model.dilations],
                    zs=torch.empty(batch, len(self.model.dilations) * C, device=device))

    def step(self, state, t):
        """Logits (B, K) of x[t] given the state after x[<t]; updates the queues."""
        C, zs = self.C, state["zs"]
        h = self.tap_prev[state["prev"]] + self.tap_cur[state["cur"]] + self.causal_bias
        layers = zip(self.model.dilations, state["queues"], self.dilated, self.res)
        for i, (d, q, (bd, wd), (br, wr)) in enumerate(layers):
            slot = q[t % d]                          # holds this layer's input from step t - d ...
            ag = torch.addmm(bd, torch.cat([slot, h], 1), wd)
            slot.copy_(h)                            # ... now replaced by the one from step t
            z = torch.mul(torch.tanh(ag[:, :C]), torch.sigmoid(ag[:, C:]), out=zs[:, i * C:(i + 1) * C])
            h = torch.addmm(br, z, wr).add_(h)
        s = torch.addmm(self.skip_b, zs, self.skip_w).relu_()
        s = torch.addmm(self.head1[0], s, self.head1[1]).relu_()
        return torch.addmm(self.head2[0], s, self.head2[1])

    def advance(self, state, x_t):
        state["prev"], state["cur"] = state["cur"], x_t

    @torch.no_grad()
    def sample(self, T, batch=1, generator=None):
        state = self.init_state(batch)
        out = torch.empty(batch, T, dtype=torch.long, device=self.skip_w.device)
        for t in range(T):
            x_t = sample_categorical(self.step(state, t), generator)
            out[:, t] = x_t
            self.advance(state, x_t)
        return out


# --------------------------------------------------------------------------
# chargpt
# --------------------------------------------------------------------------

class SelfAttention(nn.Module):
    def __init__(self, d_model, n_heads, block_size, sdpa=False):
        super().__init__()
        self.n_heads, self.sdpa = n_heads, sdpa
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("causal", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            att = att.masked_fill(~self.causal[:T, :T], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d_model, n_heads, block_size, sdpa=False):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, block_size, sdpa)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model, bias=False), nn.GELU(),
            nn.Linear(4 * d_model, d_model, bias=False))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab=65, block_size=64, n_layers=4, n_heads=4, d_model=128, sdpa=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, block_size, sdpa) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, idx):  # (B, T) -> (B, T, vocab) logits of the next token
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def nll(self, seq):
        idx, target = seq[:, :-1], seq[:, 1:]
        logits = self(idx)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum") / seq.shape[0]


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, device, warmup, reps, warmup_fn=None):
    for _ in range(warmup):
        (warmup_fn or fn)()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def make_optimizer(kind, params, args):
    """torch.optim.Adam / AdamW at lr 1e-3; --optim-impl picks torch's for-loop (default on
    CPU), foreach or fused kernel (all compute the same update)."""
    impl = {"default": {}, "foreach": dict(foreach=True), "fused": dict(fused=True)}[args.optim_impl]
    return getattr(torch.optim, kind)(params, lr=1e-3, **impl)


def train_step_fn(model, data, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        model.nll(data).backward()
        opt.step()
    return step


def binary_data(shape, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < 0.5).to(torch.float32).to(device)


def int_data(shape, high, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g).to(device)


# Each workload returns (times in seconds, items per timed call, record extras).

def wl_made(dev, a):
    model = MADE().to(dev)
    x = binary_data((100, 784), dev, 1)
    opt = make_optimizer("Adam", model.parameters(), a)
    t = time_calls(train_step_fn(model, x, opt), dev, a.warmup, a.steps)
    return t, 100, dict(unit="examples", batch=100, optimizer=f"Adam(lr=1e-3), {a.optim_impl}")


def wl_made_eval(dev, a):
    model = MADE().to(dev)
    x = binary_data((1000, 784), dev, 2)

    @torch.no_grad()
    def ll():
        return -model.nll(x)
    t = time_calls(ll, dev, a.warmup, a.steps)
    return t, 1000, dict(unit="examples", batch=1000, note="exact log-likelihood, no_grad")


def wl_pixelcnn(dev, a):
    model = PixelCNN().to(dev)
    x = binary_data((32, 1, 28, 28), dev, 3)
    opt = make_optimizer("Adam", model.parameters(), a)
    t = time_calls(train_step_fn(model, x, opt), dev, a.warmup, a.steps)
    return t, 32, dict(unit="examples", batch=32, optimizer=f"Adam(lr=1e-3), {a.optim_impl}")


def wl_wavenet(dev, a):
    model = WaveNet().to(dev)
    x = int_data((4, 1024), 256, dev, 4)
    opt = make_optimizer("Adam", model.parameters(), a)
    t = time_calls(train_step_fn(model, x, opt), dev, a.warmup, a.steps)
    return t, 4, dict(unit="sequences", batch=4, seq_len=1024, optimizer=f"Adam(lr=1e-3), {a.optim_impl}")


def _chargpt(dev, a, sdpa):
    model = CharGPT(sdpa=sdpa).to(dev)
    seq = int_data((12, 65), 65, dev, 5)
    opt = make_optimizer("AdamW", model.parameters(), a)
    t = time_calls(train_step_fn(model, seq, opt), dev, a.warmup, a.steps)
    attention = "F.scaled_dot_product_attention" if sdpa else "explicit"
    return t, 12, dict(unit="sequences", batch=12, seq_len=64, attention=attention,
                       optimizer=f"AdamW(lr=1e-3, weight_decay=0.01), {a.optim_impl}")


def wl_chargpt(dev, a):
    return _chargpt(dev, a, sdpa=False)


def wl_chargpt_sdpa(dev, a):
    return _chargpt(dev, a, sdpa=True)


def wl_sample_wavenet_naive(dev, a):
    model = WaveNet().to(dev).eval()
    T, timed = 2048, a.naive_steps or 2048
    g = torch.Generator(device=dev).manual_seed(6)
    t = time_calls(lambda: wavenet_sample_naive(model, timed, generator=g), dev, 1, a.sample_reps,
                   warmup_fn=lambda: wavenet_sample_naive(model, 64, generator=g))
    extras = dict(unit="timesteps", batch=1, seq_len=T)
    if timed < T:
        # The first steps run on short windows (the window only reaches its full
        # 1025 columns at step 1024), so this linear scaling underestimates.
        t = [x * T / timed for x in t]
        extras["note"] = f"timed the first {timed} steps and scaled by {T}/{timed} (an underestimate)"
    else:
        extras["note"] = "all 2048 steps timed; window = last min(t+1, 1025) input columns"
    return t, T, extras


def wl_sample_wavenet_cached(dev, a):
    fast = FastWaveNet(WaveNet().to(dev).eval())
    g = torch.Generator(device=dev).manual_seed(7)
    t = time_calls(lambda: fast.sample(2048, generator=g), dev, 1, a.sample_reps)
    return t, 2048, dict(unit="timesteps", batch=1, seq_len=2048,
                         note="fast WaveNet: per-layer queues, one column per layer per step")


def wl_sample_pixelcnn(dev, a):
    model = PixelCNN().to(dev).eval()
    g = torch.Generator(device=dev).manual_seed(8)

    @torch.no_grad()
    def sample(n=16, H=28, W=28, rows=28):
        x = torch.zeros(n, 1, H, W, device=dev)
        for i in range(rows):
            for j in range(W):
                p = torch.sigmoid(model(x)[:, :, i, j])
                x[:, :, i, j] = torch.bernoulli(p, generator=g)
        return x
    t = time_calls(sample, dev, 1, a.sample_reps, warmup_fn=lambda: sample(rows=2))
    return t, 16 * 784, dict(unit="pixels", batch=16, note="naive: 784 full forwards of batch 16")


def wl_sample_made(dev, a):
    model = MADE().to(dev).eval()
    g = torch.Generator(device=dev).manual_seed(9)

    @torch.no_grad()
    def sample(n=100, D=784):
        x = torch.zeros(n, D, device=dev)
        for d in range(D):
            x[:, d] = torch.bernoulli(torch.sigmoid(model(x)[:, d]), generator=g)
        return x
    t = time_calls(sample, dev, 1, a.sample_reps)
    return t, 100 * 784, dict(unit="pixels", batch=100, note="naive: 784 full forwards of batch 100")


WORKLOADS = {
    "made": wl_made,
    "made-eval": wl_made_eval,
    "pixelcnn": wl_pixelcnn,
    "wavenet": wl_wavenet,
    "chargpt": wl_chargpt,
    "chargpt-sdpa": wl_chargpt_sdpa,
    "sample-wavenet-naive": wl_sample_wavenet_naive,
    "sample-wavenet-cached": wl_sample_wavenet_cached,
    "sample-pixelcnn": wl_sample_pixelcnn,
    "sample-made": wl_sample_made,
}
GROUPS = {"sample-wavenet": ["sample-wavenet-naive", "sample-wavenet-cached"]}


# --------------------------------------------------------------------------
# Shared-machine hygiene: how much CPU did *other* processes use meanwhile?
# --------------------------------------------------------------------------

def _cpu_snapshot():
    """(wall s, machine busy CPU-s from /proc/stat, this process's CPU-s), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def other_cpu_cores(before, after):
    """Average number of cores kept busy by other processes between two snapshots."""
    if before is None or after is None:
        return None
    wall = after[0] - before[0]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall)


def wait_for_quiet(max_wait_s, threshold=0.15, probe_s=1.0):
    """Wait (up to max_wait_s) until other processes use < threshold cores; return last reading."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        a = _cpu_snapshot()
        time.sleep(probe_s)
        load = other_cpu_cores(a, _cpu_snapshot())
        if load is None or load < threshold or time.perf_counter() >= deadline:
            return load
        time.sleep(2.0)


def run_one(name, args, per_workload_process):
    dev = torch.device(args.device)
    torch.manual_seed(0)
    quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    snap = _cpu_snapshot()
    times, items, extras = WORKLOADS[name](dev, args)
    others = other_cpu_cores(snap, _cpu_snapshot())
    ms = [1e3 * t for t in times]
    med = statistics.median(ms)
    rec = dict(name=name, impl="torch", device=args.device,
               ms_median=round(med, 4), ms_min=round(min(ms), 4), ms_max=round(max(ms), 4),
               items_per_s=round(items / (med / 1e3), 2),
               peak_rss_mib=round(_rss_mib(), 1),
               torch_version=torch.__version__, threads=torch.get_num_threads())
    rec.update(extras)
    rec.update(
        timed=len(ms),
        rss_scope=("ru_maxrss of a fresh process that ran only this workload"
                   if per_workload_process else "ru_maxrss of the whole process (all workloads so far)"),
        rss_after_import_mib=round(RSS_AFTER_IMPORT_MIB, 1),
        # Cores used by other processes during this workload (warm-up included).
        # Clearly above 0 on a shared machine = contaminated figures: with all
        # cores in one OpenMP team, a single busy core can slow torch down 10x.
        other_cpu_cores=None if others is None else round(others, 2),
    )
    if quiet is not None:
        rec["other_cpu_cores_at_start"] = round(quiet, 2)
    if args.tag:
        rec["tag"] = args.tag
    if dev.type == "cuda":
        rec.update(device_name=torch.cuda.get_device_name(dev),
                   peak_cuda_mib=round(torch.cuda.max_memory_allocated(dev) / 2**20, 1))
    else:
        rec.update(device_name=_cpu_name())
    print(json.dumps(rec), flush=True)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated workloads: " + ", ".join([*WORKLOADS, *GROUPS]))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=20, help="timed steps for train/eval workloads")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps for train/eval workloads")
    p.add_argument("--sample-reps", type=int, default=3, help="timed generations for sampling")
    p.add_argument("--naive-steps", type=int, default=0,
                   help="time only the first N naive WaveNet steps and scale to 2048 (0 = all)")
    p.add_argument("--optim-impl", default="default", choices=["default", "foreach", "fused"],
                   help="torch.optim implementation (default = torch's own choice)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each workload wait up to S seconds until other processes "
                        "use < 0.15 cores (for shared machines)")
    p.add_argument("--tag", default="", help="free text copied into every record (e.g. a run label)")
    p.add_argument("--in-process", action="store_true",
                   help="run all selected workloads in this process (peak RSS then accumulates)")
    p.add_argument("--subprocess-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")

    names = []
    for n in (args.only.split(",") if args.only else WORKLOADS):
        if n not in WORKLOADS and n not in GROUPS:
            p.error(f"unknown workload {n!r}")
        names += GROUPS.get(n, [n])

    if len(names) > 1 and not args.in_process:
        # Default: every workload in a fresh subprocess, so peak_rss_mib is per workload.
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                       if k in ("device", "steps", "warmup", "sample_reps", "naive_steps", "optim_impl",
                                "wait_quiet", "tag")]
        failed = []
        for name in names:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", name,
                                "--subprocess-child", *passthrough])
            if r.returncode:
                failed.append(name)
        if failed:
            sys.exit(f"failed workloads: {', '.join(failed)}")
        return

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # true float32 on GPUs too (cuDNN
    torch.backends.cudnn.allow_tf32 = False        # convs default to TF32 otherwise)
    try:  # pin every other native thread pool too (e.g. NumPy's OpenBLAS); needs threadpoolctl
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads)
    except ImportError:
        pass
    for name in names:
        run_one(name, args, per_workload_process=len(names) == 1)


if __name__ == "__main__":
    main()
