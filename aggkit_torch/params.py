"""Views between a model's parameters and aggkit's flat layouts and client-batch rows.

A model's trainable parameters, in ``named_parameters()`` order, form an aggkit structure
``{name: tensor}``; :func:`model_layout` describes it, and the functions here copy between the
parameters and flat float32 vectors (a :class:`~aggkit.ClientBatch` row, for instance) without
building intermediate structures. Rows are written through ``torch.from_numpy`` views, so a
client's update lands directly in the matrix the aggregator reads.

Works with any memory format: a ``channels_last`` parameter is read and written in its logical
(NCHW) element order, which is the order of the layout.

Examples
--------
>>> import torch, numpy as np
>>> model = torch.nn.Linear(3, 2)
>>> layout = model_layout(model)
>>> layout.paths, layout.size
(("['weight']", "['bias']"), 8)
>>> vector = parameters_to_vector(model)
>>> vector_to_parameters(np.zeros_like(vector), model)
>>> float(model.weight.detach().abs().sum())
0.0
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import aggkit as ak

__all__ = [
    "model_layout",
    "parameters_to_vector",
    "vector_to_parameters",
    "write_delta",
]


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def model_layout(model: nn.Module) -> ak.Layout:
    """The layout of ``model``'s trainable parameters: ``{name: TensorSpec(shape, float32)}``.

    Raises TypeError for parameters that are not float32 (aggkit_torch trains in float32).
    """
    template = {}
    for name, p in _trainable(model):
        if p.dtype != torch.float32:
            raise TypeError(f"parameter {name} is {p.dtype}; aggkit_torch expects float32")
        template[name] = ak.TensorSpec(tuple(p.shape), np.float32)
    return ak.Layout(template)


def _segments(model: nn.Module, vector: np.ndarray):
    flat = torch.from_numpy(vector)
    start = 0
    for _, p in _trainable(model):
        stop = start + p.numel()
        yield p, flat[start:stop].view(p.shape)
        start = stop
    if start != vector.shape[0]:
        raise ValueError(f"vector has {vector.shape[0]} values, the model {start}")


def parameters_to_vector(model: nn.Module, out: np.ndarray | None = None) -> np.ndarray:
    """The model's trainable parameters as one float32 vector (written into ``out`` if given)."""
    if out is None:
        out = np.empty(sum(p.numel() for _, p in _trainable(model)), dtype=np.float32)
    with torch.no_grad():
        for p, segment in _segments(model, out):
            segment.copy_(p)
    return out


def vector_to_parameters(vector: np.ndarray, model: nn.Module) -> None:
    """Copy a flat float32 vector into the model's trainable parameters (in place)."""
    with torch.no_grad():
        for p, segment in _segments(model, np.ascontiguousarray(vector, dtype=np.float32)):
            p.copy_(segment)


def write_delta(initial: np.ndarray, model: nn.Module, out: np.ndarray) -> bool:
    """Write the client update ``initial - trained`` into ``out`` (a batch row); True if finite.

    This is TFF's model delta: a pseudo-gradient that a server optimizer with learning rate 1.0
    subtracts to get the average of the clients' trained weights.
    """
    with torch.no_grad():
        for (p, segment), (_, start) in zip(
            _segments(model, out), _segments(model, initial), strict=True
        ):
            torch.sub(start, p, out=segment)
    return bool(np.isfinite(out).all())
