"""Malformed calls of every kernel entry point, run in a child process (issue 20, item 8).

The kernels are importable, so their Python entry points are a trust boundary too: each must
refuse a malformed argument with a TypeError or ValueError that names it, before any compiled
code runs (compiled code does not check bounds: a coefficient vector longer than the matrix used
to read rows that do not exist and kill the interpreter).

``python -m tests.adversarial.kernel_cases [first]`` runs the cases from index ``first`` and
prints one JSON line per case *before* (``start``) and after (``end``) the call, so that the
parent (``test_kernel_entry.py``) knows which case a crash happened in and can resume after it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import numpy as np

F32, F64, I64 = np.float32, np.float64, np.int64


def _m(rows: int = 3, cols: int = 5000, dtype=F32) -> np.ndarray:
    return np.ones((rows, cols), dtype)


def _cases() -> list[tuple[str, str, str, Callable[[], object]]]:
    """``(entry point, case, argument the error must name, call)``."""
    from aggkit.kernels import (
        counter_rng,
        discrete_noise,
        discretize,
        distances,
        divide_cast,
        gaussian_noise,
        hadamard,
        masking,
        order_stats,
        quantize,
        row_stats,
        weighted_sum,
    )

    ws, dc, dz = weighted_sum, divide_cast, discretize
    z64 = np.zeros
    code = dict(lo=-1.0, hi=1.0, scale=(2**32 - 1) / 2, shift=-(2**31))
    cases = [
        # weighted_sum.weighted_row_sum
        (
            "weighted_row_sum",
            "coef longer than K",
            "coef",
            lambda: ws.weighted_row_sum(_m(), np.ones(10), z64(5000)),
        ),
        (
            "weighted_row_sum",
            "coef shorter than K",
            "coef",
            lambda: ws.weighted_row_sum(_m(), np.ones(2), z64(5000)),
        ),
        (
            "weighted_row_sum",
            "acc shorter than n",
            "acc",
            lambda: ws.weighted_row_sum(_m(), np.ones(3), z64(10)),
        ),
        (
            "weighted_row_sum",
            "1-D matrix",
            "matrix",
            lambda: ws.weighted_row_sum(np.ones(5000, F32), np.ones(1), z64(5000)),
        ),
        (
            "weighted_row_sum",
            "non-contiguous matrix",
            "matrix",
            lambda: ws.weighted_row_sum(_m(3, 10000)[:, ::2], np.ones(3), z64(5000)),
        ),
        (
            "weighted_row_sum",
            "read-only acc",
            "acc",
            lambda: ws.weighted_row_sum(_m(), np.ones(3), _readonly(z64(5000))),
        ),
        (
            "weighted_row_sum",
            "float32 acc",
            "acc",
            lambda: ws.weighted_row_sum(_m(), np.ones(3), np.zeros(5000, F32)),
        ),
        (
            "weighted_row_sum",
            "block 0",
            "block",
            lambda: ws.weighted_row_sum(_m(), np.ones(3), z64(5000), block=0),
        ),
        (
            "weighted_row_sum",
            "finite of size 0",
            "finite",
            lambda: ws.weighted_row_sum(_m(), np.ones(3), z64(5000), finite=np.ones(0, bool)),
        ),
        # weighted_sum.small_weighted_row_sum (NumPy, but the same contract)
        (
            "small_weighted_row_sum",
            "coef longer than K",
            "coef",
            lambda: ws.small_weighted_row_sum(_m(3, 2), np.ones(10), z64(2)),
        ),
        (
            "small_weighted_row_sum",
            "acc of another length",
            "acc",
            lambda: ws.small_weighted_row_sum(_m(3, 2), np.ones(3), z64(5)),
        ),
        # divide_cast.divide_cast
        (
            "divide_cast",
            "non-contiguous out",
            "out",
            lambda: dc.divide_cast(z64(100), 2.0, z64(200)[::2]),
        ),
        (
            "divide_cast",
            "read-only out",
            "out",
            lambda: dc.divide_cast(z64(100), 2.0, _readonly(z64(100))),
        ),
        (
            "divide_cast",
            "block 0",
            "block",
            lambda: dc.divide_cast(z64(100), 2.0, z64(100), block=0),
        ),
        # discretize.discretize_sum
        (
            "discretize_sum",
            "1-D matrix",
            "matrix",
            lambda: dz.discretize_sum(np.ones(5, F32), np.ones(1), **code, out=z64(5, I64)),
        ),
        (
            "discretize_sum",
            "non-contiguous matrix",
            "matrix",
            lambda: dz.discretize_sum(_m(3, 10)[:, ::2], np.ones(3), **code, out=z64(5, I64)),
        ),
        (
            "discretize_sum",
            "block 0",
            "block",
            lambda: dz.discretize_sum(_m(3, 5), np.ones(3), **code, out=z64(5, I64), block=0),
        ),
        (
            "discretize_sum",
            "int64 coef",
            "coef",
            lambda: dz.discretize_sum(_m(3, 5), np.ones(3, I64), **code, out=z64(5, I64)),
        ),
        # discretize.discretize_sum_int
        (
            "discretize_sum_int",
            "1-D matrix",
            "matrix",
            lambda: dz.discretize_sum_int(np.ones(5, I64), np.ones(1), 0, 9, 1, z64(5, I64)),
        ),
        (
            "discretize_sum_int",
            "read-only out",
            "out",
            lambda: dz.discretize_sum_int(
                _m(3, 5, I64), np.ones(3), 0, 9, 1, _readonly(z64(5, I64))
            ),
        ),
        # discretize.modular_sum
        (
            "modular_sum",
            "coef longer than K",
            "coef",
            lambda: dz.modular_sum(_m(3, 5000, I64), np.ones(10), 7, z64(5000, I64)),
        ),
        (
            "modular_sum",
            "1-D matrix",
            "matrix",
            lambda: dz.modular_sum(np.ones(5, I64), np.ones(1), 7, z64(5, I64)),
        ),
        # discretize.decode_sum
        ("decode_sum", "float total", "total", lambda: dz.decode_sum(z64(5000), 0, 1.0)),
        ("decode_sum", "2-D total", "total", lambda: dz.decode_sum(z64((2, 5000), I64), 0, 1.0)),
        (
            "decode_sum",
            "non-contiguous total",
            "total",
            lambda: dz.decode_sum(z64(10000, I64)[::2], 0, 1.0),
        ),
        # counter_rng
        (
            "fill_uniform01",
            "read-only out",
            "out",
            lambda: counter_rng.fill_uniform01(_readonly(z64(10)), 1),
        ),
        ("fill_rademacher", "int out", "out", lambda: counter_rng.fill_rademacher(z64(10, I64), 1)),
        # gaussian_noise
        (
            "add_gaussian_noise",
            "non-contiguous out",
            "out",
            lambda: gaussian_noise.add_gaussian_noise(z64(20)[::2], 1.0, 1),
        ),
        ("gaussian", "negative sigma", "sigma", lambda: gaussian_noise.gaussian(3, -1.0, 1)),
        # hadamard
        ("fwht", "read-only x", "x", lambda: hadamard.fwht(_readonly(z64(8)))),
        ("fill_signs", "float out", "out", lambda: hadamard.fill_signs(z64(8), 1)),
        ("fill_signs", "negative key", "key", lambda: hadamard.fill_signs(z64(8, np.int8), -1)),
        (
            "rotate_rows",
            "offsets beyond the matrix",
            "offsets",
            lambda: hadamard.rotate_rows(
                _m(2, 4, F64),
                np.ones(2),
                np.array([0, 4096]),
                np.array([0, 4096]),
                np.ones(4096, np.int8),
                z64((1, 1), I64),
                z64((2, 4096)),
            ),
        ),
        (
            "rotate_rows",
            "out with fewer rows than K",
            "out",
            lambda: hadamard.rotate_rows(
                _m(4, 4, F64),
                np.ones(4),
                np.array([0, 4]),
                np.array([0, 4]),
                np.ones(4, np.int8),
                z64((1, 1), I64),
                z64((1, 4)),
            ),
        ),
        (
            "rotate_rows",
            "signs too short",
            "signs",
            lambda: hadamard.rotate_rows(
                _m(2, 4096, F64),
                np.ones(2),
                np.array([0, 4096]),
                np.array([0, 4096]),
                np.ones(4, np.int8),
                z64((1, 1), I64),
                z64((2, 4096)),
            ),
        ),
        (
            "unrotate",
            "signs too short",
            "signs",
            lambda: hadamard.unrotate(
                z64(4096),
                np.array([0, 4096]),
                np.array([0, 4096]),
                np.ones(4, np.int8),
                z64((1, 1), I64),
                z64(4096),
            ),
        ),
        # masking
        (
            "add_words_pow2",
            "words shorter than acc",
            "words",
            lambda: masking.add_words_pow2(z64(100000, np.uint64), z64(1, np.uint64), 2**16),
        ),
        (
            "add_mod",
            "words shorter than acc",
            "values",
            lambda: masking.add_mod(z64(100000, np.uint64), z64(1, np.uint64), 7),
        ),
        (
            "add_words_rejection",
            "start beyond acc",
            "start",
            lambda: masking.add_words_rejection(z64(4, np.uint32), 9, z64(4, np.uint32), 7),
        ),
        # quantize
        (
            "quantized_row_sum",
            "offsets beyond the matrix",
            "offsets",
            lambda: quantize.quantized_row_sum(
                _m(2, 10),
                np.ones(2),
                np.array([0, 100000]),
                np.array([True]),
                z64((2, 1)),
                np.ones((2, 1)),
                np.ones((2, 1)),
                8,
                1,
                0,
                z64(100000),
            ),
        ),
        (
            "quantized_row_sum",
            "lo of the wrong shape",
            "lo",
            lambda: quantize.quantized_row_sum(
                _m(2, 10),
                np.ones(2),
                np.array([0, 10]),
                np.array([True]),
                z64((1, 1)),
                np.ones((2, 1)),
                np.ones((2, 1)),
                8,
                1,
                0,
                z64(10),
            ),
        ),
        (
            "quantized_row_sum",
            "acc shorter than n",
            "acc",
            lambda: quantize.quantized_row_sum(
                _m(2, 100000),
                np.ones(2),
                np.array([0, 100000]),
                np.array([False]),
                z64((2, 1)),
                np.ones((2, 1)),
                np.ones((2, 1)),
                8,
                1,
                0,
                z64(10),
            ),
        ),
        (
            "stochastic_levels",
            "out shorter than x",
            "out",
            lambda: quantize.stochastic_levels(z64(100000), 1.0, 0.0, 1.0, 8, 1, z64(1, np.uint32)),
        ),
        (
            "pack_bits",
            "values beyond the bit width",
            "values",
            lambda: quantize.pack_bits(np.array([300], np.uint32), 8),
        ),
        (
            "unpack_bits",
            "out shorter than count",
            "out",
            lambda: quantize.unpack_bits(
                quantize.pack_bits(np.zeros(100000, np.uint32), 8), 8, 100000, z64(1, np.uint32)
            ),
        ),
        # row_stats
        (
            "row_stats",
            "offsets beyond the matrix",
            "offsets",
            lambda: row_stats.row_stats(_m(2, 10), np.array([0, 10, 1000000])),
        ),
        (
            "row_stats",
            "decreasing offsets",
            "offsets",
            lambda: row_stats.row_stats(_m(2, 10), np.array([0, 8, 4, 10])),
        ),
        (
            "row_stats",
            "1-D matrix",
            "matrix",
            lambda: row_stats.row_stats(np.ones(10, F32), np.array([0, 10])),
        ),
        # discrete_noise
        (
            "add_discrete_gaussian",
            "read-only out",
            "out",
            lambda: discrete_noise.add_discrete_gaussian(_readonly(z64(10, I64)), 1.0, 1),
        ),
        (
            "add_skellam",
            "float out",
            "out",
            lambda: discrete_noise.add_skellam(z64(10), 1.0, 1),
        ),
        # distances
        (
            "pairwise_sq_distances",
            "coef shorter than K",
            "coef",
            lambda: distances.pairwise_sq_distances(_m(8, 5000), np.ones(1)),
        ),
        (
            "center_distances",
            "center shorter than n",
            "center",
            lambda: distances.center_distances(_m(3, 100000), np.ones(3), np.zeros(1)),
        ),
        (
            "center_step",
            "out shorter than n",
            "out",
            lambda: distances.center_step(_m(3, 100000), np.ones(3), np.ones(3), 1.0, np.zeros(1)),
        ),
        (
            "center_step",
            "row_coef shorter than K",
            "row_coef",
            lambda: distances.center_step(_m(3, 100000), np.ones(3), np.ones(1), 1.0, z64(100000)),
        ),
        # order_stats
        (
            "order_statistic",
            "rows beyond the matrix",
            "rows",
            lambda: order_stats.order_statistic(
                _m(3, 5000),
                np.array([0, 1, 10**6]),
                np.ones(3),
                np.empty(5000, F32),
                mode=order_stats.MEDIAN,
            ),
        ),
        (
            "order_statistic",
            "out shorter than n",
            "out",
            lambda: order_stats.order_statistic(
                _m(3, 100000), np.arange(3), np.ones(3), np.empty(1, F32), mode=order_stats.MEDIAN
            ),
        ),
    ]
    return cases


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def case_ids() -> list[tuple[str, str, str]]:
    """``(entry point, case, argument)`` of every case, in order (imports the kernel modules)."""
    return [(entry, case, arg) for entry, case, arg, _ in _cases()]


def main(first: int) -> None:
    cases = _cases()
    for index in range(first, len(cases)):
        _, _, _, call = cases[index]
        print(json.dumps({"index": index, "start": True}), flush=True)
        try:
            call()
            outcome = {"kind": "returned", "message": ""}
        except Exception as error:  # every outcome is recorded; the parent judges it
            outcome = {"kind": type(error).__name__, "message": str(error)[:300]}
            outcome["clean"] = isinstance(error, (TypeError, ValueError))
        print(json.dumps({"index": index, **outcome}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
