"""Character models (CharLSTM, CharTransformer): exactness (normalised, causal by perturbation
and by gradient, samples match the likelihood), gradients, cached sampling (LSTM state,
transformer KV cache) == naive sampling, truncated BPTT state carrying, the transformer's
sliding window past its context, a tiny fit, and refusal of bad data."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.gradcheck import gradcheck
from nanoar.models import build_model
from nanoar.models.lstm import CharLSTM, LSTMState, lstm_layer
from nanoar.models.transformer import CharTransformer, attention, causal_self_attention, split_heads
from nanoar.nn import LSTMCell
from nanoar.optim import Adam, AdamW

from ar_checks import (assert_refuses_bad_sequences, assert_future_does_not_matter, assert_jacobian_autoregressive, assert_normalised,
                       assert_one_pass_equals_sequential, assert_param_grads, assert_samples_match)
from conftest import to_xp

K = 3


def lstm(seq_len=4, **kw):
    nanoar.manual_seed(kw.pop("seed", 0))
    cfg = dict(embed_dim=4, hidden_size=5, n_layers=2)
    cfg.update(kw)
    return CharLSTM(K, **cfg, seq_len=seq_len)


def transformer(seq_len=4, **kw):
    nanoar.manual_seed(kw.pop("seed", 0))
    cfg = dict(context=6, n_layers=2, n_heads=2, dim=8)
    cfg.update(kw)
    model = CharTransformer(K, **cfg, seq_len=seq_len)
    # GPT-2 init (std 0.02) makes every conditional nearly uniform: scale the weights up so
    # the exactness checks see a model with real structure
    for p in model.parameters():
        if p.ndim == 2:
            p.data *= 25.0
    return model


FAMILIES = {"lstm": lstm, "transformer": transformer,
            "transformer-tied-bias": lambda **kw: transformer(tied=True, bias=True, **kw)}
NAMES = list(FAMILIES)


def lp_array(model, x):
    with no_grad():
        return nanoar.to_numpy(model.log_prob_per_variable(to_xp(x)).data)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", NAMES)
def test_normalised_by_enumeration(float64, name):
    model = FAMILIES[name](seq_len=4)
    assert_normalised(model, n_classes=K, atol=1e-6)


def test_transformer_normalised_past_its_context(float64):
    """The sliding window keeps every conditional a distribution over x_t given x_<t."""
    assert_normalised(transformer(seq_len=5, context=3), n_classes=K, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_future_does_not_matter_and_one_pass_equals_sequential(float64, name):
    model = FAMILIES[name](seq_len=10)  # transformer: context 6, so positions 6..9 use windows
    x = np.random.default_rng(1).integers(0, K, size=(3, 10))
    assert_future_does_not_matter(model, x, np.random.default_rng(2), n_classes=K)
    assert_one_pass_equals_sequential(model, x, np.random.default_rng(3), n_classes=K)


@pytest.mark.parametrize("name", NAMES)
def test_jacobian_of_logits_wrt_embeddings_is_autoregressive(float64, name):
    """d logits_t / d e_s == 0 for s >= t, through `forward_from_inputs` (e = the embedding
    rows of x plus x_s times a fixed random direction), and != 0 for every s < t."""
    model = FAMILIES[name](seq_len=6)
    table = model.embed.weight if isinstance(model, CharLSTM) else model.tok.weight
    rng = np.random.default_rng(4)
    ids = rng.integers(0, K, size=(2, 6))
    base = Tensor(table.data[to_xp(ids)])
    dirs = Tensor(to_xp(rng.standard_normal(base.shape)))

    def params_fn(xt):
        return model.forward_from_inputs(base + xt.reshape(2, 6, 1) * dirs)

    assert_jacobian_autoregressive(params_fn, rng.standard_normal((2, 6)), np.arange(6))
    xt = Tensor(np.zeros((2, 6)), requires_grad=True)
    params_fn(xt)[:, 5].sum().backward()
    assert np.all(np.abs(nanoar.to_numpy(xt.grad)).sum(axis=0)[:5] > 0)
    with no_grad():  # and it is the function that log_prob scores
        want = model.log_prob_per_variable(to_xp(ids)).data
        lp = nanoar.log_softmax(params_fn(Tensor(np.zeros((2, 6))))).data
    np.testing.assert_allclose(np.take_along_axis(lp, ids[..., None], -1)[..., 0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_samples_match_likelihood(float64, name):
    model = FAMILIES[name](seq_len=3)
    assert_samples_match(model, 20000, n_classes=K, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_match_finite_differences(float64, name):
    model = FAMILIES[name](seq_len=8, **({"context": 5} if name != "lstm" else {}))
    x = to_xp(np.random.default_rng(5).integers(0, K, size=(2, 8)))
    assert_param_grads(model, lambda: -model.log_prob(x).mean(), n_checks=3)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", NAMES)
def test_cached_sampling_equals_naive_sampling(float64, name):
    """Same seed, same draws: state / KV-cache sampling reproduces the full recompute."""
    model = FAMILIES[name](seq_len=9)  # transformer: past its context of 6 too
    for opts in (dict(), dict(prompt=np.array([2, 0, 1]), temperature=0.6, top_k=2),
                 dict(prompt=np.random.default_rng(6).integers(0, K, size=(4, 2)), temperature=1.7),
                 dict(prompt=np.arange(8) % K, length=12)):  # a prompt longer than the context
        fast = nanoar.to_numpy(model.sample(4, seed=7, **opts))
        naive = nanoar.to_numpy(model.sample(4, seed=7, method="naive", **opts))
        np.testing.assert_array_equal(fast, naive)
        assert fast.shape == (4, opts.get("length", 9)) and fast.dtype == np.int64
        if "prompt" in opts:
            p = opts["prompt"]
            np.testing.assert_array_equal(fast[:, :p.shape[-1]], np.broadcast_to(p, (4, p.shape[-1])))


def test_kv_cache_logits_equal_full_pass_logits(float64):
    model = transformer(seq_len=6)
    x = np.random.default_rng(8).integers(0, K, size=(2, 6))
    with no_grad():
        want = model.logits(to_xp(x)).data
        xp = nanoar.xp()
        caches = [dict(k=xp.zeros((2, 2, 6, 4)), v=xp.zeros((2, 2, 6, 4))) for _ in model.blocks]
        ins = np.concatenate([np.full((2, 1), model.bos), x[:, :-1]], axis=1)
        for t in range(6):
            got = model._logits_from_embeddings(model.tok(to_xp(ins[:, t:t + 1])), caches, pos=t).data[:, 0]
            np.testing.assert_allclose(got, want[:, t], rtol=1e-10, atol=1e-10)


def test_lstm_state_step_equals_one_pass(float64):
    model = lstm(seq_len=7)
    x = np.random.default_rng(9).integers(0, K, size=(2, 7))
    with no_grad():
        want = nanoar.log_softmax(model.forward_from_inputs(model.embed.weight.data[x])).data
    state = model.initial_state(2)
    for t in range(7):
        logits, state = model.step(state)
        state = state._replace(last=to_xp(x[:, t]))
        np.testing.assert_allclose(nanoar.log_softmax(Tensor(logits)).data, want[:, t], rtol=1e-10, atol=1e-10)


def test_sample_errors():
    for model in (lstm(seq_len=5), transformer(seq_len=5)):
        assert model.sample(2, seed=0).shape == (2, 5)
        assert model.sample(1, seed=0, length=8).shape == (1, 8)
        with pytest.raises(ValueError, match="method"):
            model.sample(1, method="beam")
        with pytest.raises(ValueError, match="longer"):
            model.sample(1, length=2, prompt=np.array([0, 1, 2]))
        with pytest.raises(ValueError, match="class ids"):
            model.sample(1, prompt=np.array([0, K]))


# ---------------------------------------------------------------------------- LSTM specifics
@given(cut=st.integers(1, 11), n_layers=st.integers(1, 3))
def test_lstm_chunks_with_carried_state_equal_one_pass(cut, n_layers):
    """Truncated BPTT: scoring in chunks, carrying the (detached) state, gives exactly the
    log-probabilities of one pass; the final states agree too."""
    with nanoar.default_dtype_as("float64"):
        model = lstm(seq_len=12, n_layers=n_layers)
        x = np.random.default_rng(cut).integers(0, K, size=(2, 12))
        with no_grad():
            full, s_full = model.log_prob_chunk(x)
            a, s1 = model.log_prob_chunk(x[:, :cut])
            b, s2 = model.log_prob_chunk(x[:, cut:], s1) if cut < 12 else (Tensor(np.zeros((2, 0))), s1)
        np.testing.assert_allclose(np.concatenate([a.data, b.data], axis=1), full.data, rtol=1e-12, atol=1e-12)
        for u, v in zip(s_full.h + s_full.c, s2.h + s2.c):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(s2.last, x[:, -1])


def test_lstm_truncated_bptt_gradient_stops_at_the_chunk(float64):
    model = lstm(seq_len=8)
    x = np.random.default_rng(10).integers(0, K, size=(2, 8))
    _, state = model.log_prob_chunk(x[:, :4])
    assert isinstance(state, LSTMState) and not isinstance(state.h[0], Tensor)  # plain arrays
    model.zero_grad()
    lp, _ = model.log_prob_chunk(x[:, 4:], state)
    (-lp.sum()).backward()  # only this chunk's graph: works, and fills every gradient
    assert all(p.grad is not None for p in model.cells[0].parameters())
    with pytest.raises(ValueError, match="LSTMState"):
        model.log_prob_chunk(x, state=(state.h, state.c))


def test_lstm_layer_equals_lstm_cell_steps_and_gradcheck(float64):
    """The fused layer (BPTT inside one node) == nn.LSTMCell applied step by step, in values
    and in the gradients of both weights; and it passes gradcheck on its own."""
    rng = np.random.default_rng(11)
    nanoar.manual_seed(0)
    n, t, i, hsz = 2, 5, 3, 4
    cell = LSTMCell(i, hsz)
    cell.bias.data[:] = rng.standard_normal(4 * hsz)
    x = Tensor(rng.standard_normal((n, t, i)))
    h0, c0 = rng.standard_normal((n, hsz)), rng.standard_normal((n, hsz))
    gy = rng.standard_normal((n, t, hsz))
    # reference: the cell, step by step
    h, c, outs = Tensor(h0), Tensor(c0), []
    for s_ in range(t):
        h, c = cell(x[:, s_], (h, c))
        outs.append(h)
    ref = nanoar.stack(outs, axis=1)
    ref.backward(gy)
    want = {"w": cell.weight.grad.copy(), "b": cell.bias.grad.copy()}
    cell.zero_grad()
    hs, (h_t, c_t) = lstm_layer(x @ cell.weight[:i] + cell.bias, cell.weight[i:], h0, c0)
    np.testing.assert_allclose(hs.data, ref.data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_t, h.data, rtol=1e-12)
    np.testing.assert_allclose(c_t, c.data, rtol=1e-12)
    hs.backward(gy)
    np.testing.assert_allclose(cell.weight.grad, want["w"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cell.bias.grad, want["b"], rtol=1e-10, atol=1e-12)
    xw = Tensor(rng.standard_normal((n, t, 4 * hsz)) * 2, requires_grad=True)
    wh = Tensor(rng.standard_normal((hsz, 4 * hsz)) * 0.5, requires_grad=True)
    gradcheck(lambda a, b: lstm_layer(a, b, h0, c0)[0], [xw, wh])


# ---------------------------------------------------------------------------- transformer specifics
@pytest.mark.parametrize("tq,tk", [(5, 5), (1, 4), (2, 5)])
def test_attention_against_the_formula(float64, tq, tk):
    """Query i of Tq sits at position Tk - Tq + i and sees keys 0, ..., Tk - Tq + i."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((2, 3, n, 4)) for n in (tq, tk, tk))
    s = q @ k.swapaxes(-1, -2) / 2.0
    s = np.where(np.arange(tk)[None, :] > np.arange(tk - tq, tk)[:, None], -np.inf, s)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    y, weights = attention(to_xp(q), to_xp(k), to_xp(v))
    np.testing.assert_allclose(nanoar.to_numpy(weights), a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(nanoar.to_numpy(y), a @ v, rtol=1e-12)


def test_causal_self_attention_gradcheck(float64):
    rng = np.random.default_rng(13)
    n, t, h, d = 2, 5, 3, 2
    qkv = Tensor(rng.standard_normal((n * t, 3 * h * d)), requires_grad=True)
    gradcheck(lambda z: causal_self_attention(z, n, h), [qkv])
    with no_grad():  # equals attention() per head, heads concatenated per position
        y = causal_self_attention(qkv, n, h).data.reshape(n, t, h, d)
    want, _ = attention(*split_heads(qkv.data, n, h))
    np.testing.assert_allclose(y, want.transpose(0, 2, 1, 3), rtol=1e-12)


def test_transformer_sliding_window_is_the_documented_window(float64):
    """Past the context, x_t is conditioned on [BOS, x_{t-c+1}, ..., x_{t-1}]."""
    model = transformer(seq_len=9, context=4)
    x = np.random.default_rng(13).integers(0, K, size=(2, 9))
    lp = lp_array(model, x)
    for t in range(4, 9):
        window = x[:, t - 3:t + 1]  # x_{t-3}, ..., x_t scored from BOS: the last is our conditional
        np.testing.assert_allclose(lp[:, t], lp_array(model, window)[:, -1], rtol=1e-12)
    np.testing.assert_allclose(lp[:, :4], lp_array(model, x[:, :4]), rtol=1e-12)


def test_transformer_init_and_benchmark_shape():
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
    tied = CharTransformer(65, tied=True)
    assert tied.head is None and tied.num_parameters() == model.num_parameters() - 128 * 65


# ---------------------------------------------------------------------------- fit, data, config
@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_fits_a_repeating_sequence(name):
    """x_t = t mod 3 in every sequence: deterministic, so NLL per char can approach 0."""
    nanoar.manual_seed(0)
    if name == "lstm":
        model, opt_cls = CharLSTM(K, embed_dim=8, hidden_size=16, n_layers=1, seq_len=12), Adam
    else:
        model, opt_cls = CharTransformer(K, context=12, n_layers=1, n_heads=2, dim=16), AdamW
    x = np.tile(np.arange(12) % K, (4, 1))
    opt = opt_cls(model.parameters(), lr=0.03)
    for _ in range(80):
        opt.zero_grad()
        (-model.log_prob(x).mean()).backward()
        opt.step()
    nll_per_char = float(-lp_array(model, x).mean())
    assert nll_per_char < 0.05, f"{name}: NLL per char {nll_per_char:.4f} nats after 80 steps"
    np.testing.assert_array_equal(nanoar.to_numpy(model.sample(3, seed=0, length=12, top_k=1)), x[:3])


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_any_length_is_accepted_and_bad_data_is_refused(name):
    model = FAMILIES[name](seq_len=4)
    for t in (1, 2, 13):
        assert lp_array(model, np.zeros((2, t), int)).shape == (2, t)
    assert_refuses_bad_sequences(model)


@pytest.mark.parametrize("name,registry", [("lstm", "lstm"), ("transformer-tied-bias", "transformer")])
def test_config_rebuilds_the_model(float64, name, registry):
    model = FAMILIES[name](seq_len=5)
    other = build_model(registry, model.config())
    other.load_state_dict(model.state_dict())
    x = np.random.default_rng(14).integers(0, K, size=(2, 8))
    np.testing.assert_allclose(lp_array(other, x), lp_array(model, x), rtol=1e-12)


# ---------------------------------------------------------------------------- devices
@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_train_step_and_sampling_on_device(device, name):
    model = FAMILIES[name](seq_len=8)
    x = to_xp(np.random.default_rng(15).integers(0, K, size=(3, 8)))
    opt = AdamW(model.parameters(), lr=1e-3)
    loss = -model.log_prob(x).mean()
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    s = model.sample(2, seed=1)
    assert nanoar.backend.is_device_array(s) == (device == "cuda") and s.shape == (2, 8)
    np.testing.assert_array_equal(nanoar.to_numpy(s), nanoar.to_numpy(model.sample(2, seed=1, method="naive")))


# ---------------------------------------------------------------------------- the benchmark model
def test_same_network_as_the_pytorch_benchmark_chargpt(float64, torch_ref):
    """With the reference's weights (and its GELU switched to the tanh form nanoar uses), a
    window of ids gives the reference's logits: a small instance of bench/torch_ref.py's
    CharGPT. (The reference scores x_1.. given x_0; CharTransformer puts BOS in front.)"""
    import torch

    ref = torch_ref
    torch.manual_seed(0)
    tm = ref.CharGPT(vocab=7, block_size=6, n_layers=2, n_heads=2, d_model=8).double()
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
    with no_grad():
        np.testing.assert_allclose(model.window_logits(ids).data, want, rtol=1e-9, atol=1e-12)
