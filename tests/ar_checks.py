"""Property checks shared by every model's tests: the probability identities of the protocol.

Each takes a model with `log_prob`, `log_prob_per_variable`, `sample`, `ordering`,
`event_shape` and raises AssertionError with a reason when an identity fails.
"""
import itertools
import math

import numpy as np

import nanoar
from nanoar import Tensor, no_grad


def enumerate_inputs(event_shape, n_classes=2, dtype=np.float64):
    """Every possible input: (n_classes ** D, *event_shape), D = prod(event_shape)."""
    d = int(np.prod(event_shape))
    grid = np.array(list(itertools.product(range(n_classes), repeat=d)))
    return grid.reshape((-1, *event_shape)).astype(dtype)


def assert_normalised(model, n_classes=2, atol=1e-6, dtype=np.float64):
    """sum over all inputs of exp(log_prob) == 1 (use float64 models)."""
    x = enumerate_inputs(model.event_shape, n_classes, dtype)
    with no_grad():
        lp = nanoar.to_numpy(model.log_prob(nanoar.to_device(x)).data).astype(np.float64)
    assert lp.shape == (len(x),), f"log_prob shape {lp.shape}, expected ({len(x)},)"
    m = lp.max()
    total = math.exp(m) * np.exp(lp - m).sum()
    assert abs(total - 1.0) < atol, f"sum of p(x) over all {len(x)} inputs is {total!r}, not 1"


def assert_future_does_not_matter(model, x, rng, n_classes=2):
    """Perturbation: for every k, changing the variables after position k of the ordering
    leaves log p(x_i | x_<i) unchanged for every variable i at position <= k."""
    d = int(np.prod(model.event_shape))
    order = np.asarray(model.ordering)
    with no_grad():
        base = nanoar.to_numpy(model.log_prob_per_variable(nanoar.to_device(x)).data).reshape(len(x), d)
        for k in range(d - 1):
            xf = x.reshape(len(x), d).copy()
            later = order[k + 1:]
            xf[:, later] = rng.integers(0, n_classes, size=(len(x), len(later)))
            lp = nanoar.to_numpy(model.log_prob_per_variable(nanoar.to_device(xf.reshape(x.shape))).data).reshape(len(x), d)
            seen = order[:k + 1]
            np.testing.assert_allclose(lp[:, seen], base[:, seen], rtol=1e-9, atol=1e-9,
                                       err_msg=f"changing variables after position {k} of the ordering changed an earlier conditional")


def assert_jacobian_autoregressive(params_fn, x, ordering):
    """Gradients: d params_i / d x_j == 0 unless j comes strictly before i in `ordering`.

    params_fn(x_tensor) -> Tensor (N, D, ...) (the parameters of each variable's conditional,
    flattened variable axis 1); x: float array (N, *event_shape).
    """
    n = len(x)
    d = int(np.prod(x.shape[1:]))
    pos = np.empty(d, dtype=int)
    pos[np.asarray(ordering)] = np.arange(d)  # pos[i]: where variable i is generated
    for i in range(d):
        xt = Tensor(nanoar.to_device(x), requires_grad=True)
        p = params_fn(xt)
        sel = p[:, i]
        gy = np.random.default_rng(i).standard_normal(sel.shape) + 1.0
        sel.backward(nanoar.to_device(gy.astype(sel.dtype)))
        g = np.abs(nanoar.to_numpy(xt.grad)).reshape(n, d).sum(axis=0)
        allowed = pos < pos[i]
        bad = np.flatnonzero((g != 0) & ~allowed)
        assert bad.size == 0, f"conditional of variable {i} depends on variables {bad.tolist()} that are not before it"


def assert_samples_match(model, n_samples, n_classes=2, seed=0, alpha=1e-6, **sample_options):
    """Chi-square goodness of fit of `n_samples` samples against exp(log_prob) (all inputs).

    Cells with expected count < 5 are pooled. The threshold is the (1 - alpha) quantile of
    chi-square (Wilson-Hilferty), so a correct sampler fails with probability ~alpha and a
    sampler off by a few percent on any cell fails with near certainty at these sizes.
    """
    xs = enumerate_inputs(model.event_shape, n_classes)
    d = xs[0].size
    with no_grad():
        p = np.exp(nanoar.to_numpy(model.log_prob(nanoar.to_device(xs)).data).astype(np.float64))
    s = nanoar.to_numpy(model.sample(n_samples, seed=seed, **sample_options)).reshape(n_samples, d).astype(np.int64)
    assert s.min() >= 0 and s.max() < n_classes, "sampled values outside the support"
    codes = (s * (n_classes ** np.arange(d - 1, -1, -1))).sum(axis=1)  # row of enumerate_inputs
    counts = np.bincount(codes, minlength=len(xs)).astype(float)
    expected = p * n_samples
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp_ = np.append(expected[~small], expected[small].sum())
    keep = exp_ > 0
    stat = (((obs - exp_) ** 2)[keep] / exp_[keep]).sum()
    k = keep.sum() - 1
    z = {1e-6: 4.753, 1e-4: 3.719, 1e-3: 3.090}[alpha]
    threshold = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    assert stat < threshold, f"samples disagree with exp(log_prob): chi2 = {stat:.1f} > {threshold:.1f} ({k} dof)"
    return stat, threshold


def assert_one_pass_equals_sequential(model, x, rng, n_classes=2):
    """The single parallel pass equals the conditionals taken one at a time from prefixes:
    for each position k, a pass on x with everything after k replaced by noise gives the same
    log p(x_{o_k} | x_<o_k); their sum equals log_prob(x)."""
    d = int(np.prod(model.event_shape))
    order = np.asarray(model.ordering)
    total = np.zeros(len(x))
    with no_grad():
        for k in range(d):
            xf = x.reshape(len(x), d).copy()
            xf[:, order[k + 1:]] = rng.integers(0, n_classes, size=(len(x), d - k - 1))
            lp = nanoar.to_numpy(model.log_prob_per_variable(nanoar.to_device(xf.reshape(x.shape))).data)
            total += lp.reshape(len(x), d)[:, order[k]]
        full = nanoar.to_numpy(model.log_prob(nanoar.to_device(x)).data)
    np.testing.assert_allclose(total, full, rtol=1e-9, atol=1e-9)


def assert_param_grads(model, loss_fn, n_checks=6, eps=1e-6, rtol=1e-4, atol=1e-6, seed=0):
    """Loss gradient w.r.t. every parameter matches central differences at a few random
    entries of each parameter (float64 model). loss_fn() -> scalar Tensor."""
    rng = np.random.default_rng(seed)
    model.zero_grad()
    loss_fn().backward()
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        g = nanoar.to_numpy(p.grad).reshape(-1) if p.grad is not None else np.zeros(flat.size)
        for j in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
            old = float(flat[j])
            flat[j] = old + eps
            with no_grad():
                up = loss_fn().item()
            flat[j] = old - eps
            with no_grad():
                down = loss_fn().item()
            flat[j] = old
            num = (up - down) / (2 * eps)
            assert abs(g[j] - num) <= atol + rtol * abs(num), f"{name}[{j}]: analytic {g[j]:.8g}, numeric {num:.8g}"


def assert_refuses_bad_sequences(model):
    """A sequence model over 3 classes: ids out of range, fractional ids, the wrong number of
    axes and non-numbers each get a clear error."""
    import pytest  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.log_prob(np.array([[0, 1, 3]]))  # (a BOS id is not data either)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.log_prob(np.array([[0, -1, 2]]))
    with pytest.raises(ValueError, match="integers"):
        model.log_prob(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        model.log_prob(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        model.log_prob(np.zeros((2, 3, 1), int))
    with pytest.raises(TypeError):
        model.log_prob(np.array([["a", "b"]]))
