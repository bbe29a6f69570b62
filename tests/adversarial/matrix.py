"""The adversarial matrix: malformed inputs x public factories, and one invariant (issue 20).

Every public factory gets every input below. The invariant for each pair:

* the outcome is **a clear error** (``InvalidUpdateError``, ``TypeError``, ``ValueError``,
  ``OverflowError`` or the caller's own exception, naming what is wrong) **or the correct
  result** (against a NumPy reference computed in float64 from the canonical data the input
  stands for, or exact integers); an input marked *valid* (read-only or strided arrays, a
  single client, an empty round, huge weights...) must give the result, not an error;
* the state passed in is unchanged (deep comparison against a copy taken before);
* the process is usable afterwards: a clean round gives the same bits as before the bad one.

Run ``python -m tests.adversarial.matrix`` to print the matrix as a Markdown table (the closing
note of issue 20 holds one); ``tests/adversarial/test_matrix.py`` asserts the invariant.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import aggkit as ak
from aggkit.errors import EmptyRoundError, InvalidUpdateError

K = 4
WEIGHTS = (1.0, 2.0, 3.0, 4.0)
SHAPES = {"w": (4, 8), "b": (2,)}
CLEAR_ERRORS = (InvalidUpdateError, TypeError, ValueError, OverflowError, EmptyRoundError)


class MustFail(Exception):
    """Raised by a reference: the factory has no result for this input, it must refuse it."""


class CallerError(RuntimeError):
    """The exception a malicious iterator raises: it must reach the caller unchanged."""


# -- data --------------------------------------------------------------------------------------


@dataclass
class Context:
    """The template of a factory and the clean round every input is derived from."""

    kind: str  # "f" (float32 tensors) or "i" (int32 tensors)

    @property
    def dtype(self) -> type:
        return np.float32 if self.kind == "f" else np.int32

    @property
    def template(self) -> dict:
        return {k: ak.TensorSpec(s, self.dtype) for k, s in SHAPES.items()}

    def clients(self, count: int = K, seed: int = 0) -> list[dict]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(count):
            if self.kind == "f":
                client = {
                    k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in SHAPES.items()
                }
            else:
                client = {
                    k: rng.integers(-1000, 1000, s).astype(np.int32) for k, s in SHAPES.items()
                }
            out.append(client)
        return out


@dataclass
class Call:
    """What an input passes to ``next`` and the canonical data its result is judged by."""

    values: Any
    weights: Any
    canon: tuple[list[dict], list[float]] | None  # None: no result exists (a malformed call)


@dataclass(frozen=True)
class Input:
    name: str
    build: Callable[[Context], Call]
    valid: bool = False  # a valid input must give the correct result, not an error
    names: str | None = None  # what a clear error must mention (None: any clear error)
    weight_input: bool = False  # about weights: an unweighted process must refuse the weights


def _with(client: dict, key: str, value: Any) -> dict:
    changed = dict(client)
    changed[key] = value
    return changed


def _poke(ctx: Context, value: Any, client: int = 1) -> Call:
    """Client ``client``'s first ``w`` entry set to ``value`` (a float32 array)."""
    clients = ctx.clients()
    w = clients[client]["w"].astype(np.float32)
    w.flat[0] = value
    bad = _with(clients[client], "w", w)
    values = [*clients[:client], bad, *clients[client + 1 :]]
    canon = [{k: np.asarray(v, np.float64) for k, v in c.items()} for c in values]
    return Call(values, list(WEIGHTS), canon=(canon, list(WEIGHTS)) if ctx.kind == "f" else None)


def _clean(ctx: Context, count: int = K) -> Call:
    clients = ctx.clients(count)
    weights = list(WEIGHTS[:count]) + [1.0] * max(0, count - K)
    return Call(clients, weights, (clients, weights))


def _replace_values(ctx: Context, transform: Callable[[dict], dict], *, same: bool) -> Call:
    """The clean round with every client transformed; ``same``: it still means the same data."""
    call = _clean(ctx)
    values = [transform(c) for c in call.values]
    if not same:
        return Call(values, call.weights, None)
    canon = [{k: np.asarray(v, np.float64) for k, v in c.items()} for c in values]
    return Call(values, call.weights, (canon, call.weights))


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros((*a.shape[:-1], a.shape[-1] * 2), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _raising(items: list, after: int) -> Iterator:
    for i, item in enumerate(items):
        if i == after:
            raise CallerError("the client iterator failed")
        yield item


def _set_weights(ctx: Context, weights: Any, canon: Any = None) -> Call:
    call = _clean(ctx)
    return Call(call.values, weights, None if canon is None else (call.values, canon))


def _huge(ctx: Context) -> Call:
    clients = ctx.clients()
    if ctx.kind == "f":
        clients[2] = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()}
    else:
        clients[2] = {k: np.full(s, 2**31 - 1, np.int32) for k, s in SHAPES.items()}
    return Call(clients, list(WEIGHTS), (clients, list(WEIGHTS)))


def _all_huge(ctx: Context) -> Call:
    big = 3e38 if ctx.kind == "f" else 2**31 - 1
    clients = [{k: np.full(s, big, ctx.dtype) for k, s in SHAPES.items()} for _ in range(K)]
    return Call(clients, list(WEIGHTS), (clients, list(WEIGHTS)))


def _nan_zero_weight(ctx: Context) -> Call:
    call = _poke(ctx, np.nan)
    weights = [1.0, 0.0, 3.0, 4.0]
    return Call(call.values, weights, None if call.canon is None else (call.canon[0], weights))


def _client_batch(ctx: Context, *, wrong_layout: bool = False) -> Call:
    call = _clean(ctx)
    template = ctx.template
    if wrong_layout:
        template = dict(template, b=ak.TensorSpec((3,), ctx.dtype))
    layout = ak.Layout(template)
    batch = layout.pack(call.values) if not wrong_layout else layout.empty_batch(K)
    return Call(batch, call.weights, None if wrong_layout else call.canon)


def _batch_out_of_range(ctx: Context) -> Call:
    call = _clean(ctx)
    layout = ak.Layout(ctx.template)
    batch = layout.pack(call.values)
    batch.matrix[1, 0] = 2**40 if ctx.kind == "i" else np.inf
    if ctx.kind == "i":
        return Call(batch, call.weights, None)
    canon = [_unflat(row.astype(np.float64)) for row in batch.matrix]
    return Call(batch, call.weights, (canon, call.weights))


INPUTS: list[Input] = [
    # non-finite and extreme values
    Input("NaN in one client", lambda c: _poke(c, np.nan), names="client 1"),
    Input("+Inf in one client", lambda c: _poke(c, np.inf), names="client 1"),
    Input("-Inf in one client", lambda c: _poke(c, -np.inf), names="client 1"),
    Input("NaN with weight 0", _nan_zero_weight, names="client 1"),
    Input("one client at the dtype's max", _huge, valid=True),
    Input("every client at the dtype's max", _all_huge),
    Input(
        "subnormal values",
        lambda c: _replace_values(
            c,
            lambda d: {k: np.full_like(v, 1e-45 if c.kind == "f" else 0) for k, v in d.items()},
            same=True,
        ),
        valid=True,
    ),
    Input(
        "all-zero updates",
        lambda c: _replace_values(
            c, lambda d: {k: np.zeros_like(v) for k, v in d.items()}, same=True
        ),
        valid=True,
    ),
    # structure, shape and dtype
    Input(
        "wrong shape",
        lambda c: _replace_values(
            c, lambda d: _with(d, "w", np.zeros((4, 7), c.dtype)), same=False
        ),
        names="['w']",
    ),
    Input(
        "scalar for a vector",
        lambda c: _replace_values(c, lambda d: _with(d, "b", c.dtype(1)), same=False),
        names="['b']",
    ),
    Input(
        "float64 array for the template's dtype",
        lambda c: _replace_values(
            c, lambda d: _with(d, "w", d["w"].astype(np.float64)), same=False
        ),
        names="['w']",
    ),
    Input(
        "int64 array for the template's dtype",
        lambda c: _replace_values(c, lambda d: _with(d, "w", d["w"].astype(np.int64)), same=False),
        names="['w']",
    ),
    Input(
        "missing key",
        lambda c: _replace_values(c, lambda d: {"w": d["w"]}, same=False),
        names="client 0",
    ),
    Input(
        "extra key",
        lambda c: _replace_values(c, lambda d: {**d, "x": d["b"]}, same=False),
        names="client 0",
    ),
    Input(
        "list instead of dict",
        lambda c: _replace_values(c, lambda d: [d["w"], d["b"]], same=False),
        names="client 0",
    ),
    Input(
        "string leaf",
        lambda c: _replace_values(c, lambda d: _with(d, "b", "1.0"), same=False),
        names="['b']",
    ),
    Input(
        "None leaf",
        lambda c: _replace_values(c, lambda d: _with(d, "b", None), same=False),
        names="['b']",
    ),
    Input(
        "Python float too large for the dtype",
        lambda c: _replace_values(c, lambda d: _with(d, "b", [1e40, 0.0]), same=False),
        names="['b']",
    ),
    Input(
        "Python int beyond 64 bits",
        lambda c: _replace_values(c, lambda d: _with(d, "b", [10**30, 0]), same=False),
        names="['b']",
    ),
    Input(
        "Python int beyond int32",
        lambda c: _replace_values(c, lambda d: _with(d, "b", [2**40, 0]), same=c.kind == "f"),
        valid=False,
        names="client 0",
    ),
    Input("ClientBatch of another layout", lambda c: _client_batch(c, wrong_layout=True)),
    Input("ClientBatch holding Inf / out-of-range ints", _batch_out_of_range, names="client 1"),
    Input("values not iterable", lambda c: Call(42, list(WEIGHTS), None)),
    Input("values None", lambda c: Call(None, list(WEIGHTS), None)),
    # unusual but valid containers and memory layouts
    Input(
        "read-only arrays",
        lambda c: _replace_values(c, lambda d: {k: _readonly(v) for k, v in d.items()}, same=True),
        valid=True,
    ),
    Input(
        "strided (non-contiguous) arrays",
        lambda c: _replace_values(c, lambda d: {k: _strided(v) for k, v in d.items()}, same=True),
        valid=True,
    ),
    Input(
        "Fortran-order arrays",
        lambda c: _replace_values(
            c, lambda d: {k: np.asfortranarray(v) for k, v in d.items()}, same=True
        ),
        valid=True,
    ),
    Input("ClientBatch", _client_batch, valid=True),
    Input(
        "iterator of clients",
        lambda c: Call(iter(_clean(c).values), iter(list(WEIGHTS)), _clean(c).canon),
        valid=True,
    ),
    Input(
        "tuple of clients",
        lambda c: Call(tuple(_clean(c).values), list(WEIGHTS), _clean(c).canon),
        valid=True,
    ),
    # round sizes
    Input("empty round", lambda c: Call([], [], ([], [])), valid=True),
    Input("single client", lambda c: _clean(c, 1), valid=True),
    Input("64 clients", lambda c: _clean(c, 64), valid=True),
    Input(
        "raising client iterator",
        lambda c: Call(_raising(_clean(c).values, 2), list(WEIGHTS), None),
        names="iterator",
    ),
    # weights (an unweighted process must refuse any)
    Input(
        "negative weight",
        lambda c: _set_weights(c, [1.0, -1.0, 1.0, 1.0]),
        names="client 1",
        weight_input=True,
    ),
    Input(
        "NaN weight",
        lambda c: _set_weights(c, [1.0, np.nan, 1.0, 1.0]),
        names="client 1",
        weight_input=True,
    ),
    Input(
        "Inf weight",
        lambda c: _set_weights(c, [1.0, np.inf, 1.0, 1.0]),
        names="client 1",
        weight_input=True,
    ),
    Input(
        "huge weights (1e308)",
        lambda c: _set_weights(c, [1e308] * 4, [1e308] * 4),
        valid=True,
        weight_input=True,
    ),
    Input(
        "one huge weight",
        lambda c: _set_weights(c, [1e308, 1.0, 1.0, 1.0], [1e308, 1.0, 1.0, 1.0]),
        valid=True,
        weight_input=True,
    ),
    Input(
        "all-zero weights",
        lambda c: _set_weights(c, [0.0] * 4, [0.0] * 4),
        valid=True,
        weight_input=True,
    ),
    Input(
        "integer weights",
        lambda c: _set_weights(c, [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),
        valid=True,
        weight_input=True,
    ),
    Input(
        "too few weights", lambda c: _set_weights(c, [1.0, 2.0]), names="weight", weight_input=True
    ),
    Input(
        "2-D weights",
        lambda c: _set_weights(c, [[1.0, 2.0, 3.0, 4.0]]),
        names="weight",
        weight_input=True,
    ),
    Input(
        "string weights",
        lambda c: _set_weights(c, ["a", "b", "c", "d"]),
        names="weight",
        weight_input=True,
    ),
    Input(
        "raising weight iterator",
        lambda c: Call(iter(_clean(c).values), _raising(list(WEIGHTS), 1), None),
        names="iterator",
        weight_input=True,
    ),
]


# -- references -------------------------------------------------------------------------------


def _flat(client: dict) -> np.ndarray:
    return np.concatenate([np.asarray(client[k], np.float64).reshape(-1) for k in SHAPES])


def _unflat(vector: np.ndarray) -> dict:
    out, start = {}, 0
    for k, s in SHAPES.items():
        size = int(np.prod(s))
        out[k] = vector[start : start + size].reshape(s)
        start += size
    return out


def _size() -> int:
    return sum(int(np.prod(s)) for s in SHAPES.values())


def _matrix(clients: list[dict]) -> np.ndarray:
    return np.array([_flat(c) for c in clients]).reshape(len(clients), _size())


def _coefficients(x: np.ndarray, *, zero: float | None, clip: float | None, drop: bool):
    """Per-client coefficients of zeroing (L-inf above ``zero``) and clipping (L2 to ``clip``);
    non-finite clients get 0 when ``drop`` and make the factory refuse the round otherwise."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.all() and not drop:
        raise MustFail("non-finite client")
    coef = np.where(finite, 1.0, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        if zero is not None:
            coef[np.abs(np.where(finite[:, None], x, 0)).max(axis=1, initial=0) > zero] = 0.0
        if clip is not None:
            l2 = np.sqrt((np.where(finite[:, None], x, 0) ** 2).sum(axis=1))
            scale = np.where(l2 > clip, clip / np.where(l2 > 0, l2, 1), 1.0)
            coef *= scale
    return coef


def _weighted_sum(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    active = coef != 0
    if not active.any():
        return np.zeros(x.shape[1])
    # exact-ish in float64: scale by the largest coefficient first (a mean depends on ratios)
    return (coef[active, None] * x[active]).sum(axis=0)


def _mean(x, w, coef):
    w = np.asarray(w, np.float64)
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    top = w.max() if w.size and w.max() > 0 else 1.0
    ws = w / top
    total = ws.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return _weighted_sum(x, coef * ws) / total


@dataclass(frozen=True)
class Subject:
    """A public factory, the template kind it is created for, and its reference."""

    name: str
    build: Callable[[], ak.Factory]
    kind: str
    weighted: bool
    reference: Callable[[np.ndarray, list[float], Any], np.ndarray]
    #: ``atol(x, measurements)``: the absolute error the factory is allowed on top of rounding.
    atol: Callable[[np.ndarray, Any], float] = lambda x, m: 0.0


def _ref_sum(x, w, m):
    _coefficients(x, zero=None, clip=None, drop=False)
    return x.sum(axis=0) if x.size else np.zeros(x.shape[1])


def _ref_mean(x, w, m):
    w = np.asarray(w, np.float64)
    active = w != 0
    _coefficients(x[active], zero=None, clip=None, drop=False)
    return _mean(np.where(active[:, None], x, 0), w, np.ones(len(x)))


def _ref_unweighted(x, w, m):
    _coefficients(x, zero=None, clip=None, drop=False)
    return x.sum(axis=0) / len(x) if len(x) else np.full(x.shape[1], np.nan)


def _ref_zeroing(x, w, m):
    return _mean(x, w, _coefficients(x, zero=5.0, clip=None, drop=True))


def _ref_clipping(x, w, m):
    return _mean(x, w, _coefficients(x, zero=None, clip=1.0, drop=True))


def _ref_dp(clip: float, zero: bool):
    def reference(x, w, m):
        z = m["zeroing_norm"] if zero else None
        coef = _coefficients(x, zero=z, clip=clip, drop=True)
        return _weighted_sum(x, coef) / K

    return reference


def _ref_robust(x, w, m):
    z, c = m["zeroing_norm"], m["zeroing"]["clipping_norm"]
    return _mean(x, w, _coefficients(x, zero=z, clip=c, drop=True))


def _ref_secure_aggregator(x, w, m):
    inner = m["zeroing"]["clipping"]
    z, c = m["zeroing_norm"], m["zeroing"]["clipping_norm"]
    r = inner["mean_value"]["secure_upper_threshold"]
    top = inner["mean_weight"]["secure_upper_threshold"]
    coef = _coefficients(x, zero=z, clip=c, drop=True)
    w = np.minimum(np.asarray(w, np.float64), top)
    if not len(x):
        return np.full(x.shape[1], np.nan)
    values = np.clip(coef[:, None] * w[:, None] * np.where(coef[:, None] != 0, x, 0), -r, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return values.sum(axis=0) / w.sum()


def _ref_secure_sum(x, w, m):
    _coefficients(x, zero=None, clip=None, drop=False)
    return np.clip(x, -2.0, 2.0).sum(axis=0) if len(x) else np.zeros(x.shape[1])


def _ref_modular(x, w, m):
    if not len(x):
        return np.zeros(x.shape[1])
    total = [sum(int(v) for v in column) % 2**20 for column in x.T.astype(np.int64)]
    return np.array(total, np.float64)


def _require(x: np.ndarray, clients: int) -> None:
    if len(x) < clients:
        raise MustFail(f"needs at least {clients} clients")


def _ref_median(x, w, m):
    _require(x, 1)
    _coefficients(x, zero=None, clip=None, drop=False)
    return np.median(x, axis=0)


def _ref_trimmed(x, w, m):
    _require(x, 1)
    _coefficients(x, zero=None, clip=None, drop=False)
    cut = int(0.25 * len(x))
    return np.sort(x, axis=0)[cut : len(x) - cut].mean(axis=0)


def _ref_krum(x, w, m):
    _require(x, 3)  # K >= 2f + 3 with f = 0
    _coefficients(x, zero=None, clip=None, drop=False)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    scores = [np.sort(np.delete(d[i], i))[: len(x) - 2].sum() for i in range(len(x))]
    return x[int(np.argmin(scores))]


def _ref_bulyan(x, w, m):
    _require(x, 3)  # K >= 4f + 3 with f = 0: every client is selected and kept, so the mean
    _coefficients(x, zero=None, clip=None, drop=False)
    return x.mean(axis=0)


def _ref_geometric_median(x, w, m):
    _require(x, 1)
    w = np.asarray(w, np.float64)
    active = w != 0
    _coefficients(x[active], zero=None, clip=None, drop=False)
    x = np.where(active[:, None], x, 0.0)
    if not w.any():
        raise MustFail("every weight is 0: the weighted geometric median is undefined")
    a = w / w.max()

    def mean(factors):
        return (factors[:, None] * x).sum(axis=0) / factors.sum()

    center = mean(a)
    for _ in range(4):  # max_iterations=4, tolerance=0: always four iterations
        d = np.sqrt(((x - center) ** 2).sum(axis=1))
        center = mean(a / np.maximum(1e-6, d))
    return center


def _ref_centered_clipping(x, w, m):
    _require(x, 1)
    w = np.asarray(w, np.float64)
    if not w.any():  # no weight: the center (zeros in the first round) does not move
        return np.zeros(x.shape[1])
    active = w != 0
    _coefficients(x[active], zero=None, clip=None, drop=False)
    x = np.where(active[:, None], x, 0.0)
    # the first round's center is 0: one iteration clips every client to the ball of radius 1
    return _mean(x, w, _coefficients(x, zero=None, clip=1.0, drop=False))


def _ref_discretization(x, w, m):
    _coefficients(x, zero=None, clip=None, drop=False)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(x * 1024.0)
    if len(x) and max(np.abs(scaled).max(), np.abs(scaled.sum(axis=0)).max()) > 2**31 - 1:
        raise MustFail("the scaled values or their sum do not fit the int32 sum")
    return scaled.sum(axis=0) / 1024.0 if len(x) else np.zeros(x.shape[1])


def _ref_modular_clipping(x, w, m):
    lo, hi = -(2**10), 2**10
    if not len(x):
        return np.zeros(x.shape[1])
    columns = x.T.astype(np.int64)
    return np.array([(sum(int(v) for v in c) - lo) % (hi - lo) + lo for c in columns], float)


def _quantization_tolerance(x, m):
    if not len(x):
        return 0.0
    spans = [np.ptp(x[i, :32]) + np.ptp(x[i, 32:]) for i in range(len(x))]
    return float(np.sum(spans)) / 65535 + 1e-6


SUBJECTS: list[Subject] = [
    Subject("sum", ak.sum, "f", False, _ref_sum),
    Subject("sum (int32)", ak.sum, "i", False, _ref_sum),
    Subject("mean", ak.mean, "f", True, _ref_mean),
    Subject("unweighted_mean", ak.unweighted_mean, "f", False, _ref_unweighted),
    Subject("zeroing", lambda: ak.zeroing(5.0, ak.mean()), "f", True, _ref_zeroing),
    Subject("clipping", lambda: ak.clipping(1.0, ak.mean()), "f", True, _ref_clipping),
    Subject(
        "gaussian_fixed",
        lambda: ak.gaussian_fixed(0.0, K, 1.0, seed=0),
        "f",
        False,
        _ref_dp(1.0, False),
    ),
    Subject(
        "gaussian_adaptive",
        lambda: ak.gaussian_adaptive(0.0, K, 1.0, seed=0),
        "f",
        False,
        _ref_dp(1.0, False),
    ),
    Subject(
        "tree_aggregation",
        lambda: ak.tree_aggregation(0.0, K, 1.0, seed=0),
        "f",
        False,
        _ref_dp(1.0, False),
    ),
    Subject(
        "distributed_dp",
        lambda: ak.distributed_dp(0.0, K, bits=20, clip=1.0, seed=0),
        "f",
        False,
        _ref_dp(1.0, False),
        # stochastic rounding at the scale: at most one step per client and coordinate, through
        # an orthogonal rotation (up to sqrt(d) of a rotated error on one coordinate)
        lambda x, m: 8.0 * max(len(x), 1) * np.sqrt(64) / float(m.get("scale_factor", 1.0)),
    ),
    Subject(
        "quantized_sum",
        lambda: ak.quantized_sum(bits=16, threshold=0, seed=0),
        "f",
        False,
        _ref_sum,
        _quantization_tolerance,
    ),
    Subject(
        "hadamard",
        lambda: ak.hadamard(seed=0),
        "f",
        False,
        _ref_sum,
        lambda x, m: 1e-5 * float(np.abs(x).sum()) if len(x) else 0.0,
    ),
    Subject(
        "dft",
        lambda: ak.dft(seed=0),
        "f",
        False,
        _ref_sum,
        lambda x, m: 1e-5 * float(np.abs(x).sum()) if len(x) else 0.0,
    ),
    Subject(
        "discretization",
        lambda: ak.discretization(scale=1024.0, stochastic=False, seed=0),
        "f",
        False,
        _ref_discretization,
    ),
    Subject(
        "modular_clipping",
        lambda: ak.modular_clipping(None, -(2**10), 2**10),
        "i",
        False,
        _ref_modular_clipping,
    ),
    Subject(
        "secure_sum",
        lambda: ak.secure_sum(2.0),
        "f",
        False,
        _ref_secure_sum,
        lambda x, m: 4.0 * max(len(x), 1) / 2**32,
    ),
    Subject(
        "secure_sum (int32)",
        lambda: ak.secure_sum(10**6),
        "i",
        False,
        lambda x, w, m: np.clip(x, -(10**6), 10**6).sum(axis=0),
    ),
    Subject("secure_modular_sum", lambda: ak.secure_modular_sum(2**20), "i", False, _ref_modular),
    Subject("median", ak.median, "f", False, _ref_median),
    Subject("trimmed_mean", lambda: ak.trimmed_mean(0.25), "f", False, _ref_trimmed),
    Subject("krum", lambda: ak.krum(0), "f", True, _ref_krum),
    Subject("bulyan", lambda: ak.bulyan(0), "f", False, _ref_bulyan),
    Subject(
        "geometric_median",
        lambda: ak.geometric_median(4, tolerance=0.0),
        "f",
        True,
        _ref_geometric_median,
    ),
    Subject(
        "centered_clipping", lambda: ak.centered_clipping(1.0), "f", True, _ref_centered_clipping
    ),
    Subject("robust_aggregator", ak.robust_aggregator, "f", True, _ref_robust),
    Subject(
        "dp_aggregator", lambda: ak.dp_aggregator(0.0, K, seed=0), "f", False, _ref_dp(0.1, True)
    ),
    Subject("compression_aggregator", ak.compression_aggregator, "f", True, _ref_robust),
    Subject(
        "secure_aggregator",
        ak.secure_aggregator,
        "f",
        True,
        _ref_secure_aggregator,
        lambda x, m: 1e-6,
    ),
]


#: Documented limits: a valid input a factory refuses with a clear error, and why.
LIMITS: dict[tuple[str, str], str] = {
    ("hadamard", "one client at the dtype's max"): (
        "the rotation runs in the tensor's dtype: a float32 client whose L2 norm exceeds the "
        "float32 range cannot be rotated (OverflowError naming client and tensor)"
    ),
    ("dft", "one client at the dtype's max"): "as ak.hadamard",
}


# -- running a case ---------------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of states (dicts, tuples, lists, arrays and scalars; NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, (np.ndarray, np.generic, int, float)):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True) and (
            np.asarray(a).dtype == np.asarray(b).dtype
        )
    return a == b


_PROCESSES: dict[str, tuple] = {}


def _process(subject: Subject):
    """The subject's process, initial state and clean-round result (created once)."""
    if subject.name not in _PROCESSES:
        ctx = Context(subject.kind)
        process = subject.build().create(ctx.template)
        state = process.initialize()
        clean = _clean(ctx)
        out = _next(subject, process, state, clean.values, clean.weights)
        _PROCESSES[subject.name] = (process, state, out)
    return _PROCESSES[subject.name]


def _next(subject: Subject, process, state, values, weights):
    if subject.weighted:
        return process.next(state, values, weights)
    return process.next(state, values)


@dataclass
class Outcome:
    code: str  # "result", "error" or "FAIL"
    detail: str

    @property
    def ok(self) -> bool:
        return self.code != "FAIL"


def run_case(subject: Subject, item: Input) -> Outcome:
    """Run one input through one factory and judge it against the invariant."""
    ctx = Context(subject.kind)
    process, state, clean_out = _process(subject)
    before = copy.deepcopy(state)
    call = item.build(ctx)
    weights = call.weights
    if not subject.weighted and not item.weight_input:
        weights = None
    valid = item.valid and (subject.weighted or not item.weight_input)
    try:
        if weights is None:
            out = process.next(state, call.values)
        else:
            out = process.next(state, call.values, weights)
        error = None
    except CallerError as caught:
        error = caught
    except CLEAR_ERRORS as caught:
        error = caught
    except Exception as caught:  # anything else is unclear by definition
        return Outcome("FAIL", f"unclear {type(caught).__name__}: {caught}")
    if not _equal(state, before):
        return Outcome("FAIL", "the state passed in changed")
    again = _next(subject, process, state, *_clean_args(ctx))
    if not _equal(again.result, clean_out.result) or not _equal(again.state, clean_out.state):
        return Outcome("FAIL", "a clean round after it gives other bits")
    if error is not None:
        message = str(error)
        if valid and (subject.name, item.name) in LIMITS and isinstance(error, OverflowError):
            return Outcome("limit", f"{type(error).__name__}: {message}")
        if (
            valid
            and not (isinstance(error, OverflowError) and _unrepresentable(subject, call))
            and not _no_result(subject, call)
        ):
            return Outcome("FAIL", f"a valid input was refused: {type(error).__name__}: {message}")
        if not message or (
            item.names and item.names not in message and not _names_ok(subject, item, error)
        ):
            return Outcome("FAIL", f"the error does not say what is wrong: {message!r}")
        return Outcome("error", f"{type(error).__name__}: {message}")
    return _judge(subject, item, call, out)


def _no_result(subject: Subject, call: Call) -> bool:
    """The reference has no result (too few clients for the rule): an error is right."""
    if call.canon is None:
        return False
    clients, weights = call.canon
    try:
        subject.reference(_matrix(clients), weights, _process(subject)[2].measurements)
    except MustFail:
        return True
    return False


def _unrepresentable(subject: Subject, call: Call) -> bool:
    """The true result does not fit the template's dtype (so an OverflowError is right)."""
    if call.canon is None:
        return False
    clients, weights = call.canon
    x = _matrix(clients)
    try:
        want = np.asarray(subject.reference(x, weights, _process(subject)[2].measurements))
    except MustFail:
        return False
    if subject.kind == "f":
        with np.errstate(over="ignore"):
            return bool((np.isfinite(want) & np.isinf(want.astype(np.float32))).any())
    return bool(((want < -(2**31)) | (want > 2**31 - 1)).any())


def _names_ok(subject: Subject, item: Input, error: Exception) -> bool:
    """Errors that legitimately name something else than the input's usual culprit."""
    message = str(error)
    if item.weight_input and not subject.weighted:
        return "unweighted" in message
    if isinstance(error, OverflowError):
        return "does not fit" in message or "overflow" in message
    return False


def _clean_args(ctx: Context) -> tuple:
    clean = _clean(ctx)
    return clean.values, clean.weights


def _judge(subject: Subject, item: Input, call: Call, out) -> Outcome:
    if call.canon is None:
        return Outcome("FAIL", "a malformed input gave a result")
    clients, weights = call.canon
    x = _matrix(clients)
    try:
        want = subject.reference(x, weights, out.measurements)
    except MustFail as why:
        return Outcome("FAIL", f"gave a result where it must refuse ({why})")
    got = _flat(out.result)
    dtype = np.float32 if subject.kind == "f" else np.int32
    with np.errstate(over="ignore", invalid="ignore"):
        representable = np.asarray(want, np.float64).astype(dtype) if dtype == np.float32 else want
    if dtype == np.float32 and np.isinf(representable).any() and np.isfinite(want).all():
        return Outcome("FAIL", "the true result does not fit float32, yet a result came back")
    # float32 resolves about 1.4e-45 near zero: a few roundings of subnormals cost that much
    atol = (
        subject.atol(x, out.measurements)
        + 1e-6 * float(np.nanmax(np.abs(want), initial=0.0))
        + 1e-43
    )
    if not np.allclose(got, want, rtol=1e-5, atol=atol, equal_nan=True):
        worst = float(np.nanmax(np.abs(got - want), initial=0.0))
        return Outcome("FAIL", f"wrong result (max error {worst:.3g}, atol {atol:.3g})")
    return Outcome("result", "matches the NumPy reference")


def matrix() -> dict[tuple[str, str], Outcome]:
    """Every (input, factory) outcome."""
    return {(i.name, s.name): run_case(s, i) for s in SUBJECTS for i in INPUTS}


def markdown(outcomes: dict[tuple[str, str], Outcome]) -> str:
    """The matrix as a Markdown table: ``R`` correct result, ``E`` clear error, ``FAIL``."""
    names = [s.name for s in SUBJECTS]
    lines = [
        "| input | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for item in INPUTS:
        cells = []
        for name in names:
            outcome = outcomes[(item.name, name)]
            cells.append({"result": "R", "error": "E", "limit": "L"}.get(outcome.code, "**FAIL**"))
        lines.append(f"| {item.name} | " + " | ".join(cells) + " |")
    fails = [(k, o) for k, o in outcomes.items() if not o.ok]
    lines.append("")
    lines.append(
        f"{len(INPUTS)} inputs x {len(SUBJECTS)} factories = {len(outcomes)} cases: "
        f"{sum(o.code == 'result' for o in outcomes.values())} correct results (R), "
        f"{sum(o.code == 'error' for o in outcomes.values())} clear errors (E), "
        f"{sum(o.code == 'limit' for o in outcomes.values())} documented limits (L), "
        f"{len(fails)} failures."
    )
    for (name, item), why in LIMITS.items():
        lines.append(f"- L {name} / {item}: {why}")
    for (item, name), outcome in fails:
        lines.append(f"- FAIL {name} / {item}: {outcome.detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(matrix()))
    sys.exit(0)
