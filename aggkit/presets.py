"""Recommended compositions with ``tff.learning``'s parameters.

Each preset is an ordinary factory composed from public pieces; read its code to see exactly what
it does, or build your own variant the same way.
"""

from __future__ import annotations

import math

from aggkit.mean import mean, unweighted_mean
from aggkit.process import Factory
from aggkit.quantile import quantile_estimator
from aggkit.robust import clipping, zeroing

__all__ = ["robust_aggregator"]


def _default_zeroing(inner: Factory, secure_estimation: bool = False) -> Factory:
    """Zero updates whose L-inf norm exceeds ``2 * q0.98 + 1`` of the client L-inf norms.

    The estimate starts at 10 and, with learning rate ln(10), adapts very quickly to a value
    somewhat above the largest values seen so far: it can grow by 10**0.98 (about 9.5x) per round
    and shrink by 10**-0.02 (about 0.955x).
    """
    norm = quantile_estimator(
        10.0,
        0.98,
        math.log(10.0),
        multiplier=2.0,
        increment=1.0,
        secure_estimation=secure_estimation,
    )
    count_sum = None
    if secure_estimation:
        from aggkit.secure.secure_sum import secure_sum

        count_sum = secure_sum(1, 0)
    return zeroing(norm, inner, zeroed_count_sum=count_sum)


def _default_clipping(inner: Factory, secure_estimation: bool = False) -> Factory:
    """Clip to the running 0.8 quantile of client L2 norms (start 1.0, learning rate 0.2)."""
    norm = quantile_estimator(1.0, 0.8, 0.2, secure_estimation=secure_estimation)
    count_sum = None
    if secure_estimation:
        from aggkit.secure.secure_sum import secure_sum

        count_sum = secure_sum(1, 0)
    return clipping(norm, inner, clipped_count_sum=count_sum)


def _check_flags(**flags: bool) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


def robust_aggregator(
    *, zeroing: bool = True, clipping: bool = True, weighted: bool = True
) -> Factory:
    """Mean with adaptive zeroing and clipping: ``zeroing(clipping(mean()))``.

    On each client, in order: zero the update if its L-inf norm exceeds ``2 * q0.98 + 1`` of
    recent L-inf norms (a broken or malicious client is dropped), clip it to the running 0.8
    quantile of L2 norms, then average (weighted by the client weights, or uniformly).

    Parameters
    ----------
    zeroing, clipping : bool
        Include the adaptive zeroing / clipping stage.
    weighted : bool
        ``ak.mean()`` (weighted) or ``ak.unweighted_mean()`` at the core.

    Returns
    -------
    Factory
        With everything on, measurements ``{"zeroing": {"clipping": {"mean_value": (),
        "mean_weight": ()}, "clipping_norm": float, "clipped_count": int}, "zeroing_norm": float,
        "zeroed_count": int}``, as ``tff.learning.robust_aggregator``.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.robust_aggregator().create(ak.TensorSpec((3,), np.float32))
    >>> out = process.next(process.initialize(), [np.ones(3, np.float32)] * 4, [1, 1, 1, 1])
    >>> out.measurements["zeroing_norm"], out.measurements["zeroing"]["clipping_norm"]
    (21.0, 1.0)
    """
    _check_flags(zeroing=zeroing, clipping=clipping, weighted=weighted)
    factory: Factory = mean() if weighted else unweighted_mean()
    if clipping:
        factory = _default_clipping(factory)
    if zeroing:
        factory = _default_zeroing(factory)
    return factory
