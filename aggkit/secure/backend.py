"""A summation backend that runs the pairwise-masking protocol behind every secure channel.

:class:`MaskingBackend` is a :class:`aggkit.channels.SumBackend` with ``fused = False``: every
sum an aggregator takes on a secure channel (``ak.secure_sum``'s values and counts, the weights of
a secure mean, the zeroed and clipped counts, the quantile estimators' records) reaches it as a
``[K, m]`` integer matrix, and it computes the sum by running a whole SecAgg / SecAgg+ round over
``K`` simulated clients (:func:`aggkit.secure.simulation.simulate_round`: real X25519, AES-GCM,
Shamir shares, AES-CTR masks, every message through bytes). The server side sees only masked
vectors; the result is the protocol's unmasked sum.

Without dropouts the results are bit-identical to the default in-process backend: a ``b``-bit
sum over ``K`` clients runs modulo ``2**(b + ceil(log2 K))``, which its exact sum never reaches
(:mod:`aggkit.channels`), and a modular sum runs modulo its own modulus; results come back as
``int64``, the channels' dtype. The protocol works modulo 2 to ``2**64`` (modulus 1 needs no
round: the sums are zeros). A bit-width sum never needs more: ``b + ceil(log2 K) > 64`` would
mean ``K * (2**b - 1) >= 2**63``, which the channel refuses first (its exact int64 sum could
overflow). A direct :meth:`MaskingBackend.modular_sum` call with a modulus above ``2**64`` gets a
``ValueError`` saying so.

Rounds. One ``process.next`` makes several channel sums (about 14 for ``ak.secure_aggregator()``),
each its own protocol run with fresh keys. Open a round around it, so that the backend knows
which sums belong together::

    backend = MaskingBackend(seed=0)
    with backend.round(dropouts={"masked_input": [3]}) as report:
        out = process.next(state, values, weights)
    report.included, report.bytes_to_server, report.seconds

or, equivalently, ``out = backend.run(process, state, values, weights, dropouts=...)``.
``round()`` also installs the backend (:func:`aggkit.channels.using_backend`). A sum outside any
round is a round of its own (allowed only when the backend has no dropouts).

Dropouts. ``dropouts`` maps a protocol stage (``"advertise_keys"``, ``"share_keys"``,
``"masked_input"``, ``"consistency_check"``, ``"unmask"``) to the clients that vanish at it: client
indices (rows of the round's values, i.e. positions in ``values``), or a fraction of the round's
``K`` clients drawn once per round (stages in order, each from the clients not already gone). Within
a round the same clients vanish at the same stages of *every* sum, over the same masking graph
(drawn once per round), so every sum covers the same clients: the protocol's survivors
``report.included`` (the clients that sent their masked inputs; SecAgg+ may also prune a client
whose neighbourhood lost too many members before masking). The backend checks this and raises
``RuntimeError`` otherwise. The aggregator then computes exactly what it would compute had only the
survivors taken part: ``ak.secure_aggregator()`` returns ``sum_{i in S} w_i x_i / sum_{i in S} w_i``
(weighted) or the mean over ``S`` (unweighted), its counts count ``S``, and its quantile estimates
see ``S``'s records only. A client dropping at ``"consistency_check"`` or ``"unmask"`` has already
sent its masked input: it is in the sum (its neighbours' shares unmask it). The backend runs the
honest-but-curious mode, which has no consistency round: a client dropping at
``"consistency_check"`` vanishes before answering the unmask request (the same sum, recorded at
``"unmask"``), as in :func:`~aggkit.secure.simulation.simulate_round`.

If too few clients are left, the protocol raises :class:`~aggkit.secure.errors.ProtocolAbort`
out of ``process.next``; the server has learnt nothing, the report records the stage
(``report.aborted``), and the aggregator's state is untouched (``next`` is pure): run the round
again with the same state.

Costs. :attr:`MaskingBackend.reports` keeps a :class:`RoundReport` per round (the last
``history`` rounds), each with one :class:`SumReport` per channel sum: modulus, shape, survivors,
dropped and pruned clients, wire bytes per direction and per stage, client and server CPU seconds.

Examples
--------
>>> import numpy as np, aggkit as ak
>>> from aggkit.secure.backend import MaskingBackend
>>> process = ak.secure_aggregator().create(ak.TensorSpec((3,), np.float32))
>>> values = [np.full(3, v, np.float32) for v in (0.1, 0.2, 0.3, 0.4)]
>>> backend = MaskingBackend(seed=0)
>>> out = backend.run(process, process.initialize(), values, [1.0, 1.0, 1.0, 1.0])
>>> inprocess = process.next(process.initialize(), values, [1.0, 1.0, 1.0, 1.0])
>>> np.array_equal(out.result, inprocess.result)
True
>>> report = backend.last_report
>>> len(report.sums), report.included, report.bytes_to_server > 0
(14, (0, 1, 2, 3), True)
>>> out = backend.run(
...     process, process.initialize(), values, [1.0, 1.0, 1.0, 1.0],
...     dropouts={"masked_input": [3]},
... )
>>> backend.last_report.included, round(float(out.result[0]), 4)  # mean of 0.1, 0.2, 0.3
((0, 1, 2), 0.2)
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggkit import _checks, channels
from aggkit.kernels.limits import INT64_MAX, UINT64_LIMIT
from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.errors import ProtocolAbort
from aggkit.secure.graph import complete_graph, harary_graph
from aggkit.secure.messages import STAGES
from aggkit.secure.simulation import StageCost, simulate_round

__all__ = ["MAX_PROTOCOL_MODULUS", "MaskingBackend", "RoundReport", "SumReport"]

#: The largest modulus the protocol works with (``uint64`` words).
MAX_PROTOCOL_MODULUS = UINT64_LIMIT

Dropouts = Mapping[str, Collection[int] | float]


@dataclass(frozen=True)
class SumReport:
    """One channel sum, i.e. one protocol run.

    Attributes
    ----------
    modulus : int
        The modulus of the run.
    clients : int
        ``K``, the clients (rows) asked.
    length : int
        ``m``, values per client.
    threshold : int
        The Shamir threshold used.
    included : tuple of int
        The clients whose inputs are in the sum.
    dropped, pruned : dict of str to tuple of int
        Clients that vanished at each stage, and that the server left out after it (SecAgg+).
    costs : dict of str to StageCost
        Per-stage messages, wire bytes and CPU seconds
        (:class:`~aggkit.secure.simulation.StageCost`).
    seconds : float
        Wall time of the whole run (all clients and the server, one after the other).
    """

    modulus: int
    clients: int
    length: int
    threshold: int
    included: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    pruned: dict[str, tuple[int, ...]]
    costs: dict[str, StageCost]
    seconds: float

    @property
    def bytes_to_server(self) -> int:
        """Wire bytes from all clients to the server."""
        return sum(c.bytes_to_server for c in self.costs.values())

    @property
    def bytes_to_clients(self) -> int:
        """Wire bytes from the server to all clients."""
        return sum(c.bytes_to_clients for c in self.costs.values())

    @property
    def client_seconds(self) -> float:
        """CPU time of all clients over all stages."""
        return sum(c.client_seconds for c in self.costs.values())

    @property
    def server_seconds(self) -> float:
        """Server time over all stages."""
        return sum(c.server_seconds for c in self.costs.values())


@dataclass
class RoundReport:
    """Every protocol run of one round (one ``process.next``), filled in as the sums happen.

    Attributes
    ----------
    index : int
        The backend's round counter (0 for its first round).
    clients : int or None
        ``K``; None until the first sum.
    dropouts : dict of str to tuple of int or None
        The clients that vanish at each stage in this round (fractions resolved); None until the
        first sum.
    graph : dict of int to frozenset of int or None
        The masking graph of the round; None until the first sum.
    sums : list of SumReport
        One per channel sum, in order.
    aborted : str or None
        The stage at which the protocol aborted the round, if it did.
    """

    index: int
    clients: int | None = None
    dropouts: dict[str, tuple[int, ...]] | None = None
    graph: dict[int, frozenset[int]] | None = field(default=None, repr=False)
    sums: list[SumReport] = field(default_factory=list)
    aborted: str | None = None

    @property
    def included(self) -> tuple[int, ...] | None:
        """The clients in every sum of the round (None before the first completed sum)."""
        return self.sums[0].included if self.sums else None

    @property
    def dropped(self) -> dict[str, tuple[int, ...]]:
        """Clients that vanished at each stage (the same in every sum)."""
        return dict(self.sums[0].dropped) if self.sums else {}

    @property
    def pruned(self) -> dict[str, tuple[int, ...]]:
        """Clients the server left out at each stage (the same in every sum)."""
        return dict(self.sums[0].pruned) if self.sums else {}

    @property
    def bytes_to_server(self) -> int:
        """Wire bytes from the clients to the server, over every sum of the round."""
        return sum(s.bytes_to_server for s in self.sums)

    @property
    def bytes_to_clients(self) -> int:
        """Wire bytes from the server to the clients, over every sum of the round."""
        return sum(s.bytes_to_clients for s in self.sums)

    @property
    def client_seconds(self) -> float:
        """CPU time of all clients, over every sum."""
        return sum(s.client_seconds for s in self.sums)

    @property
    def server_seconds(self) -> float:
        """Server time, over every sum."""
        return sum(s.server_seconds for s in self.sums)

    @property
    def seconds(self) -> float:
        """Wall time of every protocol run of the round."""
        return sum(s.seconds for s in self.sums)


class MaskingBackend(channels.SumBackend):
    """Runs the secure aggregation protocol in-process for every secure channel sum.

    See the module docstring for rounds, dropouts and reports.

    Parameters
    ----------
    graph : {"secagg+", "secagg"}
        SecAgg+ (a Harary graph of ``degree`` neighbours over a random permutation, drawn once
        per round) or SecAgg (the complete graph).
    degree : int, optional
        Neighbours per client for ``"secagg+"``; ``2 * ceil(log2 K)`` by default.
    threshold : int or float, optional
        Shares needed to reconstruct a client's secrets; a float in ``(0, 1]`` is a fraction of
        the smallest closed neighbourhood. Default: a majority of it.
    seed : int, optional
        Makes every round reproducible (graphs, keys, fractional dropouts), the ``r``-th round of
        a backend depending on ``(seed, r)`` only. Simulation only: without a seed every secret
        comes from ``os.urandom``. Every sum uses its own keys either way.
    dropouts : mapping, optional
        The dropouts of every round (``{stage: client indices or fraction}``);
        :meth:`round` can override them for one round.
    history : int
        How many :class:`RoundReport` to keep in :attr:`reports`.

    Attributes
    ----------
    reports : collections.deque of RoundReport
        The last ``history`` rounds, oldest first.

    Raises
    ------
    ValueError, TypeError
        A parameter out of range or of the wrong kind (the message names it).
    """

    fused = False

    def __init__(
        self,
        graph: str = "secagg+",
        degree: int | None = None,
        threshold: int | float | None = None,
        seed: int | None = None,
        dropouts: Dropouts | None = None,
        *,
        history: int = 100,
    ):
        if not isinstance(graph, str):
            raise TypeError(f"graph must be 'secagg+' or 'secagg', got {graph!r}")
        if graph not in ("secagg+", "secagg"):
            raise ValueError(f"graph must be 'secagg+' or 'secagg', got {graph!r}")
        if degree is not None:
            degree = _checks.integer(degree, "degree", low=0)
        threshold = _checks.sharing_threshold(threshold)
        seed = _checks.seed(seed)
        history = _checks.integer(history, "history", low=1)
        self.graph = graph
        self.degree = degree
        self.threshold = threshold
        self.seed = seed
        self.dropouts = _checks.dropouts(dropouts, STAGES)
        self.reports: deque[RoundReport] = deque(maxlen=history)
        self._rounds = 0
        self._open: RoundReport | None = None
        self._open_plan: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"MaskingBackend(graph={self.graph!r}, degree={self.degree!r}, "
            f"threshold={self.threshold!r}, seed={self.seed!r}, dropouts={self.dropouts!r})"
        )

    @property
    def last_report(self) -> RoundReport | None:
        """The most recent round's report (None before the first round)."""
        return self.reports[-1] if self.reports else None

    # -- rounds ----------------------------------------------------------------------------------

    @contextmanager
    def round(self, dropouts: Dropouts | None = None) -> Iterator[RoundReport]:
        """Treat every secure sum inside the ``with`` block as part of one round.

        Installs this backend for the block (:func:`aggkit.channels.using_backend`) and yields
        the round's :class:`RoundReport`, filled in as the sums happen.

        Parameters
        ----------
        dropouts : mapping, optional
            This round's dropouts; the backend's own when None, none with ``{}``.

        Raises
        ------
        RuntimeError
            A round of this backend is already open.
        """
        if self._open is not None:
            raise RuntimeError("a round of this backend is already open; rounds do not nest")
        plan = self.dropouts if dropouts is None else _checks.dropouts(dropouts, STAGES)
        report = self._new_round()
        self._open, self._open_plan = report, plan
        try:
            with channels.using_backend(self):
                yield report
        finally:
            self._open, self._open_plan = None, {}

    def run(
        self,
        process: Any,
        state: Any,
        values: Any,
        weights: Any = None,
        *,
        dropouts: Dropouts | None = None,
    ) -> Any:
        """``process.next(state, values, weights)`` as one round of this backend.

        The round's report is then :attr:`last_report`.
        """
        with self.round(dropouts=dropouts):
            if weights is None:
                return process.next(state, values)
            return process.next(state, values, weights)

    def _new_round(self) -> RoundReport:
        report = RoundReport(index=self._rounds)
        self._rounds += 1
        self.reports.append(report)
        return report

    # -- the sums --------------------------------------------------------------------------------

    def modular_sum(self, inputs: np.ndarray, modulus: int) -> np.ndarray:
        """``sum_i inputs[i] mod modulus`` over the round's surviving clients, by the protocol.

        Parameters
        ----------
        inputs : numpy.ndarray
            ``[K, m]`` integers in ``[0, modulus)``, one row per client of the round.
        modulus : int
            ``1 <= modulus <= 2**64``.

        Returns
        -------
        numpy.ndarray
            ``int64[m]`` (``uint64`` only for moduli above ``2**63`` whose sums do not fit int64).

        Raises
        ------
        ValueError
            A modulus the protocol cannot handle, or dropouts naming clients the round lacks.
        ProtocolAbort
            Too few clients were left to finish the round.
        RuntimeError
            Dropouts configured but no round open; or sums of one round over different clients.
        """
        x = np.asarray(inputs)
        if x.ndim != 2:
            raise ValueError(f"inputs must be a [K, m] matrix, got shape {x.shape}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"inputs must be integers, got {x.dtype}")
        if isinstance(modulus, bool) or not isinstance(modulus, int | np.integer):
            raise TypeError(f"modulus must be an int, got {modulus!r}")
        modulus = int(modulus)
        if not 1 <= modulus <= MAX_PROTOCOL_MODULUS:
            raise ValueError(_modulus_message(modulus, len(x)))
        if modulus == 1:  # every sum is 0: nothing to protect, no round
            return np.zeros(x.shape[1], np.int64)
        report = self._open
        plan = self._open_plan
        if report is None:
            if self.dropouts:
                raise RuntimeError(
                    "a MaskingBackend with dropouts needs a round, so that every sum of the "
                    "round drops the same clients: wrap process.next in `with backend.round():` "
                    "or call backend.run(process, ...)"
                )
            report, plan = self._new_round(), {}
        self._prepare(report, plan, len(x))
        seed = (
            None if self.seed is None else _derive(self.seed, "sum", report.index, len(report.sums))
        )
        start = time.perf_counter()
        try:
            result = simulate_round(
                x,
                modulus=modulus,
                threshold=self.threshold,
                dropouts=report.dropouts,
                graph=report.graph,
                seed=seed,
            )
        except ProtocolAbort as error:
            report.aborted = error.stage
            raise
        seconds = time.perf_counter() - start
        if report.sums and result.included != report.sums[0].included:
            raise RuntimeError(
                "two sums of one round covered different clients "
                f"({len(report.sums[0].included)} and {len(result.included)} survivors): their "
                "results would not belong together"
            )
        report.sums.append(
            SumReport(
                modulus=modulus,
                clients=len(x),
                length=x.shape[1],
                threshold=result.threshold,
                included=result.included,
                dropped=result.dropped,
                pruned=result.pruned,
                costs=result.costs,
                seconds=seconds,
            )
        )
        total = result.sum
        if modulus <= INT64_MAX + 1 or not total.size or int(total.max()) <= INT64_MAX:
            return total.astype(np.int64)
        return total

    def _prepare(self, report: RoundReport, plan: dict[str, Any], num_clients: int) -> None:
        """Fix the round's clients, graph and dropouts at its first sum; check later sums."""
        if report.clients is not None:
            if num_clients != report.clients:
                raise RuntimeError(
                    f"a sum of {num_clients} clients in a round of {report.clients}: every "
                    "secure sum of a round must cover the round's clients"
                )
            return
        if num_clients < 1:
            raise ValueError("a protocol round needs at least one client")
        ids = range(num_clients)
        if self.graph == "secagg":
            graph = complete_graph(ids)
        else:
            randbytes = (
                os.urandom
                if self.seed is None
                else DeterministicRandom(self.seed, "backend-graph", report.index)
            )
            graph = harary_graph(ids, self.degree, randbytes)
        rng = np.random.default_rng(
            None if self.seed is None else [_derive(self.seed, "dropouts", report.index)]
        )
        resolved: dict[str, tuple[int, ...]] = {}
        gone: set[int] = set()
        for stage in STAGES:
            spec = plan.get(stage)
            if spec is None:
                continue
            if isinstance(spec, float):
                left = np.array(sorted(set(ids) - gone), dtype=np.int64)
                count = min(len(left), round(spec * num_clients))
                chosen = rng.choice(left, size=count, replace=False) if count else []
                clients = tuple(sorted(int(u) for u in chosen))
            else:
                outside = [u for u in spec if u >= num_clients]
                if outside:
                    raise ValueError(
                        f"dropouts name client {outside[0]} at stage {stage!r}, but the round "
                        f"has {num_clients} clients (0 to {num_clients - 1})"
                    )
                clients = tuple(sorted(spec))
            gone.update(clients)
            resolved[stage] = clients
        report.clients, report.graph, report.dropouts = num_clients, graph, resolved


def _modulus_message(modulus: int, num_clients: int) -> str:
    message = (
        f"the masking protocol works modulo 1 to 2**64, not {modulus}"
        if modulus < 1
        else f"the masking protocol works modulo at most 2**64; this sum needs modulus "
        f"2**{math.log2(modulus):.4g}"
    )
    if modulus > MAX_PROTOCOL_MODULUS:
        message += (
            f" (a b-bit secure sum over K={num_clients} clients runs modulo "
            "2**(b + ceil(log2 K)), which must stay <= 2**64: narrow the integer bounds or "
            "sum fewer clients)"
        )
    return message


def _derive(seed: int, *labels: object) -> int:
    """A 63-bit seed for one use, from the backend seed and labels."""
    text = "|".join(str(part) for part in (seed, *labels)).encode()
    return int.from_bytes(hashlib.sha256(b"aggkit-masking-backend|" + text).digest()[:8]) >> 1
