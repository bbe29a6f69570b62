"""Run an aggkit aggregator's secure sums through a real protocol round between machines.

An aggregation process computes its result from the sums it takes on the secure channels
(:mod:`aggkit.channels`); in a simulation every client's vector reaches the backend in one
process. Between machines the work splits in two, with the protocol in the middle:

- each **client** runs the process over its own value alone (``K = 1``) with a backend that
  captures the integer vector it would feed each secure channel (:func:`client_vector`); the
  vectors are packed into one, which the client masks in the protocol round;
- the **server** learns the protocol's sum of the packed vectors, cuts it back into the channel
  sums, and runs the process again over ``K`` placeholder clients with a backend that answers
  each channel with the protocol's sum (:func:`replay`). Since everything the server computes
  from the clients goes through those channels, the output is the one the process would compute
  with the plaintext values (``tests/secure/test_deployment.py`` checks it bit for bit against
  :class:`~aggkit.secure.backend.MaskingBackend`).

Requirements on the aggregator, checked at run time: it uses secure channels only (a plain sum
would need the plaintext on the server: ``PlainChannelError``), its bit-width sums (a modular
channel is refused for now), and the same sequence of sums whatever the values (true of every
aggkit aggregator: the sequence depends on the structure and the state). All bit-width sums of a
round travel in one protocol run modulo ``2**(max bits + ceil(log2 K))``, which none of their
exact sums reaches, so each sum is exact, as with ``MaskingBackend``.

The state the server sends to the clients (clipping norms, quantile estimates) travels as JSON
(:func:`encode_state`): never pickle, since a client must not run code a server sends.

Examples
--------
>>> import numpy as np, aggkit as ak
>>> process = ak.secure_aggregator().create(ak.TensorSpec((3,), np.float32))
>>> state = process.initialize()
>>> values = [np.array([0.1, 0.2, 0.3], np.float32), np.array([0.3, 0.2, 0.1], np.float32)]
>>> packed = [client_vector(process, state, v, 1.0) for v in values]
>>> plan = packed[0][1]
>>> total = sum(vector.astype(object) for vector, _ in packed)  # what the protocol returns
>>> out = replay(process, state, np.array(total, np.uint64), plan, num_clients=2)
>>> bool(np.array_equal(out.result, process.next(state, values, [1.0, 1.0]).result))
True
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import channels

__all__ = [
    "ChannelPlan",
    "PlainChannelError",
    "client_vector",
    "decode_state",
    "encode_state",
    "plan_of",
    "replay",
]


class PlainChannelError(TypeError):
    """The aggregator sums something on the plain channel: it cannot run on secure aggregation."""


@dataclass(frozen=True)
class ChannelPlan:
    """The secure sums of one ``next`` call, in order: ``(length, bitwidth)`` each.

    Examples
    --------
    >>> plan = ChannelPlan(((5, 32), (3, 1)))
    >>> plan.length, plan.modulus(num_clients=10)
    (8, 68719476736)
    """

    sums: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        """Values in the packed vector."""
        return sum(length for length, _ in self.sums)

    def modulus(self, num_clients: int) -> int:
        """The protocol modulus: no exact sum of ``num_clients`` packed vectors reaches it."""
        bits = max((b for _, b in self.sums), default=1)
        modulus = 1 << (bits + math.ceil(math.log2(max(num_clients, 1))))
        if modulus > 1 << 64:
            raise ValueError(f"{num_clients} clients of {bits}-bit sums need more than 64 bits")
        return modulus

    def split(self, vector: np.ndarray) -> list[np.ndarray]:
        """Cut a packed vector into the per-sum vectors (int64)."""
        if vector.shape != (self.length,):
            raise ValueError(f"a packed vector has {self.length} values, got {vector.shape}")
        bounds = np.cumsum([0, *(length for length, _ in self.sums)])
        return [vector[a:b].astype(np.int64) for a, b in itertools.pairwise(bounds)]


class _Capture(channels.SumBackend):
    """Records the one client's vector of every secure sum; answers with that vector."""

    fused = False

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def modular_sum(self, inputs: np.ndarray, modulus: int) -> np.ndarray:
        self.rows.append(np.array(inputs[0], np.int64))
        return np.asarray(inputs).sum(axis=0) % modulus


class _Replay(channels.SumBackend):
    """Answers the secure sums, in order, with the protocol's sums."""

    fused = False

    def __init__(self, sums: Sequence[np.ndarray]) -> None:
        self.sums = list(sums)
        self.used = 0

    def modular_sum(self, inputs: np.ndarray, modulus: int) -> np.ndarray:
        if self.used == len(self.sums):
            raise RuntimeError("the aggregator takes more secure sums than the clients sent")
        total = self.sums[self.used]
        if total.shape != (inputs.shape[1],):
            raise RuntimeError(
                f"secure sum {self.used}: the clients sent {total.shape[0]} values, the "
                f"aggregator sums {inputs.shape[1]}"
            )
        self.used += 1
        return total


def _secure_plan(log: list[channels.ChannelUse]) -> ChannelPlan:
    sums = []
    for use in log:
        if not use.secure:
            raise PlainChannelError(
                f"the aggregator sums {use.owner or 'a value'} on the plain channel: the server "
                "would need every client's plaintext; use a fully secure aggregator "
                "(e.g. ak.secure_aggregator())"
            )
        if use.bitwidth is None:
            raise NotImplementedError(
                f"{use.owner or 'a sum'} uses the secure modular channel, which this deployment "
                "path does not carry yet (bit-width sums only)"
            )
        sums.append((use.length, use.bitwidth))
    return ChannelPlan(tuple(sums))


def client_vector(
    process: Any, state: Any, value: Any, weight: float | None = None
) -> tuple[np.ndarray, ChannelPlan]:
    """One client's packed secure-channel vector for ``process.next(state, ...)``.

    Parameters
    ----------
    process : aggkit.AggregationProcess
        The round's process (the same one the server runs).
    state
        The state the server sent.
    value
        This client's value (a structure of the process's layout, or its flat vector).
    weight : float, optional
        This client's weight, for a weighted process.

    Returns
    -------
    (numpy.ndarray, ChannelPlan)
        ``uint64`` vector of every secure sum's input, concatenated, and the plan that says
        how to cut it.
    """
    capture = _Capture()
    weights = None if weight is None else [float(weight)]
    if isinstance(value, np.ndarray) and value.ndim == 1 and process.layout.num_tensors != 1:
        value = process.layout.unflatten(value)
    with channels.using_backend(capture), channels.recording() as log:
        process.next(state, [value], weights)
    plan = _secure_plan(log)
    packed = np.concatenate([*capture.rows, np.zeros(0, np.int64)]).astype(np.uint64)
    return packed, plan


def replay(process: Any, state: Any, total: np.ndarray, plan: ChannelPlan, num_clients: int) -> Any:
    """``process.next`` over ``num_clients`` clients whose packed vectors sum to ``total``.

    Parameters
    ----------
    total : numpy.ndarray
        The protocol's sum of the packed vectors (exact: below the plan's modulus).
    plan : ChannelPlan
        From :func:`client_vector` (or :func:`plan_of`).
    num_clients : int
        The clients in the sum (the protocol's survivors).

    Returns
    -------
    aggkit.Output
        What ``process.next`` returns for those clients' values.
    """
    if num_clients < 1:
        raise ValueError("replay needs at least one client in the sum")
    modulus = plan.modulus(num_clients)
    total = np.asarray(total)
    if total.size and int(total.max()) >= modulus:
        raise ValueError(f"the sum of {num_clients} clients is not below its modulus {modulus}")
    backend = _Replay(plan.split(total))
    # One placeholder client: the sums are the protocol's, whatever the values, so the work is
    # O(values), not O(clients x values); nothing but the channels' sums reaches the output.
    batch = process.layout.empty_batch(1)
    batch.matrix[:] = 0
    weights = np.ones(1) if process.is_weighted else None
    with channels.using_backend(backend), channels.recording() as log:
        output = process.next(state, batch, weights)
    if _secure_plan(log) != plan or backend.used != len(plan.sums):
        raise RuntimeError("the aggregator took other secure sums on the server than on clients")
    return output


def plan_of(process: Any, state: Any) -> ChannelPlan:
    """The secure sums ``process.next(state, ...)`` takes (from a zero client)."""
    zero = np.zeros(process.layout.size, process.layout.dtype)
    return client_vector(process, state, zero, 0.0 if process.is_weighted else None)[1]


# ------------------------------------------------------------------------------ state as JSON


def _encode(value: Any) -> Any:
    if isinstance(value, np.generic):  # first: np.float64 is also a float
        return {"scalar": value.dtype.str, "data": base64.b64encode(value.tobytes()).decode()}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"state arrays must be numeric, got {value.dtype}")
        return {
            "array": value.dtype.str,
            "shape": list(value.shape),
            "data": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode(),
        }
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("state dicts must have string keys")
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    raise TypeError(f"cannot send a {type(value).__name__} in an aggregator state")


def _decode(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 2, 3):
        raise ValueError("malformed aggregator state")
    if "int" in value:
        return int(value["int"])
    if "float" in value:
        return float.fromhex(value["float"])
    if "scalar" in value:
        dtype = _numeric_dtype(value["scalar"])
        return np.frombuffer(base64.b64decode(value["data"]), dtype, count=1)[0]
    if "array" in value:
        dtype = _numeric_dtype(value["array"])
        shape = tuple(int(s) for s in value["shape"])
        data = np.frombuffer(base64.b64decode(value["data"]), dtype)
        return data.reshape(shape).copy()
    if "tuple" in value:
        return tuple(_decode(v) for v in value["tuple"])
    if "list" in value:
        return [_decode(v) for v in value["list"]]
    if "dict" in value:
        return {str(k): _decode(v) for k, v in value["dict"].items()}
    raise ValueError("malformed aggregator state")


def _numeric_dtype(text: Any) -> np.dtype:
    dtype = np.dtype(str(text))
    if dtype.kind not in "biuf":
        raise ValueError(f"state values must be numeric, got {dtype}")
    return dtype


def encode_state(state: Any) -> bytes:
    """An aggregator state as JSON bytes (numbers bit-exact; NumPy types kept).

    Examples
    --------
    >>> s = {"norm": (np.float64(0.1), 3, ()), "counts": np.arange(3)}
    >>> back = decode_state(encode_state(s))
    >>> back["norm"], back["counts"]
    ((np.float64(0.1), 3, ()), array([0, 1, 2]))
    """
    return json.dumps(_encode(state), separators=(",", ":")).encode()


def decode_state(data: bytes) -> Any:
    """The state :func:`encode_state` wrote (ValueError for anything else; runs no code)."""
    try:
        return _decode(json.loads(data))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"not an aggregator state: {error}") from None
