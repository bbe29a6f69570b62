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

__all__ = ["RunAccountant"]

#: The delta of the reported epsilon unless one is given.
DEFAULT_DELTA = 1e-5


def _event_to_data(event: Any) -> dict[str, Any]:
    """A round's DP event as plain data (floats, ints, lists) for a checkpoint that runs no code.

    Only what a DP aggregator's round releases is needed: Gaussians and their compositions.
    """
    import dp_accounting as dpa

    if isinstance(event, dpa.GaussianDpEvent):
        return {"gaussian": float(event.noise_multiplier)}
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
    if isinstance(data, dict) and set(data) == {"composed"}:
        return dpa.ComposedDpEvent([_event_from_data(e) for e in data["composed"]])
    if isinstance(data, dict) and set(data) == {"self_composed", "count"}:
        return dpa.SelfComposedDpEvent(_event_from_data(data["self_composed"]), int(data["count"]))
    raise ValueError(f"not a checkpointed DP event: {data!r}")


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
    ) -> None:
        if sampling not in privacy.SAMPLINGS:
            raise ValueError(f"sampling must be one of {privacy.SAMPLINGS}, got {sampling!r}")
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
            raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
        # Validates the sizes for the scheme (whole numbers for fixed_size, population >= count).
        privacy.round_event(
            1.0, clients_per_round=clients_per_round, population=population, sampling=sampling
        )
        self.sampling = sampling
        self.clients_per_round = clients_per_round
        self.population = population
        self.delta = float(delta)
        self._released: list[Any] = []  # each round's DP event, before sampling

    @property
    def rounds(self) -> int:
        return len(self._released)

    def check(self, measurements: Any) -> None:
        """Raise :class:`~aggkit.privacy.SamplingMismatchError` when ``measurements`` carry an
        epsilon accounted for another sampling scheme than the run's."""
        for scheme in _accounted_schemes(measurements):
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
        self._released.append(event)
        return self.spent()

    def epsilon(self) -> float:
        """The epsilon, at :attr:`delta`, of all recorded rounds (0.0 before any)."""
        if not self._released:
            return 0.0
        rounds = [
            privacy.sampled_event(
                event,
                clients_per_round=self.clients_per_round,
                population=self.population,
                sampling=self.sampling,
            )
            for event in self._released
        ]
        return privacy.epsilon_of_event(privacy.composed_event(rounds), self.delta)

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (same sampling and delta as this accountant's)."""
        if state["sampling"] != self.sampling or state["delta"] != self.delta:
            raise ValueError(
                f"the checkpoint accounted for {state['sampling']!r} sampling at delta "
                f"{state['delta']}; this run uses {self.sampling!r} at {self.delta}"
            )
        self._released = [_event_from_data(data) for data in state["released"]]
