"""The process model: inputs, streaming, weights, bad input, estimation processes."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import aggkit as ak
from aggkit import process as process_module
from aggkit.testing import SumPlusOneFactory

TEMPLATE = {"w": ak.TensorSpec((3, 2), np.float32), "b": ak.TensorSpec((2,), np.float32)}


def _clients(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.standard_normal((3, 2), dtype=np.float32),
            "b": rng.standard_normal(2, dtype=np.float32),
        }
        for _ in range(count)
    ]


def _bits(structure):
    return {k: np.asarray(v).tobytes() for k, v in structure.items()}


def test_output_is_a_three_field_record():
    out = ak.sum().create(TEMPLATE).next((), _clients(2))
    assert out._fields == ("state", "result", "measurements")
    state, result, measurements = out
    assert state == () and measurements == () and set(result) == {"w", "b"}


def test_every_input_form_gives_the_same_bits():
    clients = _clients(7)
    weights = np.arange(1.0, 8.0)
    process = ak.mean().create(TEMPLATE)
    state = process.initialize()
    layout = process.layout
    reference = _bits(process.next(state, clients, weights).result)
    batch = layout.pack(clients)
    assert _bits(process.next(state, batch, weights).result) == reference
    assert _bits(process.next(state, tuple(clients), list(weights)).result) == reference
    assert _bits(process.next(state, iter(clients), iter(weights)).result) == reference
    assert _bits(process.next(state, (c for c in clients), weights).result) == reference


def test_streaming_in_small_blocks_gives_the_same_bits(monkeypatch):
    clients = _clients(23, seed=1)
    weights = np.random.default_rng(2).random(23)
    process = ak.mean().create(TEMPLATE)
    reference = _bits(process.next(process.initialize(), clients, weights).result)
    row_bytes = process.layout.size * 4
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 3 * row_bytes)  # 3 clients a block
    assert _bits(process.next(process.initialize(), iter(clients), iter(weights)).result) == (
        reference
    )
    assert _bits(process.next(process.initialize(), clients, weights).result) == reference


def test_streaming_keeps_memory_bounded(monkeypatch):
    # With 2 clients per block, packing never holds more than 2 rows whatever the client count.
    process = ak.sum().create(TEMPLATE)
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * process.layout.size * 4)
    seen = []
    original = process_module.Contributions.__init__

    def spy(self, batch, *args, **kwargs):
        seen.append(batch.num_clients)
        original(self, batch, *args, **kwargs)

    monkeypatch.setattr(process_module.Contributions, "__init__", spy)
    total = process.next((), (c for c in _clients(9))).result
    assert max(seen) == 2 and sum(seen) == 9
    expected = np.sum([c["b"].astype(np.float64) for c in _clients(9)], axis=0)
    np.testing.assert_allclose(total["b"], expected, rtol=1e-6)


def test_stacked_ndarray_for_single_tensor_templates():
    process = ak.sum().create(ak.TensorSpec((2, 2), np.float32))
    stacked = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(process.next((), stacked).result, stacked.sum(axis=0))
    np.testing.assert_array_equal(
        process.next((), stacked[:, ::-1]).result, stacked.sum(axis=0)[::-1]
    )


def test_weightedness_is_enforced():
    with pytest.raises(TypeError, match="needs client weights"):
        ak.mean().create(TEMPLATE).next(ak.mean().create(TEMPLATE).initialize(), _clients(1))
    with pytest.raises(TypeError, match="takes no weights"):
        ak.sum().create(TEMPLATE).next((), _clients(1), [1.0])


@pytest.mark.parametrize(
    ("weights", "client", "words"),
    [
        ([1.0, -1.0, 1.0], 1, "non-negative"),
        ([1.0, 1.0, np.nan], 2, "finite"),
        ([np.inf, 1.0, 1.0], 0, "finite"),
        ([1.0, 1.0], None, "one weight per client"),
        ([[1.0], [1.0], [1.0]], None, "one weight per client"),
    ],
)
def test_bad_weights_raise_and_leave_state_untouched(weights, client, words):
    process = ak.mean(SumPlusOneFactory(), SumPlusOneFactory()).create(TEMPLATE)
    state = process.next(process.initialize(), _clients(3), [1.0, 1.0, 1.0]).state
    before = copy.deepcopy(state)
    with pytest.raises(ak.InvalidUpdateError, match=words) as info:
        process.next(state, _clients(3), weights)
    assert info.value.client == client and info.value.path == "weight"
    assert state == before
    # The same state still works, and gives what it would have given without the failed call.
    again = process.next(state, _clients(3), [1.0, 2.0, 3.0])
    assert again.state == {"value_sum_process": 2, "weight_sum_process": 2}


def test_mismatched_stream_weight_counts_raise():
    process = ak.mean().create(TEMPLATE)
    with pytest.raises(ak.InvalidUpdateError, match="fewer weights"):
        process.next(process.initialize(), iter(_clients(3)), iter([1.0, 1.0]))
    with pytest.raises(ak.InvalidUpdateError, match="more weights"):
        process.next(process.initialize(), iter(_clients(3)), iter([1.0] * 4))


@pytest.mark.parametrize("special", [np.nan, np.inf])
@pytest.mark.parametrize("factory", [ak.sum(), ak.mean(), ak.unweighted_mean()])
def test_nonfinite_values_raise_naming_client_and_tensor(factory, special):
    clients = _clients(4)
    clients[2]["b"] = np.array([0.0, special], np.float32)
    process = factory.create(TEMPLATE)
    state = process.initialize()
    weights = [1.0] * 4 if factory.is_weighted else None
    with pytest.raises(ak.InvalidUpdateError, match=r"NaN|Inf") as info:
        process.next(state, clients, weights)
    assert (info.value.client, info.value.path) == (2, "['b']")


def test_nonfinite_value_in_a_later_stream_block_names_the_global_client(monkeypatch):
    process = ak.sum().create(TEMPLATE)
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * process.layout.size * 4)
    clients = _clients(7)
    clients[5]["w"][1, 1] = np.nan
    with pytest.raises(ak.InvalidUpdateError) as info:
        process.next((), iter(clients))
    assert (info.value.client, info.value.path) == (5, "['w']")


def test_zero_weight_clients_are_not_read():
    # A client with weight 0 contributes exactly nothing (its values are never multiplied).
    clients = _clients(3)
    clients[1]["b"][:] = np.nan
    out = (
        ak.mean()
        .create(TEMPLATE)
        .next(ak.mean().create(TEMPLATE).initialize(), clients, [1.0, 0.0, 1.0])
    )
    expected = (clients[0]["b"].astype(np.float64) + clients[2]["b"]) / 2
    np.testing.assert_allclose(out.result["b"], expected, rtol=1e-6)


def test_batch_with_another_layout_is_rejected():
    process = ak.sum().create(TEMPLATE)
    other = ak.Layout({"w": ak.TensorSpec((6,), np.float32), "b": ak.TensorSpec((2,), np.float32)})
    with pytest.raises(ak.InvalidUpdateError, match="layout"):
        process.next((), other.empty_batch(2))


def test_state_is_plain_picklable_data():
    process = ak.mean(SumPlusOneFactory(), SumPlusOneFactory()).create(TEMPLATE)
    state = process.next(process.initialize(), _clients(2), [1.0, 1.0]).state
    restored = pickle.loads(pickle.dumps(state))
    a = process.next(state, _clients(2, seed=5), [1.0, 2.0])
    b = process.next(restored, _clients(2, seed=5), [1.0, 2.0])
    assert a.state == b.state and _bits(a.result) == _bits(b.result)


def test_factories_are_immutable_values():
    factory = ak.mean(no_nan_division=True)
    assert factory == ak.mean(no_nan_division=True) and hash(factory) == hash(
        ak.mean(no_nan_division=True)
    )
    with pytest.raises(AttributeError):
        factory.no_nan_division = False


def test_constant_and_mapped_estimation_processes():
    constant = ak.ConstantEstimate(2.5)
    state = constant.next(constant.initialize(), np.array([1.0, 100.0]))
    assert state == () and constant.report(state) == 2.5
    doubled = constant.map(lambda v: 2 * v + 1)
    assert doubled.report(doubled.initialize()) == 6.0
    assert isinstance(doubled, ak.EstimationProcess)
    assert process_module.as_estimation_process(3, "norm") == ak.ConstantEstimate(3.0)
    assert process_module.as_estimation_process(doubled, "norm") is doubled
    for bad in ("1.0", None, True, [1.0]):
        with pytest.raises(TypeError, match="norm"):
            process_module.as_estimation_process(bad, "norm")
