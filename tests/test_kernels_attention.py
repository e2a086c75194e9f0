"""The attention kernels (nanoar.kernels.attention) against the textbook path
(`CharTransformer.attention` with fused = False: split, q k^T / sqrt(d), the mask, softmax,
A v, heads merged, each a Tensor op) and against the formula; the KV-cached form against
the full pass."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, gradcheck, no_grad
from nanoar.kernels.attention import attention, cached_attention, causal_self_attention, kv_cache, split_heads
from nanoar.models.transformer import CharTransformer
from strategies import fixture_settings, seeds

from conftest import to_xp

sizes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 3), st.integers(1, 4))  # N, T, h, d


def textbook_attention(n_heads, dim):
    model = CharTransformer(3, context=2, n_layers=1, n_heads=n_heads, dim=dim)
    model.fused = False
    return model.attention


@fixture_settings
@given(size=sizes, seed=seeds)
def test_causal_self_attention_equals_the_textbook_attention(float64, size, seed):
    n, t, h, d = size
    rng = np.random.default_rng(seed)
    qkv = Tensor(to_xp(rng.standard_normal((n * t, 3 * h * d)) * 2), requires_grad=True)
    gy = to_xp(rng.standard_normal((n * t, h * d)))
    results = []
    for run in (textbook_attention(h, h * d), lambda z, n_: causal_self_attention(z, n_, h)):
        qkv.grad = None
        y = run(qkv, n)
        y.backward(gy)
        results.append((nanoar.to_numpy(y.data), nanoar.to_numpy(qkv.grad)))
    (y_t, g_t), (y_f, g_f) = results
    assert y_f.shape == (n * t, h * d)
    np.testing.assert_allclose(y_f, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_f, g_t, rtol=1e-10, atol=1e-12)


@fixture_settings
@given(size=sizes, seed=seeds)
def test_causal_self_attention_gradcheck(float64, size, seed):
    n, t, h, d = size
    qkv = Tensor(to_xp(np.random.default_rng(seed).standard_normal((n * t, 3 * h * d))), requires_grad=True)
    assert gradcheck(lambda z: causal_self_attention(z, n, h), [qkv], seed=seed)


@pytest.mark.parametrize("tq,tk", [(5, 5), (1, 4), (2, 5), (1, 1)])
def test_attention_against_the_formula(float64, tq, tk):
    """Query i of Tq sits at position Tk - Tq + i and sees keys 0, ..., Tk - Tq + i."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((2, 3, m, 4)) for m in (tq, tk, tk))
    s = q @ k.swapaxes(-1, -2) / 2.0
    s = np.where(np.arange(tk)[None, :] > np.arange(tk - tq, tk)[:, None], -np.inf, s)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    y, weights = attention(to_xp(q), to_xp(k), to_xp(v))
    np.testing.assert_allclose(nanoar.to_numpy(weights), a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(nanoar.to_numpy(y), a @ v, rtol=1e-12)


def test_split_heads_is_the_column_layout_of_q_k_v():
    """Columns [q | k | v], each D = h d wide, head j in columns j d, ..., (j + 1) d - 1."""
    n, t, h, d = 2, 3, 2, 4
    qkv = np.arange(n * t * 3 * h * d, dtype=float).reshape(n * t, 3 * h * d)
    for z, part in zip(split_heads(qkv, n, h), range(3)):
        for j in range(h):
            cols = qkv[:, part * h * d + j * d:part * h * d + (j + 1) * d].reshape(n, t, d)
            np.testing.assert_array_equal(z[:, j], cols)


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1, 1], [2, 3], [3, 1, 1], [5]])
def test_cached_attention_equals_the_full_pass_rows(float64, chunks):
    """Positions fed in chunks against the KV cache give the full pass's rows."""
    n, t, h, d = 2, sum(chunks), 2, 3
    qkv = np.random.default_rng(3).standard_normal((n, t, 3 * h * d))
    with no_grad():
        want = causal_self_attention(Tensor(to_xp(qkv.reshape(n * t, -1))), n, h).data.reshape(n, t, h * d)
    cache, pos = kv_cache(n, h, t + 2, d, np.float64), 0
    for m in chunks:
        got = cached_attention(Tensor(to_xp(qkv[:, pos:pos + m].reshape(n * m, -1))), n, h, cache, pos)
        np.testing.assert_allclose(nanoar.to_numpy(got.data).reshape(n, m, h * d), nanoar.to_numpy(want[:, pos:pos + m]),
                                   rtol=1e-12, atol=1e-14)
        pos += m
