"""cupyx for the CPU stand-in of CuPy (see ../cupy/__init__.py): only what nanoar uses."""
import numpy as _np

import cupy


def scatter_add(a, slices, value):
    """a[slices] += value, accumulating over repeated indices (cupyx.scatter_add)."""
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"scatter_add: Unsupported type {type(a)}")
    _np.add.at(a._a, cupy._index(slices), cupy._operand(value, "scatter_add"))
