"""The protocol every autoregressive model follows.

By the chain rule, any distribution over D variables factorises in a chosen ordering:

    log p(x) = sum_i log p(x_{o_i} | x_{o_1}, ..., x_{o_{i-1}})

A model maps data to the parameters of all D conditionals in ONE parallel pass (masks or
causal convolutions guarantee conditional i sees only the variables before it), so

- `distribution(x)`: every conditional at once, as a head of `nanoar.distributions`;
- `log_prob_per_variable(x) -> Tensor (N, *event_shape)`: log p(x_i | x_<i) for every i;
- `log_prob(x) -> Tensor (N,)`: their sum, the exact log-likelihood in nats;
- `sample(n, seed=None, method='fast') -> array (n, *event_shape)`: ancestral sampling,
  one variable at a time in `ordering`, each drawn from the same conditional that
  `log_prob` scores. method='naive' is the lecture's loop (`sample_naive`: one full pass
  per variable); 'fast' reuses work between steps (each model's `sample_fast`), and both
  turn the same noise into the same samples;
- `training_loss(x, state) -> (loss, state)`: what one training step minimises.

`ordering` is explicit: a flat array of variable indices (into the raveled event) in the
order they are generated. Data that the model cannot score (a 0.5 in binary data, a class
id out of range, the wrong shape) is refused by `check_data` with a clear error; an empty
batch (N = 0) is scored (an empty result). `sample` checks every argument before it does
any work (`check_sampling_options` is the same check without a model) and returns an
empty array for n = 0 without running a sampler.

Conditioning. A model built with `n_labels = C > 0` is class-conditional: every
conditional also sees a label y in [0, C), log p(x | y) = sum_i log p(x_i | x_<i, y), and
`log_prob(x, y=...)`, `sample(n, y=...)` and `training_loss(x, y=...)` take it (one label
per example, or one for all). The label enters each layer as a learned per-class bias
(`nn.LabelBias`), which no variable can see through, so the autoregressive property holds
for every y. An unconditional model refuses y; a conditional one requires it.

Completion. `sample(n, given=x_obs, observed=mask)` draws the unobserved variables from
the exact conditional p(x_U | x_O = x_obs) and returns the observed ones unchanged, and
`log_prob(x, observed=mask)` is log p(x_U | x_O), summed over the unobserved variables.
This is exact, by the chain rule, when the observed variables come first in the model's
ordering (`check_observed` refuses any other set with a clear error): the conditionals of
the later variables are then the model's own. An order-agnostic MADE chooses an ordering
that puts any observed set first (`nanoar.models.made`). `mask` is 0/1 (or bool) of the
event's shape, one for every example, or (N, *event_shape); `given` holds the observed
values (its values where the mask is 0 are ignored).

`SequenceModel` adds what the models of id sequences share (WaveNet, the char LSTM and
transformer): any length T, a start token, prompts, temperature and top-k.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..distributions import check_temperature, check_top_k, sample_categorical
from ..nn import Module
from ..tensor import Tensor, no_grad, where

SAMPLING_METHODS = ("fast", "naive")


class AutoregressiveModel(Module):
    """Base class. Subclasses set `event_shape`, `kind` ('binary', 'categorical' or 'real'),
    `n_classes` (categorical), and implement `config`, `distribution` and `sample_fast`
    (and `ordering` when it is not the natural order).
    """

    event_shape: tuple = ()
    kind: str = "binary"
    n_classes: int = 2
    # Sequence models score any length: with this flag `check_data` accepts (N, T) for every
    # T >= 1, and `event_shape` is only the default length (of `sample` and of the tests).
    variable_length: bool = False
    # Examples per batch when the scripts evaluate (memory grows with it).
    eval_batch_size: int = 1000
    # Whether the model reads its training data in order, carrying a state from one batch
    # to the next (truncated backpropagation through time); otherwise batches are random.
    stateful: bool = False
    # C > 0: class-conditional, every conditional also sees a label y in [0, C).
    n_labels: int = 0

    @property
    def ordering(self) -> np.ndarray:
        """Generation order of the flattened variables (natural raster order by default)."""
        return np.arange(int(np.prod(self.event_shape)))

    @property
    def factorises(self) -> bool:
        """Whether there is one set of D conditionals (`log_prob_per_variable`); False for a
        mixture of autoregressive models."""
        return True

    @property
    def dtype(self):
        """The float dtype of the parameters (float32, or float64 when built under it)."""
        return next(iter(self.named_parameters()))[1].dtype

    def config(self) -> dict:
        """The constructor arguments, JSON-able: `type(model)(**model.config())` rebuilds it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def check_data(self, x):
        """Validate `x` (array or Tensor of shape (N, *event_shape)) and return its array.

        Binary data must be exactly 0 or 1; categorical data integer ids in [0, n_classes);
        real data finite. Arrays must live on the current device (no implicit copies).
        """
        a = x.data if isinstance(x, Tensor) else x
        if not hasattr(a, "shape"):
            a = np.asarray(a)
            a = backend.to_device(a) if backend.get_device() != "cpu" else a
        backend.check_same_device(a, f"{type(self).__name__}: ")
        name = type(self).__name__
        if self.variable_length:
            if a.ndim != 2 or a.shape[1] < 1:
                raise ValueError(f"{name}: expected sequences of shape (N, T) with T >= 1, got {tuple(a.shape)}")
        elif a.ndim != 1 + len(self.event_shape) or tuple(a.shape[1:]) != tuple(self.event_shape):
            raise ValueError(f"{name}: expected data of shape (N, {', '.join(map(str, self.event_shape))}), got {tuple(a.shape)}")
        xp = backend.array_module(a)
        if self.kind == "binary":
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{name}: binary data must be numeric, got dtype {a.dtype}")
            if a.size and not bool(((a == 0) | (a == 1)).all()):
                bad = a[(a != 0) & (a != 1)].ravel()[:3]
                raise ValueError(f"{name}: binary data must contain only 0 and 1, found values such as {backend.to_numpy(bad).tolist()}")
        elif self.kind == "categorical":
            if a.dtype.kind == "f":
                if a.size and not bool((a == xp.round(a)).all()):
                    raise ValueError(f"{name}: class ids must be integers, got non-integer floats")
                a = a.astype(xp.int64)
            elif a.dtype.kind not in "iu":
                raise TypeError(f"{name}: class ids must be integers, got dtype {a.dtype}")
            lo, hi = backend.value_range(a) if a.size else (0, 0)
            if lo < 0 or hi >= self.n_classes:
                raise ValueError(f"{name}: class ids must lie in [0, {self.n_classes}), got range [{lo}, {hi}]")
        else:
            if a.dtype.kind not in "iuf":
                raise TypeError(f"{name}: real data must be numeric, got dtype {a.dtype}")
            if a.size and not bool(xp.isfinite(a).all()):
                raise ValueError(f"{name}: real data contains NaN or inf")
        return a

    def as_input(self, x):
        """Checked data as the network takes it: ids stay an int array; binary and real data
        become a Tensor of the parameters' dtype, and a Tensor of that dtype passes through
        with its graph (so gradients with respect to the input reach it)."""
        a = self.check_data(x)
        if self.kind == "categorical":
            return a
        if isinstance(x, Tensor) and x.dtype == self.dtype:
            return x
        return Tensor(a, dtype=self.dtype)

    # ------------------------------------------------------------------ likelihood
    def distribution(self, x, y=None):
        """The conditional of every variable given the data before it (and the label y of a
        conditional model), in one parallel pass: a head of `nanoar.distributions` over
        (N, *event_shape). `x` is `as_input(data)`, `y` is `check_labels(y, N)`."""
        raise NotImplementedError

    def log_prob_per_variable(self, x, y=None) -> Tensor:
        """log p(x_i | x_<i[, y]) for every variable: (N, *event_shape) -> Tensor (N, *event_shape)."""
        x = self.as_input(x)
        y = self.check_labels(y, x.shape[0])
        return self.distribution(x, y).log_prob(x)

    def log_prob(self, x, y=None, observed=None) -> Tensor:
        """Exact log-likelihood in nats, the sum of the log-conditionals: (N, ...) -> Tensor (N,).

        y: the labels of a conditional model, log p(x | y). observed: a completion mask;
        then log p(x_U | x_O[, y]) of the unobserved part U, the sum of the conditionals
        of the variables after the observed prefix (see the module docstring)."""
        if observed is None:
            lp = self.log_prob_per_variable(x, y)
            return lp.reshape(lp.shape[0], int(np.prod(lp.shape[1:]))).sum(axis=1)
        a = self.check_data(x)
        hidden = ~self.check_observed(observed, a.shape[0], a.shape[1:])        # (N, D), host
        lp = self.log_prob_per_variable(x, y)
        lp = lp.reshape(lp.shape[0], int(np.prod(lp.shape[1:])))                # (N, D)
        return where(backend.to_device(hidden), lp, 0.0).sum(axis=1)

    def training_loss(self, x, state=None, y=None):
        """The loss of one training step on a batch (and its labels, for a conditional model)
        and the state to carry to the next one (None for models that carry nothing): the mean
        negative log-likelihood in nats (0 for an empty batch, see `batch_mean`)."""
        return -batch_mean(self.log_prob(x, y)), state

    # ------------------------------------------------------------------ conditioning, completion
    def check_labels(self, y, n: int):
        """The labels of n examples as a device int64 array (n,), or None for an unconditional
        model. y: one label for all, or n of them, integers in [0, n_labels); required by a
        conditional model, refused by an unconditional one (ValueError naming y)."""
        name = type(self).__name__
        if not self.n_labels:
            if y is not None:
                raise ValueError(f"{name}: y given, but this model is not class-conditional (built with n_labels=0); "
                                 "drop y, or train a conditional model")
            return None
        if y is None:
            raise ValueError(f"{name}: this model is class-conditional (n_labels={self.n_labels}): pass y, "
                             f"the class of each example, integers in [0, {self.n_labels})")
        a = y.data if isinstance(y, Tensor) else y
        a = backend.to_numpy(a) if hasattr(a, "shape") else np.asarray(a)
        if a.dtype.kind == "f" and a.size and np.array_equal(a, np.round(a)):
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu" or a.dtype == np.bool_:
            raise ValueError(f"{name}: y must be integer class labels in [0, {self.n_labels}), got dtype {a.dtype}")
        if a.ndim == 0:
            a = np.full(n, a, np.int64)
        if a.shape != (n,):
            raise ValueError(f"{name}: y must be one label or {n} labels (one per example), got shape {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= self.n_labels):
            raise ValueError(f"{name}: labels must lie in [0, {self.n_labels}), got range [{a.min()}, {a.max()}]")
        return backend.to_device(a.astype(np.int64))

    def variable_order(self, shape) -> np.ndarray:
        """The ordering of an event of `shape` (a sequence model's length may differ from its
        default)."""
        return np.arange(int(np.prod(shape))) if self.variable_length else self.ordering

    def check_observed(self, observed, n: int, shape=None) -> np.ndarray:
        """A completion mask as a host bool array (n, D) by variable index, checked: 0/1 of
        the event's shape (or (n, *shape)), and the observed variables of every example first
        in the model's ordering (else ValueError: which variable breaks it, and what can
        complete such a set exactly)."""
        name = type(self).__name__
        shape = tuple(self.event_shape if shape is None else shape)
        a = observed.data if isinstance(observed, Tensor) else observed
        a = backend.to_numpy(a) if hasattr(a, "shape") else np.asarray(a)
        if a.dtype != np.bool_:
            if a.dtype.kind not in "biuf" or (a.size and not np.isin(a, (0, 1)).all()):
                raise ValueError(f"{name}: observed must be a mask of 0/1 (or booleans), 1 where a variable is observed")
            a = a.astype(bool)
        if tuple(a.shape) == shape:
            a = np.broadcast_to(a, (n, *shape))
        if tuple(a.shape) != (n, *shape):
            raise ValueError(f"{name}: observed must have the data's shape {shape} (one mask for all) or "
                             f"{(n, *shape)}, got {tuple(a.shape)}")
        a = a.reshape(n, int(np.prod(shape)))
        self.check_completable(a)
        return a

    def check_completable(self, observed) -> None:
        """Refuse a completion this model cannot do exactly: observed (n, D) host bools must
        be, in every row, a prefix of the ordering."""
        order = self.variable_order((observed.shape[1],))
        by_position = observed[:, order]                                      # (n, D) in generation order
        late = by_position[:, 1:] & ~by_position[:, :-1]                     # observed after a hidden one
        if late.any():
            row, p = np.argwhere(late)[0]
            hidden = order[np.flatnonzero(~by_position[row, :p + 1])[0]]
            raise ValueError(
                f"{type(self).__name__}: cannot complete exactly: variable {int(order[p + 1])} is observed but comes "
                f"after the hidden variable {int(hidden)} in the model's ordering{self.ordering_hint()}; this model "
                "completes only sets whose observed variables come first (an order-agnostic MADE completes any set)")

    def ordering_hint(self) -> str:
        """A few words on the ordering, for `check_completable`'s message."""
        return " (raster order: rows from the top, each left to right)" if len(self.event_shape) == 3 else ""

    def check_completion(self, given, observed, n: int, shape=None):
        """`sample`'s given and observed, checked together: (given as a device array (n, D)
        with its hidden values zeroed, observed as host bools (n, D)), or (None, None)."""
        name = type(self).__name__
        if (given is None) != (observed is None):
            raise ValueError(f"{name}.sample: completion takes both given (the observed values) and observed "
                             "(the mask of which variables are observed)")
        if given is None:
            return None, None
        shape = tuple(self.event_shape if shape is None else shape)
        obs = self.check_observed(observed, n, shape)
        g = given.data if isinstance(given, Tensor) else given
        g = backend.to_numpy(g) if hasattr(g, "shape") else np.asarray(g)
        if tuple(g.shape) == shape:
            g = np.broadcast_to(g, (n, *shape))
        if tuple(g.shape) != (n, *shape):
            raise ValueError(f"{name}.sample: given must have the data's shape {shape} or {(n, *shape)}, "
                             f"got {tuple(g.shape)}")
        if g.dtype.kind not in "biuf":
            raise ValueError(f"{name}.sample: given must be numeric data, got dtype {g.dtype}")
        d = int(np.prod(shape))
        g = np.where(obs, g.reshape(n, d), 0)             # hidden values (NaN, say) are ignored
        return self.check_data(backend.to_device(g.reshape(n, *shape))).reshape(n, d), obs

    def force_observed(self, noise, given, observed):
        """The noise of a completion: an observed binary variable gets u = -1 (drawn as 1) or
        u = 2 (drawn as 0), since x_i = [u_i < p_i] with p_i in [0, 1]. Every sampler, naive or
        fast, then conditions the later variables on the given values without knowing about
        completion, and the observed variables come out unchanged. noise (n, D) -> (n, D)."""
        if self.kind != "binary":
            raise NotImplementedError(f"{type(self).__name__}: completion by forced noise is for binary data")
        xp = backend.array_module(noise)
        forced = xp.where(given > 0.5, -1.0, 2.0).astype(noise.dtype)
        return xp.where(backend.to_device(observed), forced, noise)

    def training_state(self) -> dict:
        """JSON state a resumed run needs beyond the arrays (none by default)."""
        return {}

    def load_training_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed=None, method: str = "fast", y=None, given=None, observed=None, **options):
        """Exact ancestral samples: an array (n, *event_shape) on the current device.

        n: a non-negative integer (0 gives an empty array at once). seed: None for the
        backend's generator, a non-negative int, or a generator (`backend.check_seed`).
        method: 'fast' (default) or 'naive' (the lecture's loop); under one seed both return
        the same samples. y: the labels of a conditional model (one for all, or n), samples
        of p(x | y). given, observed: a completion, samples of p(x_U | x_O = given[, y])
        with the observed values returned unchanged (see the module docstring). Every
        argument is checked before any work (ValueError naming it).
        """
        where = f"{type(self).__name__}.sample: "
        n = check_count(n, where)
        method = check_method(method, where)
        seed = backend.check_seed(seed, where)
        y = self.check_labels(y, n)
        options = self.check_sample_options(n, **options)
        given, observed = self.check_completion(given, observed, n, self.sample_shape(**options))
        if n == 0:
            return self.empty_sample(**options)
        rng = backend.make_rng(seed)
        with no_grad():
            return self._sample(n, rng, method, y=y, given=given, observed=observed, **options)

    def sample_shape(self, **options) -> tuple:
        """The event shape of samples drawn with these (checked) options."""
        return tuple(self.event_shape)

    def check_sample_options(self, n: int, **options) -> dict:
        """The model's own sampling options for n samples, checked and normalised (images
        take none)."""
        if options:
            raise ValueError(f"{type(self).__name__}.sample: unknown option(s) {', '.join(sorted(options))}; "
                             "this model takes only n, seed and method")
        return {}

    def empty_sample(self):
        """What `sample(0)` returns: an empty array (0, *event_shape) of the samples' dtype."""
        return backend.xp().zeros((0, *self.event_shape), self.dtype)

    def _sample(self, n: int, rng, method: str, y=None, given=None, observed=None):
        noise = self.sample_noise(rng, n)
        if given is not None:
            noise = self.force_observed(noise, given, observed)
        x = self.sample_naive(noise, y) if method == "naive" else self.sample_fast(noise, y)
        return x.reshape(n, *self.event_shape)

    def sample_noise(self, rng, n: int):
        """The randomness of n samples, drawn up front: one value per variable (n, D), in
        variable order. Binary: u ~ U[0, 1) and x_i = [u_i < p(x_i = 1 | x_<i)]; real:
        z ~ N(0, 1) and x_i = mean_i + std_i z_i."""
        shape = (n, int(np.prod(self.event_shape)))
        if self.kind == "real":
            return rng.standard_normal(shape, dtype=self.dtype)
        return rng.random(shape, dtype=self.dtype)

    def sample_naive(self, noise, y=None):
        """Ancestral sampling as the lecture draws it: for each variable i in `ordering`, one
        full pass over the partly sampled data gives p(x_i | x_<i[, y]) (the variables not
        drawn yet are zeros, which conditional i cannot see), and x_i is drawn from it.
        noise: (n, D) from `sample_noise`, y: checked labels (n,) or None -> x: (n, D)."""
        n, d = noise.shape
        x = backend.xp().zeros((n, d), self.dtype)
        for i in self.ordering:
            dist = self.distribution(Tensor(x.reshape(n, *self.event_shape), dtype=self.dtype), y)  # D passes
            x[:, i] = dist.draw(noise.reshape(n, *self.event_shape)).reshape(n, d)[:, i]
        return x

    def sample_fast(self, noise, y=None):
        """The same samples as `sample_naive(noise, y)` with less work (each model's own)."""
        raise NotImplementedError


class SequenceModel(AutoregressiveModel):
    """Models of id sequences (N, T) in [0, n_classes), any length T: log p(x) =
    sum_t log p(x_t | x_<t), every conditional a softmax over the K classes.

    Subclasses set `n_classes` and `seq_len` (the default length of `sample`), implement
    `distribution` (a Categorical over (N, T)), `next_logits` (the naive step) and
    `sample_fast`, and `forward_from_inputs` (the differentiable path from input features,
    for checks of the autoregressive property).
    """

    kind = "categorical"
    variable_length = True
    seq_len: int = 1

    @property
    def event_shape(self) -> tuple:
        return (self.seq_len,)

    @property
    def bos(self) -> int:
        """The start token id (= n_classes), read at step 0 by models that read a token there."""
        return self.n_classes

    def log_prob_per_variable(self, x, y=None) -> Tensor:
        """log p(x_t | x_<t[, y]): ids (N, T) -> Tensor (N, T)."""
        a = self.check_data(x)
        y = self.check_labels(y, a.shape[0])
        return self.distribution(a, y).log_prob(a, check=False)  # (the ids were just checked)

    def training_loss(self, x, state=None, y=None):
        """The mean negative log-likelihood per id, in nats (the loss is then independent of
        the window length; 0 for an empty batch), and the state carried to the next batch
        (None here)."""
        return -batch_mean(self.log_prob_per_variable(x, y)), state

    def check_sample_options(self, n: int, length=None, temperature=1.0, top_k=0, prompt=None, **unknown) -> dict:
        """Sampling options: length (default `seq_len`); prompt, ids (P,) or (n, P) that the
        samples start with, P <= length; temperature / top_k reshape each conditional
        (1.0 / 0: exact samples of the model). Returns them normalised
        (`check_sampling_options`), the prompt as checked ids (n, P) on the device or None."""
        name = type(self).__name__
        if unknown:
            raise ValueError(f"{name}.sample: unknown option(s) {', '.join(sorted(unknown))}; "
                             "this model takes n, seed, method, length, temperature, top_k and prompt")
        checked = check_sampling_options(temperature=temperature, top_k=top_k,
                                         length=self.seq_len if length is None else length,
                                         where=f"{name}.sample: ")
        length = checked["length"]
        if prompt is not None:
            a = prompt.data if isinstance(prompt, Tensor) else prompt
            a = backend.to_device(np.asarray(a)) if not hasattr(a, "ndim") else a
            backend.check_same_device(a, f"{name}.sample: prompt: ")
            if a.ndim == 1:
                a = backend.array_module(a).broadcast_to(a[None, :], (n, a.shape[0]))
            if a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"{name}.sample: prompt must have shape (P,) or ({n}, P), got {tuple(a.shape)}")
            if a.shape[1] > length:
                raise ValueError(f"{name}.sample: prompt of {a.shape[1]} steps is longer than length={length}")
            prompt = self.check_data(a) if a.shape[1] else None
        return dict(length=length, temperature=checked["temperature"], top_k=checked["top_k"], prompt=prompt)

    def empty_sample(self, length, temperature, top_k, prompt):
        """sample(0): ids (0, length)."""
        return backend.xp().zeros((0, length), backend.xp().int64)

    def sample_shape(self, length, **options) -> tuple:
        return (length,)

    def _sample(self, n, rng, method, length, temperature, top_k, prompt, y=None, given=None, observed=None):
        """Samples (n, length) from checked options (`check_sample_options`). A completion
        (given, observed) is a prompt: its observed prefix, the same length in every row."""
        if given is not None:
            prompt = self.prompt_of(given, observed, prompt)
        out = backend.xp().zeros((n, length), backend.xp().int64)   # (n, length), the prompt first
        p = 0 if prompt is None else prompt.shape[1]
        if p:
            out[:, :p] = prompt
        if method == "naive":
            for t in range(p, length):
                logits = self.next_logits(out[:, :t], y)   # a full pass over the prefix
                out[:, t] = sample_categorical(logits, rng, temperature, top_k)
        else:
            self.sample_fast(out, p, rng, temperature, top_k, y)
        return out

    def prompt_of(self, given, observed, prompt):
        """A completion of sequences as the prompt it is: the observed prefix of every row
        (rows must observe the same number of ids, and there is no other prompt)."""
        name = type(self).__name__
        lengths = observed.sum(axis=1)
        if prompt is not None:
            raise ValueError(f"{name}.sample: give a prompt or a completion (given, observed), not both")
        if (lengths != lengths[0]).any():
            raise ValueError(f"{name}.sample: every row must observe a prefix of the same length (a prompt); "
                             f"got lengths {sorted(set(lengths.tolist()))[:4]}; sample them separately")
        return given[:, :int(lengths[0])].astype(backend.xp().int64) if lengths[0] else None

    def next_logits(self, prefix, y=None):
        """The logits (n, K) of x_t given the ids prefix = x_<t (n, t) (and labels y), by one
        full forward pass with nothing cached (the naive sampler's step; t = 0 is allowed)."""
        raise NotImplementedError

    def sample_fast(self, out, p: int, rng, temperature: float, top_k: int, y=None) -> None:
        """Fill out[:, p:] (ids (n, length), the prompt in out[:, :p]) as the naive loop
        would, drawing from the same generator in the same order, with cached state."""
        raise NotImplementedError


def batch_mean(t: Tensor) -> Tensor:
    """The mean of all of t's elements as a Tensor, 0 (with zero gradients) when t is empty:
    the loss of an empty batch, which has nothing to learn from."""
    return t.sum() * (1.0 / max(t.size, 1))


# ---------------------------------------------------------------------- argument checks
def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_count(n, where: str = "") -> int:
    """The number of samples n as an int: a non-negative integer (numpy integers too; not a
    bool, a float or a string), else ValueError naming `n`."""
    if not _is_integer(n) or n < 0:
        raise ValueError(f"{where}n, the number of samples, must be a non-negative integer, got {n!r}")
    return int(n)


def check_n_labels(n_labels, where: str = "") -> int:
    """A model's number of label classes as an int: a non-negative integer (0: an
    unconditional model), else ValueError naming `n_labels`."""
    if not _is_integer(n_labels) or n_labels < 0:
        raise ValueError(f"{where}n_labels must be a non-negative integer (0: unconditional), got {n_labels!r}")
    return int(n_labels)


def check_length(length, where: str = "") -> int:
    """A sequence length as an int: a positive integer, else ValueError naming `length`."""
    if not _is_integer(length) or length < 1:
        raise ValueError(f"{where}length must be a positive integer (the number of ids per sample), got {length!r}")
    return int(length)


def check_method(method, where: str = "") -> str:
    """'fast' or 'naive', else ValueError naming `method`."""
    if not isinstance(method, str) or method not in SAMPLING_METHODS:
        raise ValueError(f"{where}method must be 'fast' or 'naive', got {method!r}")
    return method


def check_sampling_options(*, n=None, temperature=1.0, top_k=0, length=None, seed=None, method="fast",
                           where: str = "") -> dict:
    """Check sampling options up front, without a model (for a program that takes them from
    its user and must refuse a bad one before any work); `sample` applies the same checks.

    n: None (not checked) or a non-negative integer; temperature: a finite number > 0;
    top_k: a non-negative integer (0: all classes); length: None (the model's default) or a
    positive integer; seed: None, a non-negative integer or a generator; method: 'fast' or
    'naive'. Returns {'n', 'temperature', 'top_k', 'length', 'seed', 'method'} normalised
    (Python ints and floats); raises ValueError naming the first bad argument and what it
    must be. `where` prefixes the messages.
    """
    return dict(
        n=None if n is None else check_count(n, where),
        temperature=check_temperature(temperature, where),
        top_k=check_top_k(top_k, where),
        length=None if length is None else check_length(length, where),
        seed=backend.check_seed(seed, where),
        method=check_method(method, where),
    )
