"""Factories, aggregation processes, estimation processes, and the round protocol that fuses them.

The public model is TensorFlow Federated's:

* a **factory** is immutable configuration; ``factory.create(template)`` returns a process
  specialised to a structure of tensors;
* an **aggregation process** has ``initialize() -> state`` and
  ``next(state, values, weights=None) -> Output(state, result, measurements)``; it is *weighted*
  when ``next`` takes client weights;
* an **estimation process** (adaptive norms and bounds) has ``initialize``, ``next(state, values)
  -> state`` for one scalar per client, ``report(state) -> float`` and ``map(fn)``.

State is plain data (nested dicts and tuples of NumPy scalars and arrays), never mutated in place:
``next`` returns a new state, so a caller that catches an exception still holds its old one.

The round protocol (for authors of aggregators)
-----------------------------------------------
Inside ``next``, processes do not pass client values to each other. They pass
:class:`Contributions`: a block of the client matrix plus one non-negative coefficient per client,
meaning "client i contributes ``coef[i] * matrix[i]``" (a row with coefficient 0 contributes
exactly nothing, even if it holds NaN). Clipping, zeroing and weighting only change coefficients,
and the per-client statistics every layer needs come from one fused pass
(:meth:`Contributions.raw_stats`) computed once per block for the whole composition. The sum at
the bottom reads the matrix once more.

A process implements :meth:`AggregationProcess.begin_round`, which reads what it needs from the
state and returns a :class:`Round`; ``Round.add(block, weights)`` is called once per block of
clients (once for a :class:`ClientBatch`, several times when ``next`` streams an iterator; a block
known to be the last goes through ``Round.add_last`` instead), and ``Round.finish()`` returns
``(new_state, flat_result, measurements)``. Per-client work depends only
on the state and the client, so streaming gives the same bits as one batch. ``docs/design.md``
("Contributions: a composition as coefficients", "Rounds") explains the protocol at length.
"""

from __future__ import annotations

import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from aggkit import _buffers, kernels
from aggkit.errors import InvalidUpdateError
from aggkit.structure import ClientBatch, Layout

__all__ = [
    "AggregationProcess",
    "ConstantEstimate",
    "Contributions",
    "EstimationProcess",
    "Factory",
    "Output",
    "Round",
    "as_estimation_process",
]

State = Any
Measurements = Any

#: Streaming block size in bytes of client matrix (``next`` with an iterator of clients).
STREAM_BLOCK_BYTES = 64 * 2**20


class Output(NamedTuple):
    """What ``AggregationProcess.next`` returns: the new state, the result and measurements."""

    state: State
    result: Any
    measurements: Measurements


# -- estimation processes -------------------------------------------------------------------------


class EstimationProcess(ABC):
    """A process that estimates a value (a norm, a bound) from one scalar per client and round.

    Subclasses implement :meth:`initialize`, :meth:`next` and :meth:`report`.
    """

    @abstractmethod
    def initialize(self) -> State:
        """The initial state."""

    @abstractmethod
    def next(self, state: State, values: np.ndarray) -> State:
        """The state after observing ``values`` (``float64[K]``, one scalar per client)."""

    @abstractmethod
    def report(self, state: State) -> float:
        """The current estimate."""

    def map(self, fn: Callable[[float], float]) -> EstimationProcess:
        """A process with the same ``initialize``/``next`` whose report is ``fn(report(state))``."""
        return _MappedEstimate(self, fn)


class _MappedEstimate(EstimationProcess):
    def __init__(self, inner: EstimationProcess, fn: Callable[[float], float]):
        self.inner = inner
        self.fn = fn

    def initialize(self) -> State:
        return self.inner.initialize()

    def next(self, state: State, values: np.ndarray) -> State:
        return self.inner.next(state, values)

    def report(self, state: State) -> float:
        return float(self.fn(self.inner.report(state)))

    def __repr__(self) -> str:
        return f"{self.inner!r}.map({self.fn!r})"


class ConstantEstimate(EstimationProcess):
    """An estimation process that always reports ``value`` (state ``()``).

    Used when a norm or bound is given as a number, so fixed and adaptive parameters share one
    code path.
    """

    def __init__(self, value: float):
        self.value = float(value)

    def initialize(self) -> State:
        return ()

    def next(self, state: State, values: np.ndarray) -> State:
        return ()

    def report(self, state: State) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantEstimate({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstantEstimate) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("ConstantEstimate", self.value))


def as_estimation_process(value: Any, name: str) -> EstimationProcess:
    """``value`` as an estimation process: a number becomes a :class:`ConstantEstimate`.

    Raises TypeError naming ``name`` when ``value`` is neither a real number nor an
    :class:`EstimationProcess`. Range checks are the caller's (they differ per argument).
    """
    if isinstance(value, EstimationProcess):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number or an estimation process, got {value!r}")
    return ConstantEstimate(float(value))


# -- contributions --------------------------------------------------------------------------------


class _StatsCache:
    __slots__ = ("computed", "needs", "value")

    def __init__(self, needs: frozenset):
        self.needs = needs
        self.value = None
        self.computed: set = set()


class Contributions:
    """A block of clients as aggregators see it: client ``i`` contributes ``coef[i] * matrix[i]``.

    Coefficients are non-negative float64. Statistics of the raw rows are computed lazily, once,
    and shared by every :class:`Contributions` derived with :meth:`scaled`.

    Parameters
    ----------
    batch : ClientBatch
        The raw client rows of this block.
    coef : numpy.ndarray, optional
        ``float64[K]``; ones by default.
    first_client : int
        Index of the block's first client in the round (for error messages and random streams).
    needs : frozenset of str
        Statistics to compute in the one pass (subset of ``{"l1", "l2", "linf", "minmax"}``); a
        composition declares the union of its layers' needs so the pass runs once.
    """

    __slots__ = ("_cache", "batch", "coef", "first_client")

    def __init__(
        self,
        batch: ClientBatch,
        coef: np.ndarray | None = None,
        *,
        first_client: int = 0,
        needs: frozenset = frozenset(),
        _cache: _StatsCache | None = None,
    ):
        self.batch = batch
        if coef is None:
            coef = np.ones(batch.num_clients)
        self.coef = coef
        self.first_client = first_client
        self._cache = _cache if _cache is not None else _StatsCache(frozenset(needs))

    @classmethod
    def of_scalars(
        cls, values: np.ndarray, layout: Layout, *, first_client: int = 0
    ) -> Contributions:
        """One scalar per client (weights, counts) as a block for a scalar ``layout``."""
        matrix = np.ascontiguousarray(values, dtype=layout.dtype).reshape(-1, 1)
        return cls(ClientBatch(matrix, layout), first_client=first_client)

    @property
    def matrix(self) -> np.ndarray:
        """The raw ``[K, n]`` rows (before coefficients)."""
        return self.batch.matrix

    @property
    def layout(self) -> Layout:
        return self.batch.layout

    @property
    def num_clients(self) -> int:
        return self.batch.num_clients

    @property
    def active(self) -> np.ndarray:
        """``bool[K]``: clients with a non-zero coefficient."""
        return self.coef != 0

    def scaled(self, factors: np.ndarray | float) -> Contributions:
        """The same block with coefficients multiplied by non-negative ``factors``."""
        return Contributions(
            self.batch,
            self.coef * factors,
            first_client=self.first_client,
            _cache=self._cache,
        )

    # statistics of the raw rows ----------------------------------------------------------------

    def raw_stats(self, *need: str):
        """The :class:`~aggkit.kernels.row_stats.RowStats` of the raw rows (one fused pass).

        ``need`` names statistics beyond the declared ones; asking for one not declared up front
        costs one more pass over the block.
        """
        cache = self._cache
        if cache.value is None or not set(need) <= cache.computed:
            needs = cache.needs | set(need)
            if self.matrix.dtype.kind != "f":
                raise TypeError(
                    f"statistics need a floating-point client matrix, not {self.matrix.dtype}"
                )
            cache.value = kernels.row_stats.row_stats(
                self.matrix,
                self.layout.offsets,
                with_l1="l1" in needs,
                with_minmax="minmax" in needs,
            )
            cache.computed = needs | {"l2", "linf"}
            cache.needs = frozenset(needs)
        return cache.value

    def norms(self, order: float) -> np.ndarray:
        """Global norms of the contributions ``coef[i] * matrix[i]`` (``float64[K]``).

        ``order`` is 1, 2 or ``inf``. Rows with coefficient 0 have norm 0; rows that hold NaN or
        Inf (with a non-zero coefficient) have norm ``inf``.
        """
        key = {1.0: "l1", 2.0: "l2", np.inf: "linf"}.get(float(order))
        if key is None:
            raise ValueError(f"norm order must be 1, 2 or inf, got {order!r}")
        raw = getattr(self.raw_stats(key), key)
        return self._scale_stat(raw)

    def finite(self) -> np.ndarray:
        """``bool[K]``: the contribution holds no NaN/Inf (coefficient-0 rows count as finite)."""
        return self.raw_stats().finite | ~self.active

    def tensor_min_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-tensor minimum and maximum of each contribution (``float64[K, T]`` each)."""
        stats = self.raw_stats("minmax")
        c = self.coef[:, None]
        active = c != 0
        with np.errstate(invalid="ignore"):
            lo = np.where(active, c * stats.tensor_min, 0.0)
            hi = np.where(active, c * stats.tensor_max, 0.0)
        return lo, hi

    def _scale_stat(self, raw: np.ndarray) -> np.ndarray:
        active = self.active
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.where(active, self.coef * raw, 0.0)
        out[active & ~np.isfinite(out)] = np.inf
        return out

    # values ------------------------------------------------------------------------------------

    def check_finite(self) -> None:
        """Raise :class:`InvalidUpdateError` naming the first contributing client and tensor
        holding NaN or Inf."""
        bad = np.flatnonzero(~self.finite())
        if bad.size:
            raise self.nonfinite_error(int(bad[0]))

    def nonfinite_error(self, row: int) -> InvalidUpdateError:
        """The error for row ``row`` of this block holding NaN or Inf (names its first tensor)."""
        layout = self.layout
        values = self.matrix[row]
        for t in range(layout.num_tensors):
            segment = values[layout.tensor_slice(t)]
            if not np.isfinite(segment).all():
                kind = "NaN" if np.isnan(segment).any() else "Inf"
                return InvalidUpdateError(
                    f"holds {kind}; a plain sum or mean rejects non-finite updates "
                    "(wrap the aggregator in ak.zeroing to drop them instead)",
                    client=self.first_client + row,
                    path=layout.paths[t],
                )
        return InvalidUpdateError("holds NaN or Inf", client=self.first_client + row)


# -- aggregation processes ------------------------------------------------------------------------


class Round(ABC):
    """One round of an aggregation process in progress (see the module docstring).

    Required: :meth:`add` and :meth:`finish`. Optional capabilities, with working defaults that a
    round overrides when it can do better:

    * :meth:`add_last`: the caller knows no block follows (the round may keep the block and
      finish its work in the same pass over it);
    * :meth:`finish_divided`: finish with the result divided by a denominator (a mean's last
      step), which a plain sum does in its own pass or memory;
    * :attr:`owns_result`: the result array may be overwritten by the caller.
    """

    #: True when :meth:`finish` hands over a result array that nothing else references, so the
    #: caller (an outer round) may overwrite it instead of allocating another ``n``-vector.
    owns_result: bool = False

    @abstractmethod
    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        """Take a block of clients (``weights`` is ``float64[K]`` for weighted processes)."""

    def add_last(self, block: Contributions, weights: np.ndarray | None) -> None:
        """Take the round's last block: no :meth:`add` follows, :meth:`finish` (or
        :meth:`finish_divided`) comes next. The default is :meth:`add`; a wrapper forwards it to
        its inner round so that the capability survives composition."""
        self.add(block, weights)

    @abstractmethod
    def finish(self) -> tuple[State, np.ndarray, Measurements]:
        """``(new_state, flat_result, measurements)``; ``flat_result`` has the layout's size."""

    def finish_divided(
        self, denominator: float, dtype: np.dtype
    ) -> tuple[State, np.ndarray, Measurements]:
        """Like :meth:`finish`, with the result divided by ``denominator`` (a float64 division)
        and rounded to ``dtype``: what a mean asks of its value sum.

        The default divides :meth:`finish`'s result, in its own memory when the round owns it
        (:func:`divide`). The quotient is owned by the caller.
        """
        state, total, measurements = self.finish()
        return state, divide(total, denominator, dtype, in_place=self.owns_result), measurements

    def finish_owned(self) -> tuple[State, np.ndarray, Measurements]:
        """Like :meth:`finish`, with a float64 result the caller may overwrite: the round's own
        array when it owns it, else a copy (so another round's array is never modified)."""
        state, total, measurements = self.finish()
        if not (
            self.owns_result
            and total.dtype == np.float64
            and total.flags.writeable
            and total.flags.c_contiguous
        ):
            total = np.array(total, dtype=np.float64)
        return state, total, measurements


def divide(total: np.ndarray, denominator: float, dtype: np.dtype, *, in_place: bool) -> np.ndarray:
    """``total / denominator`` (a float64 division) as a vector of ``dtype``.

    With ``in_place`` the caller owns ``total``: the quotient is written in one pass, into
    ``total`` itself for float64 or into a pooled buffer for float32
    (:func:`aggkit.kernels.divide_cast.divide_cast`, whose bits are ``np.divide``'s). Otherwise a
    fresh array is returned.
    """
    dtype = np.dtype(dtype)
    if (
        in_place
        and total.dtype == np.float64
        and total.ndim == 1
        and total.flags.writeable
        and total.flags.c_contiguous
        and dtype in (np.float32, np.float64)
    ):
        out = total if dtype == np.float64 else _buffers.empty(total.size, dtype)
        return kernels.divide_cast.divide_cast(total, denominator, out)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.divide(total, np.float64(denominator)).astype(dtype, copy=False)


class AggregationProcess(ABC):
    """An aggregation process created by a factory for one layout.

    Subclasses implement :meth:`initialize` and :meth:`begin_round` (the fused, streaming path).

    Attributes
    ----------
    layout : Layout
        The structure of the values this process aggregates.
    is_weighted : bool
        Whether :meth:`next` takes client weights.
    """

    is_weighted: ClassVar[bool] = False
    #: Statistics (``"l1"``, ``"l2"``, ``"linf"``, ``"minmax"``) this process reads from
    #: :meth:`Contributions.raw_stats`; wrappers add their inner process's.
    stats_needed: frozenset = frozenset()

    def __init__(self, layout: Layout):
        self.layout = layout
        self._scratch = threading.local()

    @abstractmethod
    def initialize(self) -> State:
        """The initial state."""

    @abstractmethod
    def begin_round(self, state: State) -> Round:
        """Start a round from ``state`` (which must not be modified)."""

    def next(
        self,
        state: State,
        values: ClientBatch | Sequence[Any] | Iterable[Any] | np.ndarray,
        weights: Sequence[float] | np.ndarray | Iterable[float] | None = None,
    ) -> Output:
        """Aggregate one round of client values.

        Parameters
        ----------
        state
            The state from :meth:`initialize` or a previous ``next``.
        values : ClientBatch, sequence or iterator of structures, or ndarray
            The clients' values. A :class:`ClientBatch` is used as is (no copy). A sequence is
            validated and packed. Any other iterable is streamed in blocks of about
            ``STREAM_BLOCK_BYTES``, so memory stays O(n) whatever the number of clients. An
            ndarray is a stack of clients along its first axis.
        weights : sequence, array or iterator of float, optional
            One non-negative finite weight per client; required by weighted processes, rejected
            by unweighted ones.

        Returns
        -------
        Output
            ``(state, result, measurements)``; ``result`` has the template's structure.

        Raises
        ------
        InvalidUpdateError
            A client's structure, shape, dtype, weight or values cannot be aggregated (names the
            client and tensor). Nothing has changed: ``state`` is still valid.
        """
        if self.is_weighted and weights is None:
            raise TypeError(f"{type(self).__name__} is weighted: next() needs client weights")
        if not self.is_weighted and weights is not None:
            raise TypeError(f"{type(self).__name__} is unweighted: next() takes no weights")
        round_ = self.begin_round(state)
        if not isinstance(round_, Round):
            raise TypeError(
                f"{type(self).__name__}.begin_round must return an aggkit.process.Round, got "
                f"{type(round_).__name__} (subclass Round: it supplies add_last, finish_divided "
                "and owns_result)"
            )
        for block, block_weights, last in self._blocks(values, weights):
            if last:
                round_.add_last(block, block_weights)
            else:
                round_.add(block, block_weights)
        new_state, flat, measurements = round_.finish()
        # An owned result is referenced by nothing else, so its tensors can be views of it.
        result = self.layout.unflatten(flat, copy=not round_.owns_result)
        return Output(new_state, result, measurements)

    # -- input handling -----------------------------------------------------------------------

    def _blocks(self, values: Any, weights: Any) -> Iterator[tuple[Contributions, Any, bool]]:
        """``(block, weights, last)`` per block; ``last`` when no block follows for sure."""
        needs = self.stats_needed
        if isinstance(values, ClientBatch):
            if values.layout != self.layout:
                raise InvalidUpdateError(
                    f"the batch's layout {values.layout!r} does not match the process's "
                    f"{self.layout!r}"
                )
            values.layout.check_rows(values.matrix)  # a filled matrix: no one packed it
            checked = _check_weights(weights, values.num_clients)
            yield Contributions(values, needs=needs), checked, True
            return
        if isinstance(values, np.ndarray) and self.layout.num_tensors == 1:
            batch = self._stacked_array(values)
            if batch is not None:
                checked = _check_weights(weights, len(batch))
                yield Contributions(batch, needs=needs), checked, True
                return
        if isinstance(values, Sequence | np.ndarray):
            count = len(values)
            all_weights = _check_weights(weights, count)
            block = self._block_size(count)
            for start in range(0, count, block):
                stop = min(start + block, count)
                batch = self._pack(values, start, stop)
                yield (
                    Contributions(batch, first_client=start, needs=needs),
                    None if all_weights is None else all_weights[start:stop],
                    stop == count,
                )
            return
        yield from self._stream(iter(values), weights, needs)

    def _stacked_array(self, values: np.ndarray) -> ClientBatch | None:
        spec = self.layout.specs[0]
        if values.dtype != self.layout.dtype or values.shape[1:] != spec.shape:
            return None
        if values.dtype != spec.dtype:
            return None
        matrix = np.ascontiguousarray(values.reshape(len(values), self.layout.size))
        return ClientBatch(matrix, self.layout)

    def _block_size(self, count: int) -> int:
        row_bytes = max(1, self.layout.size * self.layout.dtype.itemsize)
        return max(1, min(count, STREAM_BLOCK_BYTES // row_bytes))

    def scratch_rows(self, rows: int, layout: Layout | None = None, *, name: str = "packing"):
        """A per-thread ``[rows, layout.size]`` buffer of ``layout.dtype`` (``layout`` defaults to
        the process's), reused across blocks and rounds (fresh pages cost more than the copy).

        Each ``name`` is one buffer. It is only handed to this process's own rounds, which consume
        a block inside ``add`` and finish before the next ``next`` on the same thread packs again;
        it is freed with the process.
        """
        layout = self.layout if layout is None else layout
        need = rows * layout.size
        buffer = getattr(self._scratch, name, None)
        if buffer is None or buffer.size < need or buffer.dtype != layout.dtype:
            # Aligned: a kernel's vector loads and stores then never straddle two cache lines.
            buffer = _buffers.aligned_empty(max(need, 1), layout.dtype)
            setattr(self._scratch, name, buffer)
        return buffer[:need].reshape(rows, layout.size)

    def _pack(self, values: Sequence, start: int, stop: int) -> ClientBatch:
        out = self.scratch_rows(stop - start)
        for i in range(start, stop):
            self.layout.flatten(values[i], out=out[i - start], client=i)
        return ClientBatch(out, self.layout)

    def _stream(
        self, values: Iterator, weights: Any, needs: frozenset
    ) -> Iterator[tuple[Contributions, Any, bool]]:
        block = self._block_size(1 << 62)
        weight_iter = None if weights is None else iter(weights)
        start = 0
        while True:
            out = self.scratch_rows(block)
            count = 0
            block_weights = []
            for structure in values:
                self.layout.flatten(structure, out=out[count], client=start + count)
                if weight_iter is not None:
                    try:
                        block_weights.append(next(weight_iter))
                    except StopIteration:
                        raise InvalidUpdateError(
                            "fewer weights than client values",
                            client=start + count,
                            path="weight",
                        ) from None
                count += 1
                if count == block:
                    break
            if count == 0:
                if start == 0:  # an empty round still runs (zeros / NaN means)
                    yield (
                        Contributions(self.layout.empty_batch(0), needs=needs),
                        None if weight_iter is None else np.zeros(0),
                        False,
                    )
                if weight_iter is not None and next(weight_iter, None) is not None:
                    raise InvalidUpdateError("more weights than client values", path="weight")
                return
            batch = ClientBatch(out[:count], self.layout)
            checked = None
            if weight_iter is not None:
                checked = _check_weights(block_weights, count, first_client=start)
            # A short block means the iterator ran out: no block follows.
            yield Contributions(batch, first_client=start, needs=needs), checked, count < block
            start += count
            if count < block:
                if weight_iter is not None and next(weight_iter, None) is not None:
                    raise InvalidUpdateError("more weights than client values", path="weight")
                return


def _check_weights(weights: Any, count: int, *, first_client: int = 0) -> np.ndarray | None:
    """Weights as ``float64[count]``; InvalidUpdateError naming a negative or non-finite one."""
    if weights is None:
        return None
    if isinstance(weights, Iterator):
        # One more than needed, so that a longer iterator is reported, not silently cut.
        weights = list(itertools.islice(weights, count + 1))
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidUpdateError(f"weights must be numbers: {error}", path="weight") from None
    if array.ndim != 1 or len(array) != count:
        raise InvalidUpdateError(
            f"expected one weight per client ({count}), got shape {array.shape}", path="weight"
        )
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        i = int(bad[0])
        raise InvalidUpdateError(
            f"weight {array[i]!r} must be finite and non-negative",
            client=first_client + i,
            path="weight",
        )
    return array


# -- factories ------------------------------------------------------------------------------------


class Factory(ABC):
    """Immutable configuration of an aggregator; :meth:`create` specialises it to a template.

    Concrete factories are frozen dataclasses, so they compare, hash and print by value.

    Attributes
    ----------
    is_weighted : bool
        Whether the processes it creates take client weights.
    """

    is_weighted: bool = False

    def create(self, template: Any) -> AggregationProcess:
        """A process for values shaped like ``template``.

        Parameters
        ----------
        template : structure or Layout
            A nested dict/list/tuple of arrays or :class:`~aggkit.TensorSpec`.
        """
        layout = template if isinstance(template, Layout) else Layout(template)
        return self._create(layout)

    @abstractmethod
    def _create(self, layout: Layout) -> AggregationProcess:
        """Build the process for ``layout``."""
