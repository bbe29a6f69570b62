"""The client step: fast local training and evaluation on data held in memory.

A client's data is a set of row indices into one in-memory image tensor; batches are
gathered with ``index_select`` (no ``Dataset``, no ``DataLoader``, no per-sample
transforms). One model and one optimizer can be reused for every client: copy the global
weights in, clear the optimizer state, call :func:`train_local`.

:func:`prepare_model` converts models to ``channels_last`` by default
(:data:`CHANNELS_LAST_DEFAULT`): PyTorch's CPU convolutions are often faster in that format, and
the MNIST CNN trained faster in it where it was measured (``docs/benchmarks-history.md``,
"Memory format"). That depends on the CPU and the model: ``benchmarks/bench_torch_plain.py``
times both formats on your machine, and ``channels_last=False`` keeps NCHW. With one input
channel an NCHW batch is already ``channels_last``-contiguous, so the images need no
conversion.

Examples
--------
>>> import torch
>>> from aggkit_torch.models import MnistCNN
>>> images, labels = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
>>> model = prepare_model(MnistCNN())
>>> opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
>>> n, loss = train_local(model, opt, images, labels, range(50),
...                       generator=torch.Generator().manual_seed(0))
>>> n
50
>>> acc, test_loss = evaluate(model, images, labels)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aggkit._checks import integer

__all__ = [
    "CHANNELS_LAST_DEFAULT",
    "EvalResult",
    "LocalResult",
    "configure_threads",
    "evaluate",
    "examples_per_round",
    "is_channels_last",
    "prepare_model",
    "reset_optimizer",
    "train_local",
]

#: Whether :func:`prepare_model` converts to ``channels_last`` unless told otherwise (see the
#: module docstring).
CHANNELS_LAST_DEFAULT = True


class LocalResult(NamedTuple):
    """What :func:`train_local` returns."""

    #: Examples processed (the client's size times the epochs, or the steps' batch sizes).
    num_examples: int
    #: Mean training loss over the processed examples (NaN if the loss became non-finite).
    mean_loss: float


class EvalResult(NamedTuple):
    """What :func:`evaluate` returns."""

    accuracy: float
    loss: float


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count, by default to the cores this process may use.

    More threads than cores oversubscribe them and slow everything down, so the default is the
    number of cores this process may run on. Call it once at start-up.

    Parameters
    ----------
    num_threads : int, optional
        Threads to use; default ``len(os.sched_getaffinity(0))`` (or ``os.cpu_count()``).

    Returns
    -------
    int
        The thread count now in force.
    """
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(integer(num_threads, "num_threads", low=1))
    return torch.get_num_threads()


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are in ``channels_last`` layout.

    Examples
    --------
    >>> from aggkit_torch.models import MnistCNN
    >>> is_channels_last(MnistCNN()), is_channels_last(prepare_model(MnistCNN()))
    (False, True)
    """
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def prepare_model(model: nn.Module, *, channels_last: bool | None = None) -> nn.Module:
    """Put a model in the memory format it trains in (in place; returns it).

    Parameters
    ----------
    model : torch.nn.Module
        The model; converted in place.
    channels_last : bool, optional
        ``True`` for ``channels_last``, ``False`` for contiguous NCHW; default
        :data:`CHANNELS_LAST_DEFAULT`.
    """
    if channels_last is None:
        channels_last = CHANNELS_LAST_DEFAULT
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)


def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Forget the optimizer's per-parameter state (momentum buffers, Adam moments).

    Use it between clients when one optimizer object is reused: each client must start
    from a fresh optimizer state.
    """
    optimizer.state.clear()


def _as_index_tensor(indices: object) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        idx = indices.to(torch.int64)
    elif isinstance(indices, range):
        idx = torch.arange(indices.start, indices.stop, indices.step, dtype=torch.int64)
    else:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    if idx.dim() != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {tuple(idx.shape)}")
    return idx


def examples_per_round(
    size: int, *, epochs: int = 1, steps: int | None = None, batch_size: int = 64
) -> int:
    """The ``num_examples`` :func:`train_local` reports for a client holding ``size`` examples.

    ``epochs * size`` for whole epochs; with ``steps``, the examples of that many batches, where
    each pass over the data ends with a smaller batch when ``batch_size`` does not divide
    ``size``. A server that knows a client's partition size uses it as the trusted example count
    (:mod:`aggkit_torch.rounds`).

    >>> examples_per_round(100, epochs=2), examples_per_round(100, steps=3, batch_size=64)
    (200, 164)
    """
    size = integer(size, "size", low=1)
    batch_size = integer(batch_size, "batch_size", low=1)
    if steps is None:
        return integer(epochs, "epochs", low=1) * size
    steps = integer(steps, "steps", low=1)
    per_pass = -(-size // batch_size)
    full, rest = divmod(steps, per_pass)
    return full * size + rest * batch_size  # rest < per_pass: those batches are all full


def _batches(
    idx: torch.Tensor,
    batch_size: int,
    epochs: int,
    steps: int | None,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    """Yield index batches: reshuffled every pass, ``steps`` batches or ``epochs`` passes."""
    n = idx.numel()
    per_pass = -(-n // batch_size)
    total = steps if steps is not None else epochs * per_pass
    done = 0
    while done < total:
        order = idx[torch.randperm(n, generator=generator)]
        for start in range(0, n, batch_size):
            if done == total:
                return
            yield order[start : start + batch_size]
            done += 1


def train_local(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: object,
    *,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.nll_loss,
) -> LocalResult:
    """Train ``model`` on the rows ``indices`` of ``images`` / ``labels``, in place.

    Each pass over the client's examples uses a fresh permutation drawn from ``generator``;
    batches are gathered with ``index_select`` (the last batch of a pass may be smaller).
    The model is put in training mode; the optimizer's state is left as it is (see
    :func:`reset_optimizer`).

    Parameters
    ----------
    model : torch.nn.Module
        Returns log-probabilities for ``loss_fn`` (the default NLL loss).
    optimizer : torch.optim.Optimizer
        Built over ``model``'s parameters.
    images : torch.Tensor
        All examples, ``[N, ...]``, e.g. from :func:`aggkit_torch.data.load_mnist`.
    labels : torch.Tensor
        Int64 targets, ``[N]``.
    indices : array-like of int, torch.Tensor or range
        This client's rows (non-empty).
    epochs : int, default 1
        Passes over the client's data (ignored when ``steps`` is given).
    steps : int, optional
        Exact number of optimizer steps instead of whole epochs; passes wrap around and
        reshuffle.
    batch_size : int, default 64
    generator : torch.Generator, optional
        Source of the shuffles; pass a seeded one for reproducible runs.
    loss_fn : callable, default :func:`torch.nn.functional.nll_loss`
        ``loss_fn(output, target)`` returning a mean loss.

    Returns
    -------
    LocalResult
        ``(num_examples, mean_loss)``: examples processed and their mean loss.
    """
    batch_size = integer(batch_size, "batch_size", low=1)
    epochs = integer(epochs, "epochs", low=1)
    if steps is not None:
        steps = integer(steps, "steps", low=1)
    idx = _as_index_tensor(indices)
    if idx.numel() == 0:
        raise ValueError("indices must not be empty")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels disagree on the number of examples: "
            f"{images.shape[0]} != {labels.shape[0]}"
        )

    to_cl = images.dim() == 4 and is_channels_last(model)
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64)
    seen = 0
    for batch in _batches(idx, batch_size, epochs, steps, generator):
        x = images.index_select(0, batch)
        if to_cl:  # a no-op for one input channel
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.index_select(0, batch)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(batch)
        seen += len(batch)
    mean = float(total_loss) / seen
    return LocalResult(seen, mean if math.isfinite(mean) else math.nan)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    *,
    loss_fn: Callable[..., torch.Tensor] = F.nll_loss,
) -> EvalResult:
    """Accuracy and mean loss of ``model`` on ``images`` / ``labels``.

    The model is evaluated in ``eval`` mode and then put back in the mode it was in.

    Parameters
    ----------
    model : torch.nn.Module
        Returns log-probabilities (for the default NLL loss) or logits.
    images, labels : torch.Tensor
        ``[N, ...]`` inputs and int64 ``[N]`` targets.
    batch_size : int, default 1000
    loss_fn : callable
        Called as ``loss_fn(output, target, reduction="sum")``.

    Returns
    -------
    EvalResult
        ``(accuracy, loss)``, accuracy in ``[0, 1]``.
    """
    batch_size = integer(batch_size, "batch_size", low=1)
    n = images.shape[0]
    if n == 0:
        raise ValueError("images must not be empty")
    if labels.shape[0] != n:
        raise ValueError(
            f"images and labels disagree on the number of examples: {n} != {labels.shape[0]}"
        )
    to_cl = images.dim() == 4 and is_channels_last(model)
    was_training = model.training
    model.eval()
    try:
        correct = 0
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size]
            if to_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[start : start + batch_size]
            out = model(x)
            total += loss_fn(out, y, reduction="sum").to(torch.float64)
            correct += int((out.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return EvalResult(correct / n, float(total) / n)
