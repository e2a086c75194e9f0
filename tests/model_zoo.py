"""Small models of every family of the registry (nanoar.models.MODELS), for the tests that
check the protocol's identities on all of them (test_protocol.py, test_refusals.py)."""
import numpy as np

import nanoar
from nanoar.models.base import SequenceModel
from nanoar.models.fvsbn import FVSBN
from nanoar.models.lstm import CharLSTM
from nanoar.models.made import GaussianMADE, MADE
from nanoar.models.nade import NADE
from nanoar.models.pixelcnn import GatedPixelCNN, PixelCNN
from nanoar.models.transformer import CharTransformer
from nanoar.models.wavenet import WaveNet

K = 3  # classes of the sequence models


def _scaled(model, scale):
    """Weights scaled up so that the conditionals are far from uniform (small inits make
    every conditional nearly 1/2 or 1/K, which hides mistakes)."""
    for p in model.parameters():
        if p.ndim >= 2:
            p.data *= scale
    return model


# name -> (builder of a small model, its registry name); every registry model appears
ZOO = {
    "fvsbn": (lambda: _scaled(FVSBN(4), 3.0), "fvsbn"),
    "nade": (lambda: _scaled(NADE(4, 3), 3.0), "nade"),
    "made": (lambda: _scaled(MADE(4, [6, 6], ordering="random", seed=1), 3.0), "made"),
    "made-mixture": (lambda: _scaled(MADE(4, [6], num_masks=3, ordering="random", seed=2), 3.0), "made"),
    "made-tanh-no-hidden": (lambda: _scaled(MADE(4, [], activation="tanh"), 3.0), "made"),
    "gaussian-made": (lambda: GaussianMADE(3, [5], ordering="random", seed=3), "gaussian-made"),
    "pixelcnn": (lambda: _scaled(PixelCNN(2, 3, channels=3, n_residual=1, first_kernel=3, kernel=3, head_channels=4),
                                 2.0), "pixelcnn"),
    "gated-pixelcnn": (lambda: _scaled(GatedPixelCNN(2, 3, channels=3, n_layers=2, kernel=3, head_channels=4), 2.0),
                       "gated-pixelcnn"),
    "wavenet": (lambda: _scaled(WaveNet(n_classes=K, residual_channels=4, dilation_channels=4, skip_channels=4,
                                        dilations=(1, 2), seq_len=4), 2.0), "wavenet"),
    "wavenet-embedding-k3": (lambda: _scaled(WaveNet(n_classes=K, residual_channels=4, dilation_channels=6,
                                                     skip_channels=3, dilations=(1,), n_stacks=2, kernel=3,
                                                     input="embedding", embed_dim=2, seq_len=4), 2.0), "wavenet"),
    "lstm": (lambda: _scaled(CharLSTM(K, embed_dim=4, hidden_size=5, n_layers=2, seq_len=4), 2.0), "lstm"),
    "transformer": (lambda: _scaled(CharTransformer(K, context=3, n_layers=2, n_heads=2, dim=8, seq_len=4), 25.0),
                    "transformer"),
    "transformer-tied-bias": (lambda: _scaled(CharTransformer(K, context=6, n_layers=1, n_heads=2, dim=8, bias=True,
                                                              tied=True, seq_len=4), 25.0), "transformer"),
}
NAMES = list(ZOO)
DISCRETE = [n for n in NAMES if n != "gaussian-made"]
FACTORISED = [n for n in NAMES if n != "made-mixture"]
FUSED = ["nade", "pixelcnn", "wavenet", "wavenet-embedding-k3", "lstm", "transformer", "transformer-tied-bias"]


def make(name, seed=0):
    nanoar.manual_seed(seed)
    return ZOO[name][0]()


def classes(model):
    return model.n_classes if model.kind == "categorical" else 2


def data(model, n, seed, length=None):
    """Valid host data for the model: (n, *event_shape), or (n, length) for sequences."""
    rng = np.random.default_rng(seed)
    if model.kind == "categorical":
        return rng.integers(0, model.n_classes, size=(n, length or model.seq_len))
    if model.kind == "real":
        return rng.standard_normal((n, *model.event_shape))
    return rng.integers(0, 2, size=(n, *model.event_shape)).astype(np.float64)


def sample_options(model):
    return {"length": model.seq_len} if isinstance(model, SequenceModel) else {}


# ---------------------------------------------------------------------------- conditional models
N_LABELS = 3  # classes y of the conditional models


def label_parameters(model):
    """The parameters through which the label y enters: those of every `nn.LabelBias` module,
    and any whose name contains 'label'. [(name, Parameter)]."""
    from nanoar.nn import LabelBias, Module  # noqa: PLC0415

    found = {}

    def walk(module, prefix):
        for name, p in module.named_parameters(prefix) if isinstance(module, LabelBias) else ():
            found[name] = p
        for name, child in module._children():
            if isinstance(child, Module):
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    for name, p in model.named_parameters():
        if "label" in name.lower():
            found[name] = p
    return sorted(found.items())


def _labelled(model, scale=1.5, seed=0):
    """Label weights (zero at init, so y would have no effect) set to random values of size
    about `scale`, none near zero: |w| in [0.5, 1.5] * scale with a random sign."""
    rng = np.random.default_rng(seed)
    params = label_parameters(model)
    assert params, f"{type(model).__name__}(n_labels={model.n_labels}) has no label parameters"
    for _, p in params:
        w = rng.uniform(0.5, 1.5, size=p.shape) * rng.choice([-1.0, 1.0], size=p.shape) * scale
        p.data = nanoar.to_device(w).astype(p.dtype)
    return model


# name -> builder of a small class-conditional model (n_labels = N_LABELS), scaled like ZOO's
CONDITIONAL = {
    "fvsbn": lambda: _labelled(_scaled(FVSBN(4, n_labels=N_LABELS), 3.0)),
    "nade": lambda: _labelled(_scaled(NADE(4, 3, n_labels=N_LABELS), 3.0)),
    "made": lambda: _labelled(_scaled(MADE(4, [6, 6], ordering="random", seed=1, n_labels=N_LABELS), 3.0)),
    "made-mixture": lambda: _labelled(_scaled(MADE(4, [6], num_masks=3, ordering="natural", seed=2,
                                                   n_labels=N_LABELS), 3.0)),
    "gaussian-made": lambda: _labelled(GaussianMADE(3, [5], ordering="random", seed=3, n_labels=N_LABELS), 0.5),
    "pixelcnn": lambda: _labelled(_scaled(PixelCNN(2, 3, channels=3, n_residual=1, first_kernel=3, kernel=3,
                                                   head_channels=4, n_labels=N_LABELS), 2.0)),
    "gated-pixelcnn": lambda: _labelled(_scaled(GatedPixelCNN(2, 3, channels=3, n_layers=2, kernel=3, head_channels=4,
                                                              n_labels=N_LABELS), 2.0)),
    "wavenet": lambda: _labelled(_scaled(WaveNet(n_classes=K, residual_channels=4, dilation_channels=4,
                                                 skip_channels=4, dilations=(1, 2), seq_len=4, n_labels=N_LABELS),
                                         2.0)),
    "wavenet-embedding-k3": lambda: _labelled(_scaled(WaveNet(n_classes=K, residual_channels=4, dilation_channels=6,
                                                              skip_channels=3, dilations=(1,), n_stacks=2, kernel=3,
                                                              input="embedding", embed_dim=2, seq_len=4,
                                                              n_labels=N_LABELS), 2.0)),
}
CONDITIONAL_NAMES = list(CONDITIONAL)
CONDITIONAL_DISCRETE = [n for n in CONDITIONAL_NAMES if n != "gaussian-made"]


def make_conditional(name, seed=0):
    nanoar.manual_seed(seed)
    return CONDITIONAL[name]()


def order_agnostic_made(seed=0, n_labels=0):
    """A MADE trained order-agnostically (`resample_masks=True`): it completes ANY observed
    set, choosing an ordering that puts that set first."""
    nanoar.manual_seed(seed)
    model = _scaled(MADE(4, [8, 8], num_masks=2, ordering="random", resample_masks=True, seed=seed,
                         n_labels=n_labels), 3.0)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.named_parameters():   # the mask inputs' weights (zero at first) at work
        if name.endswith("mask_weight"):
            p.data[...] = nanoar.to_device(rng.normal(0.0, 1.0, p.shape).astype(p.dtype))
    return _labelled(model) if n_labels else model
