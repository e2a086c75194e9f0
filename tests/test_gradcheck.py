"""nanoar.gradcheck itself: it must pass correct ops and catch wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

import nanoar
from nanoar import Tensor
from nanoar.gradcheck import numeric_grad
from nanoar.tensor import record_op as _make


def T(a, requires_grad=True, dtype="float64"):
    return Tensor(nanoar.to_device(np.array(a, dtype=np.float64)), requires_grad=requires_grad, dtype=dtype)


def bad_square(x):
    """y = x^2 with the wrong gradient 2.1 x."""
    return _make(x.data * x.data, (x,), lambda gy: (2.1 * gy * x.data,), "bad_square")


def unreversed_flip(x):
    """y = x reversed, whose backward forgets to reverse gy: right for gy = ones only."""
    return _make(x.data[::-1].copy(), (x,), lambda gy: (gy,), "unreversed_flip")


def swapped_sub(a, b):
    """y = a - 2b with the two gradients swapped."""
    return _make(a.data - 2 * b.data, (a, b), lambda gy: (-2 * gy, gy), "swapped_sub")


def slightly_off_exp(x):
    y = np.exp(x.data)
    return _make(y, (x,), lambda gy: (gy * y * (1 + 1e-3),), "slightly_off_exp")


def test_passes_correct_ops(device):
    rng = np.random.default_rng(0)
    a, b = T(rng.standard_normal((3, 1))), T(rng.standard_normal((4,)))
    assert nanoar.gradcheck(lambda x, y: (x * y).exp().sum(axis=0), [a, b]) is True
    w = T(rng.standard_normal((2, 3, 2)), requires_grad=False)
    assert nanoar.gradcheck(lambda x: nanoar.conv1d(x, w, dilation=2), [T(rng.standard_normal((1, 3, 5)))])


def test_catches_a_wrong_backward(device):
    x = T([0.5, -1.0, 2.0])
    with pytest.raises(AssertionError, match="gradient mismatch") as e:
        nanoar.gradcheck(bad_square, [x])
    assert "input 0" in str(e.value) and "analytic" in str(e.value) and "numeric" in str(e.value)


def test_catches_swapped_gradients_and_names_the_input(device):
    with pytest.raises(AssertionError, match="input 0"):
        nanoar.gradcheck(swapped_sub, [T([1.0, 2.0]), T([3.0, 4.0])])
    # with only b requiring grad, b's wrong gradient is reported as input 1
    with pytest.raises(AssertionError, match="input 1"):
        nanoar.gradcheck(swapped_sub, [T([1.0, 2.0], requires_grad=False), T([3.0, 4.0])])


def test_random_upstream_gradient_catches_what_ones_would_hide(device):
    x = T([1.0, 2.0, 3.0, 4.0])
    # with an upstream gradient of ones, the wrong backward agrees with central differences ...
    y = unreversed_flip(x)
    ones = np.ones(4)
    y.backward(nanoar.to_device(ones))
    num = numeric_grad(unreversed_flip, [x], ones)[0]
    np.testing.assert_allclose(nanoar.to_numpy(x.grad), num, atol=1e-8)
    # ... gradcheck's random one does not
    for seed in range(3):
        with pytest.raises(AssertionError):
            nanoar.gradcheck(unreversed_flip, [x], seed=seed)


def test_tolerances(device):
    x = T([0.1, 0.5, 1.0])
    with pytest.raises(AssertionError):
        nanoar.gradcheck(slightly_off_exp, [x])  # rtol 1e-4 by default
    assert nanoar.gradcheck(slightly_off_exp, [x], rtol=1e-2)


def test_refuses_float32_inputs(device):
    with pytest.raises(TypeError, match="float64"):
        nanoar.gradcheck(lambda x: x * x, [T([1.0, 2.0], dtype="float32")])
    with pytest.raises(TypeError, match="float32"):
        nanoar.gradcheck(lambda x, y: x * y, [T([1.0]), T([2.0], dtype="float32")])


def test_restores_inputs_and_skips_constants(device):
    xv = np.array([[0.3, -1.7], [2.5, 0.01]])
    x, c = T(xv), T([1.5, -2.0], requires_grad=False)
    assert nanoar.gradcheck(lambda a, k: (a * k).tanh(), [x, c])
    np.testing.assert_array_equal(nanoar.to_numpy(x), xv)  # perturbed in place, restored exactly
    assert c.grad is None
    assert numeric_grad(lambda a, k: a * k, [x, c], np.ones((2, 2)))[1] is None


def test_non_contiguous_inputs(device):
    """An input whose array is a transposed view is perturbed where it lives."""
    base = nanoar.to_device(np.arange(6.0).reshape(2, 3) / 7)
    x = Tensor(base.T, requires_grad=True, dtype="float64")
    assert not x.data.flags.c_contiguous
    assert nanoar.gradcheck(lambda a: (a * a).sum(axis=1), [x])
    with pytest.raises(AssertionError):
        nanoar.gradcheck(bad_square, [x])


def test_numeric_grad_of_a_known_function(device):
    xv = np.array([0.2, -0.4, 1.1])
    gy = np.array([1.0, -2.0, 0.5])
    num = numeric_grad(lambda a: a ** 3, [T(xv)], gy)[0]
    np.testing.assert_allclose(num, gy * 3 * xv ** 2, rtol=1e-7, atol=1e-9)


def test_zero_dim_input(device):
    x = T(1.3)
    assert x.shape == ()
    assert nanoar.gradcheck(lambda a: (a * T([1.0, 2.0], False)).exp(), [x])
    with pytest.raises(AssertionError):
        nanoar.gradcheck(bad_square, [x])
