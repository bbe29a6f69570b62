"""Hypothesis strategies shared by the tests: client matrices, layouts and coefficients."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def offsets(draw, n: int, max_tensors: int = 5) -> np.ndarray:
    """Tensor boundaries over ``n`` columns, empty tensors allowed."""
    count = draw(st.integers(1, max_tensors))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=count - 1, max_size=count - 1)))
    return np.asarray([0, *cuts, n], dtype=np.int64)


@st.composite
def client_matrices(
    draw,
    *,
    max_rows: int = 9,
    max_cols: int = 300,
    dtype=None,
    allow_nonfinite: bool = True,
    magnitude: float = 1e6,
) -> np.ndarray:
    """A C-contiguous ``[K, n]`` float matrix; some rows may hold NaN/Inf, zeros or huge values."""
    dtype = draw(FLOAT_DTYPES) if dtype is None else dtype
    rows = draw(st.integers(0, max_rows))
    cols = draw(st.integers(0, max_cols))
    elements = st.floats(
        -magnitude,
        magnitude,
        allow_nan=False,
        allow_infinity=False,
        width=np.dtype(dtype).itemsize * 8,
    )
    matrix = draw(hnp.arrays(dtype, (rows, cols), elements=elements))
    if rows and cols and allow_nonfinite and draw(st.booleans()):
        special = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        r = draw(st.integers(0, rows - 1))
        c = draw(st.integers(0, cols - 1))
        matrix[r, c] = special
    if rows and draw(st.booleans()):
        matrix[draw(st.integers(0, rows - 1))] = 0.0
    return np.ascontiguousarray(matrix)


def coefficients(rows: int):
    """Non-negative float64 coefficients, with exact zeros likely."""
    return hnp.arrays(
        np.float64,
        rows,
        elements=st.one_of(st.just(0.0), st.floats(0, 1e3, allow_nan=False)),
    )
