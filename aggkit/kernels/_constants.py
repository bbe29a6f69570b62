"""Numeric limits shared by the kernels and the modules that call them (no numba import).

Each constant is defined here once; kernel modules and core modules import it from here, so a
limit a kernel relies on and the check that guards it cannot drift apart.
"""

from __future__ import annotations

__all__ = [
    "CODE_BITS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BITWIDTH",
    "MAX_CODE",
    "MAX_MODULUS",
    "UINT64_LIMIT",
    "WORD_BITS",
]

#: The int64 range (the exact accumulators of integer sums and of secure-sum codes).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: One past the largest uint64 (stream keys are in ``[0, UINT64_LIMIT)``).
UINT64_LIMIT = 2**64

#: Bits of a discretized float on the secure channel, and the largest such code.
CODE_BITS = 32
MAX_CODE = 2**CODE_BITS - 1

#: The widest secure-channel input and the largest channel modulus: a modular accumulator
#: ``acc + r`` with ``acc, r < 2**62`` cannot overflow int64.
MAX_BITWIDTH = 62
MAX_MODULUS = 2**MAX_BITWIDTH

#: Payload bits per packed int32 word of a quantized tensor (the sign bit and 3 more stay clear).
WORD_BITS = 28
