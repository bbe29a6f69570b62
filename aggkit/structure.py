"""Structures of tensors, their flat layout, and client batches.

A *structure* is a nested ``dict`` / ``list`` / ``tuple`` (named tuples included) whose leaves are
arrays: NumPy arrays or scalars, Python numbers, or anything with ``__array__`` (a CPU torch
tensor).
A *template* is a structure whose leaves may also be :class:`TensorSpec` objects.

:class:`Layout` fixes, once per process, where each tensor of a structure lives in one flat vector.
:class:`ClientBatch` is a C-contiguous ``[K, n]`` matrix, one flattened client per row, with its
layout. Every aggregator works on batches; a caller that can write client rows directly (the torch
adapter) fills :meth:`ClientBatch.empty` and skips packing.

Example
-------
>>> import numpy as np, aggkit as ak
>>> spec = ak.TensorSpec
>>> layout = ak.Layout({"w": spec((2, 2), np.float32), "b": spec((2,), np.float32)})
>>> layout.size, layout.paths
(6, ("['w']", "['b']"))
>>> batch = layout.pack([{"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}])
>>> batch.matrix
array([[1., 1., 1., 1., 0., 0.]], dtype=float32)
>>> layout.unflatten(batch.matrix[0])["w"]
array([[1., 1.],
       [1., 1.]], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggkit import _checks
from aggkit.errors import InvalidUpdateError
from aggkit.kernels.limits import INT64_MAX

__all__ = ["ClientBatch", "Layout", "TensorSpec"]

_SUPPORTED_KINDS = "fiu"


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype of one tensor of a template.

    Parameters
    ----------
    shape : tuple of int
        Non-negative dimensions; ``()`` for a scalar.
    dtype : numpy dtype or anything ``np.dtype`` accepts
        A floating (16, 32, 64 bit), signed integer or unsigned integer (up to 32 bit) dtype.

    Examples
    --------
    >>> import numpy as np
    >>> TensorSpec((3,), np.float32).size
    3
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        dtype = np.dtype(self.dtype)
        _check_dtype(dtype)
        shape = _checks.shape(self.shape, dtype.itemsize)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @classmethod
    def of(cls, leaf: Any) -> TensorSpec:
        """The spec of a template leaf (a TensorSpec, an array, a number, a tensor)."""
        if isinstance(leaf, TensorSpec):
            return leaf
        if isinstance(leaf, str | bytes) or leaf is None:
            raise TypeError(f"a template leaf must be an array or TensorSpec, got {leaf!r}")
        array = np.asarray(leaf)
        return cls(array.shape, array.dtype)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _SUPPORTED_KINDS or (dtype.kind == "u" and dtype.itemsize > 4):
        raise TypeError(
            f"unsupported dtype {dtype}: aggkit aggregates floating, signed integer and unsigned "
            "integer (up to 32 bit) tensors"
        )


# -- trees ---------------------------------------------------------------------------------------
# A treedef is a hashable tuple: ("leaf",), ("dict", type, keys, children),
# ("seq", type, children) or ("namedtuple", type, children).

_LEAF = ("leaf",)


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _key_path(key: Any) -> str:
    return f"[{key!r}]"


def _flatten_template(obj: Any, path: str, specs: list, paths: list) -> tuple:
    if isinstance(obj, Mapping):
        keys = tuple(obj.keys())
        children = tuple(_flatten_template(obj[k], path + _key_path(k), specs, paths) for k in keys)
        return ("dict", type(obj), keys, children)
    if _is_namedtuple(obj):
        children = tuple(
            _flatten_template(v, path + f"[{i}]", specs, paths) for i, v in enumerate(obj)
        )
        return ("namedtuple", type(obj), children)
    if isinstance(obj, list | tuple):
        children = tuple(
            _flatten_template(v, path + f"[{i}]", specs, paths) for i, v in enumerate(obj)
        )
        return ("seq", type(obj), children)
    specs.append(TensorSpec.of(obj))
    paths.append(path or "<root>")
    return _LEAF


def _collect_leaves(obj: Any, treedef: tuple, path: str, client: int | None, out: list) -> None:
    kind = treedef[0]
    if kind == "leaf":
        if isinstance(obj, Mapping):  # a list or tuple here is an array literal
            raise InvalidUpdateError(
                f"expected a tensor, got a {type(obj).__name__}",
                client=client,
                path=path or "<root>",
            )
        out.append(obj)
        return
    if kind == "dict":
        keys = treedef[2]
        if not isinstance(obj, Mapping):
            raise InvalidUpdateError(
                f"expected a mapping with keys {list(keys)}, got {type(obj).__name__}",
                client=client,
                path=path or "<root>",
            )
        if len(obj) != len(keys) or any(k not in obj for k in keys):
            raise InvalidUpdateError(
                f"keys {sorted(map(repr, obj.keys()))} do not match the template's "
                f"{sorted(map(repr, keys))}",
                client=client,
                path=path or "<root>",
            )
        for k, child in zip(keys, treedef[3], strict=True):
            _collect_leaves(obj[k], child, path + _key_path(k), client, out)
        return
    children = treedef[2]
    if not isinstance(obj, list | tuple) or len(obj) != len(children):
        got = type(obj).__name__
        if isinstance(obj, list | tuple):
            got += f" of length {len(obj)}"
        raise InvalidUpdateError(
            f"expected a sequence of length {len(children)}, got {got}",
            client=client,
            path=path or "<root>",
        )
    for i, (value, child) in enumerate(zip(obj, children, strict=True)):
        _collect_leaves(value, child, path + f"[{i}]", client, out)


def _build(treedef: tuple, leaves: Iterable) -> Any:
    # A module-level recursion, not a nested closure: a closure that calls itself is a reference
    # cycle, which would keep the leaves (and the buffers they view) alive until the next
    # garbage collection.
    return _build_node(treedef, iter(leaves))


def _build_node(node: tuple, iterator: Iterator) -> Any:
    kind = node[0]
    if kind == "leaf":
        return next(iterator)
    if kind == "dict":
        cls, keys, children = node[1], node[2], node[3]
        items = [(k, _build_node(c, iterator)) for k, c in zip(keys, children, strict=True)]
        try:
            return cls(items)
        except TypeError:  # a Mapping type that cannot be built from items
            return dict(items)
    if kind == "namedtuple":
        return node[1](*(_build_node(c, iterator) for c in node[2]))
    return node[1](_build_node(c, iterator) for c in node[2])


def _client_array(leaf: Any, spec: TensorSpec, client: int | None, path: str) -> np.ndarray:
    """A client's leaf as an array of the spec's shape and dtype, or InvalidUpdateError."""
    typed = isinstance(leaf, np.ndarray | np.generic) or hasattr(leaf, "__array__")
    try:
        array = np.asarray(leaf)
    except Exception as error:  # any conversion failure is reported with its location
        raise InvalidUpdateError(
            f"cannot convert to an array: {error}", client=client, path=path
        ) from error
    if array.dtype.kind not in _SUPPORTED_KINDS or array.dtype == object:
        raise InvalidUpdateError(f"dtype {array.dtype} is not numeric", client=client, path=path)
    if array.dtype != spec.dtype:
        if typed:
            raise InvalidUpdateError(
                f"dtype {array.dtype} does not match the template's {spec.dtype}",
                client=client,
                path=path,
            )
        integers = array.dtype.kind in "iu" and spec.dtype.kind in "iu"  # range-checked below
        if not integers and not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise InvalidUpdateError(
                f"a {array.dtype} value cannot become the template's {spec.dtype}",
                client=client,
                path=path,
            )
        array = _narrow(array, spec.dtype, client, path)
    if array.shape != spec.shape:
        raise InvalidUpdateError(
            f"shape {array.shape} does not match the template's {spec.shape}",
            client=client,
            path=path,
        )
    return array


def _narrow(array: np.ndarray, dtype: np.dtype, client: int | None, path: str) -> np.ndarray:
    """``array`` (a Python number or list, so of NumPy's default dtype) cast to ``dtype``, or
    InvalidUpdateError when a value does not fit: ``astype`` would wrap an integer (``2**40``
    into int32 is 0) or overflow a finite float to Inf (``1e40`` into float32)."""
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidUpdateError(
                f"value {bad} does not fit the template's {dtype} (range [{info.min}, {info.max}])",
                client=client,
                path=path,
            )
        return array.astype(dtype)
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if dtype.kind == "f" and array.size:
        overflow = np.isinf(cast) & np.isfinite(array)
        if overflow.any():
            bad = array[overflow].flat[0]
            raise InvalidUpdateError(
                f"value {bad} does not fit the template's {dtype} (it would become Inf)",
                client=client,
                path=path,
            )
    return cast


class Layout:
    """Where each tensor of a structure lives in one flat vector.

    Parameters
    ----------
    template : structure or Layout
        A nested dict/list/tuple of arrays or :class:`TensorSpec`.

    Attributes
    ----------
    specs : tuple of TensorSpec
        The tensors, in flattening order (dicts in insertion order).
    paths : tuple of str
        Each tensor's path in the structure, such as ``"['fc1'][0]"`` (``"<root>"`` for a bare
        tensor); errors name tensors by these paths.
    offsets : numpy.ndarray
        ``int64[num_tensors + 1]``; tensor ``i`` occupies ``offsets[i]:offsets[i + 1]``.
    size : int
        Total number of elements ``n``.
    dtype : numpy.dtype
        The dtype of flat vectors and client matrices: float32 when every tensor is float32 or
        float16, float64 when any tensor is float64 or tensors mix integers and floats, int64
        when every tensor is an integer.
    """

    __slots__ = ("_treedef", "dtype", "offsets", "paths", "size", "specs")

    def __init__(self, template: Any) -> None:
        if isinstance(template, Layout):
            for name in Layout.__slots__:
                setattr(self, name, getattr(template, name))
            return
        specs: list[TensorSpec] = []
        paths: list[str] = []
        self._treedef = _flatten_template(template, "", specs, paths)
        self.specs = tuple(specs)
        self.paths = tuple(paths)
        sizes = [s.size for s in specs]
        self.dtype = _matrix_dtype(self.specs)
        if sum(sizes) * self.dtype.itemsize > INT64_MAX:
            raise ValueError(
                f"the template holds {sum(sizes)} values of {self.dtype.itemsize} bytes; a flat "
                "client vector is at most 2**63 - 1 bytes"
            )
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.offsets.flags.writeable = False
        self.size = int(self.offsets[-1])

    # -- description ------------------------------------------------------------------------------

    @property
    def num_tensors(self) -> int:
        """Number of tensors (leaves)."""
        return len(self.specs)

    @property
    def is_floating(self) -> bool:
        """True when every tensor is a floating-point tensor."""
        return all(s.dtype.kind == "f" for s in self.specs)

    def tensor_slice(self, index: int) -> slice:
        """The slice of a flat vector holding tensor ``index``."""
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def template(self) -> Any:
        """The structure of :class:`TensorSpec` this layout was built from."""
        return _build(self._treedef, self.specs)

    def map_specs(self, fn) -> Layout:
        """A layout of the same structure with each spec replaced by ``fn(spec)``."""
        return Layout(_build(self._treedef, [fn(s) for s in self.specs]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return self._treedef == other._treedef and self.specs == other.specs

    def __hash__(self) -> int:
        return hash((self._treedef, self.specs))

    def __repr__(self) -> str:
        tensors = ", ".join(
            f"{p}: {s.dtype}{list(s.shape)}" for p, s in zip(self.paths, self.specs, strict=True)
        )
        return f"Layout(size={self.size}, dtype={self.dtype}, tensors={{{tensors}}})"

    # -- conversion -------------------------------------------------------------------------------

    def client_arrays(self, structure: Any, *, client: int | None = None) -> list[np.ndarray]:
        """Validate one client's structure; its leaves as arrays of the template's shapes/dtypes.

        Raises
        ------
        InvalidUpdateError
            On a structure, shape or dtype mismatch, naming ``client`` and the tensor path.
        """
        leaves: list = []
        _collect_leaves(structure, self._treedef, "", client, leaves)
        return [
            _client_array(leaf, spec, client, path)
            for leaf, spec, path in zip(leaves, self.specs, self.paths, strict=True)
        ]

    def flatten(
        self, structure: Any, *, out: np.ndarray | None = None, client: int | None = None
    ) -> np.ndarray:
        """One structure as a flat vector of :attr:`dtype` (written into ``out`` if given)."""
        arrays = self.client_arrays(structure, client=client)
        if out is None:
            out = np.empty(self.size, dtype=self.dtype)
        elif out.shape != (self.size,) or out.dtype != self.dtype:
            raise ValueError(
                f"out must have shape ({self.size},) and dtype {self.dtype}, "
                f"got {out.shape} {out.dtype}"
            )
        for i, array in enumerate(arrays):
            out[self.offsets[i] : self.offsets[i + 1]] = array.reshape(-1)
        return out

    def unflatten(self, vector: np.ndarray, *, copy: bool = True) -> Any:
        """The structure held by a flat vector (fresh arrays of each tensor's dtype).

        Floating results are cast to each tensor's dtype; integer tensors are rounded to the
        nearest integer first when the vector is floating. Scalar tensors come back as NumPy
        scalars. With ``copy=False``, a tensor whose dtype the vector already has is returned as
        a view of it (for a vector nothing else will write to).

        Nothing wraps: a value outside an integer tensor's range (or not finite), or a finite
        value that would become Inf in a narrower float dtype, raises OverflowError naming the
        tensor (an aggregate that does not fit its template's dtype).
        """
        vector = np.asarray(vector)
        if vector.shape != (self.size,):
            raise ValueError(f"expected a vector of length {self.size}, got shape {vector.shape}")
        leaves = []
        for i, spec in enumerate(self.specs):
            segment = vector[self.offsets[i] : self.offsets[i + 1]]
            if spec.dtype.kind in "iu":
                _check_int_fits(segment, spec.dtype, self.paths[i])
                if segment.dtype.kind == "f":
                    segment = np.rint(segment)
                array = segment.astype(spec.dtype, copy=copy)
            elif spec.dtype.itemsize < segment.dtype.itemsize:
                with np.errstate(over="ignore"):
                    array = segment.astype(spec.dtype, copy=copy)
                if np.isinf(array).any():
                    _check_float_fits(segment, array, self.paths[i])
            else:
                array = segment.astype(spec.dtype, copy=copy)
            array = array.reshape(spec.shape)
            leaves.append(array[()] if spec.shape == () else array)
        return _build(self._treedef, leaves)

    def check_rows(self, matrix: np.ndarray, *, first_client: int = 0) -> None:
        """Raise InvalidUpdateError for the first client row holding a value outside its integer
        tensor's range (for a matrix filled directly, as a :class:`ClientBatch`'s is).

        Packing (:meth:`flatten`) checks every value already; this is for matrices it did not
        write. Only integer tensors narrower than the matrix can hold such values, so a float
        layout, or one whose integer tensors are all int64, costs nothing.
        """
        for t, spec in enumerate(self.specs):
            if spec.dtype.kind not in "iu" or spec.dtype == matrix.dtype:
                continue
            segment = matrix[:, self.tensor_slice(t)]
            if not segment.size:
                continue
            info = np.iinfo(spec.dtype)
            with np.errstate(invalid="ignore"):
                bad = (segment < info.min) | (segment > info.max) | (segment != segment)
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                row = int(rows[0])
                value = segment[row][bad[row]][0]
                raise InvalidUpdateError(
                    f"value {value} does not fit the template's {spec.dtype} "
                    f"(range [{info.min}, {info.max}])",
                    client=first_client + row,
                    path=self.paths[t],
                )

    def pack(self, clients: Sequence[Any], *, out: np.ndarray | None = None) -> ClientBatch:
        """Validate and stack client structures into a :class:`ClientBatch`.

        Parameters
        ----------
        clients : sequence of structures
            One structure per client, each matching the template.
        out : numpy.ndarray, optional
            A C-contiguous ``[len(clients), size]`` buffer of :attr:`dtype` to write into.

        Raises
        ------
        InvalidUpdateError
            Naming the first client whose structure, shape or dtype does not match.
        """
        count = len(clients)
        if out is None:
            out = np.empty((count, self.size), dtype=self.dtype)
        batch = ClientBatch(out, self)
        if batch.num_clients != count:
            raise ValueError(f"out has {batch.num_clients} rows for {count} clients")
        for i, structure in enumerate(clients):
            self.flatten(structure, out=out[i], client=i)
        return batch

    def empty_batch(self, num_clients: int) -> ClientBatch:
        """An uninitialized batch for ``num_clients`` clients, for callers that fill rows."""
        return ClientBatch(np.empty((int(num_clients), self.size), dtype=self.dtype), self)


def _check_int_fits(segment: np.ndarray, dtype: np.dtype, path: str) -> None:
    """OverflowError unless every value of an aggregate ``segment`` fits integer ``dtype``."""
    if not segment.size or segment.dtype == dtype:
        return
    info = np.iinfo(dtype)
    low, high = segment.min(), segment.max()
    if segment.dtype.kind == "f":
        if not (np.isfinite(low) and np.isfinite(high)):
            raise OverflowError(
                f"the aggregate of tensor {path} is not finite; it cannot be {dtype}"
            )
        low, high = np.rint(low), np.rint(high)
    if low < info.min or high > info.max:
        raise OverflowError(
            f"the aggregate of tensor {path} does not fit {dtype}: values in [{low}, {high}], "
            f"the dtype holds [{info.min}, {info.max}]"
        )


def _check_float_fits(segment: np.ndarray, cast: np.ndarray, path: str) -> None:
    """OverflowError when a finite value of ``segment`` became Inf in ``cast``."""
    overflow = np.isinf(cast) & np.isfinite(segment)
    if overflow.any():
        raise OverflowError(
            f"the aggregate of tensor {path} does not fit {cast.dtype}: "
            f"{segment[overflow][0]} would become Inf"
        )


def _matrix_dtype(specs: Sequence[TensorSpec]) -> np.dtype:
    kinds = {s.dtype.kind for s in specs}
    if not kinds or (kinds == {"f"} and all(s.dtype.itemsize <= 4 for s in specs)):
        return np.dtype(np.float32)
    if "f" in kinds:
        return np.dtype(np.float64)
    return np.dtype(np.int64)


class ClientBatch:
    """A C-contiguous ``[K, n]`` matrix of K flattened clients, with its :class:`Layout`.

    The matrix is wrapped, never copied: a caller can fill rows in place (for instance with
    ``torch.from_numpy(batch.matrix[i])``) and hand the batch to ``process.next``.

    Parameters
    ----------
    matrix : numpy.ndarray
        C-contiguous, two-dimensional, of the layout's dtype, with ``layout.size`` columns.
    layout : Layout or template
        Describes the columns.

    Examples
    --------
    >>> import numpy as np, aggkit as ak
    >>> batch = ak.ClientBatch(np.zeros((3, 4), np.float32), [ak.TensorSpec((4,), np.float32)])
    >>> batch.num_clients
    3
    """

    __slots__ = ("layout", "matrix")

    def __init__(self, matrix: np.ndarray, layout: Layout | Any) -> None:
        layout = layout if isinstance(layout, Layout) else Layout(layout)
        if not isinstance(matrix, np.ndarray):
            raise TypeError(f"matrix must be a numpy.ndarray, got {type(matrix).__name__}")
        if matrix.ndim != 2 or matrix.shape[1] != layout.size:
            raise ValueError(
                f"matrix must have shape [K, {layout.size}] for this layout, got {matrix.shape}"
            )
        if matrix.dtype != layout.dtype:
            raise TypeError(f"matrix dtype {matrix.dtype} must be the layout's {layout.dtype}")
        if not matrix.flags.c_contiguous:
            raise ValueError("matrix must be C-contiguous (np.ascontiguousarray makes a copy)")
        self.matrix = matrix
        self.layout = layout

    @classmethod
    def empty(cls, layout: Layout | Any, num_clients: int) -> ClientBatch:
        """An uninitialized batch to be filled row by row."""
        layout = layout if isinstance(layout, Layout) else Layout(layout)
        return layout.empty_batch(num_clients)

    @property
    def num_clients(self) -> int:
        """K, the number of rows."""
        return self.matrix.shape[0]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def row(self, client: int) -> np.ndarray:
        """Client ``client``'s flat vector (a view)."""
        return self.matrix[client]

    def client(self, client: int) -> Any:
        """Client ``client``'s structure (fresh arrays)."""
        return self.layout.unflatten(self.matrix[client])

    def __repr__(self) -> str:
        return f"ClientBatch(num_clients={self.num_clients}, layout={self.layout!r})"
