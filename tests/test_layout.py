"""The library's layers (README, "Architecture"): each module imports only modules of the
layers below it, never a private name of another module, and importing nanoar does no work."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nanoar"

# module (or package) -> layer; a module may import from lower layers only (and, inside
# `models` and `datasets`, from the same package)
LAYERS = {
    "backend": 0,
    "tensor": 1,
    "gradcheck": 2, "nn": 2, "distributions": 2, "optim": 2,
    "kernels": 3,
    "models": 4,
    "datasets": 5,
    "checkpoint": 6, "distributed": 6,
    "training": 7, "bench": 7,
    "anomaly": 8, "conditioning": 8,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        yield path, parts


def _layer(parts):
    return LAYERS[parts[0]]


def _imports(path, parts):
    """(imported nanoar module parts, imported names) for each `from`/`import` in the file."""
    tree = ast.parse(path.read_text())
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("nanoar"):
                    continue
                target = node.module.split(".")[1:]
            else:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
            if not target:  # `from .. import backend`: modules of the package root
                for name in names:
                    yield [name], []
            else:
                yield target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("nanoar."):
                    yield a.name.split(".")[1:], []


@pytest.mark.parametrize("path,parts", list(_modules()), ids=["/".join(parts) for _, parts in _modules()])
def test_each_module_imports_only_lower_layers_and_no_private_names(path, parts):
    mine = _layer(parts)
    for target, names in _imports(path, parts):
        if not target:
            continue
        if target[0] not in LAYERS and len(parts) > 1:  # `from . import x` inside a package: a sibling
            target = list(parts[:-1]) + target
        assert target[0] in LAYERS, f"{'/'.join(parts)} imports {target[0]!r} from the package root, not from its module"
        theirs = LAYERS[target[0]]
        same_package = target[0] == parts[0] and parts[0] in ("models", "datasets", "kernels")
        assert theirs < mine or same_package, f"{'/'.join(parts)} (layer {mine}) imports {'.'.join(target)} (layer {theirs})"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{'/'.join(parts)} imports private names {private} from {'.'.join(target)}"


def test_every_module_has_a_layer():
    assert {parts[0] for _, parts in _modules()} <= set(LAYERS)


def test_import_does_no_work():
    """Importing every module leaves the device, the allocator and the environment alone,
    and imports neither CuPy nor the optional packages."""
    code = ("import os, sys; os.environ['NANOAR_DEVICE'] = 'cuda'\n"
            "import nanoar, nanoar.models, nanoar.kernels, nanoar.datasets, nanoar.training, nanoar.bench\n"
            "import importlib, pkgutil\n"
            "for pkg in (nanoar.models, nanoar.kernels, nanoar.datasets):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__): importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "print(nanoar.get_device(), sorted(m for m in ('cupy', 'pooch', 'tqdm', 'PIL', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(maxsplit=1) == ["cpu", "[]\n"] or r.stdout.strip() == "cpu []", r.stdout
