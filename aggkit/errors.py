"""Exceptions raised by aggkit."""

from __future__ import annotations

__all__ = ["EmptyRoundError", "InvalidUpdateError"]


class InvalidUpdateError(ValueError):
    """A client's update (or weight) cannot be aggregated.

    Raised before any state changes: the caller keeps its old state and may retry the round
    without the offending client.

    Attributes
    ----------
    client : int or None
        Index of the client in the round (its position in ``values``).
    path : str or None
        The tensor path inside the client's structure (``"['fc1'][0]"``), ``"weight"`` for the
        client's weight, or None when the problem is not tied to one tensor.
    detail : str
        What is wrong, without the client and path (``str(error)`` is ``"client 3, tensor
        ['b']: " + detail``), for callers that report the three separately.

    Examples
    --------
    >>> error = InvalidUpdateError("holds NaN", client=3, path="['b']")
    >>> str(error), error.client, error.path, error.detail
    ("client 3, tensor ['b']: holds NaN", 3, "['b']", 'holds NaN')
    """

    def __init__(self, message: str, *, client: int | None = None, path: str | None = None):
        where = []
        if client is not None:
            where.append(f"client {client}")
        if path is not None:
            where.append(f"tensor {path}" if path != "weight" else "weight")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.client = client
        self.path = path
        self.detail = message

    def __reduce__(self):  # keep the fields through pickling (process pools, Flower)
        return _rebuild_invalid_update, (type(self), self.detail, self.client, self.path)


def _rebuild_invalid_update(cls, detail, client, path):
    return cls(detail, client=client, path=path)


class EmptyRoundError(ValueError):
    """A mean was asked for over zero clients with ``strict_empty=True``."""
