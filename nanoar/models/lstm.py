"""A character-level LSTM language model: an autoregressive model of id sequences with a
recurrent state (Hochreiter & Schmidhuber 1997; Graves 2013; Karpathy's char-rnn).

    log p(x) = sum_t log p(x_t | h_t),   h_t = LSTM(h_{t-1}, embed(x_{t-1})),   x_{-1} = BOS

x: int ids (N, T) in [0, K). The input at step t is the embedding of the previous id, and at
t = 0 of a start token BOS = K (an extra, learned embedding row), so x_0 is conditioned on
nothing and the model is exactly normalised for any T. Shapes, for n_layers stacked cells:

    e_t = E[x_{t-1}]                                              (N, embed_dim)
    layer l:  [i, f, g, o] = [h^{l-1}_t, h^l_{t-1}] W + b            (N, 4H)
              c^l_t = sigmoid(f) c^l_{t-1} + sigmoid(i) tanh(g);  h^l_t = sigmoid(o) tanh(c^l_t)
    logits_t = h^L_t W_out + b_out                                 (N, K)

Each layer is an `nn.LSTMCell` applied at every step (`CharLSTM.layer`); with `fused` (the
default) the same layer runs as `nanoar.kernels.lstm.lstm_steps`, the time loop and its
backpropagation through time as one autograd node.

State and truncated backpropagation through time: the state (h, c of every layer, and the
last id read) summarises x_<t exactly, so scoring a long sequence chunk by chunk while
carrying the state (`log_prob_chunk`, and `training_loss`, which the training script calls
on consecutive chunks) gives exactly the log-probabilities of one pass over the whole
sequence; only the gradient stops at chunk boundaries (the state is detached). Sampling
carries the state too: O(1) work per step ('fast'); 'naive' reruns the prefix.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import backend
from ..distributions import Categorical, sample_categorical
from ..kernels.lstm import lstm_cell, lstm_steps
from ..nn import Embedding, Linear, LSTMCell
from ..tensor import Tensor, concatenate, no_grad, stack
from .base import SequenceModel, batch_mean


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

    stateful = True
    fused = True  # run each layer as one node (nanoar.kernels.lstm); False: LSTMCell steps

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

    def config(self) -> dict:
        return dict(n_classes=self.n_classes, embed_dim=self.embed_dim, hidden_size=self.hidden_size,
                    n_layers=self.n_layers, seq_len=self.seq_len)

    def initial_state(self, n: int) -> LSTMState:
        """The state before any id: zeros, and BOS as the next input."""
        xp, dt = backend.xp(), self.head.weight.dtype
        zeros = lambda: tuple(xp.zeros((n, self.hidden_size), dt) for _ in self.cells)  # noqa: E731
        return LSTMState(zeros(), zeros(), xp.full((n,), self.bos, xp.int64))

    # ------------------------------------------------------------------ the network
    def forward(self, inputs, state: LSTMState):
        """The ids read at each step, inputs (N, T) (x_{t-1}; at t = 0 the state's `last`),
        from `state` -> logits (N, T, K), and the final h and c of every layer (arrays)."""
        e = self.embed(inputs, check=False)                                # (N, T, E)
        return self.forward_embedded(e, state)

    def forward_embedded(self, e, state: LSTMState):
        """`forward` from the embedded inputs e (N, T, E)."""
        x, hs, cs = e, [], []                                             # x: (N, T, E)
        for l, cell in enumerate(self.cells):
            x, (h, c) = self.layer(cell, x, state.h[l], state.c[l])       # (N, T, H); (N, H), (N, H)
            hs.append(h)
            cs.append(c)
        return self.head(x), tuple(hs), tuple(cs)                          # (N, T, K)

    def layer(self, cell: LSTMCell, x, h0, c0):
        """One layer: `cell` applied at every step, carrying (h, c). x: (N, T, I); h0, c0:
        (N, H) arrays -> the outputs h_1, ..., h_T (N, T, H), and the final h, c as arrays
        (detached: the gradient of a chunk stops at its first step)."""
        if self.fused:
            return lstm_steps(cell, x, h0, c0)      # the same steps as one node
        h, c = Tensor(h0), Tensor(c0)                                      # (N, H), (N, H)
        hs = []
        for t in range(x.shape[1]):
            h, c = cell(x[:, t], (h, c))                                   # (N, H), (N, H)
            hs.append(h)
        return stack(hs, axis=1), (h.data, c.data)                         # (N, T, H); (N, H), (N, H)

    def _read(self, a, state: LSTMState):
        """Checked ids a (N, T) that continue `state` -> logits (N, T, K) of every x_t, and
        the state after a."""
        xp = backend.array_module(a)
        inputs = xp.concatenate([state.last[:, None].astype(a.dtype), a[:, :-1]], axis=1)  # (N, T)
        logits, hs, cs = self.forward(inputs, state)
        return logits, LSTMState(hs, cs, a[:, -1].astype(state.last.dtype))

    def _check_state(self, state, n) -> LSTMState:
        if state is None:
            return self.initial_state(n)
        if not isinstance(state, LSTMState) or len(state.h) != self.n_layers or state.h[0].shape != (n, self.hidden_size):
            raise ValueError(f"CharLSTM: state must be an LSTMState for {n} sequences from initial_state() or log_prob_chunk()")
        return state

    # ------------------------------------------------------------------ likelihood
    def distribution(self, a, y=None) -> Categorical:
        """p(x_t | x_<t) for every t: checked ids (N, T) -> Categorical over (N, T)."""
        return Categorical(self._read(a, self.initial_state(a.shape[0]))[0])

    def log_prob_chunk(self, x, state: LSTMState | None = None):
        """log p(x_t | everything read before) for a chunk that continues `state` (None: the
        sequence starts here): ids (N, T) -> (Tensor (N, T), final LSTMState, detached).

        Truncated BPTT: score chunk k, backprop, then pass the returned state to chunk k + 1.
        The values are exact for the whole stream; gradients stop at the chunk boundary.
        """
        a = self.check_data(x)
        logits, final = self._read(a, self._check_state(state, a.shape[0]))
        return Categorical(logits).log_prob(a, check=False), final

    def training_loss(self, x, state: LSTMState | None = None, y=None):
        """The mean NLL per id of a chunk that continues `state` (None: a fresh start), and
        the state to pass with the next chunk (consecutive chunks: truncated BPTT)."""
        self.check_labels(y, len(x))
        lp, state = self.log_prob_chunk(x, state)
        return -batch_mean(lp), state

    def input_features(self, ids) -> Tensor:
        """The embeddings of the ids, as constant float features: (N, T) -> (N, T, E)."""
        with no_grad():
            return self.embed(ids)

    def forward_from_inputs(self, e) -> Tensor:
        """Float embeddings e (N, T, E) of x_0, ..., x_{T-1} -> logits (N, T, K); the BOS
        embedding is put in front and e[:, -1] dropped, so logits[:, t] sees e[:, :t]."""
        e = e if isinstance(e, Tensor) else Tensor(e)
        state = self.initial_state(e.shape[0])
        bos = self.embed(state.last[:, None], check=False)                 # (N, 1, E)
        return self.forward_embedded(concatenate([bos, e[:, :-1]], axis=1), state)[0]

    # ------------------------------------------------------------------ sampling
    def next_logits(self, prefix, y=None):
        """The logits (n, K) of x_t given prefix = x_<t (n, t): the whole prefix from the
        initial state."""
        xp = backend.array_module(prefix)
        state = self.initial_state(prefix.shape[0])
        inputs = xp.concatenate([state.last[:, None], prefix], axis=1)     # (n, t + 1): BOS, x_0, ..., x_{t-1}
        return self.forward(inputs, state)[0].data[:, -1]

    def step(self, state: LSTMState):
        """One step on plain arrays (no graph): the logits (N, K) of the next id given
        `state`, and the state after it (its `last` is left for the caller to set)."""
        x = self.embed.weight.data[state.last]                             # (N, E)
        hs, cs = [], []
        for l, cell in enumerate(self.cells):
            w, n_in = cell.weight.data, x.shape[-1]
            gates = state.h[l] @ w[n_in:]                                  # (N, 4H), in the order of lstm_layer
            gates += x @ w[:n_in] + cell.bias.data
            x, c, _ = lstm_cell(gates, state.c[l])                         # (N, H), (N, H)
            hs.append(x)
            cs.append(c)
        logits = x @ self.head.weight.data + self.head.bias.data           # (N, K)
        return logits, LSTMState(tuple(hs), tuple(cs), state.last)

    def sample_fast(self, out, p: int, rng, temperature: float, top_k: int, y=None) -> None:
        """Carry the state: read the prompt out[:, :p] in one pass, then one `step` per id."""
        state = self.initial_state(out.shape[0])
        if p:
            _, state = self._read(out[:, :p], state)
        for t in range(p, out.shape[1]):
            logits, state = self.step(state)
            out[:, t] = sample_categorical(logits, rng, temperature, top_k)
            state = state._replace(last=out[:, t])
