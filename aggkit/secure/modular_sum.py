"""``ak.secure_modular_sum``: the sum of integer client values modulo ``m``, computed securely.

The secure modular channel (:mod:`aggkit.channels`) returns ``(sum_i v_i) mod m`` and nothing
else; values outside ``[0, m)`` wrap around. With ``symmetric_range=True`` the result
lies in ``[-(m - 1), m - 1]``: the channel runs modulo ``m' = 2m - 1`` and sums ``r >= m`` come back
as ``r - m'``, which is the same residue modulo ``m'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggkit import channels, kernels
from aggkit.process import AggregationProcess, Contributions, Factory, Round, State
from aggkit.structure import Layout

__all__ = ["SecureModularSumFactory", "SecureModularSumProcess", "secure_modular_sum"]


@dataclass(frozen=True)
class SecureModularSumFactory(Factory):
    """Unweighted factory of :class:`SecureModularSumProcess`; build it with
    :func:`secure_modular_sum`."""

    modulus: int
    symmetric_range: bool = False

    is_weighted = False

    def __post_init__(self) -> None:
        if isinstance(self.modulus, bool) or not isinstance(self.modulus, int | np.integer):
            raise TypeError(f"modulus must be an int, got {self.modulus!r}")
        if not isinstance(self.symmetric_range, bool):
            raise TypeError(f"symmetric_range must be a bool, got {self.symmetric_range!r}")
        modulus = int(self.modulus)
        if modulus <= 0:
            raise ValueError(f"modulus must be positive, got {modulus}")
        if self.channel_modulus(modulus) > channels.MAX_MODULUS:
            raise ValueError(
                f"modulus must keep the channel's modulus within 2**62, got {modulus}"
                + (" (symmetric_range sums modulo 2 * modulus - 1)" if self.symmetric_range else "")
            )
        object.__setattr__(self, "modulus", modulus)

    def channel_modulus(self, modulus: int | None = None) -> int:
        """The modulus the secure channel works with: ``m``, or ``2m - 1`` when symmetric."""
        m = self.modulus if modulus is None else modulus
        return 2 * m - 1 if self.symmetric_range else m

    def _create(self, layout: Layout) -> SecureModularSumProcess:
        if layout.num_tensors == 0 or not all(s.dtype.kind in "iu" for s in layout.specs):
            kinds = ", ".join(str(s.dtype) for s in layout.specs) or "no tensors"
            raise TypeError(f"secure_modular_sum sums integer tensors only, got {kinds}")
        # Results are in [0, m - 1] (or [-(m - 1), m - 1]): refuse a template that cannot hold
        # them, rather than wrap them into another residue at the cast.
        lowest = -(self.modulus - 1) if self.symmetric_range else 0
        for path, spec in zip(layout.paths, layout.specs, strict=True):
            info = np.iinfo(spec.dtype)
            if lowest < info.min or self.modulus - 1 > info.max:
                kind = "symmetric_range results" if self.symmetric_range else "results"
                raise ValueError(
                    f"modulus {self.modulus} gives {kind} in [{lowest}, {self.modulus - 1}], "
                    f"which tensor {path} of dtype {spec.dtype} cannot hold "
                    f"([{info.min}, {info.max}])"
                )
        return SecureModularSumProcess(layout, self.channel_modulus(), self.symmetric_range)


def secure_modular_sum(modulus: int, symmetric_range: bool = False) -> SecureModularSumFactory:
    """An unweighted aggregator returning the sum of integer client values modulo ``modulus``.

    Only the modular sum reaches the server (secure modular channel). Values outside the range
    wrap around; nothing is clipped.

    Parameters
    ----------
    modulus : int
        Positive. The result is in ``[0, modulus - 1]``.
    symmetric_range : bool
        Return the result in ``[-(modulus - 1), modulus - 1]`` instead: the sum is taken modulo
        ``2 * modulus - 1`` and residues ``>= modulus`` are returned as negative numbers.

    Returns
    -------
    SecureModularSumFactory
        Its processes have state ``()`` and measurements ``()``.

    Raises
    ------
    TypeError
        ``modulus`` is not an int, ``symmetric_range`` not a bool, or (at ``create``) the template
        has non-integer tensors.
    ValueError
        ``modulus <= 0``, or the channel's modulus would exceed ``2**62``; at ``create``, a
        result in ``[0, modulus - 1]`` (``[-(modulus - 1), modulus - 1]`` with
        ``symmetric_range``) would not fit a tensor's dtype.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> from aggkit.secure.modular_sum import secure_modular_sum
    >>> process = secure_modular_sum(8).create(ak.TensorSpec((), np.int32))
    >>> print(process.next((), [1, 2, 3, 4]).result)
    2
    >>> process = secure_modular_sum(8, symmetric_range=True).create(ak.TensorSpec((), np.int32))
    >>> print(process.next((), [1, 2, 3, 4]).result)
    -5
    """
    return SecureModularSumFactory(modulus, symmetric_range)


class SecureModularSumProcess(AggregationProcess):
    """Process of :func:`secure_modular_sum` (``modulus`` is the channel's modulus)."""

    is_weighted = False

    def __init__(self, layout: Layout, modulus: int, symmetric_range: bool):
        super().__init__(layout)
        self.modulus = modulus
        self.symmetric_range = symmetric_range

    def initialize(self) -> State:
        return ()

    def begin_round(self, state: State) -> Round:
        return _ModularRound(self)


class _ModularRound(Round):
    def __init__(self, process: SecureModularSumProcess):
        self.process = process
        self.channel = channels.SecureChannelSum(
            process.layout.size, modulus=process.modulus, owner="secure_modular_sum"
        )

    def add(self, block: Contributions, weights: np.ndarray | None) -> None:
        coef = block.coef
        if not np.isin(coef, (0.0, 1.0)).all():
            raise TypeError(
                "secure_modular_sum takes coefficients 0 or 1 only (integer values cannot be "
                "scaled)"
            )
        m = self.process.modulus
        if self.channel.fused:
            self.channel.add_accumulated(block.num_clients)
            kernels.discretize.modular_sum(block.matrix, coef, m, self.channel.accumulator)
        else:
            residues = np.mod(block.matrix, m)
            residues[coef == 0] = 0
            self.channel.add(residues)

    def finish(self) -> tuple[State, np.ndarray, tuple]:
        total = self.channel.finish()
        if self.process.symmetric_range:
            m = self.process.modulus
            total = np.where(total >= (m + 1) // 2, total - m, total)
        return (), total, ()
