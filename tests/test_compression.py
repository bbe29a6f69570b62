"""quantized_sum: TFF's encoded_test.py cases, payloads, unbiasedness, error bounds, composition."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import aggkit as ak
from aggkit import process as process_module
from aggkit.compression import QuantizedSumFactory, QuantizedSumProcess, quantized_sum
from aggkit.process import Contributions
from aggkit.structure import ClientBatch, Layout
from tests.memory import peak_allocation

F32 = np.float32


def _one_client(factory, value, **kwargs):
    process = factory.create(ak.TensorSpec(np.shape(value), np.asarray(value).dtype))
    return process.next(process.initialize(), [value], **kwargs)


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, -1, 17])
def test_bits_out_of_range_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        quantized_sum(bits=bits)


@pytest.mark.parametrize("bits", [8.0, "8", True, None])
def test_bits_of_the_wrong_kind_raise(bits):
    with pytest.raises(TypeError, match="bits"):
        quantized_sum(bits=bits)


def test_negative_threshold_raises():
    with pytest.raises(ValueError, match="threshold"):
        quantized_sum(threshold=-1)
    with pytest.raises(TypeError, match="threshold"):
        quantized_sum(threshold=2.5)


def test_bad_seeds_raise():
    with pytest.raises(ValueError, match="seed"):
        quantized_sum(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        quantized_sum(seed="0")


def test_type_properties():
    factory = quantized_sum(bits=4, threshold=10, seed=1)
    assert factory == QuantizedSumFactory(4, 10, 1) and not factory.is_weighted
    template = {"w": ak.TensorSpec((20,), F32), "b": ak.TensorSpec((3,), F32)}
    process = factory.create(template)
    assert isinstance(process, QuantizedSumProcess) and not process.is_weighted
    np.testing.assert_array_equal(process.quantized, [True, False])
    state = process.initialize()
    assert state.dtype == np.uint64 and state.shape == (2,) and state[1] == 0
    out = process.next(state, [{"w": np.ones(20, F32), "b": np.ones(3, F32)}])
    assert out.measurements == {
        "bytes_per_client": 4 * 3 + 2 * 4 + 3 * 4,
        "uncompressed_bytes_per_client": 23 * 4,
        "compression_ratio": pytest.approx(92 / 32),
    }
    assert out.state[0] == state[0] and out.state[1] == 1
    mean = ak.mean(factory).create(template)
    assert mean.is_weighted and isinstance(mean.value_sum, QuantizedSumProcess)
    assert mean.stats_needed == {"minmax"}


# -- TFF's cases --------------------------------------------------------------------------------


def test_simple_sum_of_small_tensors_is_exact_over_rounds():
    process = quantized_sum().create(ak.TensorSpec((), F32))
    state = process.initialize()
    for _ in range(3):
        out = process.next(state, [F32(1), F32(2), F32(3)])
        assert out.result == 6.0
        state = out.state
    assert state[1] == 3


def test_structure_sum():
    process = quantized_sum().create([ak.TensorSpec((2,), F32), ak.TensorSpec((), F32)])
    clients = [[np.array([1, 2], F32), F32(3)], [np.array([2, 3], F32), F32(3)]]
    clients.append([np.array([3, 3], F32), F32(4)])
    out = process.next(process.initialize(), clients)
    np.testing.assert_array_equal(out.result[0], [6, 8])
    assert out.result[1] == 10


def test_quantize_above_threshold_zero():
    factory = quantized_sum(bits=1, threshold=0, seed=0)
    out = _one_client(factory, np.array([0, 1, 2], F32))
    assert set(out.result.tolist()) <= {0.0, 2.0}
    out = _one_client(factory, np.array([1, 2, 3, 4, 5], F32))
    assert set(out.result.tolist()) <= {1.0, 5.0}


def test_quantize_above_threshold_positive():
    process = quantized_sum(bits=1, threshold=4, seed=0).create(
        [ak.TensorSpec((3,), F32), ak.TensorSpec((5,), F32)]
    )
    out = process.next(
        process.initialize(), [[np.array([1, 2, 3], F32), np.array([1, 2, 3, 4, 5], F32)]]
    )
    np.testing.assert_array_equal(out.result[0], [1, 2, 3])
    assert set(out.result[1].tolist()) <= {1.0, 5.0}


def test_quantize_above_threshold_uses_every_level():
    rng = np.random.default_rng(0)
    value = np.concatenate([[0.0], rng.uniform(0, 15, 10_000), [15.0]]).astype(F32)
    out = _one_client(quantized_sum(bits=4, threshold=0, seed=0), value)
    assert set(np.unique(out.result).tolist()) == set(range(16))


def test_a_60000_element_update_sends_under_40_percent_of_its_bytes():
    process = ak.mean(quantized_sum()).create(ak.TensorSpec((200, 300), F32))
    clients = np.random.default_rng(0).standard_normal((3, 200, 300)).astype(F32)
    out = process.next(process.initialize(), list(clients), weights=[1.0, 2.0, 3.0])
    sent = out.measurements["mean_value"]["bytes_per_client"]
    assert sent == 4 * -(-60_000 * 8 // 28) + 8
    assert sent < 0.4 * 60_000 * 4
    assert out.measurements["mean_value"]["compression_ratio"] > 1 / 0.4
    inner_state = process.initialize()["value_sum_process"]
    payload = process.value_sum.client_payload(inner_state, clients[0], coef=2.0)
    assert len(payload) == sent


# -- payloads -----------------------------------------------------------------------------------

MIXED = {
    "w": ak.TensorSpec((300, 100), np.float32),
    "b": ak.TensorSpec((100,), np.float32),
    "h": ak.TensorSpec((25_000,), np.float16),
    "d": ak.TensorSpec((21_000,), np.float64),
    "i": ak.TensorSpec((30_000,), np.int32),
    "empty": ak.TensorSpec((0,), np.float32),
}


def _mixed_clients(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.standard_normal((300, 100)).astype(np.float32),
            "b": rng.standard_normal(100).astype(np.float32),
            "h": rng.standard_normal(25_000).astype(np.float16),
            "d": rng.standard_normal(21_000) * 1e3,
            "i": rng.integers(-50, 50, 30_000).astype(np.int32),
            "empty": np.zeros(0, np.float32),
        }
        for _ in range(count)
    ]


@pytest.mark.parametrize("bits", [1, 7, 8, 12, 16])
def test_payload_size_is_the_packed_size_formula(bits):
    process = quantized_sum(bits=bits, seed=0).create(MIXED)
    words = sum(-(-n * bits // 28) for n in (30_000, 25_000, 21_000))
    expected = 4 * words + 2 * (4 + 2 + 8) + 100 * 4 + 30_000 * 4
    assert process.payload_bytes == expected
    payload = process.client_payload(process.initialize(), _mixed_clients(1)[0], coef=0.5)
    assert len(payload) == expected
    assert process.measurements()["bytes_per_client"] == expected


def test_fused_round_equals_the_sum_of_decoded_payloads():
    process = quantized_sum(bits=5, seed=4).create(MIXED)
    layout = process.layout
    clients = _mixed_clients(5)
    coef = np.array([1.0, 0.3, 0.0, 4.0, 2.7])
    state = process.initialize()
    round_ = process.begin_round(state)
    batch = layout.pack(clients)
    round_.add(Contributions(batch, coef, first_client=0, needs=process.stats_needed), None)
    _, fused, _ = round_.finish()
    expected = np.zeros(layout.size)
    for i, client in enumerate(clients):
        if coef[i]:
            payload = process.client_payload(state, client, client=i, coef=float(coef[i]))
            expected += process.decode_payload(payload)
    for t, path in enumerate(layout.paths):
        segment = layout.tensor_slice(t)
        if process.quantized[t]:  # the same levels, decoded the same way
            np.testing.assert_array_equal(fused[segment], expected[segment], err_msg=path)
        else:  # payloads carry c * x in the tensor's dtype, the fused sum keeps float64
            atol = {np.float32: 1e-5, np.int32: 0.5 * len(clients)}[layout.specs[t].dtype.type]
            np.testing.assert_allclose(fused[segment], expected[segment], rtol=0, atol=atol)


def test_payload_words_and_range_are_what_the_format_says():
    process = quantized_sum(bits=8, threshold=10, seed=2).create(ak.TensorSpec((14,), F32))
    value = np.linspace(-1, 1, 14, dtype=F32)
    payload = process.client_payload(process.initialize(), value)
    lo, hi = np.frombuffer(payload, "<f4", 2)
    assert (lo, hi) == (F32(-1), F32(1))
    words = np.frombuffer(payload, "<i4", offset=8)
    assert words.size == 4 and ((words >= 0) & (words < 2**28)).all()  # 14 * 8 bits = 4 words
    levels = [(int(words[(8 * k) // 28 :][0]) >> ((8 * k) % 28)) & 0xFF for k in (0, 13)]
    assert levels == [0, 255]  # min and max sit on the first and last level


def test_decode_checks_the_payload_size():
    process = quantized_sum(threshold=0).create(ak.TensorSpec((10,), F32))
    with pytest.raises(ValueError, match="bytes"):
        process.decode_payload(b"\0" * 3)


def test_payload_rejects_bad_coefficients():
    process = quantized_sum(threshold=0).create(ak.TensorSpec((10,), F32))
    with pytest.raises(ValueError, match="coef"):
        process.client_payload(process.initialize(), np.zeros(10, F32), coef=-1.0)


# -- accuracy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [1, 2, 8, 16])
def test_every_coordinate_is_within_one_step(bits, dtype):
    value = (np.random.default_rng(bits).standard_normal(30_000) * 3).astype(dtype)
    out = _one_client(quantized_sum(bits=bits, seed=bits), value)
    step = (float(value.max()) - float(value.min())) / (2**bits - 1)
    error = np.abs(out.result.astype(np.float64) - value.astype(np.float64))
    ulp = np.spacing(np.abs(value)).astype(np.float64) if dtype == np.float32 else 0.0
    assert (error < step + ulp).all()
    assert error.max() > step / 4  # it did quantize


@pytest.mark.parametrize("bits", [2, 8])  # 32-bit and 16-bit rounding uniforms
def test_quantization_is_unbiased(bits):
    """1000 clients hold the same vector: their sum / 1000 averages 1000 independent roundings."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, 300)
    clients = 1000
    process = quantized_sum(bits=bits, threshold=0, seed=11).create(
        ak.TensorSpec((300,), np.float64)
    )
    out = process.next(process.initialize(), np.tile(x, (clients, 1)))
    estimate = out.result / clients
    step = (x.max() - x.min()) / (2**bits - 1)
    frac = np.modf((x - x.min()) / step)[0]
    se = step * np.sqrt(frac * (1 - frac) / clients)  # one rounding has variance step² f (1 - f)
    assert (np.abs(estimate - x) <= 4 * se + 1e-12).all()
    total_se = np.sqrt((se**2).sum())
    assert abs((estimate - x).sum()) <= 4 * total_se
    # The test has power: always rounding down (biased by step/2 on average) fails it by far.
    down = x.min() + np.floor((x - x.min()) / step) * step
    assert abs((down - x).sum()) > 100 * total_se


def test_constant_and_small_tensors_are_exact():
    template = {"c": ak.TensorSpec((30_000,), F32), "s": ak.TensorSpec((20_000,), F32)}
    clients = [{"c": np.full(30_000, 0.1, F32), "s": np.linspace(0, 1, 20_000, dtype=F32)}] * 3
    weights = [1.0, 2.0, 0.5]
    quantized = ak.mean(quantized_sum(seed=0)).create(template)
    plain = ak.mean().create(template)
    out = quantized.next(quantized.initialize(), clients, weights)
    reference = plain.next(plain.initialize(), clients, weights)
    np.testing.assert_array_equal(out.result["s"], reference.result["s"])  # 20000: not quantized
    np.testing.assert_array_equal(out.result["c"], reference.result["c"])  # powers of two: exact


def test_integer_tensors_are_summed_exactly():
    process = quantized_sum(threshold=0).create(ak.TensorSpec((25_000,), np.int32))
    assert not process.quantized.any() and process.stats_needed == frozenset()
    values = np.random.default_rng(0).integers(-(2**29), 2**29, (3, 25_000)).astype(np.int32)
    out = process.next(process.initialize(), list(values))
    np.testing.assert_array_equal(out.result, values.astype(np.int64).sum(axis=0))
    values[:, 7] = 2**30  # 3 * 2**30 does not fit int32: an error, not a wrapped sum
    with pytest.raises(OverflowError, match="does not fit int32"):
        process.next(process.initialize(), list(values))


# -- composition --------------------------------------------------------------------------------


def test_weighted_mean_uses_the_coefficients_without_copying_the_matrix(monkeypatch):
    from aggkit import kernels

    template = ak.TensorSpec((100_000,), F32)
    process = ak.mean(quantized_sum(seed=3)).create(template)
    matrix = np.random.default_rng(0).standard_normal((32, 100_000)).astype(F32)
    batch = ClientBatch(matrix, process.layout)
    weights = np.arange(32.0) % 4  # zeros among them
    state = process.initialize()
    process.next(state, batch, weights)  # compiles and warms the buffer pool
    seen = []
    original = kernels.quantize.quantized_row_sum

    def spy(m, coef, *args, **kwargs):
        seen.append((m, coef.copy()))
        return original(m, coef, *args, **kwargs)

    monkeypatch.setattr(kernels.quantize, "quantized_row_sum", spy)
    out, peak = peak_allocation(lambda: process.next(state, batch, weights))
    assert len(seen) == 1 and seen[0][0] is matrix
    np.testing.assert_array_equal(seen[0][1], weights)
    # One copy of the matrix would be 12.8 MB; the accumulator and the result take 1.2 MB.
    assert peak < matrix.nbytes / 4, (peak, matrix.nbytes)
    expected = weights @ matrix.astype(np.float64) / weights.sum()
    steps = weights * (matrix.max(axis=1) - matrix.min(axis=1)) / 255
    assert (np.abs(out.result - expected) <= steps.sum() / weights.sum() + 1e-6).all()


def test_zero_weight_clients_are_ignored_and_nonfinite_ones_are_named():
    template = {"w": ak.TensorSpec((25_000,), F32)}
    process = ak.mean(quantized_sum(seed=0)).create(template)
    good = {"w": np.ones(25_000, F32)}
    bad = {"w": np.ones(25_000, F32)}
    bad["w"][7] = np.nan
    out = process.next(process.initialize(), [good, bad], weights=[1.0, 0.0])
    np.testing.assert_array_equal(out.result["w"], 1.0)
    state = process.initialize()
    with pytest.raises(ak.InvalidUpdateError, match=r"client 1.*\['w'\]"):
        process.next(state, [good, bad], weights=[1.0, 1.0])


def test_streaming_gives_the_same_bits_as_one_batch(monkeypatch):
    template = {"w": ak.TensorSpec((30_000,), F32), "b": ak.TensorSpec((5,), F32)}
    process = ak.mean(quantized_sum(bits=6, seed=8)).create(template)
    rng = np.random.default_rng(1)
    clients = [
        {"w": rng.standard_normal(30_000).astype(F32), "b": rng.standard_normal(5).astype(F32)}
        for _ in range(7)
    ]
    weights = rng.random(7)
    state = process.initialize()
    whole = process.next(state, clients, weights)
    monkeypatch.setattr(process_module, "STREAM_BLOCK_BYTES", 2 * 30_005 * 4)
    streamed = process.next(state, iter(clients), iter(weights))
    for key in template:
        np.testing.assert_array_equal(streamed.result[key], whole.result[key])


def test_rounds_are_reproducible_and_draw_fresh_noise():
    process = quantized_sum(bits=2, threshold=0, seed=21).create(ak.TensorSpec((500,), F32))
    clients = [np.linspace(0, 1, 500, dtype=F32)] * 2
    state = process.initialize()
    before = state.copy()
    first = process.next(state, clients)
    np.testing.assert_array_equal(state, before)  # not mutated
    np.testing.assert_array_equal(process.next(state, clients).result, first.result)
    again = process.next(process.initialize(), clients)  # the same seed: the same key
    np.testing.assert_array_equal(again.result, first.result)
    second = process.next(first.state, clients)
    assert (second.result != first.result).any()
    unseeded = quantized_sum(bits=2, threshold=0).create(ak.TensorSpec((500,), F32))
    assert unseeded.initialize()[0] != unseeded.initialize()[0]


def test_an_empty_round_sums_to_zeros():
    process = quantized_sum(threshold=0).create(ak.TensorSpec((50,), F32))
    out = process.next(process.initialize(), [])
    np.testing.assert_array_equal(out.result, np.zeros(50, F32))
    assert out.measurements["bytes_per_client"] == 4 * -(-50 * 8 // 28) + 8


def test_layout_objects_and_templates_agree():
    layout = Layout(ak.TensorSpec((30_000,), F32))
    assert quantized_sum().create(layout).payload_bytes == 4 * -(-30_000 * 8 // 28) + 8


# -- thread count -------------------------------------------------------------------------------

THREADS_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import aggkit as ak
    from aggkit.compression import quantized_sum
    from aggkit.hadamard import hadamard

    rng = np.random.default_rng(0)
    template = {"w": ak.TensorSpec((70_001,), np.float32), "b": ak.TensorSpec((9,), np.float32)}
    clients = [{"w": rng.standard_normal(70_001).astype(np.float32),
                "b": rng.standard_normal(9).astype(np.float32)} for _ in range(11)]
    weights = rng.random(11)
    digest = hashlib.sha256()
    for factory in (ak.mean(quantized_sum(bits=7, seed=5)),
                    ak.mean(hadamard(quantized_sum(seed=6), num_repeats=2, seed=7))):
        process = factory.create(template)
        state = process.initialize()
        for _ in range(2):
            out = process.next(state, clients, weights)
            state = out.state
            digest.update(out.result["w"].tobytes() + out.result["b"].tobytes())
    print(digest.hexdigest())
    """
)


def _run_with_threads(threads: int) -> str:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_bits_do_not_depend_on_thread_count():
    one, two = _run_with_threads(1), _run_with_threads(2)
    assert len(one) == 64 and one == two
    assert one != hashlib.sha256(b"").hexdigest()
