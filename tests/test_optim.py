"""Optimisers against their textbook formulas; clipping; state round trip."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nanoar
from nanoar.nn import Parameter
from nanoar.optim import SGD, Adam, AdamW, clip_grad_norm


def params(rng):
    ps = [Parameter(rng.standard_normal((3, 4))), Parameter(rng.standard_normal(4))]
    return ps


def test_adam_matches_the_formula(float64):
    rng = np.random.default_rng(0)
    ps = params(rng)
    ref = [p.data.copy() for p in ps]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    opt = Adam(ps, lr=0.01, betas=(0.8, 0.9), eps=1e-6)
    for t in range(1, 6):
        grads = [rng.standard_normal(r.shape) for r in ref]
        for p, g in zip(ps, grads):
            p.grad = g.copy()
        opt.step()
        for i, g in enumerate(grads):
            m[i] = 0.8 * m[i] + 0.2 * g
            v[i] = 0.9 * v[i] + 0.1 * g * g
            ref[i] = ref[i] - 0.01 * (m[i] / (1 - 0.8 ** t)) / (np.sqrt(v[i] / (1 - 0.9 ** t)) + 1e-6)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p.data, r, rtol=1e-12, atol=1e-12)


def test_adamw_decays_matrices_only(float64):
    ps = params(np.random.default_rng(1))
    before = [p.data.copy() for p in ps]
    for p in ps:
        p.grad = np.zeros_like(p.data)
    AdamW(ps, lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(ps[0].data, before[0] * (1 - 0.1 * 0.5))
    np.testing.assert_allclose(ps[1].data, before[1])


def test_sgd_and_float32_updates_stay_float32():
    ps = params(np.random.default_rng(2))
    for opt in (SGD(ps, 0.1), Adam(ps)):
        for p in ps:
            p.grad = np.ones_like(p.data)
        opt.step()
        assert all(p.data.dtype == np.float32 for p in ps)


def test_clip_grad_norm_scales_to_the_bound_and_returns_the_old_norm():
    ps = params(np.random.default_rng(3))
    grads = [np.full(p.shape, 2.0, np.float32) for p in ps]
    for p, g in zip(ps, grads):
        p.grad = g
    norm = clip_grad_norm(ps, 1.0)
    assert norm == pytest.approx(np.sqrt(4.0 * 16))
    assert np.sqrt(sum(float((p.grad ** 2).sum()) for p in ps)) == pytest.approx(1.0, rel=1e-5)
    assert (grads[0] == 2.0).all()  # not in place: the old arrays are untouched
    assert clip_grad_norm(ps, 10.0) == pytest.approx(1.0, rel=1e-5)


def test_state_dict_round_trip_resumes_identically(float64):
    rng = np.random.default_rng(4)
    a, b = params(rng), None
    b = [Parameter(p.data.copy()) for p in a]
    oa = Adam(a, lr=0.05)
    grads = [[rng.standard_normal(p.shape) for p in a] for _ in range(4)]
    for g in grads[:2]:
        for p, gi in zip(a, g):
            p.grad = gi
        oa.step()
    ob = Adam(b, lr=0.05)
    for p, q in zip(b, a):
        p.data = q.data.copy()
    ob.load_state_dict({k: (nanoar.to_numpy(v) if hasattr(v, "shape") else v) for k, v in oa.state_dict().items()})
    for g in grads[2:]:
        for o, ps in ((oa, a), (ob, b)):
            for p, gi in zip(ps, g):
                p.grad = gi
            o.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


# ----------------------------------------------------------------------------- the flat buffers
def _reference_step(kind, refs, ms, vs, grads, t, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """The textbook update of each parameter that has a gradient (float64, on the host)."""
    for i, g in enumerate(grads):
        if g is None:
            continue
        if kind == "sgd":
            refs[i] = refs[i] - lr * g
            continue
        if refs[i].ndim >= 2:
            refs[i] = refs[i] * (1 - lr * wd)
        ms[i] = b1 * ms[i] + (1 - b1) * g
        vs[i] = b2 * vs[i] + (1 - b2) * g * g
        refs[i] = refs[i] - lr * (ms[i] / (1 - b1 ** t)) / (np.sqrt(vs[i] / (1 - b2 ** t)) + eps)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), min_size=1, max_size=5),
       kind=st.sampled_from(["sgd", "adam", "adamw"]), seed=st.integers(0, 2**16),
       missing=st.lists(st.booleans(), min_size=4, max_size=4))
def test_flat_updates_equal_the_per_parameter_formula(device, float64, shapes, kind, seed, missing):
    """Any mix of shapes (scalars, vectors, matrices in any order), steps where one parameter
    has no gradient (it must stay put, its state untouched), on every device."""
    rng = np.random.default_rng(seed)
    refs = [rng.standard_normal(s) for s in shapes]
    ps = [Parameter(nanoar.to_device(r)) for r in refs]
    lr, wd = 0.05, (0.3 if kind == "adamw" else 0.0)
    opt = {"sgd": lambda: SGD(ps, lr), "adam": lambda: Adam(ps, lr), "adamw": lambda: AdamW(ps, lr, weight_decay=wd)}[kind]()
    ms, vs = [np.zeros(s) for s in shapes], [np.zeros(s) for s in shapes]
    for t, skip_first in enumerate(missing, start=1):
        grads = [rng.standard_normal(s) for s in shapes]
        if skip_first:
            grads[0] = None
        for p, g in zip(ps, grads):
            p.grad = None if g is None else nanoar.to_device(g)
        opt.step()
        _reference_step(kind, refs, ms, vs, grads, t, lr, wd)
        for p, r in zip(ps, refs):
            np.testing.assert_allclose(nanoar.to_numpy(p), r, rtol=1e-12, atol=1e-12)


def test_a_replaced_parameter_array_is_taken_back_in():
    """Module.load_state_dict replaces parameter arrays: the optimiser must update the new
    values, not the old buffer."""
    ps = params(np.random.default_rng(5))
    opt = SGD(ps, 1.0)
    ps[1].data = np.full(4, 10.0, np.float32)
    for p in ps:
        p.grad = np.ones_like(p.data)
    opt.step()
    np.testing.assert_array_equal(ps[1].data, np.full(4, 9.0))
    opt.step()
    np.testing.assert_array_equal(ps[1].data, np.full(4, 8.0))


def test_duplicates_are_updated_once_and_mixed_dtypes_are_refused():
    w = Parameter(np.zeros(3, np.float32))
    opt = SGD([w, w], 1.0)
    w.grad = np.ones(3, np.float32)
    opt.step()
    np.testing.assert_array_equal(w.data, -np.ones(3))
    v = Parameter(np.zeros(2))
    v.data = v.data.astype(np.float64)
    with pytest.raises(ValueError, match="one dtype"):
        SGD([w, v], 0.1)
