"""The fused NADE pass (`nanoar.kernels.nade.nade_logits`) equals the textbook pass
(`NADE.distribution` with `fused = False`: cumsum, sigmoid, mul, sum) in value and in every
gradient, for every block size, on every device, and its backward matches finite differences;
with per-example biases c (N, H) and b (N, D) too (a class-conditional NADE's c + C[y] and
b + E[y]), the gradients of the label weights C and E included."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoar
from nanoar import Tensor, gradcheck, no_grad
from nanoar.kernels.nade import nade_logits
from nanoar.models.nade import NADE
from strategies import fixture_settings


def textbook_and_fused(model, x, block):
    """(logits, gradients of x, W, c, V, b) of both paths on the same x and upstream gradient."""
    gy = nanoar.to_device(np.random.default_rng(0).standard_normal(x.shape))
    model.fused = False
    results = []
    for fused in (False, True):
        model.zero_grad()
        xt = Tensor(nanoar.to_device(x), requires_grad=True)
        if fused:
            logits = nade_logits(xt, model.W, model.c, model.V, model.b, block=block)
        else:
            logits = model.distribution(xt).logits
        logits.backward(gy)
        grads = [xt.grad] + [p.grad for p in (model.W, model.c, model.V, model.b)]
        results.append((nanoar.to_numpy(logits.data), [nanoar.to_numpy(g) for g in grads]))
    return results


def assert_same(results, rtol=1e-12, atol=1e-12):
    (textbook, g_textbook), (fused, g_fused) = results
    np.testing.assert_allclose(fused, textbook, rtol=rtol, atol=atol)
    for name, a, b in zip(["x", "W", "c", "V", "b"], g_fused, g_textbook):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, None])
def test_every_block_size_equals_the_textbook_pass_and_finite_differences(float64, block):
    """One variable at a time, uneven last blocks, all of D at once (the default on the CPU
    at this size)."""
    nanoar.manual_seed(0)
    model = NADE(7, 3)
    rng = np.random.default_rng(5)
    xb = (rng.random((4, 7)) < 0.5).astype(np.float64)
    results = textbook_and_fused(model, xb, block)
    assert_same(results)
    with no_grad():  # evaluation (no h kept for a backward) reuses one block's buffer
        evaluated = nade_logits(Tensor(xb), model.W, model.c, model.V, model.b, block=block)
    np.testing.assert_array_equal(evaluated.numpy(), results[1][0])
    xt = Tensor(xb + 0.1 * rng.standard_normal((4, 7)), requires_grad=True)  # the op takes any real x
    assert gradcheck(lambda *ts: nade_logits(*ts, block=block), [xt, model.W, model.c, model.V, model.b])


@fixture_settings
@given(d=st.integers(1, 9), hidden=st.integers(1, 6), n=st.integers(1, 5), block=st.integers(1, 10),
       seed=st.integers(0, 2**16), real=st.booleans())
def test_equals_the_textbook_pass_on_random_inputs(float64, d, hidden, n, block, seed, real):
    """Any sizes, any block (larger than D too), binary or real-valued x."""
    nanoar.manual_seed(seed)
    model = NADE(d, hidden)
    for p in model.parameters():
        p.data *= 3.0
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) if real else (rng.random((n, d)) < 0.5).astype(np.float64)
    assert_same(textbook_and_fused(model, x, block))


def test_equals_the_textbook_pass_on_every_device(device, float64):
    """On the GPU the default block is all of D and the running sums are cumsums."""
    nanoar.manual_seed(8)
    model = NADE(9, 5)
    for p in model.parameters():
        p.data *= 2.0
    x = (np.random.default_rng(4).random((7, 9)) < 0.5).astype(np.float64)
    assert_same(textbook_and_fused(model, x, None), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- per-example biases
LABELS = 3


def conditional_model(d, hidden, seed, scale=2.0):
    """NADE(d, hidden, n_labels=3) with its weights scaled up and the label weights C and E
    random and non-zero (they start at zero, which would hide a label that never arrives)."""
    nanoar.manual_seed(seed)
    model = NADE(d, hidden, n_labels=LABELS)
    for p in (model.W, model.c, model.V, model.b):
        p.data *= scale
    rng = np.random.default_rng(seed + 100)
    for p in (model.C.weight, model.E.weight):
        p.data[...] = nanoar.to_device(rng.uniform(0.5, 2.0, p.shape) * rng.choice([-1, 1], p.shape))
    return model


def conditional_textbook_and_fused(model, x, y, block):
    """(logits, gradients of x, W, c, V, b, C, E) of the textbook pass and of `nade_logits`
    fed c + C[y] (N, H) and b + E[y] (N, D), on the same x, labels and upstream gradient."""
    gy = nanoar.to_device(np.random.default_rng(1).standard_normal(x.shape))
    y = model.check_labels(y, x.shape[0])
    model.fused = False
    params = (model.W, model.c, model.V, model.b, model.C.weight, model.E.weight)
    results = []
    for fused in (False, True):
        model.zero_grad()
        xt = Tensor(nanoar.to_device(x), requires_grad=True)
        if fused:
            c, b = model.biases(y)                     # (N, H), (N, D)
            logits = nade_logits(xt, model.W, c, model.V, b, block=block)
        else:
            logits = model.distribution(xt, y).logits
        logits.backward(gy)
        grads = [xt.grad] + [p.grad for p in params]
        results.append((nanoar.to_numpy(logits.data), [nanoar.to_numpy(g) for g in grads]))
    return results


def assert_same_conditional(results, rtol=1e-12, atol=1e-12):
    (textbook, g_textbook), (fused, g_fused) = results
    np.testing.assert_allclose(fused, textbook, rtol=rtol, atol=atol)
    for name, a, b in zip(["x", "W", "c", "V", "b", "C", "E"], g_fused, g_textbook):
        assert np.any(a != 0), f"{name}: a zero gradient tests nothing"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("block", [1, 2, 3, 7, None])
def test_per_example_biases_equal_the_textbook_pass_and_finite_differences(float64, block):
    """Labels per example: the fused pass fed c + C[y] and b + E[y] equals the textbook
    conditional pass in value and in every gradient (C and E included); the op's own
    gradients of (N, H) and (N, D) biases, and of a shared c with a per-example b and the
    reverse, match finite differences."""
    model = conditional_model(7, 3, seed=0)
    rng = np.random.default_rng(5)
    xb = (rng.random((5, 7)) < 0.5).astype(np.float64)
    y = np.array([0, 1, 2, 1, 0])
    results = conditional_textbook_and_fused(model, xb, y, block)
    assert_same_conditional(results)
    with no_grad():  # evaluation (no h kept for a backward) reuses one block's buffer
        c, b = model.biases(model.check_labels(y, 5))
        evaluated = nade_logits(Tensor(xb), model.W, c, model.V, b, block=block)
    np.testing.assert_array_equal(evaluated.numpy(), results[1][0])
    xt = Tensor(xb + 0.1 * rng.standard_normal((5, 7)), requires_grad=True)
    cn = Tensor(rng.standard_normal((5, 3)), requires_grad=True)    # (N, H)
    bn = Tensor(rng.standard_normal((5, 7)), requires_grad=True)    # (N, D)
    op = lambda *ts: nade_logits(*ts, block=block)  # noqa: E731
    assert gradcheck(op, [xt, model.W, cn, model.V, bn])
    assert gradcheck(op, [xt, model.W, model.c, model.V, bn])
    assert gradcheck(op, [xt, model.W, cn, model.V, model.b])


@fixture_settings
@given(d=st.integers(1, 9), hidden=st.integers(1, 6), n=st.integers(1, 5), block=st.integers(1, 10),
       seed=st.integers(0, 2**16))
def test_per_example_biases_on_random_sizes(float64, d, hidden, n, block, seed):
    """Any sizes and blocks, random labels: the fused and textbook conditional passes agree."""
    model = conditional_model(d, hidden, seed)
    rng = np.random.default_rng(seed)
    x = (rng.random((n, d)) < 0.5).astype(np.float64)
    results = conditional_textbook_and_fused(model, x, rng.integers(0, LABELS, n), block)
    (textbook, g_textbook), (fused, g_fused) = results
    np.testing.assert_allclose(fused, textbook, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["x", "W", "c", "V", "b", "C", "E"], g_fused, g_textbook):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


def test_per_example_biases_on_every_device(device, float64):
    """On the GPU the default block is all of D and the running sums are cumsums."""
    model = conditional_model(9, 5, seed=8)
    x = (np.random.default_rng(4).random((7, 9)) < 0.5).astype(np.float64)
    results = conditional_textbook_and_fused(model, x, np.arange(7) % LABELS, None)
    assert_same_conditional(results, rtol=1e-10, atol=1e-12)
