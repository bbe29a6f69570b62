"""Checkpoint files that cannot run code when loaded.

A checkpoint is read with ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler
rebuilds tensors and plain data (dicts, lists, tuples, str, bytes, int, float, bool, None) and
refuses anything else, so a crafted file cannot import a module or call a function; it is
rejected with a :class:`CheckpointError` instead. Loading a checkpoint therefore needs no more
trust than loading an image file.

What a trainer saves is plain data plus tensors, except for NumPy values in aggregator states
(``np.float64`` norms, ``np.uint64`` noise keys, ``uint64`` generator states). They are written
as tagged entries (``{"__aggkit_numpy__": dtype, "shape": ..., "data": raw bytes}``) and read
back with their exact dtype, so a resumed run is bit-identical to an uninterrupted one.

Examples
--------
>>> import numpy as np, tempfile, os
>>> state = {"round": 3, "norm": np.float64(1.5), "key": np.array([7, 1], np.uint64)}
>>> with tempfile.TemporaryDirectory() as d:
...     save(os.path.join(d, "run.ckpt"), state)
...     back = load(os.path.join(d, "run.ckpt"))
>>> back["norm"], back["key"].dtype, back["round"]
(np.float64(1.5), dtype('uint64'), 3)
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT", "CheckpointError", "from_plain", "load", "save", "to_plain"]

#: Written into every checkpoint and checked on load.
FORMAT = ("aggkit_torch.checkpoint", 1)

_TAG = "__aggkit_numpy__"
_KINDS = frozenset("biufc?")  # dtypes whose raw bytes are their values (no objects, no pointers)


class CheckpointError(ValueError):
    """A file that is not a checkpoint this module wrote, or that would run code to load."""


def to_plain(value: Any) -> Any:
    """``value`` with every NumPy array and scalar replaced by a tagged plain-data entry.

    Dicts, lists and tuples are rebuilt (their types kept); tensors, str, bytes, int, float,
    bool and None pass through. Anything else raises TypeError naming its type, since the
    restricted loader could not read it back.
    """
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in _KINDS or array.dtype.fields is not None:
            raise TypeError(f"cannot checkpoint a NumPy value of dtype {array.dtype}")
        return {
            _TAG: array.dtype.str,
            "shape": tuple(array.shape) if isinstance(value, np.ndarray) else None,
            "data": np.ascontiguousarray(array).tobytes(),
        }
    if isinstance(value, dict):
        if _TAG in value:
            raise TypeError(f"a dict key {_TAG!r} is reserved by the checkpoint format")
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [to_plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (str, bytes, bool, int, float, torch.Tensor)):
        return value
    raise TypeError(
        f"cannot checkpoint a {type(value).__module__}.{type(value).__qualname__}: a checkpoint "
        "holds tensors, NumPy values and plain data only"
    )


def from_plain(value: Any) -> Any:
    """Undo :func:`to_plain`: tagged entries become NumPy arrays and scalars of their dtype."""
    if isinstance(value, dict):
        if _TAG in value:
            dtype = np.dtype(value[_TAG])
            if dtype.kind not in _KINDS:
                raise CheckpointError(f"checkpoint holds a NumPy value of dtype {dtype}")
            flat = np.frombuffer(value["data"], dtype=dtype).copy()
            if value["shape"] is None:
                if flat.size != 1:
                    raise CheckpointError("checkpoint holds a malformed NumPy scalar")
                return flat[0]
            return flat.reshape(value["shape"])
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [from_plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _reason(error: pickle.UnpicklingError) -> str:
    """The restricted unpickler's own reason (not PyTorch's advice to load unrestricted)."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            if reason:
                return reason.split(" Please use ", 1)[0]
    return "unsupported pickle content"


def save(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a crash never leaves half a file), creating the
    missing parent directories: the main job saves after its first round, and a
    ``--checkpoint runs/job.ckpt`` whose ``runs/`` did not exist yet used to end the job there
    with a traceback, losing the round."""
    payload = {"format": FORMAT, "state": to_plain(state)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` without running any code from the file.

    Raises
    ------
    CheckpointError
        The file needs more than tensors and plain data to load (a pickle that would import or
        call something: refused, nothing from it runs), or it is not an aggkit_torch checkpoint.
    FileNotFoundError
        No file at ``path``.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{os.fspath(path)}: refused: not a checkpoint of tensors and plain data; loading "
            f"it would need to import or call something ({_reason(error)}). Nothing from the "
            "file was run; aggkit_torch reads only the checkpoints it writes."
        ) from None
    except (RuntimeError, EOFError) as error:  # neither a torch.save zip nor a pickle
        raise CheckpointError(f"{os.fspath(path)}: not a checkpoint ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{os.fspath(path)}: not an aggkit_torch checkpoint of format {FORMAT} (older "
            "checkpoints, which could run code when loaded, are not read)"
        )
    return from_plain(payload["state"])
