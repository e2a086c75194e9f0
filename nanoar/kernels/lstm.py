"""An LSTM layer over a whole sequence as one autograd node (the textbook layer is
`CharLSTM.layer` with `fused = False`: `nn.LSTMCell` applied step by step)."""
from __future__ import annotations

from .. import backend
from ..tensor import matmul, record_op, sigmoid_array


def lstm_cell(gates, c, out=None):
    """The gate nonlinearities of `nn.LSTMCell` on arrays: gates (N, 4H) = [i | f | g | o]
    preactivations, c: (N, H) -> (h', c', acts), acts = [sigmoid(i) | sigmoid(f) | tanh(g) |
    sigmoid(o)] (N, 4H) (what the backward pass needs):

        c' = sigmoid(f) c + sigmoid(i) tanh(g),    h' = sigmoid(o) tanh(c').

    out: optional arrays (h', c', acts) to write the results into.
    """
    xp = backend.array_module(gates)
    hsz = c.shape[-1]
    h_new, c_new, acts = out if out is not None else (xp.empty_like(c), xp.empty_like(c), xp.empty_like(gates))
    sigmoid_array(gates, out=acts)                                # sigmoid of all four ...
    xp.tanh(gates[:, 2 * hsz:3 * hsz], out=acts[:, 2 * hsz:3 * hsz])  # ... but g: tanh
    si, sf, tg, so = (acts[:, j * hsz:(j + 1) * hsz] for j in range(4))
    xp.multiply(sf, c, out=c_new)
    c_new += si * tg
    xp.tanh(c_new, out=h_new)
    h_new *= so
    return h_new, c_new, acts


def lstm_steps(cell, x, h0, c0):
    """`cell` (an `nn.LSTMCell`, weight [W_x; W_h] (I + H, 4H), bias b) applied at every step
    of x: (N, T, I) from the state h0, c0: (N, H) arrays -> (hs, (h_T, c_T)): hs a Tensor
    (N, T, H) of h_1, ..., h_T, and the final state as arrays (no gradient flows into or
    out of the state: a carried state is detached).

    The cell's gates [x_t, h_{t-1}] W + b = (x_t W_x + b) + h_{t-1} W_h: the first term
    depends on the inputs only, so it is computed for all T steps as one product before
    the time loop, and the loop itself is `lstm_layer`.
    """
    n_in = x.shape[-1]
    xw = matmul(x, cell.weight[:n_in]) + cell.bias                # (N, T, 4H)
    return lstm_layer(xw, cell.weight[n_in:], h0, c0)


def lstm_layer(xw, w_h, h0, c0):
    """The time loop of an LSTM layer, forward and backpropagation through time, as one node.

    xw: (N, T, 4H) Tensor, every step's input projection x_t W_x + b; w_h: (H, 4H) Tensor, the
    recurrent weight; h0, c0: (N, H) arrays -> (hs, (h_T, c_T)) as in `lstm_steps`.

    Forward, per step: gates_t = xw_t + h_{t-1} W_h, then `lstm_cell`. Backward, from t = T
    down to 1, with g_h = g_hs_t + g_gates_{t+1} W_h^T and g_c carried:
        g_c += g_h sigmoid(o) (1 - tanh(c_t)^2)
        g_i = g_c tanh(g) si (1 - si),  g_f = g_c c_{t-1} sf (1 - sf),
        g_g = g_c si (1 - tanh(g)^2),   g_o = g_h tanh(c_t) so (1 - so),   g_c <- g_c sf;
    then g_xw = g_gates and g_W_h = sum_t h_{t-1}^T g_gates_t (one product over all steps).
    This is the chain rule through the ops of `lstm_cell`, which the textbook path records as
    separate nodes at every step.
    """
    xp = backend.array_module(xw.data)
    n, t, four_h = xw.shape
    hsz = four_h // 4
    wh = w_h.data
    dt = xw.dtype
    # the saved states are time-major: the rows of step s are one contiguous block
    hs = xp.empty((t + 1, n, hsz), dt)                            # h_0, h_1, ..., h_T
    cs = xp.empty((t + 1, n, hsz), dt)
    acts = xp.empty((t, n, four_h), dt)
    hs[0], cs[0] = h0, c0
    for s in range(t):
        gates = hs[s] @ wh
        gates += xw.data[:, s]
        lstm_cell(gates, cs[s], out=(hs[s + 1], cs[s + 1], acts[s]))

    def backward(g_out):
        g_gates = xp.empty((n, t, four_h), g_out.dtype)
        g_h = xp.zeros((n, hsz), g_out.dtype)
        g_c = xp.zeros((n, hsz), g_out.dtype)
        for s in range(t - 1, -1, -1):
            si, sf, tg, so = (acts[s, :, j * hsz:(j + 1) * hsz] for j in range(4))
            tc = xp.tanh(cs[s + 1])
            g_h += g_out[:, s]
            g_c += g_h * so * (1.0 - tc * tc)
            gg = g_gates[:, s]
            gg[:, :hsz] = g_c * tg * si * (1.0 - si)
            gg[:, hsz:2 * hsz] = g_c * cs[s] * sf * (1.0 - sf)
            gg[:, 2 * hsz:3 * hsz] = g_c * si * (1.0 - tg * tg)
            gg[:, 3 * hsz:] = g_h * tc * so * (1.0 - so)
            g_c *= sf
            g_h = gg @ wh.T
        h_prev = hs[:-1].transpose(1, 0, 2).reshape(n * t, hsz)  # rows in the order of g_gates
        g_wh = h_prev.T @ g_gates.reshape(n * t, four_h)
        return g_gates, g_wh

    return record_op(hs[1:].transpose(1, 0, 2), (xw, w_h), backward, "lstm_layer"), (hs[-1].copy(), cs[-1].copy())
