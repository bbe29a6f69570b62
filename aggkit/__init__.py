"""aggkit: federated-learning aggregation algorithms on NumPy arrays, with Numba kernels.

Factories compose like TensorFlow Federated's aggregators (an outer factory wraps an inner one)::

    import aggkit as ak
    process = ak.mean().create(template)      # template: a structure of arrays or ak.TensorSpec
    state = process.initialize()
    out = process.next(state, client_values, weights)   # out.state, out.result, out.measurements

``import aggkit`` is cheap: it imports NumPy, not numba; kernels compile (or load from the disk
cache) on first use. ``aggkit.privacy`` (which needs dp-accounting) loads on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggkit.bulyan import bulyan
from aggkit.centered_clipping import centered_clipping
from aggkit.compression import quantized_sum
from aggkit.ddp import distributed_dp
from aggkit.dft import dft
from aggkit.discrete import discretization, modular_clipping
from aggkit.dp import gaussian_adaptive, gaussian_fixed
from aggkit.errors import EmptyRoundError, InvalidUpdateError
from aggkit.geometric_median import geometric_median
from aggkit.hadamard import hadamard
from aggkit.krum import krum
from aggkit.mean import mean, unweighted_mean
from aggkit.median import median
from aggkit.presets import (
    compression_aggregator,
    dp_aggregator,
    robust_aggregator,
    secure_aggregator,
)
from aggkit.process import (
    AggregationProcess,
    ConstantEstimate,
    EstimationProcess,
    Factory,
    Output,
)
from aggkit.quantile import private_quantile_estimator, quantile_estimator
from aggkit.robust import clipping, zeroing
from aggkit.secure.modular_sum import secure_modular_sum
from aggkit.secure.secure_sum import secure_sum
from aggkit.structure import ClientBatch, Layout, TensorSpec
from aggkit.sum import sum
from aggkit.tree import tree_aggregation
from aggkit.trimmed_mean import trimmed_mean

if TYPE_CHECKING:  # pragma: no cover
    from aggkit import privacy, testing

__version__ = "0.1.0"

__all__ = [
    "AggregationProcess",
    "ClientBatch",
    "ConstantEstimate",
    "EmptyRoundError",
    "EstimationProcess",
    "Factory",
    "InvalidUpdateError",
    "Layout",
    "Output",
    "TensorSpec",
    "bulyan",
    "centered_clipping",
    "clipping",
    "compression_aggregator",
    "dft",
    "discretization",
    "distributed_dp",
    "dp_aggregator",
    "gaussian_adaptive",
    "gaussian_fixed",
    "geometric_median",
    "hadamard",
    "krum",
    "mean",
    "median",
    "modular_clipping",
    "privacy",
    "private_quantile_estimator",
    "quantile_estimator",
    "quantized_sum",
    "robust_aggregator",
    "secure_aggregator",
    "secure_modular_sum",
    "secure_sum",
    "sum",
    "testing",
    "tree_aggregation",
    "trimmed_mean",
    "unweighted_mean",
    "zeroing",
]

_LAZY_MODULES = ("privacy", "testing")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        import importlib

        module = importlib.import_module(f"aggkit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'aggkit' has no attribute {name!r}")
