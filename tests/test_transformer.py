"""CharTransformer's own facts: the KV cache gives the full pass's logits, the sliding window
past the context is the documented window (and normalised), prompts in the fast sampler,
the GPT-2 init and the benchmark model's shape, the same network as the PyTorch chargpt, a
tiny fit, and refusal of bad data. The protocol's identities are in test_protocol.py, the
attention kernels' in test_kernels_attention.py."""
import math

import numpy as np
import pytest

import nanoar
from nanoar import no_grad
from nanoar.kernels.attention import kv_cache
from nanoar.models.transformer import CharTransformer

from ar_checks import assert_normalised, assert_refuses_bad_sequences
from conftest import to_xp

K = 3


def transformer(seq_len=4, seed=0, **kw):
    nanoar.manual_seed(seed)
    cfg = dict(context=6, n_layers=2, n_heads=2, dim=8)
    cfg.update(kw)
    model = CharTransformer(K, **cfg, seq_len=seq_len)
    # GPT-2 init (std 0.02) makes every conditional nearly uniform: scale the weights up so
    # the checks see a model with real structure
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 25.0
    return model


def lp_array(model, x):
    with no_grad():
        return nanoar.to_numpy(model.log_prob_per_variable(to_xp(x)).data)


@pytest.mark.parametrize("tied", [False, True])
def test_kv_cache_logits_equal_full_pass_logits(float64, tied):
    """Position t alone against the cached keys and values of positions < t gives the
    logits of the pass over all positions."""
    model = transformer(seq_len=6, tied=tied, bias=tied)
    x = np.random.default_rng(8).integers(0, K, size=(2, 6))
    with no_grad():
        want = nanoar.to_numpy(model.distribution(to_xp(x)).logits.data)
        caches = [kv_cache(2, model.n_heads, model.context, model.dim // model.n_heads, np.float64)
                  for _ in model.blocks]
        inputs = to_xp(np.concatenate([np.full((2, 1), model.bos), x[:, :-1]], axis=1))
        for t in range(6):
            got = nanoar.to_numpy(model.forward(inputs[:, t:t + 1], caches, pos=t).data[:, 0])
            np.testing.assert_allclose(got, want[:, t], rtol=1e-10, atol=1e-10)


def test_sliding_window_is_the_documented_window(float64):
    """Past the context, x_t is conditioned on [BOS, x_{t-c+1}, ..., x_{t-1}]: its
    log-probability is the last one of that window scored from BOS."""
    model = transformer(seq_len=9, context=4)
    x = np.random.default_rng(13).integers(0, K, size=(2, 9))
    lp = lp_array(model, x)
    for t in range(4, 9):
        window = x[:, t - 3:t + 1]  # x_{t-3}, ..., x_t scored from BOS: the last is our conditional
        np.testing.assert_allclose(lp[:, t], lp_array(model, window)[:, -1], rtol=1e-12)
    np.testing.assert_allclose(lp[:, :4], lp_array(model, x[:, :4]), rtol=1e-12)
    model.fused = False  # the textbook attention slides the same window
    np.testing.assert_allclose(lp_array(model, x), lp, rtol=1e-10)


def test_normalised_past_its_context(float64):
    """The sliding window keeps every conditional a distribution over x_t given x_<t."""
    assert_normalised(transformer(seq_len=5, context=3), n_classes=K, atol=1e-6)


def test_prompts_in_the_fast_sampler(float64):
    """A prompt shorter than the context is read into the KV cache in one pass; one longer
    than the context leaves only window steps. Either way the naive samples come out."""
    model = transformer(seq_len=9)  # context 6
    for opts in (dict(prompt=np.array([2, 0, 1]), temperature=0.6, top_k=2),
                 dict(prompt=np.random.default_rng(6).integers(0, K, size=(4, 1)), temperature=1.7),
                 dict(prompt=np.arange(8) % K, length=12)):
        fast = nanoar.to_numpy(model.sample(4, seed=7, **opts))
        np.testing.assert_array_equal(fast, nanoar.to_numpy(model.sample(4, seed=7, method="naive", **opts)))
        p = opts["prompt"]
        assert fast.shape == (4, opts.get("length", 9))
        np.testing.assert_array_equal(fast[:, :p.shape[-1]], np.broadcast_to(p, (4, p.shape[-1])))


def test_init_and_benchmark_shape():
    nanoar.manual_seed(0)
    model = CharTransformer(65)  # the benchmark chargpt
    assert (model.context, model.n_layers, model.n_heads, model.dim, model.bias, model.tied) == (64, 4, 4, 128, False, False)
    assert model.tok.weight.shape == (66, 128) and model.pos.weight.shape == (64, 128)
    b = model.blocks[0]
    assert b.qkv.weight.shape == (128, 384) and b.fc.weight.shape == (128, 512) and b.qkv.bias is None
    assert b.ln1.bias is not None and model.head.weight.shape == (128, 65)
    std = lambda p: float(np.std(nanoar.to_numpy(p.data)))  # noqa: E731
    assert abs(std(b.qkv.weight) - 0.02) < 0.002 and abs(std(model.tok.weight) - 0.02) < 0.002
    assert abs(std(b.fc2.weight) - 0.02 / math.sqrt(8)) < 0.001 and abs(std(b.proj.weight) - 0.02 / math.sqrt(8)) < 0.001
    # torch reference parameter count, plus the BOS embedding row
    per_block = 4 * 128 + 128 * 384 + 128 * 128 + 2 * 128 * 512  # 2 LayerNorms, qkv, proj, MLP
    assert model.num_parameters() == 65 * 128 + 64 * 128 + 4 * per_block + 2 * 128 + 128 * 65 + 128
    tied = CharTransformer(65, tied=True, bias=True)
    assert tied.head is None and not np.any(nanoar.to_numpy(tied.blocks[0].fc.bias.data))
    assert set(tied.state_dict()) == set(model.state_dict()) - {"head.weight"} | {
        f"blocks.{i}.{lin}.bias" for i in range(4) for lin in ("qkv", "proj", "fc", "fc2")}


def test_any_length_is_accepted_and_bad_data_is_refused():
    model = transformer(seq_len=4)  # context 6: lengths within and past it
    for t in (1, 2, 13):
        assert lp_array(model, np.zeros((2, t), int)).shape == (2, t)
    assert_refuses_bad_sequences(model)


def test_same_network_as_the_pytorch_benchmark_chargpt(float64, torch_ref):
    """With the reference's weights (and its GELU switched to the tanh form nanoar uses), a
    window of ids gives the reference's logits: a small instance of bench/torch_ref.py's
    CharGPT. (The reference scores x_1.. given x_0; CharTransformer puts BOS in front.)"""
    import torch

    torch.manual_seed(0)
    tm = torch_ref.CharGPT(vocab=7, block_size=6, n_layers=2, n_heads=2, d_model=8).double()
    model = CharTransformer(7, context=6, n_layers=2, n_heads=2, dim=8)
    linear = lambda mine, theirs: mine.weight.data.__setitem__(..., theirs.weight.detach().numpy().T)  # noqa: E731
    model.tok.weight.data[:7] = tm.tok.weight.detach().numpy()
    model.pos.weight.data[...] = tm.pos.weight.detach().numpy()
    for mine, theirs in zip(model.blocks, tm.blocks):
        theirs.mlp[1].approximate = "tanh"
        for a, b in ((mine.ln1, theirs.ln1), (mine.ln2, theirs.ln2)):
            a.weight.data[...], a.bias.data[...] = b.weight.detach().numpy(), b.bias.detach().numpy()
        linear(mine.qkv, theirs.attn.qkv)
        linear(mine.proj, theirs.attn.proj)
        linear(mine.fc, theirs.mlp[0])
        linear(mine.fc2, theirs.mlp[2])
    model.ln_f.weight.data[...], model.ln_f.bias.data[...] = tm.ln_f.weight.detach().numpy(), tm.ln_f.bias.detach().numpy()
    linear(model.head, tm.head)
    ids = np.random.default_rng(16).integers(0, 7, size=(3, 6))
    with torch.no_grad():
        want = tm(torch.from_numpy(ids)).numpy()
    for fused in (True, False):
        model.fused = fused
        with no_grad():
            np.testing.assert_allclose(model.forward(ids).data, want, rtol=1e-9, atol=1e-12)
