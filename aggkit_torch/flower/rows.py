"""Replies' arrays decoded straight into the round's client rows, as updates.

A Flower :class:`~flwr.app.Array` holds its tensor as ``.npy`` bytes (``np.save``'s header, then
the values). ``Array.numpy()`` parses the header with ``ast.literal_eval`` and copies the values
out in 256 KiB pieces: about 30 us and two copies per array, which for 100 replies of the MNIST
CNN's 8 arrays is most of Flower's own ``FedAvg`` round. A reply that answers the global model
carries exactly the header the global array's ``np.save`` writes (same dtype, C order, same
shape), so :class:`RowDecoder` compares the header bytes with that one and reads the values in
place (``np.frombuffer``, no copy), writing ``global - trained`` into the row in the same pass.
Anything else (another header version, Fortran order, a shape or dtype that differs, a missing or
extra key, a torch-serialized array) is not decoded here: the caller takes its general path,
which names what is wrong.

Examples
--------
>>> import numpy as np, aggkit as ak
>>> from flwr.app import Array, ArrayRecord
>>> model = {"w": np.array([1.0, 2.0, 3.0], np.float32), "b": np.zeros(1, np.float32)}
>>> layout = ak.Layout({k: ak.TensorSpec(v.shape, v.dtype) for k, v in model.items()})
>>> decoder = RowDecoder(list(model), layout)
>>> row = np.empty(layout.size, np.float32)
>>> trained = ArrayRecord({"w": Array(np.array([0.5, 2.0, 4.0], np.float32)),
...                        "b": Array(np.ones(1, np.float32))})
>>> decoder.update_into(trained, layout.flatten(model), row)
True
>>> row.tolist()  # global - trained
[0.5, 0.0, -1.0, -1.0]
>>> decoder.update_into(ArrayRecord({"w": Array(np.zeros(3, np.float64))}), layout.flatten(model),
...                     row) is None  # not the global model's arrays: the general path decides
True
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

import aggkit as ak
from aggkit_torch.rounds import all_finite

__all__ = ["RowDecoder"]

#: ``Array.stype`` of arrays serialized by ``np.save`` (Flower's ``SType.NUMPY``).
NUMPY_STYPE = "numpy.ndarray"


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``shape`` and ``dtype``."""
    template = np.broadcast_to(np.zeros((), dtype=dtype), shape)  # no memory of that size
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(template))
    return buffer.getvalue()


class RowDecoder:
    """Writes a reply's ``global - trained`` into a client row, reading the ``.npy`` bytes in place.

    Parameters
    ----------
    keys : sequence of str
        The global ArrayRecord's keys, in the order of ``layout``'s tensors.
    layout : aggkit.Layout
        The flat layout of the global arrays (one floating dtype).
    """

    def __init__(self, keys: Sequence[str], layout: ak.Layout):
        if len(keys) != len(layout.specs):
            raise ValueError(f"{len(keys)} keys for a layout of {len(layout.specs)} tensors")
        self._tensors = []
        for i, (key, spec) in enumerate(zip(keys, layout.specs, strict=True)):
            start, stop = int(layout.offsets[i]), int(layout.offsets[i + 1])
            # A tensor of another dtype than the row's is never decoded here (None: general path).
            usable = np.dtype(spec.dtype) == layout.dtype
            header = npy_header(tuple(spec.shape), spec.dtype) if usable else None
            self._tensors.append((key, start, stop, header, np.dtype(spec.dtype)))

    def update_into(self, record, global_vector: np.ndarray, row: np.ndarray) -> bool | None:
        """Write ``global_vector - trained`` into ``row``; whether it is finite.

        None when ``record`` (an ArrayRecord) is not the global model's arrays in ``np.save``'s
        form; ``row`` may then be partly written and the caller decodes the reply its general
        way (which reports what is wrong).
        """
        if len(record) != len(self._tensors):
            return None
        finite = True
        for key, start, stop, header, dtype in self._tensors:
            array = record.get(key)
            if header is None or array is None or array.stype != NUMPY_STYPE:
                return None
            data = array.data
            if len(data) != len(header) + (stop - start) * dtype.itemsize:
                return None
            if not data.startswith(header):
                return None
            trained = np.frombuffer(data, dtype=dtype, count=stop - start, offset=len(header))
            segment = row[start:stop]
            np.subtract(global_vector[start:stop], trained, out=segment)
            finite = finite and all_finite(segment)
        return finite
