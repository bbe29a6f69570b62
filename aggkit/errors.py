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


class EmptyRoundError(ValueError):
    """A mean was asked for over zero clients with ``strict_empty=True``."""
