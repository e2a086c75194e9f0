"""A character-level LSTM language model: an autoregressive model of id sequences with a
recurrent state (Hochreiter & Schmidhuber 1997; Graves 2013; Karpathy's char-rnn).

    log p(x) = sum_t log p(x_t | h_t),   h_t = LSTM(h_{t-1}, embed(x_{t-1})),   x_{-1} = BOS

x: int ids (N, T) in [0, K). The input at step t is the embedding of the previous id, and at
t = 0 of a start token BOS = K (an extra, learned embedding row), so x_0 is conditioned on
nothing and the model is exactly normalised for any T. Shapes, for n_layers stacked cells:

    e_t = E[x_{t-1}]                                           (N, embed_dim)
    layer l:  [i, f, g, o] = h^{l-1}_t W_x + h^l_{t-1} W_h + b    (N, 4H)
              c^l_t = sigmoid(f) c^l_{t-1} + sigmoid(i) tanh(g);  h^l_t = sigmoid(o) tanh(c^l_t)
    logits_t = h^L_t W_out + b_out                              (N, K)

Each layer is an `nn.LSTMCell` (its weight (I + H, 4H) is [W_x; W_h]), run in the fused
formulation: a layer's input projection for ALL time steps is one matrix product
(N, T, I) @ (I, 4H) done before its time loop, and the time loop (forward and
backpropagation through time) is one autograd node, `lstm_layer`.

State and truncated backpropagation through time: the state (h, c of every layer, and the
last id read) summarises x_<t exactly, so scoring a long sequence chunk by chunk while
carrying the state (`log_prob_chunk`) gives exactly the log-probabilities of one pass over
the whole sequence; only the gradient stops at chunk boundaries (the state is detached).
Sampling carries the state too: O(1) work per step ('fast'); 'naive' reruns the prefix.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ..distributions import Categorical, sample_categorical
from ..nn import Embedding, Linear, LSTMCell
from ..tensor import Tensor, record_op, concatenate, matmul, no_grad
from .base import SequenceModel, check_count


def lstm_cell(gates, c):
    """The LSTM gate nonlinearities on arrays: gates (N, 4H) = [i | f | g | o] preactivations,
    c: (N, H) -> (h', c', acts) with acts = [sigmoid(i) | sigmoid(f) | tanh(g) | sigmoid(o)]
    (N, 4H) (kept for the backward pass):

        c' = sigmoid(f) c + sigmoid(i) tanh(g),    h' = sigmoid(o) tanh(c').

    The order and formulas of `nn.LSTMCell`; sigmoid(x) = (1 + tanh(x / 2)) / 2 is bounded
    for every x and needs one transcendental op.
    """
    xp = backend.array_module(gates)
    hsz = c.shape[-1]
    acts = gates * 0.5
    xp.tanh(acts, out=acts)
    acts += 1.0
    acts *= 0.5                                                   # sigmoid of all four ...
    acts[:, 2 * hsz:3 * hsz] = xp.tanh(gates[:, 2 * hsz:3 * hsz])  # ... but g: tanh
    si, sf, tg, so = (acts[:, j * hsz:(j + 1) * hsz] for j in range(4))
    c_new = sf * c
    c_new += si * tg
    h_new = so * xp.tanh(c_new)
    return h_new, c_new, acts


def lstm_layer(xw, w_h, h0, c0) -> Tensor:
    """A whole LSTM layer over T steps as one node (backpropagation through time inside).

    xw: (N, T, 4H) = every step's input projection x_t W_x + b (one product, outside);
    w_h: (H, 4H) the recurrent weight; h0, c0: (N, H) arrays, the initial state (constants:
    a carried state is detached) -> (hs, (h_T, c_T)): hs a Tensor (N, T, H) of the outputs
    h_1, ..., h_T, and the final state as arrays (no gradient flows through them).

    Forward, per step: gates_t = xw_t + h_{t-1} W_h, then `lstm_cell`. Backward, from t = T
    down to 1, with g_h = g_hs_t + g_gates_{t+1} W_h^T and g_c carried:
        g_c += g_h sigmoid(o) (1 - tanh(c_t)^2)
        g_i = g_c tanh(g) si (1 - si),  g_f = g_c c_{t-1} sf (1 - sf),
        g_g = g_c si (1 - tanh(g)^2),   g_o = g_h tanh(c_t) so (1 - so),   g_c <- g_c sf;
    then g_xw = g_gates and g_W_h = sum_t h_{t-1}^T g_gates_t (one product over all steps).
    One node per layer instead of ~15 per step: the graph, and the zero-filled gradients of
    per-step slices, would otherwise cost more than the arithmetic.
    """
    xp = backend.array_module(xw.data)
    n, t, four_h = xw.shape
    hsz = four_h // 4
    wh = w_h.data
    dt = xw.dtype
    hs = xp.empty((n, t + 1, hsz), dt)                            # h_0, h_1, ..., h_T
    cs = xp.empty((n, t + 1, hsz), dt)
    acts = xp.empty((n, t, four_h), dt)
    hs[:, 0], cs[:, 0] = h0, c0
    for s in range(t):
        gates = hs[:, s] @ wh
        gates += xw.data[:, s]
        hs[:, s + 1], cs[:, s + 1], acts[:, s] = lstm_cell(gates, cs[:, s])

    def backward(g_out):
        g_gates = xp.empty((n, t, four_h), g_out.dtype)
        g_h = xp.zeros((n, hsz), g_out.dtype)
        g_c = xp.zeros((n, hsz), g_out.dtype)
        for s in range(t - 1, -1, -1):
            si, sf, tg, so = (acts[:, s, j * hsz:(j + 1) * hsz] for j in range(4))
            tc = xp.tanh(cs[:, s + 1])
            g_h += g_out[:, s]
            g_c += g_h * so * (1.0 - tc * tc)
            gg = g_gates[:, s]
            gg[:, :hsz] = g_c * tg * si * (1.0 - si)
            gg[:, hsz:2 * hsz] = g_c * cs[:, s] * sf * (1.0 - sf)
            gg[:, 2 * hsz:3 * hsz] = g_c * si * (1.0 - tg * tg)
            gg[:, 3 * hsz:] = g_h * tc * so * (1.0 - so)
            g_c *= sf
            g_h = gg @ wh.T
        g_wh = hs[:, :-1].reshape(n * t, hsz).T @ g_gates.reshape(n * t, four_h)
        return g_gates, g_wh

    return record_op(hs[:, 1:], (xw, w_h), backward, "lstm_layer"), (hs[:, -1].copy(), cs[:, -1].copy())


class LSTMState(NamedTuple):
    """The recurrent state after reading some prefix: per layer h and c (N, H) arrays, and
    `last`, the last id read (N,) (BOS = n_classes before anything), the next step's input."""
    h: tuple
    c: tuple
    last: object


class CharLSTM(SequenceModel):
    """Multi-layer LSTM over ids in [0, n_classes): embedding (with a BOS row) -> n_layers
    LSTM cells of hidden_size -> Linear -> logits. seq_len: default length of `sample` and
    `event_shape` (scoring accepts any T)."""

    kind = "categorical"
    variable_length = True

    def __init__(self, n_classes: int, embed_dim: int = 32, hidden_size: int = 128, n_layers: int = 2,
                 seq_len: int = 256):
        if n_classes < 2 or n_layers < 1 or seq_len < 1:
            raise ValueError("CharLSTM: need n_classes >= 2, n_layers >= 1, seq_len >= 1, "
                             f"got {n_classes}, {n_layers}, {seq_len}")
        self.n_classes, self.embed_dim, self.hidden_size = int(n_classes), embed_dim, hidden_size
        self.n_layers, self.seq_len = n_layers, int(seq_len)
        self.embed = Embedding(n_classes + 1, embed_dim)  # row n_classes: the start token
        self.cells = [LSTMCell(embed_dim if l == 0 else hidden_size, hidden_size) for l in range(n_layers)]
        self.head = Linear(hidden_size, n_classes)

    @property
    def event_shape(self) -> tuple:
        return (self.seq_len,)

    @property
    def bos(self) -> int:
        """The start token id (= n_classes): the input of step 0."""
        return self.n_classes

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, embed_dim=self.embed_dim, hidden_size=self.hidden_size,
                    n_layers=self.n_layers, seq_len=self.seq_len)

    def initial_state(self, n: int) -> LSTMState:
        """The state before any id: zeros, and BOS as the next input."""
        xp, dt = backend.xp(), self.head.weight.dtype
        zeros = lambda: tuple(xp.zeros((n, self.hidden_size), dt) for _ in self.cells)  # noqa: E731
        return LSTMState(zeros(), zeros(), xp.full((n,), self.bos, xp.int64))

    # ------------------------------------------------------------------ the network
    def _run(self, e, state: LSTMState):
        """Embedded inputs e (N, T, E) (step t's input, BOS already in front) -> top-layer
        outputs (N, T, H), and the final per-layer h and c arrays."""
        seq, hs, cs = e, [], []
        for l, cell in enumerate(self.cells):
            n_in = seq.shape[-1]
            xw = matmul(seq, cell.weight[:n_in]) + cell.bias   # every step's input projection at once
            seq, (h, c) = lstm_layer(xw, cell.weight[n_in:], state.h[l], state.c[l])
            hs.append(h)
            cs.append(c)
        return seq, hs, cs

    def _inputs(self, a, state: LSTMState):
        """Ids (N, T) -> the ids read at each step: [last, x_0, ..., x_{T-2}] (N, T)."""
        xp = backend.array_module(a)
        return xp.concatenate([state.last[:, None].astype(a.dtype), a[:, :-1]], axis=1)

    def _check_state(self, state, n) -> LSTMState:
        if state is None:
            return self.initial_state(n)
        if not isinstance(state, LSTMState) or len(state.h) != self.n_layers or state.h[0].shape != (n, self.hidden_size):
            raise ValueError(f"CharLSTM: state must be an LSTMState for {n} sequences from initial_state() or log_prob_chunk()")
        return state

    def log_prob_chunk(self, x, state: LSTMState | None = None):
        """log p(x_t | everything read before) for a chunk that continues `state` (None: the
        sequence starts here): ids (N, T) -> (Tensor (N, T), final LSTMState, detached).

        Truncated BPTT: score chunk k, backprop, then pass the returned state to chunk k + 1.
        The values are exact for the whole stream; gradients stop at the chunk boundary.
        """
        a = self.check_data(x)
        state = self._check_state(state, a.shape[0])
        seq, hs, cs = self._run(self.embed(self._inputs(a, state), check=False), state)
        lp = Categorical(self.head(seq)).log_prob(a, check=False)
        final = LSTMState(tuple(hs), tuple(cs), a[:, -1].astype(state.last.dtype))
        return lp, final

    def log_prob_per_variable(self, x, state: LSTMState | None = None) -> Tensor:
        """log p(x_t | x_<t): ids (N, T) -> Tensor (N, T) (from `state` if given)."""
        return self.log_prob_chunk(x, state)[0]

    def log_prob(self, x, state: LSTMState | None = None) -> Tensor:
        return self.log_prob_per_variable(x, state).sum(axis=1)

    def forward_from_inputs(self, e) -> Tensor:
        """Float embeddings e (N, T, E) of x_0, ..., x_{T-1} -> logits (N, T, K); the BOS
        embedding is put in front and e[:, -1] dropped inside, so logits[:, t] sees e[:, :t]."""
        e = e if isinstance(e, Tensor) else Tensor(e)
        n = e.shape[0]
        bos = self.embed(backend.xp().full((n, 1), self.bos, backend.xp().int64), check=False)
        seq, _, _ = self._run(concatenate([bos, e[:, :-1]], axis=1), self.initial_state(n))
        return self.head(seq)

    # ------------------------------------------------------------------ sampling
    def step(self, state: LSTMState):
        """One step on plain arrays (no graph): the logits (N, K) of the next id given
        `state`, and the state after it (its `last` is left for the caller to set)."""
        x = self.embed.weight.data[state.last]
        hs, cs = [], []
        for l, cell in enumerate(self.cells):
            w, n_in = cell.weight.data, x.shape[-1]
            gates = state.h[l] @ w[n_in:]                          # the order of `_run`
            gates += x @ w[:n_in] + cell.bias.data
            x, c, _ = lstm_cell(gates, state.c[l])
            hs.append(x)
            cs.append(c)
        logits = x @ self.head.weight.data + self.head.bias.data
        return logits, LSTMState(tuple(hs), tuple(cs), state.last)

    def sample(self, n: int, seed=None, length: int | None = None, temperature: float = 1.0,
               top_k: int = 0, prompt=None, method: str = "fast"):
        """Ancestral samples: int64 ids (n, length), the prompt ((P,) or (n, P)) first.
        method: 'fast' carries the state (O(1) per step); 'naive' reruns the whole prefix."""
        n = check_count(n)
        length = self.seq_len if length is None else int(length)
        if method not in ("fast", "naive"):
            raise ValueError(f"CharLSTM.sample: method must be 'fast' or 'naive', got {method!r}")
        out, p = self._start(n, length, prompt)
        rng = backend.make_rng(seed)
        with no_grad():
            state = self.initial_state(n)
            if method == "fast" and p:
                _, state = self.log_prob_chunk(out[:, :p])  # read the prompt in one pass
            for t in range(p, length):
                if method == "fast":
                    logits, state = self.step(state)
                else:
                    lp_in = out[:, :t + 1]  # out[:, t] is a placeholder: only x_<t is read
                    seq, _, _ = self._run(self.embed(self._inputs(lp_in, state), check=False), state)
                    logits = self.head(seq[:, -1]).data
                out[:, t] = sample_categorical(logits, rng, temperature, top_k)
                if method == "fast":
                    state = state._replace(last=out[:, t])
        return out
