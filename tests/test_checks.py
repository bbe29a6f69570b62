"""aggkit._checks: one rule per concept, and every factory that takes the argument applies it.

Where two copies of a check used to disagree, the stricter rule won; each such case is tested
once here, through the public factories that used to be lenient.
"""

from __future__ import annotations

import fractions
import math

import numpy as np
import pytest

import aggkit as ak
from aggkit import _checks, privacy
from aggkit.secure.backend import MaskingBackend
from aggkit.secure.simulation import run_secure_sum

# -- real numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2.5, np.float32(0.5), np.int64(3), fractions.Fraction(1, 3)])
def test_real_accepts_every_real_number_and_returns_a_float(value):
    result = _checks.real(value, "x")
    assert type(result) is float and result == float(value)


@pytest.mark.parametrize("value", [True, "1", None, 1j, np.array([1.0])])
def test_real_refuses_other_kinds_with_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match="clip must be a real number"):
        _checks.real(value, "clip")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_real_is_always_finite(value):
    with pytest.raises(ValueError, match="x must be a finite number"):
        _checks.real(value, "x")


@pytest.mark.parametrize(
    ("kwargs", "bad", "text"),
    [
        ({"low": 0.0, "low_open": True}, 0.0, "> 0"),
        ({"low": 0.0}, -1e-9, ">= 0"),
        ({"low": 0.0, "high": 1.0}, 1.5, r"in \[0, 1\]"),
        ({"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}, 1.0, r"in \(0, 1\)"),
    ],
)
def test_real_ranges_name_the_argument_and_the_range(kwargs, bad, text):
    assert _checks.real(0.5, "delta", **kwargs) == 0.5
    with pytest.raises(ValueError, match=f"delta must be a number {text}, got"):
        _checks.real(bad, "delta", **kwargs)


def test_privacy_refuses_infinities_like_every_other_module():
    # privacy.py used to accept inf and then test each range; the shared rule refuses it first.
    for call in (
        lambda: privacy.epsilon(
            1.0, clients_per_round=math.inf, population=None, rounds=1, delta=1e-5
        ),
        lambda: privacy.epsilon(
            1.0, clients_per_round=10, population=math.inf, rounds=1, delta=1e-5
        ),
        lambda: privacy.gaussian_event(math.inf),
        lambda: privacy.noise_multiplier(
            math.inf, delta=1e-5, clients_per_round=1, population=None, rounds=1
        ),
    ):
        with pytest.raises(ValueError, match="must be a finite number"):
            call()


def test_quantile_and_dp_apply_the_same_rule():
    # quantile.py tested types with its own tuple; dp.py with numbers.Real: one rule now.
    third = fractions.Fraction(1, 3)
    assert ak.quantile_estimator(1.0, third, 0.2).target_quantile == float(third)
    assert ak.gaussian_adaptive(1.0, 100, target_unclipped_quantile=third).target_unclipped_quantile
    for make in (
        lambda v: ak.quantile_estimator(1.0, v, 0.2),
        lambda v: ak.gaussian_adaptive(1.0, 100, target_unclipped_quantile=v),
    ):
        with pytest.raises(TypeError, match="quantile must be a real number"):
            make(True)
        with pytest.raises(ValueError, match=r"quantile must be a number in \[0, 1\]"):
            make(1.5)


# -- integers, booleans, seeds -------------------------------------------------------------------


def test_integer_bounds_and_kinds():
    assert _checks.integer(np.uint8(7), "bits", low=1, high=16) == 7
    with pytest.raises(TypeError, match="bits must be an int"):
        _checks.integer(8.0, "bits")
    with pytest.raises(TypeError, match="bits must be an int"):
        _checks.integer(True, "bits")
    with pytest.raises(ValueError, match=r"modulus must be an int in \[1, 2\*\*62\]"):
        _checks.integer(2**62 + 1, "modulus", low=1, high=2**62)


def test_boolean():
    assert _checks.boolean(np.bool_(True), "flag") is True
    with pytest.raises(TypeError, match="flag must be a bool"):
        _checks.boolean(1, "flag")


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: ak.quantized_sum(seed=seed),
        lambda seed: ak.hadamard(seed=seed),
        lambda seed: ak.gaussian_fixed(1.0, 10, 1.0, seed=seed),
        lambda seed: ak.gaussian_adaptive(1.0, 100, seed=seed),
        lambda seed: ak.private_quantile_estimator(
            1.0, 0.5, 0.2, below_estimate_stddev=1.0, expected_num_records=10, seed=seed
        ),
        lambda seed: MaskingBackend(seed=seed),
    ],
)
def test_every_seed_is_none_or_a_non_negative_int(make):
    make(None)
    make(np.int64(5))
    # compression.py and hadamard.py accepted a numpy Generator, which each initialize() would
    # consume (two processes of one factory drew different keys); dp.py refused it: refused now.
    with pytest.raises(TypeError, match="seed must be None or a non-negative int"):
        make(np.random.default_rng(0))
    # private_quantile_estimator accepted a negative seed and failed at the first round.
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        make(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        make(1.0)


# -- factories and layouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda f: ak.mean(value_sum=f), "value_sum"),
        (lambda f: ak.unweighted_mean(count_sum=f), "count_sum"),
        (lambda f: ak.zeroing(1.0, ak.sum(), zeroed_count_sum=f), "zeroed_count_sum"),
        (lambda f: ak.clipping(1.0, ak.sum(), clipped_count_sum=f), "clipped_count_sum"),
        (lambda f: ak.gaussian_fixed(1.0, 10, 1.0, record_sum=f), "record_sum"),
        (lambda f: ak.quantile_estimator(1.0, 0.5, 0.2, record_sum=f), "record_sum"),
        (lambda f: ak.hadamard(f), "inner"),
    ],
)
def test_every_unweighted_factory_argument_has_one_rule(make, name):
    assert make(None) is not None  # the default: ak.sum()
    with pytest.raises(TypeError, match=f"{name} must be an unweighted aggregation factory"):
        make(ak.mean())
    with pytest.raises(TypeError, match=f"{name} must be an aggregation factory"):
        make("sum")


@pytest.mark.parametrize(
    ("factory", "who"),
    [
        (ak.mean(), "ak.mean"),
        (ak.unweighted_mean(), "ak.unweighted_mean"),
        (ak.zeroing(1.0, ak.sum()), "ak.zeroing"),
        (ak.clipping(1.0, ak.sum()), "ak.clipping"),
        (ak.gaussian_fixed(1.0, 10, 1.0), "DP aggregation"),
    ],
)
def test_floating_layouts_are_checked_alike(factory, who):
    template = {"w": ak.TensorSpec((2,), np.float32), "n": ak.TensorSpec((), np.int32)}
    with pytest.raises(TypeError, match=rf"{who} needs floating-point tensors; got \['n'\]: int32"):
        factory.create(template)


def test_clip_factors_are_shared_by_clipping_and_dp():
    norms = np.array([0.0, 0.5, 2.0, 8.0, np.inf])
    np.testing.assert_array_equal(_checks.clip_factors(norms, 2.0), [1.0, 1.0, 1.0, 0.25, 0.0])
    values = [np.array([0.3, 0.4], np.float32), np.array([3.0, 4.0], np.float32)]
    clipped = ak.clipping(1.0, ak.sum()).create(ak.TensorSpec((2,), np.float32))
    dp = ak.gaussian_fixed(0.0, 1.0, 1.0).create(ak.TensorSpec((2,), np.float32))
    a = clipped.next(clipped.initialize(), values).result
    b = dp.next(dp.initialize(), values).result
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, [0.9, 1.2], rtol=1e-6)


# -- secret sharing: thresholds and dropouts -----------------------------------------------------


def test_sharing_threshold_rule():
    assert _checks.sharing_threshold(None) is None
    assert _checks.sharing_threshold(np.int32(3)) == 3
    assert _checks.sharing_threshold(np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"threshold must be an int >= 1"):
        _checks.sharing_threshold(0)
    with pytest.raises(ValueError, match=r"fractional threshold must be in \(0, 1\]"):
        _checks.sharing_threshold(1.5)
    with pytest.raises(TypeError, match="threshold must be an int or a float"):
        _checks.sharing_threshold(True)


def test_the_simulation_applies_the_backends_stricter_threshold_and_dropout_rules():
    inputs = np.array([[1, 2], [3, 4], [5, 6]])
    # The simulation used to pass a threshold of 0 or -1 on to the protocol.
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threshold must be an int >= 1"):
            run_secure_sum(inputs, modulus=16, threshold=bad, seed=0)
        with pytest.raises(ValueError, match="threshold must be an int >= 1"):
            MaskingBackend(threshold=bad)
    # ... and read client indices with int(), so "1" or 1.7 named a client.
    for bad, error in (
        ([1.7], TypeError),
        (["1"], TypeError),
        ([-1], ValueError),
        ("1", TypeError),
    ):
        with pytest.raises(error, match="dropouts"):
            run_secure_sum(inputs, modulus=16, dropouts={"masked_input": bad}, seed=0)
        with pytest.raises(error, match="dropouts"):
            MaskingBackend(dropouts={"masked_input": bad})
    # A NumPy float is a fraction in both now.
    out = run_secure_sum(inputs, modulus=16, dropouts={"masked_input": np.float32(0.0)}, seed=0)
    np.testing.assert_array_equal(out, [9, 12])


# -- learning rates ------------------------------------------------------------------------------


def test_learning_rate_rule():
    top = _checks.MAX_GEOMETRIC_LEARNING_RATE
    assert _checks.learning_rate(top, "lr", geometric=True) == top
    assert _checks.learning_rate(1e6, "lr", geometric=False) == 1e6
    assert _checks.learning_rate(0, "lr", geometric=True, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, 10\]"):
        _checks.learning_rate(0, "lr", geometric=True)
    with pytest.raises(ValueError, match=r"lr must be a number in \(0, 10\]"):
        _checks.learning_rate(top * 1.01, "lr", geometric=True)


def test_rules_whose_kernels_read_the_tensors_take_float32_and_float64_only():
    layout = ak.Layout({"h": ak.TensorSpec((2,), np.float16), "w": ak.TensorSpec((2,), np.float32)})
    _checks.floating_layout(layout, "ak.mean")  # any float
    with pytest.raises(TypeError, match=r"ak.median needs float32 or float64 tensors; got \['h'\]"):
        _checks.floating_layout(layout, "ak.median", kernel_floats=True)
    with pytest.raises(TypeError, match=r"float32 or float64 tensors; got \['h'\]: float16"):
        ak.median().create(layout)


# -- kernel arguments ------------------------------------------------------------------------------


def test_array_rule_takes_dtypes_as_types_names_or_dtypes_and_names_what_is_wrong():
    x = np.zeros((3, 4), np.float32)
    for dtype in (np.float32, "float32", np.dtype("<f4"), (np.float64, np.float32)):
        assert _checks.array(x, "x", dtype=dtype, shape=(None, 4)) is x
    with pytest.raises(TypeError, match=r"^x must be float64 or int64, got float32$"):
        _checks.array(x, "x", dtype=(np.float64, "int64"))
    with pytest.raises(TypeError, match=r"^x must be float32, got >f4$"):  # byte order counts
        _checks.array(x.astype(">f4"), "x", dtype=np.float32)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        _checks.array([1.0], "x", dtype=np.float64)
    with pytest.raises(ValueError, match=r"^x must have 1 dimension\(s\), got shape \(3, 4\)$"):
        _checks.array(x, "x", dtype=np.float32, ndim=1)
    with pytest.raises(ValueError, match=r"^x must have shape \(any, 5\), got \(3, 4\)$"):
        _checks.array(x, "x", dtype=np.float32, shape=(None, 5))
    with pytest.raises(ValueError, match="C-contiguous"):
        _checks.array(x[:, ::2], "x", dtype=np.float32)
    _checks.array(x[:, ::2], "x", dtype=np.float32, contiguous=False)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="x must be writeable"):
        _checks.array(x, "x", dtype=np.float32, writeable=True)
