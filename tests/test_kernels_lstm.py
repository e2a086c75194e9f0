"""The fused LSTM layer (nanoar.kernels.lstm) against its textbook path, `nn.LSTMCell` applied
step by step: values, final state and gradients on random sizes and inputs, and a gradcheck
of the node itself."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, gradcheck, no_grad
from nanoar.kernels.lstm import lstm_cell, lstm_layer, lstm_steps
from nanoar.nn import LSTMCell
from strategies import fixture_settings, seeds

from conftest import to_xp

sizes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 5))  # N, T, I, H


def cell_and_inputs(n, t, i, hsz, seed):
    """A cell with a random bias (not only the forget gate's 1), inputs x (N, T, I) and a
    nonzero initial state."""
    rng = np.random.default_rng(seed)
    nanoar.manual_seed(seed)
    cell = LSTMCell(i, hsz)
    cell.bias.data[:] = to_xp(rng.standard_normal(4 * hsz))
    x = Tensor(to_xp(rng.standard_normal((n, t, i))), requires_grad=True)
    h0, c0 = to_xp(rng.standard_normal((n, hsz))), to_xp(rng.standard_normal((n, hsz)))
    return cell, x, h0, c0, to_xp(rng.standard_normal((n, t, hsz)))


def textbook(cell, x, h0, c0):
    h, c, hs = Tensor(h0), Tensor(c0), []
    for s in range(x.shape[1]):
        h, c = cell(x[:, s], (h, c))
        hs.append(h)
    return nanoar.stack(hs, axis=1), (h.data, c.data)


@fixture_settings
@given(size=sizes, seed=seeds)
def test_lstm_steps_equal_lstm_cell_steps_in_value_and_gradient(float64, size, seed):
    cell, x, h0, c0, gy = cell_and_inputs(*size, seed)
    grads = []
    for run in (textbook, lstm_steps):
        cell.zero_grad()
        x.grad = None
        hs, (h, c) = run(cell, x, h0, c0)
        hs.backward(gy)
        grads.append((nanoar.to_numpy(hs.data), nanoar.to_numpy(h), nanoar.to_numpy(c),
                      nanoar.to_numpy(x.grad), nanoar.to_numpy(cell.weight.grad), nanoar.to_numpy(cell.bias.grad)))
    for want, got, what in zip(*grads, ["outputs", "final h", "final c", "grad x", "grad weight", "grad bias"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=what)


@fixture_settings
@given(size=sizes, seed=seeds)
def test_lstm_layer_gradcheck(float64, size, seed):
    n, t, _, hsz = size
    rng = np.random.default_rng(seed)
    h0, c0 = to_xp(rng.standard_normal((n, hsz))), to_xp(rng.standard_normal((n, hsz)))
    xw = Tensor(to_xp(rng.standard_normal((n, t, 4 * hsz)) * 2), requires_grad=True)
    wh = Tensor(to_xp(rng.standard_normal((hsz, 4 * hsz)) * 0.5), requires_grad=True)
    assert gradcheck(lambda a, b: lstm_layer(a, b, h0, c0)[0], [xw, wh], seed=seed)


def test_lstm_cell_is_one_step_of_the_cell(float64):
    """The array step (what the sampler runs) against nn.LSTMCell on one step, with gates
    large enough to reach both tails of the sigmoid."""
    rng = np.random.default_rng(0)
    cell = LSTMCell(3, 4)
    cell.weight.data *= 40.0
    x, h, c = (to_xp(rng.standard_normal((5, k))) for k in (3, 4, 4))
    with no_grad():
        want_h, want_c = cell(Tensor(x), (Tensor(h), Tensor(c)))
    gates = np.concatenate([x, h], axis=1) @ cell.weight.data + cell.bias.data
    got_h, got_c, acts = lstm_cell(gates, c)
    assert np.abs(gates).max() > 30
    np.testing.assert_allclose(got_h, want_h.data, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(got_c, want_c.data, rtol=1e-13, atol=1e-15)
    assert acts.shape == (5, 16) and np.all((acts >= -1) & (acts <= 1))
