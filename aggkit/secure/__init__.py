"""Secure summation: modular sums and the pairwise-masking secure aggregation protocol.

Nothing is imported here on purpose: ``import aggkit.secure`` stays cheap and does not import
``cryptography``. The modules:

- ``secure_sum`` (``ak.secure_sum``, the 32-bit discretized secure sum) and ``modular_sum``
  (``secure_modular_sum``): aggregators whose sums go through the secure channels of
  :mod:`aggkit.channels`;
- ``protocol`` (SecAgg / SecAgg+ client and server state machines), ``messages`` (their wire
  format), ``crypto`` (X25519, HKDF, AES-GCM, AES-CTR masks), ``shamir`` (t-of-n secret sharing),
  ``graph`` (who masks with whom) and ``identity`` (Ed25519 identities and their registry, for
  the authenticated mode that holds against a malicious server);
- ``simulation``: in-process rounds over K simulated clients with dropouts and per-stage costs
  (``simulate_round``, ``run_secure_sum``);
- ``deployment``: an aggregator's secure sums through a protocol round between machines
  (clients pack their secure-channel vectors, the server replays ``next`` with the sums);
- ``backend``: ``MaskingBackend``, a :class:`aggkit.channels.SumBackend` that runs the protocol
  for every secure channel sum, e.g. ``MaskingBackend().run(process, state, values, weights)``
  (bit-identical to the default in-process sums; consistent dropouts per round);
- ``errors``: the protocol's exceptions (``ProtocolAbort`` and others).
"""
