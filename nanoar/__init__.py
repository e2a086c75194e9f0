"""nanoar: small, exact, from-scratch deep autoregressive models on NumPy or CuPy.

Importing it does no work; `nanoar.configure()` applies the process-wide settings (device
from $NANOAR_DEVICE, allocator) for programs that want them.
"""
from .backend import (DeviceError, configure, default_dtype, default_dtype_as, get_device, manual_seed,
                      set_default_dtype, set_device, xp)
from .tensor import (Tensor, add, as_tensor, bernoulli_log_prob, cat, concatenate, conv1d, conv2d, cumsum,
                     detect_anomaly, div, embedding, exp, gather, gelu, getitem, is_grad_enabled,
                     layer_norm, log, log_sigmoid, log_softmax, logsumexp, matmul, max, mean, mul, neg,
                     no_grad, permute, pow, record_op, relu, reshape, sigmoid, softmax, softplus, split, sqrt,
                     stack, sub, sum, tanh, to_device, to_numpy, transpose, where)
from .gradcheck import gradcheck

__version__ = "0.1.0"
