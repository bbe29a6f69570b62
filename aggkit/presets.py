"""Recommended compositions with ``tff.learning``'s parameters.

Each preset is an ordinary factory composed from public pieces; read its code to see exactly what
it does, or build your own variant the same way.
"""

from __future__ import annotations

import math

from aggkit import _checks
from aggkit.dp import gaussian_adaptive
from aggkit.kernels.limits import CODE_BITS
from aggkit.mean import mean, unweighted_mean
from aggkit.process import Factory
from aggkit.quantile import quantile_estimator
from aggkit.robust import clipping, zeroing

__all__ = ["dp_aggregator", "robust_aggregator"]


def _secure_records(code_bits: int | None) -> Factory | None:
    """A quantile estimate's record sum: secure with ``code_bits``-bit codes (what
    ``secure_estimation=True`` gives at 32 bits), or None (plain) for ``code_bits=None``."""
    if code_bits is None:
        return None
    from aggkit.secure.secure_sum import secure_sum

    return secure_sum(1.0, code_bits=code_bits)


def _secure_count(code_bits: int | None) -> Factory | None:
    if code_bits is None:
        return None
    from aggkit.secure.secure_sum import secure_sum

    return secure_sum(1, 0)


def _default_zeroing(inner: Factory, secure_bits: int | None = None) -> Factory:
    """Zero updates whose L-inf norm exceeds ``2 * q0.98 + 1`` of the client L-inf norms.

    The estimate starts at 10 and, with learning rate ln(10), adapts very quickly to a value
    somewhat above the largest values seen so far: it can grow by 10**0.98 (about 9.5x) per round
    and shrink by 10**-0.02 (about 0.955x). ``secure_bits``: estimate and count through secure
    sums (the records with codes of that many bits); None: plain sums.
    """
    norm = quantile_estimator(
        10.0,
        0.98,
        math.log(10.0),
        multiplier=2.0,
        increment=1.0,
        record_sum=_secure_records(secure_bits),
    )
    return zeroing(norm, inner, zeroed_count_sum=_secure_count(secure_bits))


def _default_clipping(inner: Factory, secure_bits: int | None = None) -> Factory:
    """Clip to the running 0.8 quantile of client L2 norms (start 1.0, learning rate 0.2);
    ``secure_bits`` as in :func:`_default_zeroing`."""
    norm = quantile_estimator(1.0, 0.8, 0.2, record_sum=_secure_records(secure_bits))
    return clipping(norm, inner, clipped_count_sum=_secure_count(secure_bits))


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


def dp_aggregator(
    noise_multiplier: float,
    clients_per_round: float,
    zeroing: bool = True,
    *,
    population: float | None = None,
    delta: float | None = None,
    seed: int | None = None,
) -> Factory:
    """Differentially private mean with adaptive clipping: ``zeroing(gaussian_adaptive(...))``.

    ``ak.gaussian_adaptive(noise_multiplier, clients_per_round)`` with its defaults (first clip
    0.1, target unclipped quantile 0.5, learning rate 0.2, clipped-count noise
    ``0.05 * clients_per_round``), wrapped in the default adaptive zeroing of
    :func:`robust_aggregator` (L-inf norm above ``2 * q0.98 + 1``), as
    ``tff.learning.dp_aggregator``. Unweighted: the result is divided by the expected
    ``clients_per_round``, so use it with uniform client weights.

    Parameters
    ----------
    noise_multiplier : float
        The overall noise multiplier ``z`` (>= 0); must be below ``0.1 * clients_per_round``
        (twice the default clipped-count noise).
    clients_per_round : float
        The expected number of clients per round (> 0).
    zeroing : bool
        Include the adaptive zeroing stage.
    population, delta, seed
        As in :func:`aggkit.gaussian_fixed`: with ``population``, measurements report the running
        epsilon of the DP layer; ``seed=None`` draws the noise key from the operating system (a
        seeded run is for research reproducibility, not for a deployment).

    Returns
    -------
    Factory
        With zeroing, measurements ``{"zeroing": {"dp_query_metrics": {"clip": float}, "dp": ()},
        "zeroing_norm": float, "zeroed_count": int}`` (``"privacy"`` joins ``"dp"`` when the
        population is given).

    Notes
    -----
    The zeroing threshold is estimated *without* noise from the raw client norms, as in TFF: the
    reported epsilon covers the DP layer only, and the threshold (and which clients it zeroes)
    is not protected by it.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.dp_aggregator(0.5, 20, seed=0).create(ak.TensorSpec((3,), np.float32))
    >>> out = process.next(process.initialize(), [np.full(3, 0.01, np.float32)] * 20)
    >>> out.measurements["zeroing_norm"], out.measurements["zeroed_count"]
    (21.0, 0)
    >>> clip = out.measurements["zeroing"]["dp_query_metrics"]["clip"]  # next round's clip
    >>> round(clip, 3)  # all 20 below 0.1: about 0.1 * exp(-0.2 * 0.5); the count is noised
    0.091
    """
    _check_flags(zeroing=zeroing)
    factory: Factory = gaussian_adaptive(
        noise_multiplier, clients_per_round, population=population, delta=delta, seed=seed
    )
    if zeroing:
        factory = _default_zeroing(factory)
    return factory


def compression_aggregator(
    *, zeroing: bool = True, clipping: bool = True, weighted: bool = True
) -> Factory:
    """Robust mean whose value sum is quantized: ``zeroing(clipping(mean(quantized_sum())))``.

    Tensors with more than 20,000 elements are quantized per client to 8 bits with stochastic
    rounding (unbiased) between the client's own min and max of its *weighted* update; smaller
    tensors (biases, small layers) are summed exactly. Client uploads shrink about 3.5x (8-bit
    levels packed 28 bits to a 32-bit word, as in TFF); the
    ``mean_value`` measurements report ``bytes_per_client`` and ``compression_ratio``.

    Parameters
    ----------
    zeroing, clipping : bool
        Include the adaptive zeroing / clipping stages of :func:`robust_aggregator`.
    weighted : bool
        Weighted or unweighted mean at the core.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> process = ak.compression_aggregator().create(ak.TensorSpec((30_000,), np.float32))
    >>> values = [np.full(30_000, 0.001 * i, np.float32) for i in range(3)]
    >>> out = process.next(process.initialize(), values, [1, 1, 1])
    >>> round(out.measurements["zeroing"]["clipping"]["mean_value"]["compression_ratio"], 2)
    3.5
    """
    from aggkit.compression import quantized_sum

    _check_flags(zeroing=zeroing, clipping=clipping, weighted=weighted)
    value_sum = quantized_sum(bits=8, threshold=20000)
    factory: Factory = mean(value_sum) if weighted else unweighted_mean(value_sum)
    if clipping:
        factory = _default_clipping(factory)
    if zeroing:
        factory = _default_zeroing(factory)
    return factory


def secure_aggregator(
    *, zeroing: bool = True, clipping: bool = True, weighted: bool = True, code_bits: int = 32
) -> Factory:
    """Robust mean computed with secure sums only (``tff.learning``'s ``secure_aggregator``).

    Every sum the server takes goes through a secure channel: the values through a 32-bit
    (``code_bits``) discretized secure sum whose symmetric range is ``2 * q0.95`` of the
    clients' max |value| (estimated with secure sums too, starting at 50), the weights through a
    secure sum in ``[0, 2**20 - 1]`` (larger weights are clipped and counted), the counts of
    zeroed and clipped clients through 1-bit secure sums, and every quantile estimate's records
    through secure sums.
    Use it with :mod:`aggkit.secure` to run the real pairwise-masking protocol behind the sums.

    Parameters
    ----------
    zeroing, clipping : bool
        Include the adaptive zeroing / clipping stages (with secure estimation).
    weighted : bool
        Weighted or unweighted mean at the core.
    code_bits : int
        Bits per code of every float secure sum here (values, weights, the estimates'
        records), 1 to 32 (:func:`aggkit.secure.secure_sum.secure_sum`); 32, TFF's width, by
        default. Fewer bits make each value and weight coarser (a step of
        ``range / (2**b - 1)``: the weights' range is ``[0, 2**20 - 1]``) and a real protocol's
        messages shorter: a sum of ``K`` clients needs ``b + ceil(log2 K)`` bits per value on
        the wire (at 20 clients, 22-bit codes fit 4-byte words, 32-bit codes take 5 bytes).

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.testing import assert_only_secure
    >>> process = ak.secure_aggregator().create(ak.TensorSpec((4,), np.float32))
    >>> values = [np.full(4, 0.1, np.float32), np.full(4, 0.3, np.float32)]
    >>> out = assert_only_secure(process, process.initialize(), values, [1.0, 1.0])
    >>> np.allclose(out.result, 0.2)
    True
    """
    from aggkit.secure.secure_sum import secure_sum

    _check_flags(zeroing=zeroing, clipping=clipping, weighted=weighted)
    code_bits = _checks.integer(code_bits, "code_bits", low=1, high=CODE_BITS)
    records = _secure_records(code_bits)
    bound = quantile_estimator(50.0, 0.95, 1.0, multiplier=2.0, record_sum=records)
    factory: Factory
    if weighted:
        factory = mean(
            value_sum=secure_sum(bound, code_bits=code_bits),
            weight_sum=secure_sum(float(2**20 - 1), 0.0, code_bits=code_bits),
        )
    else:
        factory = unweighted_mean(
            value_sum=secure_sum(bound, code_bits=code_bits), count_sum=secure_sum(1, 0)
        )
    if clipping:
        factory = _default_clipping(factory, secure_bits=code_bits)
    if zeroing:
        factory = _default_zeroing(factory, secure_bits=code_bits)
    return factory
