"""Every Byzantine-robust rule gives the same bits on 1 and 2 threads."""

from __future__ import annotations

import textwrap

from tests.test_determinism import _run

SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import aggkit as ak

    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    factories = [ak.median(), ak.trimmed_mean(0.2), ak.krum(3), ak.krum(3, 4), ak.bulyan(2),
                 ak.geometric_median(), ak.centered_clipping(5.0, 2),
                 ak.clipping(50.0, ak.median())]
    for dtype in (np.float32, np.float64):
        matrix = rng.standard_normal((13, 70_001)).astype(dtype)
        matrix[:2] += dtype(3.0)
        weights = rng.uniform(1, 5, 13)
        for factory in factories:
            process = factory.create(ak.TensorSpec((70_001,), dtype))
            state = process.initialize()
            for _ in range(2):
                out = process.next(state, matrix, weights if process.is_weighted else None)
                state = out.state
                digest.update(out.result.tobytes() + repr(out.measurements).encode())
    print(digest.hexdigest())
    """
)


def test_bits_do_not_depend_on_thread_count():
    one, two = _run(1, SCRIPT), _run(2, SCRIPT)
    assert len(one) == 64
    assert one == two
