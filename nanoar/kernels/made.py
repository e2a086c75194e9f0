"""MADE's cached sampler: ancestral sampling of one mask set with every hidden unit computed
once (the textbook sampler is `MADE.sample_naive`), with per-sample (label) biases and
completion's observed values."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor, gelu, sigmoid_array


def array_activation(name: str, xp):
    """MADE's activation `name` ('relu', 'tanh', 'sigmoid' or 'gelu') as a function on arrays
    of `xp`, in place where that is one call: the values of the Tensor ops `relu`, `tanh`,
    `sigmoid`, `gelu`."""
    if name == "relu":
        return lambda v: xp.maximum(v, 0, out=v)
    if name == "tanh":
        return lambda v: xp.tanh(v, out=v)
    if name == "sigmoid":
        return lambda v: sigmoid_array(v, out=v)
    return lambda v: gelu(Tensor(v, dtype=v.dtype)).data


def sample_by_degree(noise, ordering, layers, degrees, heads, activation: str, draw, given=None, observed=None):
    """The samples of `sample_naive(noise)` (one full masked forward pass per variable) for
    one MADE mask set, with each hidden unit computed exactly once.

    Why it is equal: a hidden unit of degree g depends only on the variables at positions
    1..g of the ordering, so its value is final as soon as they are sampled. With each layer's
    units sorted by degree, the units of degree p form one contiguous block; step p computes
    that block in every layer from the blocks below, then the heads' outputs for the variable
    at position p + 1, then draws it. Columns are kept in position order (column p is variable
    ordering[p]) and the weights are permuted once per call.

    noise: (m, D), one value per variable; ordering: (D,) host ints; layers: one pair per
    hidden layer, (masked weight W * M (in, out), bias (out,) or per sample (m, out): a class
    label's bias added); degrees: the degrees (H_l,) of each hidden layer's units, host ints;
    heads: the output layers' pairs likewise, (W * M (H_L, D), bias (D,) or (m, D));
    activation: the hidden units' name; draw(outs, noise_column) -> values of one variable
    from the heads' outputs for it. given (m, D), observed (m, D) device bools: a completion,
    x_i = given_i where observed (the later variables see it), else the draw.
    Returns x: (m, D), by variable.
    """
    xp = backend.array_module(noise)
    act = array_activation(activation, xp)
    order = np.asarray(ordering)
    d = len(order)
    m = noise.shape[0]
    rows = order                                          # the previous layer's units, in sampling order
    weights, biases, ends = [], [], []
    for (w, b), deg in zip(layers, degrees):
        perm = np.argsort(deg, kind="stable")             # this layer's units by degree
        weights.append(w[backend.to_device(rows)][:, backend.to_device(perm)])  # (in, out) both permuted
        biases.append(b[..., backend.to_device(perm)])    # (out,) or (m, out)
        ends.append(np.searchsorted(deg[perm], np.arange(d), side="right").tolist())  # ends[p]: units of degree <= p
        rows = perm
    rows_d, order_d = backend.to_device(rows), backend.to_device(order)
    outputs = [(xp.ascontiguousarray(w[rows_d][:, order_d].T), b[..., order_d])
               for w, b in heads]                         # row p: the weights of the variable at position p
    z = noise[:, order_d]                                 # (m, D) by position
    if observed is not None:
        given, observed = given[:, order_d], observed[:, order_d]  # (m, D) by position
    x = xp.zeros((m, d), noise.dtype)                     # (m, D) by position
    hs = [xp.zeros((m, w.shape[1]), x.dtype) for w in weights]
    for p in range(d):
        prev, cut = x, p                                  # inputs of degree <= p: positions 0..p-1, all sampled
        for w, b, end, h in zip(weights, biases, ends, hs):
            s, e = (end[p - 1] if p else 0), end[p]       # the units of degree p
            if e > s:  # (a product over an empty prefix is left out: only the bias)
                h[:, s:e] = act(b[..., s:e] + (prev[:, :cut] @ w[:cut, s:e] if cut else 0))
            prev, cut = h, e
        outs = [b[..., p] + (prev[:, :cut] @ w[p, :cut] if cut else 0) for w, b in outputs]  # (m,) each
        x[:, p] = draw(outs, z[:, p])
        if observed is not None:
            x[:, p] = xp.where(observed[:, p], given[:, p], x[:, p])
    inverse = np.empty(d, np.int64)
    inverse[order] = np.arange(d)
    return x[:, backend.to_device(inverse)]
