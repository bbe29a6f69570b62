"""The deployment path: clients' captured channel vectors + a protocol round + the server's replay
equal MaskingBackend (and the in-process backend) bit for bit; states travel as JSON only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cryptography")

import aggkit as ak
from aggkit.secure.backend import MaskingBackend
from aggkit.secure.deployment import (
    ChannelPlan,
    PlainChannelError,
    client_vector,
    decode_state,
    encode_state,
    plan_of,
    replay,
)
from aggkit.secure.simulation import simulate_round


@pytest.mark.parametrize("dropped", [(), (2,)])
def test_protocol_round_and_replay_equal_masking_backend(dropped):
    spec = {"a": ak.TensorSpec((40,), np.float32), "b": ak.TensorSpec((3, 5), np.float32)}
    process = ak.secure_aggregator().create(spec)
    rng = np.random.default_rng(3)
    values = [
        {
            "a": rng.normal(0, 0.1, 40).astype(np.float32),
            "b": rng.normal(size=(3, 5)).astype(np.float32),
        }
        for _ in range(6)
    ]
    weights = [float(w) for w in rng.integers(1, 50, 6)]
    state = process.initialize()
    for _ in range(2):  # two rounds: the state (adaptive norms) moves
        packed = [
            client_vector(process, state, process.layout.flatten(v), w)[0]
            for v, w in zip(values, weights, strict=True)
        ]
        plan = plan_of(process, state)
        matrix = np.stack(packed)
        out = simulate_round(
            matrix,
            modulus=plan.modulus(len(values)),
            dropouts={"masked_input": list(dropped)},
            seed=1,
            authenticated=True,
        )
        ours = replay(process, state, out.sum, plan, len(out.included))
        backend = MaskingBackend(seed=0)
        expected = backend.run(
            process, state, values, weights, dropouts={"masked_input": list(dropped)}
        )
        for key in spec:
            np.testing.assert_array_equal(ours.result[key], expected.result[key])
        assert ours.measurements == expected.measurements
        state = ours.state


def test_plain_channels_and_modular_channels_are_refused():
    process = ak.mean().create(ak.TensorSpec((3,), np.float32))
    with pytest.raises(PlainChannelError, match="plain channel"):
        plan_of(process, process.initialize())


def test_replay_checks_the_sums_fit_the_aggregator():
    process = ak.secure_aggregator().create(ak.TensorSpec((4,), np.float32))
    state = process.initialize()
    plan = plan_of(process, state)
    with pytest.raises(ValueError, match="packed vector"):
        replay(process, state, np.zeros(plan.length + 1, np.uint64), plan, 2)
    wrong = ChannelPlan(((plan.length, 32),))
    with pytest.raises(RuntimeError):
        replay(process, state, np.zeros(plan.length, np.uint64), wrong, 2)


def test_state_codec_round_trips_and_runs_no_code():
    state = ak.secure_aggregator().create(ak.TensorSpec((4,), np.float32)).initialize()
    back = decode_state(encode_state(state))
    assert repr(back) == repr(state)
    for bad in [
        b"[1, 2]",
        b'{"pickle": "x"}',
        b'{"array": "O", "shape": [1], "data": ""}',
        b"\x80",
    ]:
        with pytest.raises(ValueError):
            decode_state(bad)
    with pytest.raises(TypeError):
        encode_state({"f": lambda: 0})


def test_identity_command_line(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "aggkit.secure.identity", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    key0 = cli("new", str(tmp_path / "a.key"))
    assert cli("public", str(tmp_path / "a.key")) == key0
    key1 = cli("new", str(tmp_path / "b.key"))
    cli("registry", str(tmp_path / "r.json"), f"0={key0}", f"1={key1}")
    from aggkit.secure.identity import IdentityRegistry

    assert IdentityRegistry.load(tmp_path / "r.json")[1].hex() == key1
