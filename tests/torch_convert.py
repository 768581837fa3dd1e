"""NumPy <-> torch conversion for the parity tests: tensors, arrays and lists/tuples of them.
Imported only by tests that have already skipped themselves when torch is missing."""
import numpy as np
import torch


def to_np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    if isinstance(x, (list, tuple)):
        return type(x)(to_np(v) for v in x)
    return x


def to_t(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, (list, tuple)):
        return type(x)(to_t(v) for v in x)
    return x
