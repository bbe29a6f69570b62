"""What the Byzantine-robust rules share: a round that holds every client at once, and the checks
of their parameters.

Median, trimmed mean, Krum and Bulyan need every client's value of a coordinate at once, and the
geometric median and centered clipping iterate over the clients several times, so none of them can
fold clients into an accumulator as they arrive. :class:`WholeRound` gathers the round's blocks
into one ``[K, n]`` client matrix with one coefficient per client: a :class:`~aggkit.ClientBatch`
(or a stacked array, or a list that fits one block: a block that comes through ``add_last``) is
used as is; earlier blocks of a stream are copied, since the stream reuses its packing buffer.

Contributions. As everywhere in aggkit, client ``i`` contributes ``coef[i] * matrix[i]``: an outer
``ak.clipping`` scales it, an outer ``ak.zeroing`` makes it the zero vector (a zeroed client still
takes part, as a client whose update is zeros, as it keeps its weight in ``ak.mean``).
"""

from __future__ import annotations

import numpy as np

from aggkit import _checks, channels, kernels
from aggkit.errors import EmptyRoundError
from aggkit.mean import WEIGHT_LAYOUT, weight_shift
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import ClientBatch, Layout
from aggkit.sum import SumProcess

__all__ = ["Sums", "SumsProcess", "WholeRound", "require_clients", "resolve_sums"]


def require_clients(count: int, needed: int, who: str, why: str) -> None:
    """EmptyRoundError for a round of no clients, ValueError for fewer than ``needed``."""
    if count == 0:
        raise EmptyRoundError(f"{who} over zero clients")
    if count < needed:
        raise ValueError(f"{who} needs at least {needed} clients ({why}); the round has {count}")


class WholeRound(Round):
    """A round that gathers its blocks and computes everything in :meth:`compute`.

    Subclasses implement ``compute(matrix, coef, weights) -> (state, flat_result,
    measurements)``; ``weights`` is None for unweighted processes.
    """

    owns_result = True

    def __init__(self, layout: Layout):
        self.layout = layout
        self.blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        # More blocks follow, and a stream packs the next one into the same buffer: copy.
        self.blocks.append((block.matrix.copy(), block.coef, weights))

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        # Nothing overwrites the last block before finish: keep it as it is.
        self.blocks.append((block.matrix, block.coef, weights))

    def gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The round's ``(matrix [K, n], coef [K], weights [K] or None)``."""
        if len(self.blocks) == 1:
            return self.blocks[0]
        if not self.blocks:
            return self.layout.empty_batch(0).matrix, np.zeros(0), None
        matrix = np.concatenate([b[0] for b in self.blocks])
        coef = np.concatenate([b[1] for b in self.blocks])
        weights = None
        if self.blocks[0][2] is not None:
            weights = np.concatenate([b[2] for b in self.blocks])
        self.blocks = []
        return matrix, coef, weights

    def contributions(self, matrix: np.ndarray, coef: np.ndarray) -> Contributions:
        """The gathered clients as one block (for error messages and statistics)."""
        return Contributions(ClientBatch(matrix, self.layout), coef)

    def raise_nonfinite(self, matrix: np.ndarray, coef: np.ndarray) -> None:
        """Raise InvalidUpdateError naming the first contributing client holding NaN or Inf
        (nothing when there is none)."""
        block = self.contributions(matrix, coef)
        active = np.flatnonzero(block.active)
        for row in active:
            if not np.isfinite(matrix[row]).all():
                raise block.nonfinite_error(int(row))

    def compute(self, matrix, coef, weights):  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self):
        matrix, coef, weights = self.gathered()
        if weights is not None:  # huge or tiny weights: the same ratios, exact, no over/underflow
            weights = np.ldexp(weights, -weight_shift(weights, scale_up=True))
        return self.compute(matrix, coef, weights)


def resolve_sums(factory: Factory) -> None:
    """Set a sum-based rule's ``value_sum``/``weight_sum`` fields (``None`` -> ``ak.sum()``)."""
    for name in ("value_sum", "weight_sum"):
        object.__setattr__(factory, name, _checks.unweighted_factory(getattr(factory, name), name))


class SumsProcess(AggregationProcess):
    """The process of a weighted rule built from sums (geometric median, centered clipping): it
    holds its factory and the inner value- and weight-sum processes, whose states it threads."""

    is_weighted = True

    def __init__(self, layout: Layout, factory: Factory):
        super().__init__(layout)
        self.factory = factory
        self.value_sum = factory.value_sum.create(layout)
        self.weight_sum = factory.weight_sum.create(WEIGHT_LAYOUT)
        self.stats_needed = self.value_sum.stats_needed

    def initialize(self) -> State:
        return {
            "value_sum_process": self.value_sum.initialize(),
            "weight_sum_process": self.weight_sum.initialize(),
        }


class Sums:
    """The sums an iterative rule (geometric median, centered clipping) runs per round: weighted
    sums of the client rows through ``value_sum``'s process and scalar sums through
    ``weight_sum``'s, threading each process's state from one sum to the next.

    Both processes are unweighted aggregation processes (``ak.sum()`` by default, or
    ``ak.secure_sum(...)`` to keep every sum on a secure channel).
    """

    def __init__(self, value_process, weight_process, state: dict):
        self.value_process = value_process
        self.weight_process = weight_process
        self.value_state = state["value_sum_process"]
        self.weight_state = state["weight_sum_process"]
        self.measurements: dict = {}
        #: Plain ``ak.sum()`` rows: :meth:`center_step` may fuse the sum with the distances.
        self.plain = type(value_process) is SumProcess

    @property
    def state(self) -> dict:
        return {"value_sum_process": self.value_state, "weight_sum_process": self.weight_state}

    def rows(self, batch: ClientBatch, coef: np.ndarray) -> np.ndarray:
        """``sum_i coef[i] * batch.matrix[i]`` as float64."""
        round_ = self.value_process.begin_round(self.value_state)
        round_.add_last(Contributions(batch, coef), None)
        self.value_state, total, self.measurements["value_sum"] = round_.finish()
        return np.asarray(total, dtype=np.float64)

    def center_step(
        self,
        batch: ClientBatch,
        coef: np.ndarray,
        factors: np.ndarray,
        denominator: float,
        center: np.ndarray | None,
        *,
        keep: float = 0.0,
        distances: bool = True,
        dtype: np.dtype | type = np.float64,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(new, d)``: the center ``keep * center + sum_i coef[i] factors[i] x_i / denominator``
        (float64; ``center``, float32 or float64, is not read when ``keep == 0``) and, with
        ``distances``, every client's distance ``||coef[i] x_i - new||`` to it (else None, and
        ``new`` is rounded once to ``dtype``: a last step's result).

        With plain sums the server sees the rows anyway, and one pass of
        :func:`aggkit.kernels.distances.center_step` computes both (recorded as the plain sum it
        replaces). Otherwise, or when that pass meets a non-finite value (a client holding NaN or
        Inf, or a sum that overflows float64 and needs :class:`~aggkit.sum.SumRound`'s rescaling),
        the rows go through ``value_sum``'s process and the distances are a second pass, as each
        client would compute its own from the broadcast center. The caller checks ``d``.
        """
        matrix = batch.matrix
        if self.plain:
            new = np.empty(matrix.shape[1], np.float64 if distances else dtype)
            channels.record_plain(matrix.shape[1], matrix.shape[0], owner="sum")
            d = kernels.distances.center_step(
                matrix,
                coef,
                coef * factors,
                denominator,
                new,
                keep=keep,
                center=center,
                distances=distances,
            )
            if np.isfinite(d).all():
                self.measurements["value_sum"] = ()
                return new, d if distances else None
        total = self.rows(batch, coef * factors)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            new = total / denominator
            if keep != 0.0:
                new = np.asarray(center, np.float64) * keep + new
        if not distances:
            return new.astype(dtype, copy=False), None
        return new, kernels.distances.center_distances(matrix, coef, new)

    def scalar(self, values: np.ndarray) -> float:
        """``sum_i values[i]`` (one non-negative scalar per client)."""
        from aggkit.mean import WEIGHT_LAYOUT

        round_ = self.weight_process.begin_round(self.weight_state)
        round_.add(Contributions.of_scalars(values, WEIGHT_LAYOUT), None)
        self.weight_state, total, self.measurements["weight_sum"] = round_.finish()
        return float(np.asarray(total, dtype=np.float64)[0])
