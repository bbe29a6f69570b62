"""Secure summation: modular sums and the pairwise-masking secure aggregation protocol.

Nothing is imported here on purpose: ``import aggkit.secure`` stays cheap and does not import
``cryptography``. The protocol lives in ``aggkit.secure.protocol`` (client and server state
machines), ``messages``, ``crypto``, ``shamir``, ``graph`` and ``simulation`` (in-process rounds,
``run_secure_sum``).
"""
