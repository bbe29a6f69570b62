"""The server side of one federated round, shared by the trainer and the Flower strategy.

:class:`~aggkit_torch.federated.FederatedTrainer` (clients in-process) and
:class:`~aggkit_torch.flower.strategy.AggkitStrategy` (clients on Flower nodes) differ only in
how a client's update reaches the server. Everything after that is this module, so the two
cannot drift apart:

- **client weights**: a client's reported example count is untrusted input. The weighting policy
  (:data:`WEIGHTINGS`) turns it into an aggregation weight: ``"capped"`` (the default) bounds it
  by what the server knows the client can have processed (:func:`~aggkit_torch.local_training.
  examples_per_round` of its partition size) or, when the server knows no size, by
  ``weight_cap`` times the round's median count; ``"num_examples"`` trusts it as is;
  ``"uniform"`` ignores it. A count that is missing, not a number, negative, zero, not finite or
  above :data:`MAX_EXAMPLES` drops the client from the round;
- **non-finite updates**: an update holding NaN or Inf is replaced by zeros and gets weight 0
  (it still counts as a client, so an unweighted, differentially private mean keeps its
  denominator);
- **a round is a transaction**: a client that fails validation is dropped and reported
  (:attr:`Round.dropped`, with its name and the reason); the rest are aggregated; the aggregator
  state, the model and the server optimizer change only if the round succeeded
  (:meth:`Round.aggregate`, then :func:`server_step`, which undoes a step that would make the
  model non-finite). A round left with no usable client changes nothing and says so;
- **weighted or unweighted**: weighted processes get one weight per row, unweighted ones none;
- **the metric keys** of a round (:meth:`Round.metrics`).

Examples
--------
>>> import numpy as np, aggkit as ak
>>> layout = ak.Layout({"w": ak.TensorSpec((2,), np.float32)})
>>> core = RoundCore(ak.mean().create(layout), weighting="capped", weight_cap=4.0)
>>> state = core.process.initialize()
>>> rnd = core.begin(3)
>>> for name, update, count in [("a", [0, 0], 10), ("b", [4, 4], 10), ("evil", [8, 8], 1e12)]:
...     rnd.next_row()[:] = update
...     _ = rnd.add(name, reported=count)
>>> outcome = rnd.aggregate(state)
>>> rnd.weights().tolist()  # the huge count is capped at 4 x the median count (10)
[10.0, 10.0, 40.0]
>>> outcome.result["w"].tolist()  # trusted as reported, it would be 8: the attacker's own
[6.0, 6.0]
>>> rnd.metrics()["capped_clients"], rnd.metrics()["dropped"]
(1, [])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

import aggkit as ak

__all__ = [
    "MAX_EXAMPLES",
    "WEIGHTINGS",
    "FedAdagrad",
    "FedYogi",
    "Outcome",
    "Round",
    "RoundCore",
    "all_finite",
    "check_weighting",
    "flatten_measurements",
    "server_step",
]

#: The weighting policies (see the module docstring); ``"capped"`` is the default.
WEIGHTINGS = ("capped", "num_examples", "uniform")

#: The largest example count accepted: beyond 2**53 a float64 count is no longer an exact integer,
#: and no real client holds that many examples. Larger (or non-finite) counts drop the client.
MAX_EXAMPLES = 2**53


def check_weighting(weighting: str, weight_cap: float) -> None:
    """ValueError unless ``weighting`` is one of :data:`WEIGHTINGS` and ``weight_cap >= 1``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"client_weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if isinstance(weight_cap, bool) or not isinstance(weight_cap, (int, float)):
        raise TypeError(f"weight_cap must be a number, got {weight_cap!r}")
    if not (math.isfinite(weight_cap) and weight_cap >= 1):
        raise ValueError(f"weight_cap must be finite and >= 1, got {weight_cap!r}")


def flatten_measurements(measurements: Any, prefix: str = "") -> dict[str, float | int]:
    """Nested aggregator measurements as ``{"zeroing/clipping_norm": value}`` for logging.

    >>> flatten_measurements({"zeroing": {"clipping_norm": 1.0}, "zeroed_count": 2})
    {'zeroing/clipping_norm': 1.0, 'zeroed_count': 2}
    """
    flat: dict[str, float | int] = {}
    if isinstance(measurements, dict):
        for key, value in measurements.items():
            flat.update(flatten_measurements(value, f"{prefix}{key}/"))
    elif isinstance(measurements, (int, float, np.integer, np.floating)):
        flat[prefix.rstrip("/")] = (
            measurements.item() if hasattr(measurements, "item") else (measurements)
        )
    return flat


def all_finite(values: np.ndarray) -> bool:
    """Whether a floating vector holds no NaN or Inf.

    A NaN or an Inf among the values makes their sum NaN or infinite, so a finite sum proves
    them finite without the boolean temporary of ``np.isfinite(values).all()``; a non-finite
    sum (a NaN or Inf, or finite values whose sum overflowed) is settled element by element.

    >>> all_finite(np.array([1.0, -2.0], np.float32)), all_finite(np.array([1.0, np.nan]))
    (True, False)
    >>> all_finite(np.array([3e38, 3e38], np.float32))  # the sum overflows; the values do not
    True
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(np.add.reduce(values)):
            return True
    return bool(np.isfinite(values).all())


def _count_problem(value: object) -> str | None:
    """Why ``value`` is not a usable example count, or None if it is."""
    if value is None:
        return "no example count"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"example count {value!r} is not a number"
    number = float(value)
    if not math.isfinite(number) or number < 0:
        return f"example count {value!r} is not a finite non-negative number"
    if number == 0:
        return "example count 0: the update would carry no weight"
    if number > MAX_EXAMPLES:
        return f"example count {value!r} exceeds {MAX_EXAMPLES} (2**53)"
    return None


class Outcome(NamedTuple):
    """What :meth:`Round.aggregate` returns.

    ``ok`` is False when nothing may be committed (``reason`` says why); ``state`` is then the
    state passed in, untouched, and ``result`` is None.
    """

    ok: bool
    state: Any
    result: dict[str, np.ndarray] | None
    measurements: dict[str, float | int]
    reason: str | None


class RoundCore:
    """The aggregator process, the weighting policy and a client-row buffer reused each round.

    Parameters
    ----------
    process : aggkit.AggregationProcess
        Weighted (given one weight per row) or unweighted (given none).
    weighting : {"capped", "num_examples", "uniform"}
        How reported example counts become weights (module docstring).
    weight_cap : float
        With ``"capped"``: a client whose trusted count the server does not know weighs at most
        ``weight_cap`` times the median reported count of the round's accepted clients.
    """

    def __init__(
        self, process: ak.AggregationProcess, *, weighting: str = "capped", weight_cap: float = 4.0
    ):
        check_weighting(weighting, weight_cap)
        self.process = process
        self.weighting = weighting
        self.weight_cap = float(weight_cap)
        self._matrix: np.ndarray | None = None

    @property
    def reads_counts(self) -> bool:
        """Whether clients must report an example count (weighted process, not uniform)."""
        return self.process.is_weighted and self.weighting != "uniform"

    def begin(self, capacity: int) -> Round:
        """A new round with room for ``capacity`` clients (the row buffer is reused)."""
        layout = self.process.layout
        if self._matrix is None or self._matrix.shape[0] < capacity:
            self._matrix = layout.empty_batch(max(capacity, 1)).matrix
        return Round(self, self._matrix[:capacity])


class Round:
    """One round's clients: rows of updates, their weights, the dropped ones and why.

    Write a client's update (``global - trained``) into :meth:`next_row`, then :meth:`add` it;
    a client that cannot be used is :meth:`drop` -ped (its row, if written, is reused). Then
    :meth:`aggregate` and, if it succeeded, commit the result.
    """

    def __init__(self, core: RoundCore, matrix: np.ndarray):
        self.core = core
        self._matrix = matrix
        self.count = 0
        self.clients: list[Any] = []
        self._reported: list[float] = []
        self._known: list[float] = []  # NaN where the server knows no count
        self._finite: list[bool] = []
        self._details: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self._weights: np.ndarray | None = None
        #: Set by the caller once the round's result is applied (model, optimizer, state).
        self.committed = False
        #: Why nothing was committed (None while nothing failed).
        self.failure: str | None = None

    def next_row(self) -> np.ndarray:
        """The row the next client's update goes into (IndexError when the round is full)."""
        if self.count >= self._matrix.shape[0]:
            raise IndexError(f"the round has room for {self._matrix.shape[0]} clients")
        return self._matrix[self.count]

    def batch(self) -> ak.ClientBatch:
        """The admitted rows as a :class:`aggkit.ClientBatch` (a view: edits reach the round)."""
        return ak.ClientBatch(self._matrix[: self.count], self.core.process.layout)

    def drop(self, client: Any, reason: str, **details: Any) -> None:
        """Leave ``client`` out of the round, recording why (:attr:`dropped`; ``details``, such
        as a Flower node id, are kept in its entry)."""
        self.dropped.append({"client": client, "reason": reason, **details})

    def count_problem(self, reported: object) -> str | None:
        """Why ``reported`` cannot weigh a client under this policy (None: usable or unread)."""
        return _count_problem(reported) if self.core.reads_counts else None

    def add(
        self,
        client: Any,
        *,
        reported: object = None,
        known: float | None = None,
        finite: bool | None = None,
        **details: Any,
    ) -> bool:
        """Admit the update written into :meth:`next_row`; returns whether it counts.

        ``reported`` is the client's own example count (ignored under ``"uniform"`` and by
        unweighted processes); ``known`` the count the server trusts for this client, if any;
        ``finite`` whether the row holds no NaN or Inf, if the caller found out while writing
        it (else the row is checked here). An unusable count drops the client (returns False,
        row reused); a non-finite update is zeroed and admitted with weight 0 (returns False).
        """
        problem = self.count_problem(reported)
        if problem is not None:
            self.drop(client, problem, **details)
            return False
        row = self._matrix[self.count]
        if finite is None:
            finite = all_finite(row)
        if not finite:
            row[:] = 0.0
        self.clients.append(client)
        self._reported.append(float(reported) if self.core.reads_counts else 1.0)  # type: ignore
        self._known.append(math.nan if known is None else float(known))
        self._finite.append(finite)
        self._details.append(details)
        self.count += 1
        self._weights = None
        return finite

    # -- weights --------------------------------------------------------------------------------

    def weights(self) -> np.ndarray:
        """The rows' aggregation weights under the policy (0 for zeroed non-finite rows)."""
        if self._weights is None:
            reported = np.asarray(self._reported, dtype=np.float64)
            finite = np.asarray(self._finite, dtype=bool)
            weights = np.where(finite, reported, 0.0)
            if self.core.weighting == "uniform":
                weights = finite.astype(np.float64)
            elif self.core.weighting == "capped" and finite.any():
                known = np.asarray(self._known, dtype=np.float64)
                median = float(np.median(reported[finite]))
                cap = np.where(np.isnan(known), self.core.weight_cap * median, known)
                weights = np.minimum(weights, cap)
            self._weights = weights
        return self._weights

    def finite_rows(self) -> np.ndarray:
        """Indices of the admitted rows whose update was finite (the others were zeroed)."""
        return np.flatnonzero(np.asarray(self._finite, dtype=bool))

    def _capped(self) -> int:
        if self.core.weighting != "capped" or not self.core.process.is_weighted:
            return 0
        finite = np.asarray(self._finite, dtype=bool)
        return int((self.weights() < np.asarray(self._reported))[finite].sum())

    # -- aggregation ----------------------------------------------------------------------------

    def aggregate(self, state: Any) -> Outcome:
        """Aggregate the admitted rows; ``state`` is never modified (a new one is returned).

        A client the process itself rejects (:class:`aggkit.InvalidUpdateError` naming its row)
        is dropped and the rest aggregated again. Nothing is committed when no admitted row is
        finite, when the process fails (an arithmetic or value error), or when the aggregate
        is not finite.
        """
        process = self.core.process
        while True:
            if not any(self._finite):
                return self._failed(state, "no usable client update")
            batch = self.batch()
            try:
                if process.is_weighted:
                    output = process.next(state, batch, self.weights())
                else:
                    output = process.next(state, batch)
            except ak.InvalidUpdateError as error:
                if error.client is None or not 0 <= error.client < self.count:
                    return self._failed(state, f"the aggregator refused the round: {error}")
                where = "" if error.path is None else f" ({error.path})"
                self._remove(error.client, f"refused by the aggregator{where}: {error.detail}")
                continue
            except (ArithmeticError, ValueError) as error:
                return self._failed(state, f"{type(error).__name__}: {error}")
            break
        if not all(_finite_leaf(v) for v in _leaves(output.result)):
            return self._failed(state, "the aggregate is not finite")
        measurements = flatten_measurements(output.measurements)
        return Outcome(True, output.state, output.result, measurements, None)

    def _failed(self, state: Any, reason: str) -> Outcome:
        self.failure = reason
        return Outcome(False, state, None, {}, reason)

    def fail(self, reason: str) -> None:
        """Record that the round's result was not committed, and why."""
        self.committed = False
        self.failure = reason

    def _remove(self, row: int, reason: str) -> None:
        """Take admitted row ``row`` out of the round (the rows after it move up)."""
        self.drop(self.clients[row], reason, **self._details[row])
        self._matrix[row : self.count - 1] = self._matrix[row + 1 : self.count]
        for values in (self.clients, self._reported, self._known, self._finite, self._details):
            del values[row]
        self.count -= 1
        self._weights = None

    # -- report ---------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """The round's keys shared by the trainer's and the strategy's history.

        ``clients`` (admitted, in row order), ``nonfinite_clients``, ``examples`` (the sum of
        the weights, None under ``"uniform"`` or for an unweighted process), ``capped_clients``,
        ``dropped`` (``[{"client", "reason"}]``), ``committed`` and, when it is False,
        ``failure``.
        """
        counts = self.core.process.is_weighted and self.core.weighting != "uniform"
        metrics: dict[str, Any] = {
            "clients": list(self.clients),
            "nonfinite_clients": self._finite.count(False),
            "examples": int(self.weights().sum()) if counts and self.count else None,
            "capped_clients": self._capped() if self.count else 0,
            "dropped": [dict(item) for item in self.dropped],
            "committed": self.committed,
        }
        if not self.committed and self.failure is not None:
            metrics["failure"] = self.failure
        return metrics


def _leaves(structure: Any) -> Iterable[Any]:
    if isinstance(structure, dict):
        for value in structure.values():
            yield from _leaves(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from _leaves(value)
    else:
        yield structure


def _finite_leaf(value: Any) -> bool:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return all_finite(array.reshape(-1))
    return bool(np.isfinite(array).all())


def _cpu_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU tensor (None for other devices or dtypes NumPy lacks).

    The server step's copies and checks go through it: NumPy does them in the calling thread,
    where torch spreads a 400,000-value copy over its thread pool, whose hand-offs cost more
    than the copy when other work holds the cores (docs/benchmarks.md, the Flower path).
    """
    if tensor.device.type != "cpu":
        return None
    try:
        return tensor.detach().numpy()
    except (RuntimeError, TypeError):
        return None


def _tensor_finite(tensor: torch.Tensor) -> bool:
    view = _cpu_numpy(tensor)
    if view is not None and view.dtype.kind == "f":
        return all_finite(view.reshape(-1))
    return bool(torch.isfinite(tensor).all())


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    view = _cpu_numpy(tensor)
    return tensor.detach().clone() if view is None else torch.from_numpy(view.copy())


def _gradient(param: torch.Tensor, value: np.ndarray) -> torch.Tensor:
    """``value`` as a fresh gradient tensor of ``param``'s shape and dtype."""
    view = _cpu_numpy(param)
    if view is not None:
        grad = np.empty(view.shape, dtype=view.dtype)
        np.copyto(grad, np.asarray(value).reshape(view.shape), casting="same_kind")
        return torch.from_numpy(grad)
    grad = torch.empty_like(param)
    grad.copy_(torch.from_numpy(np.asarray(value)))
    return grad


def server_step(
    optimizer: torch.optim.Optimizer,
    named_params: Iterable[tuple[str, torch.Tensor]],
    update: dict[str, np.ndarray],
    buffers: Iterable[tuple[str, torch.Tensor]] = (),
) -> bool:
    """One server-optimizer step with the aggregate ``update`` (``{name: array}``) as gradient.

    SGD with learning rate 1.0 is FedAvg (the update is ``global - average trained``), with
    momentum FedAvgM, Adam FedAdam; :class:`FedAdagrad` and :class:`FedYogi` are Flower's.
    ``buffers`` (BatchNorm running statistics) take the aggregate as it is, ``buffer - update``
    (the clients' average under a mean), never the optimizer's step: momentum or an adaptive
    step has no meaning for a running statistic. Each gradient and buffer is cast to its
    tensor's dtype (and copied to its device, one transfer per tensor).

    If the step would leave a parameter or buffer non-finite, the parameters, the buffers and the
    optimizer state are restored and False is returned: nothing changed.
    """
    params = list(named_params)
    new_buffers = []
    for name, buffer in buffers:
        with torch.no_grad():
            value = buffer - _gradient(buffer, update[name])
        if not _tensor_finite(value):
            return False
        new_buffers.append((buffer, value))
    saved_params = [_snapshot(p) for _, p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad(set_to_none=True)
    for name, p in params:
        if name in update:
            p.grad = _gradient(p, update[name])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if all(_tensor_finite(p) for _, p in params):
        with torch.no_grad():
            for buffer, value in new_buffers:
                buffer.copy_(value)
        return True
    with torch.no_grad():
        for (_, p), saved in zip(params, saved_params, strict=True):
            p.copy_(saved)
    optimizer.load_state_dict(saved_state)
    return False


class _FedOpt(torch.optim.Optimizer):
    """Flower's adaptive server optimizers (``flwr.serverapp.strategy.FedOpt``), as torch
    optimizers whose gradient is the round's update ``g = global - aggregate``.

    Flower's pseudo-gradient is ``delta = aggregate - global = -g``; per parameter, with ``m``
    and ``v`` starting at zero and no bias correction (as in Flower)::

        m = beta1 * m + (1 - beta1) * delta
        v = v + delta**2                                          (FedAdagrad)
        v = v - (1 - beta2) * delta**2 * sign(v - delta**2)       (FedYogi)
        w = w + lr * m / (sqrt(v) + tau)
    """

    _rule = ""

    def __init__(self, params, lr: float, beta1: float, beta2: float, tau: float):
        for name, value, low, high in (
            ("lr", lr, 0.0, math.inf),
            ("beta1", beta1, 0.0, 1.0),
            ("beta2", beta2, 0.0, 1.0),
            ("tau", tau, 0.0, math.inf),
        ):
            if not (low <= value < high) or (name in ("lr", "tau") and value == 0):
                raise ValueError(f"{type(self).__name__}: {name} out of range: {value!r}")
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "tau": tau})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            raise ValueError(f"{type(self).__name__} takes no closure")
        for group in self.param_groups:
            lr, beta1, beta2, tau = group["lr"], group["beta1"], group["beta2"], group["tau"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                delta = -p.grad
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(delta, alpha=1 - beta1)
                square = delta * delta
                if self._rule == "adagrad":
                    v.add_(square)
                else:
                    v.sub_((1 - beta2) * square * torch.sign(v - square))
                p.add_(lr * m / (v.sqrt() + tau))


class FedAdagrad(_FedOpt):
    """Flower's FedAdagrad (Reddi et al. 2021) with Flower's defaults: ``lr`` (Flower's
    ``eta``) 0.1, ``tau`` 1e-3, ``beta1`` 0 (Flower fixes it: ``m`` is the last update).

    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = FedAdagrad([w])
    >>> w.grad = torch.tensor([-0.5])  # the clients moved +0.5: delta = 0.5
    >>> opt.step()
    >>> round(float(w), 6)  # 1 + 0.1 * 0.5 / (sqrt(0.25) + 1e-3)
    1.0998
    """

    _rule = "adagrad"

    def __init__(self, params, lr: float = 0.1, tau: float = 1e-3, beta1: float = 0.0):
        super().__init__(params, lr=lr, beta1=beta1, beta2=0.0, tau=tau)


class FedYogi(_FedOpt):
    """Flower's FedYogi (Reddi et al. 2021) with Flower's defaults: ``lr`` (``eta``) 0.01,
    ``beta1`` 0.9, ``beta2`` 0.99, ``tau`` 1e-3.

    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = FedYogi([w])
    >>> w.grad = torch.tensor([-0.5])  # delta 0.5: m = 0.05, v = 0.01 * 0.25
    >>> opt.step()
    >>> round(float(w), 6)  # 1 + 0.01 * 0.05 / (0.05 + 1e-3)
    1.009804
    """

    _rule = "yogi"

    def __init__(
        self, params, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, tau=tau)
