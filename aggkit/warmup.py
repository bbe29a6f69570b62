"""Fill numba's disk cache with the kernels of chosen compositions, ahead of the first round.

With an empty cache, a process's first round compiles every kernel its composition uses (seconds
per preset, see ``benchmarks/coldstart.py``). An image build, a CI cache step or a deployment can
pay that once: ``python -m aggkit warmup`` (or :func:`warmup`) runs a small round of each chosen
preset, which compiles its kernels and writes them to the disk cache; later processes load them.

Where the cache lives and what invalidates it is described in ``docs/guide/configuration.md``
("The disk cache"). Kernels are compiled for the dtypes the warm-up runs with (float32 by
default; ``dtypes=("float32", "float64")`` for both), and for the host's CPU: a cache filled on
another CPU model is not used.

Example::

    from aggkit.warmup import warmup
    warmup(["mean", "robust"])        # returns the presets it ran
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from aggkit.process import Factory

__all__ = ["PRESETS", "preset_factory", "warmup"]


def _presets() -> dict[str, Callable[[], Factory]]:
    import aggkit as ak

    return {
        "mean": ak.mean,
        "robust": ak.robust_aggregator,
        "dp": lambda: ak.dp_aggregator(1.0, 100),
        "compression": ak.compression_aggregator,
        "secure": ak.secure_aggregator,
    }


#: The presets :func:`warmup` knows, by name: ``ak.mean()``, ``ak.robust_aggregator()``,
#: ``ak.dp_aggregator(1.0, 100)``, ``ak.compression_aggregator()``, ``ak.secure_aggregator()``.
PRESETS: tuple[str, ...] = ("mean", "robust", "dp", "compression", "secure")

# Two sizes: kernels that pick a code path by length (serial below a block, parallel above)
# compile both. The larger one spans several Hadamard blocks and random-number pieces, and is
# also run beside a small tensor (a layer and its bias: a compression round then sums the small
# one exactly).
_SIZES = (1_000, 300_000)
_SMALL_TENSOR = 10
# Some kernels compile a one-row path only for a number of rows that is not a multiple of four
# (``aggkit.kernels.quantize``, ``aggkit.kernels.discretize``): both counts run.
_CLIENTS = (4, 5)


def preset_factory(name: str) -> Factory:
    """The factory of the preset called ``name`` (one of :data:`PRESETS`)."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return presets[name]()


def warmup(presets: Iterable[str] = PRESETS, dtypes: Iterable[str] = ("float32",)) -> list[str]:
    """Run small rounds of each preset in ``presets`` for each dtype; the presets run.

    Compiles (or loads) every kernel those compositions use and, with the disk cache on (the
    default; ``AGGKIT_NUMBA_CACHE=0`` turns it off), writes them to it.
    """
    names = list(presets)
    for name in names:
        preset_factory(name)  # unknown names fail before any work
    rng = np.random.default_rng(0)
    for name in names:
        factory = preset_factory(name)
        for dtype in dtypes:
            for sizes in [(size,) for size in _SIZES] + [(_SIZES[-1], _SMALL_TENSOR)]:
                process = factory.create([_spec(size, dtype) for size in sizes])
                state = process.initialize()
                for clients in _CLIENTS:
                    values = [
                        [rng.normal(0.0, 1e-3, size).astype(dtype) for size in sizes]
                        for _ in range(clients)
                    ]
                    weights = np.ones(clients) if factory.is_weighted else None
                    for _ in range(2):  # later rounds use updated estimates
                        state = process.next(state, values, weights).state
    return names


def _spec(size: int, dtype: str):
    from aggkit.structure import TensorSpec

    return TensorSpec((size,), np.dtype(dtype))
