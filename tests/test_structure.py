"""Layouts, flattening and client batches."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import aggkit as ak

Point = collections.namedtuple("Point", ["x", "y"])


def test_layout_describes_tensors_in_order():
    layout = ak.Layout(
        {"w": ak.TensorSpec((2, 3), np.float32), "b": [ak.TensorSpec((3,), np.float16), 1.5]}
    )
    assert layout.paths == ("['w']", "['b'][0]", "['b'][1]")
    assert layout.offsets.tolist() == [0, 6, 9, 10]
    assert layout.size == 10 and layout.num_tensors == 3
    # float16 and float32 pack into float32; a Python float leaf is float64, which widens.
    assert layout.dtype == np.float64
    assert ak.Layout([ak.TensorSpec((2,), np.float16)]).dtype == np.float32
    assert ak.Layout([np.zeros(2, np.int8), np.zeros(1, np.uint32)]).dtype == np.int64
    assert ak.Layout([np.zeros(2, np.int32), np.zeros(1, np.float32)]).dtype == np.float64


@pytest.mark.parametrize("bad", ["text", None, np.zeros(2, np.complex64), np.zeros(2, np.uint64)])
def test_unsupported_template_leaves_raise_type_error(bad):
    with pytest.raises(TypeError):
        ak.Layout([bad])


def test_tensor_spec_validation():
    assert ak.TensorSpec(3, np.float32).shape == (3,)
    with pytest.raises(ValueError, match="non-negative"):
        ak.TensorSpec((-1,), np.float32)
    with pytest.raises(TypeError, match="unsupported dtype"):
        ak.TensorSpec((1,), np.bool_)


def test_unflatten_rebuilds_containers_and_dtypes():
    template = collections.OrderedDict(
        a=Point(np.zeros(2, np.float16), np.int32(0)), b=(np.zeros((1, 2), np.float32),)
    )
    layout = ak.Layout(template)
    out = layout.unflatten(np.array([1.25, 2.5, 2.6, 7.0, 8.0]))
    assert isinstance(out, collections.OrderedDict) and isinstance(out["a"], Point)
    assert out["a"].x.dtype == np.float16 and out["a"].x.tolist() == [1.25, 2.5]
    assert out["a"].y == 3 and isinstance(out["a"].y, np.int32)  # rounded, scalar
    assert out["b"][0].shape == (1, 2) and out["b"][0].dtype == np.float32


@st.composite
def structures(draw, depth=2):
    """A random nested structure of float32/float64 arrays (possibly empty leaves)."""
    if depth == 0 or draw(st.booleans()):
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        return draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=32)))
    kind = draw(st.sampled_from(["list", "tuple", "dict"]))
    children = draw(st.lists(structures(depth=depth - 1), min_size=1, max_size=3))
    if kind == "dict":
        return {f"k{i}": c for i, c in enumerate(children)}
    return children if kind == "list" else tuple(children)


def _assert_same_structure(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same_structure(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_structure(x, y)
    else:
        a = np.asarray(a)
        assert np.asarray(b).dtype == a.dtype and np.shape(b) == a.shape
        np.testing.assert_array_equal(b, a)


@given(structures())
def test_flatten_unflatten_round_trip(structure):
    layout = ak.Layout(structure)
    flat = layout.flatten(structure)
    assert flat.shape == (layout.size,) and flat.dtype == layout.dtype
    _assert_same_structure(structure, layout.unflatten(flat))


def test_unflatten_returns_fresh_arrays():
    layout = ak.Layout([np.zeros(3, np.float32)])
    vector = np.zeros(3, np.float32)
    out = layout.unflatten(vector)
    out[0][0] = 5
    assert vector[0] == 0


def test_pack_validates_and_names_client_and_tensor():
    layout = ak.Layout({"w": np.zeros((2,), np.float32), "b": [np.zeros(1, np.float32)]})
    good = {"w": np.ones(2, np.float32), "b": [np.ones(1, np.float32)]}
    batch = layout.pack([good, good])
    assert batch.matrix.shape == (2, 3) and batch.matrix.flags.c_contiguous
    cases = [
        ({"w": np.ones(3, np.float32), "b": [np.ones(1, np.float32)]}, "['w']", "shape"),
        ({"w": np.ones(2, np.float64), "b": [np.ones(1, np.float32)]}, "['w']", "dtype"),
        ({"w": np.ones(2, np.float32), "b": [np.ones(1, np.float32)] * 2}, "['b']", "length"),
        ({"w": np.ones(2, np.float32)}, "<root>", "keys"),
        ({"w": np.ones(2, np.float32), "b": np.ones(1, np.float32)}, "['b']", "sequence"),
        ({"w": np.ones(2, np.float32), "b": [{"z": 1.0}]}, "['b'][0]", "tensor"),
        ({"w": np.ones(2, np.float32), "b": [["a"]]}, "['b'][0]", "numeric"),
    ]
    for bad, path, words in cases:
        with pytest.raises(ak.InvalidUpdateError, match=words) as info:
            layout.pack([good, good, bad])
        assert info.value.client == 2 and info.value.path == path
        assert f"client 2, tensor {path}" in str(info.value)


def test_untyped_python_values_are_cast_when_safe():
    layout = ak.Layout([ak.TensorSpec((2,), np.float32), ak.TensorSpec((), np.int32)])
    batch = layout.pack([[[1, 2.5], 3], [(4, 5), 6]])  # lists and tuples are array literals
    assert batch.matrix.tolist() == [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]
    with pytest.raises(ak.InvalidUpdateError, match="cannot become"):
        layout.pack([[[1, 2], 2.5]])  # a float cannot silently become an int32


def test_client_batch_wraps_without_copy_and_validates():
    layout = ak.Layout([ak.TensorSpec((2, 2), np.float32)])
    matrix = np.zeros((3, 4), np.float32)
    batch = ak.ClientBatch(matrix, layout)
    assert batch.matrix is matrix and len(batch) == 3
    matrix[1] = [1, 2, 3, 4]
    np.testing.assert_array_equal(batch.client(1)[0], [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="C-contiguous"):
        ak.ClientBatch(np.zeros((4, 3), np.float32).T, layout)
    with pytest.raises(TypeError, match="dtype"):
        ak.ClientBatch(np.zeros((3, 4), np.float64), layout)
    with pytest.raises(ValueError, match="shape"):
        ak.ClientBatch(np.zeros((3, 5), np.float32), layout)
    with pytest.raises(TypeError, match="numpy"):
        ak.ClientBatch([[0.0] * 4], layout)
    assert ak.ClientBatch.empty(layout, 5).matrix.shape == (5, 4)


def test_layout_equality_and_hash():
    a = ak.Layout({"x": ak.TensorSpec((2,), np.float32)})
    b = ak.Layout({"x": np.zeros(2, np.float32)})
    c = ak.Layout({"y": np.zeros(2, np.float32)})
    assert a == b and hash(a) == hash(b) and a != c
