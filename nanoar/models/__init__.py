"""One file per model family; every model follows the protocol in `base.py`.

    from nanoar.models import build_model
    model = build_model("made", {"d": 784, "hidden_sizes": [500, 500]})
"""
import importlib

# name used by the scripts and in checkpoints -> (module, class)
MODELS = {
    "fvsbn": ("fvsbn", "FVSBN"),
    "nade": ("nade", "NADE"),
    "made": ("made", "MADE"),
    "gaussian-made": ("made", "GaussianMADE"),
    "pixelcnn": ("pixelcnn", "PixelCNN"),
    "gated-pixelcnn": ("pixelcnn", "GatedPixelCNN"),
    "wavenet": ("wavenet", "WaveNet"),
    "lstm": ("lstm", "CharLSTM"),
    "transformer": ("transformer", "CharTransformer"),
}


def model_class(name: str):
    """The class registered under `name` (imported on first use)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    module, cls = MODELS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def build_model(name: str, config: dict):
    """`model_class(name)(**config)`: how checkpoints rebuild their model."""
    return model_class(name)(**config)


def model_name(model) -> str:
    """The registry name of a model instance (the inverse of `model_class`)."""
    for name, (_, cls) in MODELS.items():
        if type(model).__name__ == cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model")
