"""``ak.quantized_sum``: stochastic-rounding uniform quantization of large tensors, then a sum.

The reference is TFF's ``EncodedSumFactory.quantize_above_threshold(quantization_bits,
threshold)`` (TFF's ``encoded.py``). Per round, each client quantizes every floating-point tensor
with more than ``threshold`` elements to ``2**bits`` levels between its own minimum and maximum,
with stochastic rounding, bit-packs the levels (28 payload bits per int32 word) and uploads them
with the range; smaller tensors, integer tensors and constant tensors travel exactly. The server
decodes every client and sums. The estimate is unbiased (up to the grid of the rounding
uniforms, 16 bits from 8 quantization bits up and 32 bits below: a bias under ``2**-24`` of the
client's range, see :mod:`aggkit.kernels.quantize`), and each decoded coordinate is within
``(max - min) / (2**bits - 1)`` of the client's value.

Used as the value sum of a mean, ``ak.mean(ak.quantized_sum())``: the client's value is then its
*weighted* value ``w * x`` (more generally ``c * x`` with the coefficient ``c`` the outer layers
give it: weight, clipping and zeroing factors), and the kernel applies ``c`` on the fly instead of
scaling a copy of the matrix.

Simulation and payloads
-----------------------
``next`` does not build payloads: :func:`aggkit.kernels.quantize.quantized_row_sum` encodes,
decodes and sums in one pass over the client matrix. The payload is still real and available:
:meth:`QuantizedSumProcess.client_payload` returns the bytes a client uploads and
:meth:`QuantizedSumProcess.decode_payload` what the server makes of them; the fused sum of a round
equals the sum of the decoded payloads of its clients, bit for bit, for every quantized tensor.
Payload of one client, tensors in layout order, little-endian, no header (the layout and ``bits``
are known to both sides):

* a quantized tensor of ``n`` elements: ``lo`` and ``hi`` in the tensor's dtype, then
  ``ceil(n * bits / 28)`` int32 words;
* any other tensor: its ``n`` values of ``c * x`` in its dtype.

For a float32 or float16 tensor the range is the client's ``[c * min, c * max]`` rounded
outwards to that dtype, so that it is exactly representable in the payload and still covers the
values; a constant tensor whose weighted value is representable is therefore sent and
reconstructed exactly.

Measurements
------------
``{"bytes_per_client": int, "uncompressed_bytes_per_client": int, "compression_ratio": float}``:
the payload size of one client (the same for every client), the size of the same structure in
its own dtypes, and their ratio ``uncompressed / payload``. At 8 bits a large float32 tensor
takes ``ceil(n * 8 / 28)`` 4-byte words, so the ratio approaches ``28 / 8 = 3.5`` (float64:
7); tensors that travel exactly lower it.
The reference reports ``()``; these keys are aggkit's.

State
-----
``numpy.uint64[2]``: the stream key (from ``seed``) and the round counter. The rounding noise of
client ``j``'s tensor ``t`` in round ``r`` is stream ``derive_key(key, "quantized_sum", r, j, t)``
of the counter-based generator, so a seeded run is reproducible bit for bit, whatever the thread
count and however clients are split into blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from aggkit import _buffers, _checks, kernels
from aggkit.errors import InvalidUpdateError
from aggkit.kernels.limits import WORD_BITS
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout
from aggkit.sum import SumRound

__all__ = ["QuantizedSumFactory", "QuantizedSumProcess", "quantized_sum"]

_STREAM = "quantized_sum"


def check_seed(seed: Any) -> None:
    """Raise TypeError/ValueError unless ``seed`` is None or an int >= 0 (kept for callers of
    this name; the rule is :func:`aggkit._checks.seed`)."""
    _checks.seed(seed)


@dataclass(frozen=True)
class QuantizedSumFactory(Factory):
    """Unweighted factory of :class:`QuantizedSumProcess`; build it with :func:`quantized_sum`."""

    bits: int = 8
    threshold: int = 20000
    seed: int | None = None

    is_weighted = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _checks.integer(self.bits, "bits", low=1, high=16))
        object.__setattr__(self, "threshold", _checks.integer(self.threshold, "threshold", low=0))
        object.__setattr__(self, "seed", _checks.seed(self.seed))

    def _create(self, layout: Layout) -> QuantizedSumProcess:
        return QuantizedSumProcess(layout, self.bits, self.threshold, self.seed)


def quantized_sum(
    bits: int = 8, threshold: int = 20000, seed: int | None = None
) -> QuantizedSumFactory:
    """An unweighted sum that quantizes large tensors with stochastic rounding.

    Each client quantizes every floating-point tensor with more than ``threshold`` elements to
    ``2**bits`` levels between its own minimum and maximum (unbiased stochastic rounding) and
    sends the bit-packed levels; the server decodes each client and sums. Other tensors are
    summed exactly. See :mod:`aggkit.compression` for the payload format.

    Parameters
    ----------
    bits : int
        Bits per quantized value, in [1, 16].
    threshold : int
        Tensors with more than ``threshold`` elements are quantized (``>= 0``).
    seed : int or None
        Seeds the rounding noise (an int >= 0); None draws a key from the operating system at
        ``initialize``.

    Returns
    -------
    QuantizedSumFactory
        Its processes have state ``numpy.uint64[2]`` (stream key, round counter) and measurements
        ``{"bytes_per_client", "uncompressed_bytes_per_client", "compression_ratio"}``.

    Raises
    ------
    TypeError
        ``bits`` or ``threshold`` is not an int, or ``seed`` has the wrong kind.
    ValueError
        ``bits`` outside [1, 16], a negative ``threshold`` or ``seed``.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.compression import quantized_sum
    >>> process = ak.mean(quantized_sum(bits=8, threshold=100, seed=0)).create(
    ...     ak.TensorSpec((1000,), np.float32))
    >>> clients = [np.linspace(-1, 1, 1000, dtype=np.float32)] * 3
    >>> out = process.next(process.initialize(), clients, weights=[1.0, 2.0, 1.0])
    >>> bool(np.abs(out.result - clients[0]).max() <= 2 / 255)
    True
    >>> out.measurements["mean_value"]["bytes_per_client"]  # 4 * ceil(1000 * 8 / 28) + 2 * 4
    1152
    """
    return QuantizedSumFactory(bits, threshold, seed)


def _round_outward(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """``lo`` rounded down and ``hi`` rounded up to values of ``dtype`` (as float64)."""
    if dtype == np.float64:
        return lo, hi
    with np.errstate(over="ignore", invalid="ignore"):
        lo_d = lo.astype(dtype)
        hi_d = hi.astype(dtype)
        lo_d = np.where(lo_d.astype(np.float64) > lo, np.nextafter(lo_d, dtype.type(-np.inf)), lo_d)
        hi_d = np.where(hi_d.astype(np.float64) < hi, np.nextafter(hi_d, dtype.type(np.inf)), hi_d)
    return lo_d.astype(np.float64), hi_d.astype(np.float64)


class QuantizedSumProcess(AggregationProcess):
    """Process of :func:`quantized_sum` (see :mod:`aggkit.compression`).

    Attributes
    ----------
    bits : int
    quantized : numpy.ndarray
        ``bool[T]``: which tensors are quantized.
    payload_bytes : int
        Bytes one client uploads per round.
    uncompressed_bytes : int
        Bytes of one client's structure in its own dtypes.
    """

    is_weighted = False

    def __init__(self, layout: Layout, bits: int, threshold: int, seed: Any):
        super().__init__(layout)
        self.bits = bits
        self.threshold = threshold
        self.seed = seed
        self.top = float((1 << bits) - 1)
        self.quantized = np.array(
            [s.dtype.kind == "f" and s.size > threshold for s in layout.specs], dtype=np.bool_
        )
        self.stats_needed = frozenset({"minmax"}) if self.quantized.any() else frozenset()
        self.uncompressed_bytes = int(sum(s.size * s.dtype.itemsize for s in layout.specs))
        self.payload_bytes = int(
            sum(
                4 * (-(-s.size * bits // WORD_BITS)) + 2 * s.dtype.itemsize
                if q
                else s.size * s.dtype.itemsize
                for s, q in zip(layout.specs, self.quantized, strict=True)
            )
        )

    def initialize(self) -> State:
        return np.array([kernels.counter_rng.seed_to_key(self.seed), 0], dtype=np.uint64)

    def begin_round(self, state: State) -> Round:
        key, round_index = _unpack_state(state)
        return _QuantizedSumRound(self, key, round_index)

    def measurements(self) -> dict:
        """The measurements every round reports (they depend only on the layout and ``bits``)."""
        ratio = self.uncompressed_bytes / self.payload_bytes if self.payload_bytes else 1.0
        return {
            "bytes_per_client": self.payload_bytes,
            "uncompressed_bytes_per_client": self.uncompressed_bytes,
            "compression_ratio": float(ratio),
        }

    # -- ranges -----------------------------------------------------------------------------------

    def ranges(
        self, coef: np.ndarray, tensor_min: np.ndarray, tensor_max: np.ndarray, first_client: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per client and tensor: ``lo``, ``hi``, ``scale = top / (hi - lo)``, ``step``.

        ``tensor_min`` and ``tensor_max`` are the raw rows' (``float64[K, T]``); rows with
        coefficient 0 get zeros. Raises InvalidUpdateError when a weighted range overflows the
        tensor's dtype.
        """
        c = coef[:, None]
        active = c != 0
        with np.errstate(over="ignore", invalid="ignore"):
            lo = np.where(active, c * tensor_min, 0.0)
            hi = np.where(active, c * tensor_max, 0.0)
        for t in np.flatnonzero(self.quantized):
            lo[:, t], hi[:, t] = _round_outward(lo[:, t], hi[:, t], self.layout.specs[t].dtype)
        bad = ~(np.isfinite(lo) & np.isfinite(hi)) & self.quantized[None, :]
        if bad.any():
            row, t = np.argwhere(bad)[0]
            raise InvalidUpdateError(
                f"the weighted value (coefficient {coef[row]:g}) overflows "
                f"{self.layout.specs[t].dtype}",
                client=first_client + int(row),
                path=self.layout.paths[t],
            )
        span = hi - lo
        with np.errstate(divide="ignore", over="ignore"):
            scale = np.where(span > 0, self.top / span, 0.0)
        # A span so small (< ~1e-304) that top / span overflows counts as constant.
        scale[~np.isfinite(scale)] = 0.0
        step = span / self.top
        return lo, hi, scale, step

    def round_key(self, key: int, round_index: int) -> int:
        """The stream key of round ``round_index`` (clients and tensors are derived from it)."""
        return kernels.counter_rng.derive_key(key, _STREAM, round_index)

    @cached_property
    def tasks(self) -> np.ndarray:
        """The kernel's parallel task list for this layout (computed once, on first use)."""
        return kernels.quantize.stream_tasks(self.layout.offsets)

    # -- payloads ---------------------------------------------------------------------------------

    def client_payload(
        self, state: State, value: Any, *, client: int = 0, coef: float = 1.0
    ) -> bytes:
        """The bytes client ``client`` uploads in the round that starts from ``state``.

        Parameters
        ----------
        state
            The state the round starts from (as passed to ``next``).
        value : structure
            The client's value, shaped like the template.
        client : int
            The client's index in the round (its position in ``values``): it selects the
            client's rounding noise.
        coef : float
            The coefficient the outer layers apply (the weight under ``ak.mean``): the client
            sends ``coef * value``.

        Returns
        -------
        bytes
            :attr:`payload_bytes` long; see :mod:`aggkit.compression` for the format.

        Examples
        --------
        >>> import numpy as np, aggkit as ak
        >>> from aggkit.compression import quantized_sum
        >>> process = quantized_sum(bits=4, threshold=10, seed=1).create(
        ...     ak.TensorSpec((100,), np.float32))
        >>> state = process.initialize()
        >>> payload = process.client_payload(state, np.arange(100, dtype=np.float32))
        >>> len(payload) == process.payload_bytes == 4 * 15 + 8
        True
        >>> decoded = process.decode_payload(payload)
        >>> float(decoded[0]), float(decoded[-1])
        (0.0, 99.0)
        >>> bool(np.abs(decoded - np.arange(100)).max() < 99 / 15)  # one step
        True
        """
        coef = _checks.real(coef, "coef", low=0.0)
        row = self.layout.flatten(value, client=client)
        layout = self.layout
        offsets = layout.offsets
        coef_vector = np.array([float(coef)])
        tmin = np.zeros((1, layout.num_tensors))
        tmax = np.zeros((1, layout.num_tensors))
        for t in range(layout.num_tensors):
            segment = row[offsets[t] : offsets[t + 1]]
            if coef != 0 and not np.isfinite(segment).all():
                raise InvalidUpdateError("holds NaN or Inf", client=client, path=layout.paths[t])
            if segment.size:
                tmin[0, t] = segment.min()
                tmax[0, t] = segment.max()
        lo, hi, scale, _ = self.ranges(coef_vector, tmin, tmax, client)
        key, round_index = _unpack_state(state)
        round_key = self.round_key(key, round_index)
        parts = []
        for t, spec in enumerate(layout.specs):
            segment = row[offsets[t] : offsets[t + 1]]
            little = spec.dtype.newbyteorder("<")
            if self.quantized[t]:
                stream = kernels.counter_rng.derive_key(round_key, client, t)
                levels = kernels.quantize.stochastic_levels(
                    segment, float(coef), lo[0, t], scale[0, t], self.bits, stream
                )
                words = kernels.quantize.pack_bits(levels, self.bits)
                parts.append(np.array([lo[0, t], hi[0, t]]).astype(little).tobytes())
                parts.append(words.astype("<i4").tobytes())
            else:
                scaled = float(coef) * segment.astype(np.float64)
                if spec.dtype.kind in "iu":
                    scaled = np.rint(scaled)
                parts.append(scaled.astype(little).tobytes())
        return b"".join(parts)

    def decode_payload(self, payload: bytes) -> np.ndarray:
        """What the server adds to its sum for one client's payload: ``float64[n]``.

        For quantized tensors ``lo + q * (hi - lo) / (2**bits - 1)``; other tensors as sent.
        """
        if len(payload) != self.payload_bytes:
            raise ValueError(
                f"expected a payload of {self.payload_bytes} bytes, got {len(payload)}"
            )
        out = np.empty(self.layout.size)
        offsets = self.layout.offsets
        position = 0
        for t, spec in enumerate(self.layout.specs):
            little = spec.dtype.newbyteorder("<")
            target = out[offsets[t] : offsets[t + 1]]
            if self.quantized[t]:
                bounds = np.frombuffer(payload, little, 2, position).astype(np.float64)
                position += 2 * spec.dtype.itemsize
                count = kernels.quantize.packed_words(spec.size, self.bits)
                words = np.frombuffer(payload, "<i4", count, position)
                position += 4 * count
                levels = kernels.quantize.unpack_bits(words, self.bits, spec.size)
                step = (bounds[1] - bounds[0]) / self.top
                target[:] = bounds[0] + levels.astype(np.float64) * step
            else:
                target[:] = np.frombuffer(payload, little, spec.size, position)
                position += spec.size * spec.dtype.itemsize
        return out


def _unpack_state(state: State) -> tuple[int, int]:
    array = np.asarray(state)
    if array.shape != (2,) or array.dtype != np.uint64:
        raise TypeError(f"expected the process's state (numpy.uint64[2]), got {state!r}")
    return int(array[0]), int(array[1])


class _QuantizedSumRound(Round):
    owns_result = True  # its accumulator, or its own SumRound's

    def __init__(self, process: QuantizedSumProcess, key: int, round_index: int):
        self.process = process
        self.key = key
        self.round_index = round_index
        self.plain = None if process.quantized.any() else SumRound(process.layout)
        self.acc = None if self.plain is not None else _buffers.zeros(process.layout.size)
        self.round_key = None

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        if self.plain is not None:
            self.plain.add(block, None)
            return
        process = self.process
        block.check_finite()
        stats = block.raw_stats("minmax")
        lo, _, scale, step = process.ranges(
            block.coef, stats.tensor_min, stats.tensor_max, block.first_client
        )
        if self.round_key is None:
            self.round_key = process.round_key(self.key, self.round_index)
        kernels.quantize.quantized_row_sum(
            block.matrix,
            block.coef,
            process.layout.offsets,
            process.quantized,
            lo,
            scale,
            step,
            process.bits,
            self.round_key,
            block.first_client,
            self.acc,
            tasks=process.tasks,
        )

    def finish(self) -> tuple[State, np.ndarray, dict]:
        if self.plain is not None:
            _, total, _ = self.plain.finish()
        else:
            total = self.acc
        state = np.array([self.key, self.round_index + 1], dtype=np.uint64)
        return state, total, self.process.measurements()
