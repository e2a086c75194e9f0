"""CharLSTM's own facts: the O(1) state step equals one pass, chunks with a carried state
equal one pass and their gradient stops at the chunk (truncated BPTT, also through
`training_loss`), prompts read in one pass, a tiny fit, and refusal of bad data. The
protocol's identities are in test_protocol.py, the fused layer's in test_kernels_lstm.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, no_grad
from nanoar.models.lstm import CharLSTM, LSTMState

from ar_checks import assert_refuses_bad_sequences
from conftest import to_xp

K = 3


def lstm(seq_len=4, seed=0, **kw):
    nanoar.manual_seed(seed)
    cfg = dict(embed_dim=4, hidden_size=5, n_layers=2)
    cfg.update(kw)
    model = CharLSTM(K, **cfg, seq_len=seq_len)
    for p in model.parameters():  # far from uniform conditionals
        if p.ndim == 2:
            p.data *= 2.0
    return model


def ids(n, t, seed):
    return np.random.default_rng(seed).integers(0, K, size=(n, t))


def test_state_step_equals_one_pass(float64):
    model = lstm(seq_len=7)
    x = ids(2, 7, 9)
    with no_grad():
        want = nanoar.to_numpy(nanoar.log_softmax(model.distribution(to_xp(x)).logits).data)
    state = model.initial_state(2)
    for t in range(7):
        logits, state = model.step(state)
        state = state._replace(last=to_xp(x[:, t]))
        np.testing.assert_allclose(nanoar.to_numpy(nanoar.log_softmax(Tensor(logits)).data), want[:, t],
                                   rtol=1e-10, atol=1e-10)


@given(cut=st.integers(1, 11), n_layers=st.integers(1, 3), fused=st.booleans())
def test_chunks_with_carried_state_equal_one_pass(cut, n_layers, fused):
    """Scoring in chunks, carrying the (detached) state, gives exactly the log-probabilities
    of one pass; the final states agree too."""
    with nanoar.default_dtype_as("float64"):
        model = lstm(seq_len=12, n_layers=n_layers)
        model.fused = fused
        x = ids(2, 12, cut)
        with no_grad():
            full, s_full = model.log_prob_chunk(x)
            a, s1 = model.log_prob_chunk(x[:, :cut])
            b, s2 = model.log_prob_chunk(x[:, cut:], s1) if cut < 12 else (Tensor(np.zeros((2, 0))), s1)
        np.testing.assert_allclose(np.concatenate([a.data, b.data], axis=1), full.data, rtol=1e-12, atol=1e-12)
        for u, v in zip(s_full.h + s_full.c, s2.h + s2.c):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(s2.last, x[:, -1])


@pytest.mark.parametrize("fused", [True, False])
def test_truncated_bptt_gradient_stops_at_the_chunk(float64, fused):
    """Chunk 2 scored from chunk 1's state has the values of the full pass, but its gradient
    does not reach chunk 1: the BOS embedding row (read only at step 0) gets none, while the
    same log-probabilities taken from one full pass send it some."""
    model = lstm(seq_len=8)
    model.fused = fused
    x = ids(2, 8, 10)
    _, state = model.log_prob_chunk(x[:, :4])
    assert isinstance(state, LSTMState) and not any(isinstance(a, Tensor) for a in state.h + state.c)
    model.zero_grad()
    lp, _ = model.log_prob_chunk(x[:, 4:], state)
    (-lp.sum()).backward()
    assert all(p.grad is not None for p in model.cells[0].parameters())
    np.testing.assert_array_equal(model.embed.weight.grad[model.bos], 0.0)
    model.zero_grad()
    full, _ = model.log_prob_chunk(x)
    (-full[:, 4:].sum()).backward()
    assert np.abs(model.embed.weight.grad[model.bos]).sum() > 0
    np.testing.assert_allclose(lp.data, full.data[:, 4:], rtol=1e-12)
    with pytest.raises(ValueError, match="LSTMState"):
        model.log_prob_chunk(x, state=(state.h, state.c))
    with pytest.raises(ValueError, match="LSTMState"):
        model.log_prob_chunk(x[:1], state)  # a state for 2 sequences


def test_training_loss_carries_the_state(float64):
    """The scripts' training step: a stateful model whose `training_loss` takes the state
    of the previous chunk and returns the next one; None starts afresh."""
    model = lstm(seq_len=9)
    assert model.stateful
    x = to_xp(ids(3, 9, 11))
    with no_grad():
        full, s_full = model.log_prob_chunk(x)
    loss1, state = model.training_loss(x[:, :5], None)
    loss2, state = model.training_loss(x[:, 5:], state)
    assert loss1.item() == pytest.approx(-float(full.data[:, :5].mean()), rel=1e-12)
    assert loss2.item() == pytest.approx(-float(full.data[:, 5:].mean()), rel=1e-12)
    for u, v in zip(s_full.h + s_full.c, state.h + state.c):
        np.testing.assert_allclose(u, v, rtol=1e-12)
    loss2.backward()
    again, _ = model.training_loss(x[:, 5:], None)
    assert again.item() != pytest.approx(loss2.item())


def test_a_prompt_is_read_in_one_pass(float64):
    """With prompts (and temperature, top-k) the fast sampler, which reads the prompt with one
    pass and then carries the state, gives the naive sampler's samples."""
    model = lstm(seq_len=9)
    for opts in (dict(prompt=np.array([2, 0, 1]), temperature=0.6, top_k=2),
                 dict(prompt=ids(4, 2, 6), temperature=1.7), dict(prompt=np.arange(9) % K)):
        fast = nanoar.to_numpy(model.sample(4, seed=7, **opts))
        np.testing.assert_array_equal(fast, nanoar.to_numpy(model.sample(4, seed=7, method="naive", **opts)))
        p = opts["prompt"]
        np.testing.assert_array_equal(fast[:, :p.shape[-1]], np.broadcast_to(p, (4, p.shape[-1])))


def test_any_length_is_accepted_and_bad_data_is_refused():
    model = lstm(seq_len=4)
    for t in (1, 2, 13):
        with no_grad():
            assert model.log_prob_per_variable(np.zeros((2, t), int)).shape == (2, t)
    assert_refuses_bad_sequences(model)
