"""The privacy a federated run has spent, for the client sampling it really did.

A :class:`RunAccountant` follows a run round by round. After each round it reads, from the
aggregator's new state, what that round released (:func:`aggkit.dp.extract_dp_event`: the
Gaussian noise of every DP layer, whatever the composition), wraps it in the run's client
sampling (:func:`aggkit.privacy.sampled_event`: Poisson, or a fixed number of clients without
replacement) and composes the rounds so far into one (epsilon, delta) guarantee with
dp-accounting. The number is therefore always computed for the scheme the trainer or strategy
ran, never assumed from the aggregator's arguments.

An aggregator that reports a running epsilon of its own (``population=`` given to
``ak.gaussian_fixed`` and the like) states the scheme it assumed; when that is not the run's, the
round is refused with :class:`aggkit.privacy.SamplingMismatchError` before anything is applied.

Aggregators without DP release nothing this accountant can describe: their rounds carry no
epsilon (``record`` returns None).

Tree aggregation (DP-FTRL, :func:`aggkit.tree_aggregation`) is accounted differently: its state
describes the whole run so far (one ``SingleEpochTreeAggregationDpEvent`` per tree), and that
event holds only if **each client takes part in at most one round per tree**. Random sampling
(Poisson or fixed-size) cannot promise that, so a tree aggregator is refused under them
(:class:`~aggkit.privacy.SamplingMismatchError`); it needs ``"epochs"`` sampling, where every
client joins exactly one round per epoch, with the tree restarting at every epoch boundary
(``restart_rounds`` dividing the rounds per epoch, or a run no longer than one epoch). No
amplification is claimed for ``"epochs"``: a Gaussian aggregator under it is accounted as
unsampled Gaussian rounds (valid, but far larger than the tree's epsilon).

Example
-------
>>> import numpy as np, aggkit as ak
>>> from aggkit_torch.accounting import RunAccountant
>>> process = ak.gaussian_fixed(1.0, 100, clip=0.1, seed=0).create(ak.TensorSpec((4,), np.float32))
>>> accountant = RunAccountant("poisson", clients_per_round=100, population=1000, delta=1e-5)
>>> state = process.initialize()
>>> for _ in range(5):
...     out = process.next(state, [np.ones(4, np.float32)] * 97)
...     state = out.state
...     spent = accountant.record(out.state, out.measurements)
>>> round(spent["epsilon"], 2), spent["delta"], spent["sampling"], accountant.rounds
(2.9, 1e-05, 'poisson', 5)
"""

from __future__ import annotations

import numbers
from typing import Any

from aggkit import privacy

__all__ = ["SAMPLINGS", "RunAccountant", "tree_lengths"]

#: The delta of the reported epsilon unless one is given.
DEFAULT_DELTA = 1e-5

#: The client-sampling schemes a run can be accounted for: :data:`aggkit.privacy.SAMPLINGS`
#: and ``"epochs"`` (every client once per epoch, in an order drawn per epoch: DP-FTRL's).
SAMPLINGS = (*privacy.SAMPLINGS, "epochs")


def _event_to_data(event: Any) -> dict[str, Any]:
    """A round's DP event as plain data (floats, ints, lists) for a checkpoint that runs no code.

    Only what a DP aggregator's round releases is needed: Gaussians and their compositions.
    """
    import dp_accounting as dpa

    if isinstance(event, dpa.GaussianDpEvent):
        return {"gaussian": float(event.noise_multiplier)}
    if isinstance(event, dpa.SingleEpochTreeAggregationDpEvent):
        return {"tree": float(event.noise_multiplier), "steps": int(event.step_counts)}
    if isinstance(event, dpa.ComposedDpEvent):
        return {"composed": [_event_to_data(e) for e in event.events]}
    if isinstance(event, dpa.SelfComposedDpEvent):
        return {"self_composed": _event_to_data(event.event), "count": int(event.count)}
    raise ValueError(f"cannot checkpoint the DP event {event!r}")


def _event_from_data(data: Any) -> Any:
    """The inverse of :func:`_event_to_data`; anything else is refused."""
    import dp_accounting as dpa

    if isinstance(data, dict) and set(data) == {"gaussian"}:
        return dpa.GaussianDpEvent(float(data["gaussian"]))
    if isinstance(data, dict) and set(data) == {"tree", "steps"}:
        return dpa.SingleEpochTreeAggregationDpEvent(float(data["tree"]), int(data["steps"]))
    if isinstance(data, dict) and set(data) == {"composed"}:
        return dpa.ComposedDpEvent([_event_from_data(e) for e in data["composed"]])
    if isinstance(data, dict) and set(data) == {"self_composed", "count"}:
        return dpa.SelfComposedDpEvent(_event_from_data(data["self_composed"]), int(data["count"]))
    raise ValueError(f"not a checkpointed DP event: {data!r}")


def _unsupported(event: Any) -> bool:
    """Whether ``event`` holds a release dp-accounting cannot evaluate."""
    import dp_accounting as dpa

    if isinstance(event, dpa.UnsupportedDpEvent):
        return True
    if isinstance(event, dpa.ComposedDpEvent):
        return any(_unsupported(e) for e in event.events)
    inner = getattr(event, "event", None)
    return isinstance(inner, dpa.DpEvent) and _unsupported(inner)


def _reported_privacy(measurements: Any) -> dict | None:
    """The first ``{"epsilon", "delta", ...}`` privacy entry of ``measurements``, nested
    (``{"privacy": {...}}``) or flattened (``"privacy/epsilon"``, ``".../privacy/delta"``)."""
    if isinstance(measurements, dict):
        entry = measurements.get("privacy")
        if isinstance(entry, dict) and "epsilon" in entry and "delta" in entry:
            return entry
        for key in measurements:
            if isinstance(key, str) and (
                key == "privacy/epsilon" or key.endswith("/privacy/epsilon")
            ):
                prefix = key[: -len("epsilon")]
                if prefix + "delta" in measurements:
                    return {
                        "epsilon": measurements[key],
                        "delta": measurements[prefix + "delta"],
                    }
        for value in measurements.values():
            found = _reported_privacy(value)
            if found is not None:
                return found
    return None


def tree_lengths(event: Any) -> list[int] | None:
    """The rounds of each tree of a tree-aggregation run's event, in order; None for an event
    without tree aggregation.

    >>> import aggkit as ak
    >>> from aggkit.tree import tree_dp_event
    >>> tree_lengths(tree_dp_event(1.0, 10, restart_rounds=4))
    [4, 4, 2]
    >>> tree_lengths(ak.privacy.gaussian_event(1.0)) is None
    True
    """
    import dp_accounting as dpa

    if isinstance(event, dpa.SingleEpochTreeAggregationDpEvent):
        steps = event.step_counts
        return [int(steps)] if isinstance(steps, numbers.Integral) else [int(n) for n in steps]
    if isinstance(event, dpa.SelfComposedDpEvent):
        inner = tree_lengths(event.event)
        return None if inner is None else inner * int(event.count)
    if isinstance(event, dpa.ComposedDpEvent):
        parts = [tree_lengths(e) for e in event.events]
        if all(p is None for p in parts):
            return None
        if any(p is None for p in parts):
            raise ValueError(f"an event mixing tree aggregation and other releases: {event!r}")
        return [n for p in parts for n in p]
    return None


def _accounted_schemes(measurements: Any) -> list[str]:
    """The sampling scheme of every running epsilon an aggregator reported, at any depth.

    Nested measurements carry ``{"privacy": {"epsilon", ..., "sampling"}}``; flattened ones
    (``"zeroing/privacy/epsilon"``) lose the string, and then the scheme is aggkit.dp's, the only
    one its running epsilon is computed for: ``"poisson"``.
    """
    found: list[str] = []
    if isinstance(measurements, dict):
        entry = measurements.get("privacy")
        if isinstance(entry, dict):
            found.append(entry.get("sampling", "poisson"))
        for key, value in measurements.items():
            if isinstance(key, str) and (
                key == "privacy/epsilon" or key.endswith("/privacy/epsilon")
            ):
                found.append("poisson")
            found.extend(_accounted_schemes(value))
    return found


class RunAccountant:
    """Composes a run's DP rounds, each under the sampling the run used.

    Parameters
    ----------
    sampling : {"poisson", "fixed_size"}
        How the run draws each round's clients (:data:`aggkit.privacy.SAMPLINGS`).
    clients_per_round : int or float
        The expected (Poisson) or exact (fixed-size) number of clients per round.
    population : int or None
        The number of clients sampled from. None when it is not known (e.g. Flower nodes drawn
        from whoever is connected): no amplification by sampling is then claimed, each round
        counts as a Gaussian mechanism on the whole population (a valid, larger epsilon).
    delta : float
        The delta of the reported epsilon (default 1e-5; keep it below ``1 / population``).
    rounds_per_epoch : int or None
        With ``sampling="epochs"``: the rounds of one epoch (every client joins one of them).
        A tree aggregator's trees must not straddle an epoch boundary.

    Attributes
    ----------
    rounds : int
        DP rounds recorded so far.
    """

    def __init__(
        self,
        sampling: str,
        *,
        clients_per_round: float,
        population: int | None,
        delta: float = DEFAULT_DELTA,
        rounds_per_epoch: int | None = None,
    ) -> None:
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
            raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
        if sampling == "epochs":
            if (
                isinstance(rounds_per_epoch, bool)
                or not isinstance(rounds_per_epoch, numbers.Integral)
                or rounds_per_epoch < 1
            ):
                raise ValueError(
                    f"epochs sampling needs rounds_per_epoch, a positive int; got "
                    f"{rounds_per_epoch!r}"
                )
            rounds_per_epoch = int(rounds_per_epoch)
        else:
            # Validates the sizes for the scheme (whole numbers for fixed_size, population >=
            # count).
            privacy.round_event(
                1.0, clients_per_round=clients_per_round, population=population, sampling=sampling
            )
        self.sampling = sampling
        self.clients_per_round = clients_per_round
        self.population = population
        self.delta = float(delta)
        self.rounds_per_epoch = rounds_per_epoch
        self._released: list[Any] = []  # each round's DP event, before sampling
        # Tree aggregation: each run of the tree's state (one entry per state the rounds
        # continued; a round replayed from an older state starts a new entry, both released).
        self._trees: list[Any] = []
        self._tree_rounds = 0
        # An aggregator that accounts for itself (distributed Skellam): its last running epsilon.
        self._reported: float | None = None
        self._reported_rounds = 0

    @property
    def rounds(self) -> int:
        return len(self._released) + self._tree_rounds + self._reported_rounds

    def _record_reported(self, event: Any, measurements: Any) -> None:
        """A round whose release dp-accounting cannot express (distributed Skellam): the epsilon
        the aggregator reports for the whole run so far, when it is for the run's sampling and
        delta and nothing else was recorded."""
        reported = _reported_privacy(measurements)
        if reported is None or self._released or self._trees:
            raise ValueError(
                f"the aggregator released {event!r}, which dp-accounting cannot evaluate; it must "
                "report its own running epsilon (give it population=) and be the run's only DP "
                "release"
            )
        if self.sampling != "poisson" or float(reported["delta"]) != self.delta:
            raise privacy.SamplingMismatchError(
                f"the aggregator's epsilon is for poisson sampling at delta {reported['delta']}; "
                f"this run samples {self.sampling!r} and reports delta {self.delta}"
            )
        self._reported = float(reported["epsilon"])
        self._reported_rounds += 1

    def _record_tree(self, event: Any, lengths: list[int]) -> None:
        """Account for a tree-aggregation state's run ``event`` (trees of ``lengths`` rounds)."""
        if self.sampling != "epochs":
            raise privacy.SamplingMismatchError(
                f"tree aggregation's guarantee needs each client in at most one round per tree; "
                f"{self.sampling!r} sampling may draw a client into several rounds of one tree: "
                "sample with 'epochs' (every client once per epoch) and restart the tree at every "
                "epoch"
            )
        total = sum(lengths)
        boundaries, at = set(), 0
        for n in lengths:
            at += n
            boundaries.add(at)
        epoch = self.rounds_per_epoch
        straddled = [b for b in range(epoch, total, epoch) if b not in boundaries]
        if straddled:
            raise privacy.SamplingMismatchError(
                f"a tree of the aggregator spans the epoch boundary after round {straddled[0]} "
                f"(epochs of {epoch} rounds; trees of {lengths} rounds): a client may join two "
                f"rounds of one tree; set restart_rounds to a divisor of {epoch}"
            )
        previous = tree_lengths(self._trees[-1]) if self._trees else None
        if previous is not None and sum(previous) == total - 1:
            self._trees[-1] = event  # the run continued: the new event covers the old one
        else:
            self._trees.append(event)
        self._tree_rounds += 1

    def check(self, measurements: Any) -> None:
        """Raise :class:`~aggkit.privacy.SamplingMismatchError` when ``measurements`` carry an
        epsilon accounted for another sampling scheme than the run's."""
        for scheme in _accounted_schemes(measurements):
            if self.sampling == "epochs":
                raise privacy.SamplingMismatchError(
                    f"an epsilon accounted for {scheme!r} sampling is no guarantee for a run that "
                    "used 'epochs' sampling"
                )
            privacy.check_sampling(scheme, self.sampling)

    def record(self, state: Any, measurements: Any = None) -> dict[str, Any] | None:
        """Account for the round that produced aggregator ``state``; the run's guarantee so far.

        Returns ``{"epsilon", "delta", "sampling", "dp_rounds"}``, or None when the aggregator
        has no DP layer (then nothing is recorded). Call :meth:`check` on the round's
        measurements first to refuse a mismatched aggregator before the round is applied.
        """
        from aggkit.dp import extract_dp_event

        if measurements is not None:
            self.check(measurements)
        try:
            event = extract_dp_event(state)
        except ValueError:  # no DP layer in the aggregator: no privacy to account for
            return None
        if _unsupported(event):
            self._record_reported(event, measurements)
            return self.spent()
        lengths = tree_lengths(event)
        if lengths is not None:
            self._record_tree(event, lengths)
        else:
            self._released.append(event)
        return self.spent()

    def epsilon(self) -> float:
        """The epsilon, at :attr:`delta`, of all recorded rounds (0.0 before any)."""
        if self._reported is not None:
            return self._reported
        if not self._released and not self._trees:
            return 0.0
        unsampled = self.sampling == "epochs"  # no amplification claimed
        rounds = [
            privacy.sampled_event(
                event,
                clients_per_round=self.clients_per_round,
                population=None if unsampled else self.population,
                sampling="poisson" if unsampled else self.sampling,
            )
            for event in self._released
        ]
        return privacy.epsilon_of_event(privacy.composed_event(self._trees + rounds), self.delta)

    def spent(self) -> dict[str, Any]:
        """``{"epsilon", "delta", "sampling", "dp_rounds"}`` of the recorded rounds."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "sampling": self.sampling,
            "dp_rounds": self.rounds,
        }

    def state_dict(self) -> dict[str, Any]:
        """The recorded rounds as plain data (no pickled objects), for a checkpoint."""
        return {
            "sampling": self.sampling,
            "delta": self.delta,
            "released": [_event_to_data(event) for event in self._released],
            "trees": [_event_to_data(event) for event in self._trees],
            "tree_rounds": self._tree_rounds,
            "reported": self._reported,
            "reported_rounds": self._reported_rounds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same sampling and delta as this accountant's)."""
        if state["sampling"] != self.sampling or state["delta"] != self.delta:
            raise ValueError(
                f"the checkpoint accounted for {state['sampling']!r} sampling at delta "
                f"{state['delta']}; this run uses {self.sampling!r} at {self.delta}"
            )
        self._released = [_event_from_data(data) for data in state["released"]]
        self._trees = [_event_from_data(data) for data in state.get("trees", [])]
        self._tree_rounds = int(state.get("tree_rounds", 0))
        reported = state.get("reported")
        self._reported = None if reported is None else float(reported)
        self._reported_rounds = int(state.get("reported_rounds", 0))
