"""Fast paths that exist for speed only, one file per family.

Each kernel computes exactly what a textbook function of the library computes (its
docstring names which), as fused autograd nodes written with `nanoar.tensor.record_op` or
as cached samplers on plain arrays; a test holds each one equal to its textbook path in
value and gradient. Models pick a kernel in one visible line (`if self.fused:`).
"""
