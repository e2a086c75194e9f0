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


def _labels(y):
    """The keyword arguments that pass labels y (nothing for None, so that a check without y
    calls the model exactly as before labels existed)."""
    return {} if y is None else {"y": y}


def assert_normalised(model, n_classes=2, atol=1e-6, dtype=np.float64, y=None):
    """sum over all inputs of exp(log_prob) == 1 (use float64 models); with y (one label),
    sum_x p(x | y) == 1."""
    x = enumerate_inputs(model.event_shape, n_classes, dtype)
    with no_grad():
        lp = nanoar.to_numpy(model.log_prob(nanoar.to_device(x), **_labels(y)).data).astype(np.float64)
    assert lp.shape == (len(x),), f"log_prob shape {lp.shape}, expected ({len(x)},)"
    m = lp.max()
    total = math.exp(m) * np.exp(lp - m).sum()
    given = "" if y is None else f" | y={y}"
    assert abs(total - 1.0) < atol, f"sum of p(x{given}) over all {len(x)} inputs is {total!r}, not 1"


def assert_future_does_not_matter(model, x, rng, n_classes=2, y=None, **options):
    """Perturbation: for every k, changing the variables after position k of the ordering
    leaves log p(x_i | x_<i) unchanged for every variable i at position <= k. With y (one
    label or one per row of x): log p(x_i | x_<i, y), the same labels before and after.
    `options` go to `log_prob_per_variable` (a MADE mixture's k)."""
    d = int(np.prod(model.event_shape))
    order = np.asarray(model.ordering)
    options = {**_labels(y), **options}
    with no_grad():
        base = nanoar.to_numpy(model.log_prob_per_variable(nanoar.to_device(x), **options).data).reshape(len(x), d)
        for k in range(d - 1):
            xf = x.reshape(len(x), d).copy()
            later = order[k + 1:]
            xf[:, later] = rng.integers(0, n_classes, size=(len(x), len(later)))
            lp = nanoar.to_numpy(model.log_prob_per_variable(nanoar.to_device(xf.reshape(x.shape)),
                                                             **options).data).reshape(len(x), d)
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


def chi_square_test(counts, expected, alpha=1e-6, what="samples"):
    """Chi-square goodness of fit of observed `counts` against `expected` counts (same cells).

    Cells with expected count < 5 are pooled. The threshold is the (1 - alpha) quantile of
    chi-square (Wilson-Hilferty), so a correct sampler fails with probability ~alpha and a
    sampler off by a few percent on any cell fails with near certainty at these sizes. A
    sample in a cell of expected count 0 fails at once. Returns (statistic, threshold).
    """
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    impossible = (expected <= 0) & (counts > 0)
    assert not impossible.any(), f"{what}: {int(counts[impossible].sum())} samples fell where the probability is 0"
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp_ = np.append(expected[~small], expected[small].sum())
    keep = exp_ > 0
    stat = (((obs - exp_) ** 2)[keep] / exp_[keep]).sum()
    k = keep.sum() - 1
    if k < 1:  # one cell: nothing to test but the support, checked above
        return 0.0, math.inf
    z = {1e-6: 4.753, 1e-4: 3.719, 1e-3: 3.090}[alpha]
    threshold = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    assert stat < threshold, f"{what} disagree with the model: chi2 = {stat:.1f} > {threshold:.1f} ({k} dof)"
    return stat, threshold


def codes_of(s, n_classes):
    """The row of `enumerate_inputs` of each (flattened) input: ints (N, D) -> (N,)."""
    s = np.asarray(s).reshape(len(s), -1).astype(np.int64)
    return (s * (n_classes ** np.arange(s.shape[1] - 1, -1, -1))).sum(axis=1)


def assert_samples_match(model, n_samples, n_classes=2, seed=0, alpha=1e-6, y=None, **sample_options):
    """Chi-square goodness of fit of `n_samples` samples against exp(log_prob) (all inputs).

    With y: samples of p(x | y). One label: against p(x | y). One label per sample (an
    array (n_samples,)): the cells are the pairs (label, x), with expected counts
    n_c p(x | c), n_c the number of samples of label c. See `chi_square_test`.
    """
    xs = enumerate_inputs(model.event_shape, n_classes)
    d = xs[0].size
    per_sample = y is not None and np.ndim(y) > 0
    labels = np.unique(np.asarray(y)) if per_sample else [y]
    p = {}
    with no_grad():
        for c in labels:
            lp = model.log_prob(nanoar.to_device(xs), **_labels(None if c is None else int(c))).data
            p[c] = np.exp(nanoar.to_numpy(lp).astype(np.float64))
    s = nanoar.to_numpy(model.sample(n_samples, seed=seed, **_labels(y), **sample_options)).reshape(n_samples, d)
    s = s.astype(np.int64)
    assert s.min() >= 0 and s.max() < n_classes, "sampled values outside the support"
    codes = codes_of(s, n_classes)  # row of enumerate_inputs
    if not per_sample:
        counts = np.bincount(codes, minlength=len(xs)).astype(float)
        return chi_square_test(counts, p[labels[0]] * n_samples, alpha)
    y = np.asarray(y)
    counts, expected = [], []
    for c in labels:
        counts.append(np.bincount(codes[y == c], minlength=len(xs)).astype(float))
        expected.append(p[c] * (y == c).sum())
    return chi_square_test(np.concatenate(counts), np.concatenate(expected), alpha,
                           what="samples with per-sample labels")


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


# ---------------------------------------------------------------------------- completion
# Completion masks and data are handled flat here: given, x (N, D) and observed (N, D) bool,
# D = prod(shape); `shape` is the event's shape ((T,) for a sequence of length T).
def prefix_mask(ordering, lengths):
    """Masks (len(lengths), D) bool observing the first lengths[r] variables of `ordering`."""
    order = np.asarray(ordering)
    mask = np.zeros((len(lengths), len(order)), bool)
    for r, p in enumerate(lengths):
        mask[r, order[:p]] = True
    return mask


def completions(row, mask, n_classes=2):
    """Every input that agrees with `row` on the observed variables: (n_classes ** #hidden, D)."""
    hidden = np.flatnonzero(~mask)
    grid = np.array(list(itertools.product(range(n_classes), repeat=hidden.size)), dtype=np.int64)
    out = np.repeat(np.asarray(row, np.float64)[None, :], len(grid), axis=0)
    out[:, hidden] = grid.reshape(len(grid), hidden.size)
    return out


def _row_labels(y, n):
    return None if y is None else np.broadcast_to(np.asarray(y), (n,))


def joint_log_probs(model, shape, n_classes=2, y=None):
    """log p(x[ | y]) of every input of `shape` (enumerate_inputs' rows), host float64."""
    xs = enumerate_inputs(shape, n_classes)
    with no_grad():
        return nanoar.to_numpy(model.log_prob(nanoar.to_device(xs), **_labels(y)).data).astype(np.float64)


def brute_force_completion_log_prob(model, x, observed, shape, n_classes=2, y=None):
    """log p(x_U | x_O[, y]) = log p(x) - log sum_{x_U'} p(x_O, x_U') of every row of x, from
    log_prob over every input (no use of `observed` by the model). y: None, one label or one
    per row. -> (N,) float64."""
    xs = enumerate_inputs(shape, n_classes).reshape(-1, int(np.prod(shape)))
    labels = _row_labels(y, len(x))
    tables = {}
    out = np.empty(len(x))
    for r in range(len(x)):
        c = None if labels is None else int(labels[r])
        if c not in tables:
            tables[c] = joint_log_probs(model, shape, n_classes, c)
        table = tables[c]
        match = (xs[:, observed[r]] == x[r, observed[r]]).all(axis=1)
        m = table[match].max()
        out[r] = table[codes_of(x[r:r + 1], n_classes)[0]] - (m + math.log(np.exp(table[match] - m).sum()))
    return out


def completion_log_prob(model, x, observed, shape, y=None):
    """The model's log p(x_U | x_O[, y]): log_prob(x, y=y, observed=observed) as host float64 (N,)."""
    with no_grad():
        lp = model.log_prob(nanoar.to_device(x.reshape(len(x), *shape)), **_labels(y),
                            observed=observed.reshape(len(x), *shape))
    return nanoar.to_numpy(lp.data).astype(np.float64)


def assert_completion_normalised(model, given, observed, shape, n_classes=2, y=None, atol=1e-6):
    """For every row r: sum over the hidden variables x_U of exp(log_prob(x, observed)) == 1,
    with x_O = given[r, O]: all completions of all rows scored in ONE call, each with its
    own row's mask (and label). given (N, D), observed (N, D) bool, y: None, one label or
    one per row."""
    labels = _row_labels(y, len(given))
    xs, masks, rows, ys = [], [], [], []
    for r in range(len(given)):
        c = completions(given[r], observed[r], n_classes)
        xs.append(c)
        masks.append(np.repeat(observed[r:r + 1], len(c), axis=0))
        rows.append(np.full(len(c), r))
        if labels is not None:
            ys.append(np.full(len(c), labels[r]))
    x, m, rows = np.concatenate(xs), np.concatenate(masks), np.concatenate(rows)
    lp = completion_log_prob(model, x, m, shape, None if labels is None else np.concatenate(ys))
    assert lp.shape == (len(x),), f"log_prob(x, observed) has shape {lp.shape}, expected ({len(x)},)"
    for r in range(len(given)):
        total = np.exp(lp[rows == r]).sum()
        assert abs(total - 1.0) < atol, (
            f"row {r} (observing {np.flatnonzero(observed[r]).tolist()}): sum over the hidden variables of "
            f"p(x_U | x_O) is {total!r}, not 1")


def assert_completion_samples_match(model, n_samples, given, observed, shape, n_classes=2, seed=0, alpha=1e-6,
                                    y=None, reference="joint", **sample_options):
    """Completion samples `sample(n, given=, observed=, seed=)` for one row `given` (D,) and
    one mask `observed` (D,) bool: the observed values come back unchanged, and the hidden
    ones match p(x_U | x_O[, y]) by chi-square. reference: 'joint' (the conditional by brute
    force from log_prob over every input) or 'observed' (exp(log_prob(x, observed)) of
    every completion: for a model whose joint is not the one it completes with). Returns the
    samples (n, D)."""
    cands = completions(given, observed, n_classes)                    # (M, D)
    if reference == "joint":
        ref = brute_force_completion_log_prob(model, cands, np.repeat(observed[None], len(cands), 0), shape,
                                              n_classes, y)
    else:
        ref = completion_log_prob(model, cands, np.repeat(observed[None], len(cands), 0), shape,
                                  None if y is None else np.broadcast_to(y, (len(cands),)))
    s = model.sample(n_samples, seed=seed, given=given.reshape(shape), observed=observed.reshape(shape),
                     **_labels(y), **sample_options)
    s = nanoar.to_numpy(s)
    assert s.shape == (n_samples, *shape), f"samples of shape {s.shape}, expected {(n_samples, *shape)}"
    s = s.reshape(n_samples, -1).astype(np.float64)
    changed = (s[:, observed] != given[observed]).any(axis=1)
    assert not changed.any(), (f"{int(changed.sum())} completions changed an observed value, e.g. "
                               f"{s[np.argmax(changed)].tolist()} for given {given.tolist()} observing "
                               f"{np.flatnonzero(observed).tolist()}")
    assert s.min() >= 0 and s.max() < n_classes, "sampled values outside the support"
    hidden = np.flatnonzero(~observed)
    codes = codes_of(s[:, hidden], n_classes)                          # row of completions()
    counts = np.bincount(codes, minlength=len(cands)).astype(float)
    chi_square_test(counts, np.exp(ref) * n_samples, alpha, what="completion samples")
    return s
