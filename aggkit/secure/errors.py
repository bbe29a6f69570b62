"""Exceptions of the secure aggregation protocol (``aggkit.secure.protocol`` and its parts).

All derive from :class:`SecAggError`, so a transport can catch one type. The split follows what
the caller should do next:

- :class:`ProtocolAbort`: the round cannot finish (too few clients are left to reconstruct the
  masks). The server stops *before* reconstructing any secret, so it learns no input; run a new
  round.
- :class:`AuthenticationError`: a ciphertext, a share or a reconstructed secret failed
  verification (tampering, or a bug in a transport). The receiver refuses it. Its subclasses
  say more: :class:`SignatureError` (a signature does not verify against the identity registry:
  a substituted key, a forged or altered message), :class:`BadShareError` (a client returned a
  Shamir share that is not the one its owner committed to; the server excludes that client's
  shares and goes on if enough good ones remain).
- :class:`ProtocolViolation`: a message is valid but not acceptable here: wrong stage, unknown
  or duplicate sender, a late answer for a closed stage, or (:class:`RefusedRequest`) a server
  request that an honest client must not answer.
- :class:`MessageFormatError`: bytes that are not a well-formed message of this version.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadShareError",
    "InsufficientSharesError",
    "MessageFormatError",
    "ProtocolAbort",
    "ProtocolViolation",
    "RefusedRequest",
    "SecAggError",
    "ShareIntegrityError",
    "SignatureError",
    "StageError",
]


class SecAggError(Exception):
    """Base class of every secure aggregation error."""


class ProtocolAbort(SecAggError, RuntimeError):
    """The round was aborted: fewer clients than the threshold are left at some stage.

    Attributes
    ----------
    stage : str
        The stage at which the server gave up.
    """

    def __init__(self, message: str, *, stage: str):
        super().__init__(f"secure aggregation aborted at stage {stage!r}: {message}")
        self.stage = stage


class AuthenticationError(SecAggError):
    """A ciphertext, share or reconstructed secret failed verification."""


class SignatureError(AuthenticationError):
    """A signature does not verify against the identity registry (or the signer is unknown)."""


class BadShareError(AuthenticationError):
    """A client returned a share that differs from its owner's commitment.

    Attributes
    ----------
    client_id : int
        The client that sent the bad share; the server ignores all its shares.
    """

    def __init__(self, message: str, *, client_id: int):
        super().__init__(message)
        self.client_id = client_id


class ShareIntegrityError(AuthenticationError, ValueError):
    """Shamir shares are inconsistent with each other or with the secret's format."""


class InsufficientSharesError(SecAggError, ValueError):
    """Fewer Shamir shares than the threshold were given."""


class ProtocolViolation(SecAggError):
    """A well-formed message that the receiver must not accept in its current state."""


class StageError(ProtocolViolation):
    """A message for another stage than the current one (too early, too late, or repeated)."""


class RefusedRequest(ProtocolViolation):
    """An honest client refuses a server request (e.g. both secrets of one peer)."""


class MessageFormatError(SecAggError, ValueError):
    """Bytes that do not parse as a message of this protocol version."""
