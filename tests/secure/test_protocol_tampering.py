"""The tampering experiment: one bit of one message flipped in many honest rounds.

Every message is carried as bytes; in each round one message (a random stage, direction and
client) has one random bit flipped on the way. The parties treat a refused message as a
transport would (the client that refused, or whose answer the server refused, is gone) and the
round goes on. Every round must end in a refusal with a ``SecAggError`` subclass or with the
right sum of the clients it reports as included; never in a wrong sum. Default-configured
clients (identities, registry, default policy); in the honest-but-curious mode the same
experiment does give wrong sums (the positive control at the end).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("cryptography")

from aggkit.secure.crypto import DeterministicRandom
from aggkit.secure.errors import ProtocolAbort, SecAggError
from aggkit.secure.messages import STAGES, MaskedInputResponse, decode
from aggkit.secure.protocol import SecAggClient, SecAggServer
from tests.secure.protocol_helpers import PERMISSIVE, drive_round, identities, modular_sum

N, T, M, MODULUS = 5, 3, 4, 2**16
ROUNDS = 200


def flip_bit(data: bytes, rng: np.random.Generator) -> bytes:
    raw = bytearray(data)
    bit = int(rng.integers(8 * len(raw)))
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


def tampered_round(seed: int, keys, registry) -> str:
    """One round with one flipped bit; returns the outcome (raises on a wrong sum)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, MODULUS, size=(N, M))
    target = (int(rng.integers(len(STAGES))), int(rng.integers(2)), int(rng.integers(N)))
    server = SecAggServer(
        range(N),
        modulus=MODULUS,
        vector_length=M,
        threshold=T,
        registry=registry,
        randbytes=DeterministicRandom(seed, "server"),
    )
    clients = {
        u: SecAggClient(
            u, identity=keys[u], registry=registry, randbytes=DeterministicRandom(seed, u)
        )
        for u in range(N)
    }
    refused = False
    requests = server.start()
    for index, stage in enumerate(STAGES):
        for u, request in requests.items():
            data = request.to_bytes()
            if target == (index, 0, u):
                data = flip_bit(data, rng)
            try:
                response = clients[u].handle(
                    decode(data), x[u] if stage == "masked_input" else None
                )
            except SecAggError:
                refused = True
                continue
            data = response.to_bytes()
            if target == (index, 1, u):
                data = flip_bit(data, rng)
            try:
                server.receive(decode(data))
            except SecAggError:
                refused = True
        try:
            if index < len(STAGES) - 1:
                requests = server.advance()
            else:
                result = server.finish()
        except SecAggError:
            return "aborted"
    expected = modular_sum(x, result.included, MODULUS)
    assert np.array_equal(result.sum, expected), f"round {seed}: a wrong sum, no error"
    return "refused, right sum" if refused else "unnoticed, right sum"


def test_one_flipped_bit_never_gives_a_wrong_sum():
    keys, registry = identities(N)
    outcomes = Counter(tampered_round(seed, keys, registry) for seed in range(ROUNDS))
    assert sum(outcomes.values()) == ROUNDS
    # Every flip was noticed: the signatures and AEAD tags cover every bit on the wire.
    assert outcomes["unnoticed, right sum"] == 0, outcomes


def test_positive_control_honest_but_curious_mode_sums_a_tampered_input():
    x = np.arange(N * M).reshape(N, M) % MODULUS

    def tamper(stage, u, msg):
        if isinstance(msg, MaskedInputResponse) and u == 1:
            masked = msg.masked.copy()
            masked[0] = (int(masked[0]) + 1) % MODULUS
            return dataclasses.replace(msg, masked=masked)
        return msg

    result, _, _ = drive_round(
        x, modulus=MODULUS, threshold=T, on_response=tamper, policy=PERMISSIVE
    )
    assert not np.array_equal(result.sum, modular_sum(x, range(N), MODULUS))
    with pytest.raises(SecAggError):
        drive_round(x, modulus=MODULUS, threshold=T, on_response=tamper, authenticated=True)


def test_aborts_are_protocol_aborts():
    assert issubclass(ProtocolAbort, SecAggError)
