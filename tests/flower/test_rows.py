"""RowDecoder: replies' .npy bytes read in place into client rows, or left to the general path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord

import aggkit as ak
from aggkit_torch.flower.rows import RowDecoder, npy_header
from aggkit_torch.rounds import all_finite

MODEL = {
    "conv": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "bias": np.array([0.5, -1.0], np.float32),
    "scalar": np.float32(3.0) * np.ones((), np.float32),
}


def _layout(model=MODEL) -> ak.Layout:
    return ak.Layout({k: ak.TensorSpec(v.shape, v.dtype) for k, v in model.items()})


def _record(arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _trained(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in MODEL.items()}


def test_decoded_update_equals_the_general_path():
    layout = _layout()
    decoder = RowDecoder(list(MODEL), layout)
    glob = layout.flatten(MODEL)
    for seed in range(5):
        trained = _trained(seed)
        row = np.full(layout.size, np.nan, np.float32)
        assert decoder.update_into(_record(trained), glob, row) is True
        expected = glob - layout.flatten(trained)
        np.testing.assert_array_equal(row, expected)


@pytest.mark.parametrize("bad", ["nan", "inf", "overflow"])
def test_nonfinite_updates_are_reported(bad):
    layout = _layout()
    decoder = RowDecoder(list(MODEL), layout)
    glob = layout.flatten(MODEL)
    trained = _trained(0)
    if bad == "nan":
        trained["conv"][1, 2, 3] = np.nan
    elif bad == "inf":
        trained["bias"][0] = -np.inf
    else:  # finite values whose difference from the global model is not finite in float32
        glob = glob.copy()
        glob[-1] = 3e38
        trained["scalar"] = np.float32(-3e38) * np.ones((), np.float32)
    row = np.empty(layout.size, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert decoder.update_into(_record(trained), glob, row) is False


@pytest.mark.parametrize(
    "change",
    ["float64", "shape", "fortran", "missing key", "extra key", "torch", "truncated"],
)
def test_anything_but_the_global_form_goes_to_the_general_path(change):
    import torch

    layout = _layout()
    decoder = RowDecoder(list(MODEL), layout)
    trained = _trained(1)
    record = _record(trained)
    if change == "float64":
        record["conv"] = Array(trained["conv"].astype(np.float64))
    elif change == "shape":
        record["conv"] = Array(trained["conv"].reshape(3, 2, 4))
    elif change == "fortran":
        record["conv"] = Array(np.asfortranarray(trained["conv"]))
    elif change == "missing key":
        del record["bias"]
    elif change == "extra key":
        record["other"] = Array(np.zeros(2, np.float32))
    elif change == "torch":
        record["bias"] = Array(torch.from_numpy(trained["bias"]))
    else:
        array = record["bias"]
        record["bias"] = Array(
            dtype=array.dtype, shape=array.shape, stype=array.stype, data=array.data[:-4]
        )
    row = np.empty(layout.size, np.float32)
    if change == "torch" and record["bias"].stype == "numpy.ndarray":
        # Flower serializes a torch tensor with np.save: the same bytes, decoded in place.
        assert decoder.update_into(record, layout.flatten(MODEL), row) is True
        return
    assert decoder.update_into(record, layout.flatten(MODEL), row) is None


def test_headers_are_numpys():
    import io

    for shape, dtype in [((500, 800), np.float32), ((), np.float64), ((0,), np.float16)]:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(shape, dtype))
        data = buffer.getvalue()
        header = npy_header(shape, dtype)
        assert data.startswith(header)
        assert len(data) - len(header) == np.zeros(shape, dtype).nbytes


def test_all_finite():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        values = rng.normal(size=1000).astype(dtype)
        assert all_finite(values)
        for bad in (np.nan, np.inf, -np.inf):
            spoiled = values.copy()
            spoiled[rng.integers(1000)] = bad
            assert not all_finite(spoiled)
        huge = np.full(10, np.finfo(dtype).max, dtype)  # the sum overflows, the values do not
        assert all_finite(huge)
    assert all_finite(np.zeros(0, np.float32))
