"""Views between a model's state and aggkit's flat layouts and client-batch rows.

What a round aggregates (:func:`aggregated_tensors`, in ``state_dict`` order):

- **trainable parameters** (``requires_grad``) of any floating dtype; frozen parameters are left
  alone (not aggregated, never written);
- **floating buffers** (BatchNorm's ``running_mean`` / ``running_var``), unless ``buffers=False``
  (FedBN-style local statistics): left out, a buffer stays what it was on the server;
- never **integer buffers** (``num_batches_tracked``): counters that no aggregator can make
  robust (one client reporting a huge count would set it), so the server keeps its own value and
  each client starts from it (``docs/guide/pytorch.md``, "Buffers and FedBN").

Dtypes: aggkit aggregates float16, float32 and float64 (:data:`AGGKIT_DTYPES`); a bfloat16 tensor
(NumPy has no bfloat16) goes through aggkit as float32 and comes back as bfloat16. The flat
vector, and so the client matrix, is float32 unless a tensor is float64 (then float64: no
precision is lost on the way).

The functions here copy between those tensors and flat vectors (a :class:`~aggkit.ClientBatch`
row, for instance) without building intermediate structures. Rows are written through
``torch.from_numpy`` views, so a client's update lands directly in the matrix the aggregator
reads. A ``channels_last`` tensor is read and written in its logical (NCHW) element order, which
is the order of the layout.

Examples
--------
>>> import torch, numpy as np
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
>>> layout = model_layout(model)
>>> layout.paths  # parameters and floating buffers; not num_batches_tracked
("['0.weight']", "['0.bias']", "['1.weight']", "['1.bias']", "['1.running_mean']", \
"['1.running_var']")
>>> model_layout(model, buffers=False).size  # FedBN: the running statistics stay local
12
>>> vector = parameters_to_vector(model)
>>> vector_to_parameters(np.zeros_like(vector), model)
>>> float(model[0].weight.detach().abs().sum()), float(model[1].running_var.sum())
(0.0, 0.0)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import aggkit as ak

__all__ = [
    "AGGKIT_DTYPES",
    "aggkit_dtype",
    "aggregated_tensors",
    "buffer_names",
    "flat_tensor",
    "model_layout",
    "parameters_to_vector",
    "vector_to_parameters",
    "write_delta",
]

#: The dtype in which each floating torch dtype goes through aggkit (bfloat16: float32).
AGGKIT_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(np.float32),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


def aggkit_dtype(dtype: torch.dtype, name: str = "tensor") -> np.dtype:
    """The NumPy dtype a floating torch ``dtype`` is aggregated in (TypeError for others).

    >>> aggkit_dtype(torch.bfloat16), aggkit_dtype(torch.float64)
    (dtype('float32'), dtype('float64'))
    """
    try:
        return AGGKIT_DTYPES[dtype]
    except KeyError:
        raise TypeError(
            f"{name} is {dtype}; aggkit aggregates {', '.join(map(str, AGGKIT_DTYPES))}"
        ) from None


def aggregated_tensors(model: nn.Module, *, buffers: bool = True) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, tensor)`` pairs a round aggregates, in ``state_dict`` order.

    Trainable floating parameters, then (interleaved as ``state_dict`` lists them) the floating
    persistent buffers when ``buffers`` is true. Frozen parameters, integer buffers and
    non-persistent buffers are never included; a tensor shared under two names counts once.
    A trainable parameter that is not floating raises TypeError.
    """
    chosen: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter):
            if not tensor.requires_grad:
                continue
            aggkit_dtype(tensor.dtype, f"parameter {name}")
        elif not (buffers and tensor.is_floating_point()):
            continue
        else:
            aggkit_dtype(tensor.dtype, f"buffer {name}")
        chosen.append((name, tensor))
    return chosen


def buffer_names(model: nn.Module, *, floating: bool = True) -> list[str]:
    """The names of ``model``'s persistent buffers (only the floating ones by default).

    For :class:`~aggkit_torch.flower.strategy.AggkitStrategy`'s ``local_keys`` (FedBN on Flower):

    >>> buffer_names(torch.nn.BatchNorm1d(2))
    ['running_mean', 'running_var']
    >>> buffer_names(torch.nn.BatchNorm1d(2), floating=False)
    ['running_mean', 'running_var', 'num_batches_tracked']
    """
    return [
        name
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not isinstance(tensor, nn.Parameter) and (tensor.is_floating_point() or not floating)
    ]


def model_layout(model: nn.Module, *, buffers: bool = True) -> ak.Layout:
    """The layout of what a round aggregates (:func:`aggregated_tensors`), one
    ``TensorSpec(shape, aggkit_dtype(dtype))`` per tensor, keyed by its ``state_dict`` name."""
    return ak.Layout(
        {
            name: ak.TensorSpec(tuple(t.shape), aggkit_dtype(t.dtype))
            for name, t in aggregated_tensors(model, buffers=buffers)
        }
    )


def _segments(model: nn.Module, vector: np.ndarray, buffers: bool):
    flat = torch.from_numpy(vector)
    start = 0
    for _, p in aggregated_tensors(model, buffers=buffers):
        stop = start + p.numel()
        yield p, flat[start:stop].view(p.shape)
        start = stop
    if start != vector.shape[0]:
        raise ValueError(f"vector has {vector.shape[0]} values, the model {start}")


def _vector_dtype(model: nn.Module, buffers: bool) -> np.dtype:
    return model_layout(model, buffers=buffers).dtype


def parameters_to_vector(
    model: nn.Module, out: np.ndarray | None = None, *, buffers: bool = True
) -> np.ndarray:
    """What a round aggregates as one flat vector (written into ``out`` if given).

    The vector's dtype is the layout's (float32, or float64 when a tensor is float64).
    """
    if out is None:
        layout = model_layout(model, buffers=buffers)
        out = np.empty(layout.size, dtype=layout.dtype)
    with torch.no_grad():
        for p, segment in _segments(model, out, buffers):
            segment.copy_(p)
    return out


def vector_to_parameters(vector: np.ndarray, model: nn.Module, *, buffers: bool = True) -> None:
    """Copy a flat vector into the tensors a round aggregates (in place, each in its dtype)."""
    dtype = _vector_dtype(model, buffers)
    with torch.no_grad():
        for p, segment in _segments(model, np.ascontiguousarray(vector, dtype=dtype), buffers):
            p.copy_(segment)


def flat_tensor(model: nn.Module, dtype: torch.dtype, *, buffers: bool = True) -> torch.Tensor:
    """What a round aggregates as one flat ``dtype`` tensor on the model's device (a copy).

    >>> flat_tensor(torch.nn.Linear(3, 2), torch.float32).shape
    torch.Size([8])
    """
    with torch.no_grad():
        return torch.cat(
            [
                t.detach().reshape(-1).to(dtype)
                for _, t in aggregated_tensors(model, buffers=buffers)
            ]
        )


def write_delta(
    initial: np.ndarray | torch.Tensor, model: nn.Module, out: np.ndarray, *, buffers: bool = True
) -> bool:
    """Write the client update ``initial - trained`` into ``out`` (a batch row); True if finite.

    This is TFF's model delta: a pseudo-gradient that a server optimizer with learning rate 1.0
    subtracts to get the average of the clients' trained weights.

    ``initial`` is a host vector (:func:`parameters_to_vector`) for a model on the CPU: each
    tensor's difference is written straight into its segment of ``out``. For a model on an
    accelerator pass :func:`flat_tensor` of the global model (on that device): the difference
    is taken there and reaches ``out`` in one device-to-host copy.
    """
    if isinstance(initial, torch.Tensor):
        with torch.no_grad():
            delta = initial - flat_tensor(model, initial.dtype, buffers=buffers)
            torch.from_numpy(out).copy_(delta)
        return bool(np.isfinite(out).all())
    with torch.no_grad():
        for (p, segment), (_, start) in zip(
            _segments(model, out, buffers), _segments(model, initial, buffers), strict=True
        ):
            torch.sub(start, p, out=segment)
    return bool(np.isfinite(out).all())
