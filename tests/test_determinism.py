"""Results must not depend on the number of threads: run the same work at 1 and 2 threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import aggkit as ak
    from aggkit import kernels

    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        matrix = rng.standard_normal((13, 20_011)).astype(dtype)
        coef = rng.random(13)
        coef[4] = 0.0
        acc = kernels.weighted_sum.weighted_row_sum(matrix, coef, np.zeros(20_011), block=512)
        digest.update(acc.tobytes())
        stats = kernels.row_stats.row_stats(
            matrix, np.array([0, 7, 15_000, 20_011]), with_l1=True, with_minmax=True, chunk=1000
        )
        for part in (stats.l1, stats.l2, stats.linf, stats.tensor_min, stats.tensor_max):
            digest.update(part.tobytes())
    template = {"w": ak.TensorSpec((300, 200), np.float32), "b": ak.TensorSpec((7,), np.float32)}
    process = ak.mean().create(template)
    clients = [{"w": rng.standard_normal((300, 200), dtype=np.float32),
                "b": rng.standard_normal(7, dtype=np.float32)} for _ in range(9)]
    weights = rng.random(9)
    out = process.next(process.initialize(), clients, weights)
    digest.update(out.result["w"].tobytes() + out.result["b"].tobytes())
    clients[4]["w"] *= 1000.0  # zeroed by the robust aggregator
    robust = ak.robust_aggregator().create(template)
    state = robust.initialize()
    for _ in range(3):
        out = robust.next(state, clients, weights)
        state = out.state
        digest.update(out.result["w"].tobytes() + out.result["b"].tobytes())
        digest.update(repr(out.measurements).encode() + repr(state).encode())
    print(digest.hexdigest())
    """
)


def _run(threads: int, script: str = SCRIPT) -> str:
    """The digest ``script`` prints when run in a fresh interpreter on ``threads`` threads."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_bits_do_not_depend_on_thread_count():
    one, two = _run(1), _run(2)
    assert len(one) == 64
    assert one == two
