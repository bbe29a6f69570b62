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
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aggkit._checks import integer

__all__ = [
    "CHANNELS_LAST_DEFAULT",
    "DEVICES",
    "EvalResult",
    "LocalResult",
    "configure_threads",
    "evaluate",
    "evaluate_batches",
    "examples_per_round",
    "is_channels_last",
    "prepare_model",
    "proximal_term",
    "reset_optimizer",
    "resolve_device",
    "train_batches",
    "train_local",
]

#: The ``device`` names the trainer and ``--device`` accept (and any ``torch.device``).
DEVICES = ("cpu", "cuda", "mps", "auto")

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


class ProximalTerm:
    """FedProx's proximal term on a model's trainable parameters (:func:`proximal_term`)."""

    def __init__(self, model: nn.Module, mu: float):
        self.mu = float(mu)
        self._handles: list = []
        if self.mu == 0:
            return
        for p in model.parameters():
            if p.requires_grad:
                anchor = p.detach().clone()
                self._handles.append(p.register_hook(self._hook(p, anchor)))

    def _hook(self, p: torch.Tensor, anchor: torch.Tensor):
        mu = self.mu

        def add_term(grad: torch.Tensor) -> torch.Tensor:
            return grad + mu * (p.detach() - anchor)

        return add_term

    def remove(self) -> None:
        """Take the term out again (the model trains as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ProximalTerm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def proximal_term(model: nn.Module, mu: float) -> ProximalTerm:
    """Add FedProx's ``mu / 2 * ||w - w0||^2`` to every loss backpropagated through ``model``.

    ``w0`` is the trainable parameters' value now (the global model, when called right after
    loading it). Implemented as the term's gradient, ``mu * (w - w0)``, added by a hook on each
    trainable parameter: any training loop gets it, and the reported loss stays the data's.
    ``mu = 0`` installs nothing. Remove with ``.remove()`` or use it as a context manager.

    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> model = torch.nn.Module(); model.w = w
    >>> with proximal_term(model, mu=0.5):
    ...     with torch.no_grad():
    ...         _ = w.add_(2.0)  # moved 2 away from w0 = 1
    ...     (3 * w).sum().backward()
    >>> float(w.grad)  # 3 + 0.5 * 2
    4.0
    """
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be finite and >= 0, got {mu!r}")
    return ProximalTerm(model, mu)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` of ``device``: None is the CPU; ``"auto"`` is CUDA if available,
    else Apple's MPS if available, else the CPU. A device that does not exist here raises
    ValueError (rather than failing at the first batch).

    >>> resolve_device(None), resolve_device("cpu")
    (device(type='cpu'), device(type='cpu'))
    """
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }.get(resolved.type)
    if not available:
        raise ValueError(f"device {device!r} is not available on this machine")
    return resolved


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
    total_loss = torch.zeros((), dtype=torch.float64, device=images.device)
    seen = 0
    on_host = images.device.type == "cpu"
    for batch in _batches(idx, batch_size, epochs, steps, generator):
        if not on_host:  # the permutation is drawn on the CPU (reproducible everywhere)
            batch = batch.to(images.device, non_blocking=True)
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


def train_batches(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.nll_loss,
) -> LocalResult:
    """Train ``model`` in place on ``(inputs, targets)`` batches (a ``DataLoader``, say).

    The counterpart of :func:`train_local` for data that is not one in-memory tensor: each batch
    is moved to ``device`` (default: the model's) and to ``channels_last`` when the model is.
    Returns the examples processed and their mean loss (NaN if it became non-finite).

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LogSoftmax(dim=1))
    >>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> train_batches(model, opt, DataLoader(data, batch_size=4)).num_examples
    10
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    to_cl = is_channels_last(model)
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if to_cl and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().to(torch.float64) * len(y)
        seen += len(y)
    if seen == 0:
        raise ValueError("no batch to train on")
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
            total += loss_fn(out, y, reduction="sum").to(torch.float64).cpu()
            correct += int((out.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return EvalResult(correct / n, float(total) / n)


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str | None = None,
    loss_fn: Callable[..., torch.Tensor] = F.nll_loss,
) -> EvalResult:
    """Accuracy and mean loss of ``model`` on ``(inputs, targets)`` batches (a ``DataLoader``
    over a test ``Dataset``, say); :func:`evaluate` for data that is not one tensor."""
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    to_cl = is_channels_last(model)
    was_training = model.training
    model.eval()
    try:
        correct, n = 0, 0
        total = torch.zeros((), dtype=torch.float64)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if to_cl and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            total += loss_fn(out, y, reduction="sum").to(torch.float64).cpu()
            correct += int((out.argmax(dim=1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no test batch")
    return EvalResult(correct / n, float(total) / n)
