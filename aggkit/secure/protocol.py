"""Client and server state machines of SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The server learns ``sum_{u in U3} x_u mod R`` over the clients ``U3`` whose masked inputs
arrived, and nothing else about the inputs. Both classes are transport-agnostic: they consume and
produce :mod:`~aggkit.secure.messages` objects, which any transport carries as bytes;
``simulation.py`` runs them in-process, ``aggkit_torch.flower`` over Flower.

Two modes, chosen explicitly when a party is built (threat models in
``docs/guide/secure-aggregation.md``):

- **authenticated** (``identity=`` and ``registry=``; Bonawitz et al. section 6): every client
  has a long-term Ed25519 identity (:mod:`aggkit.secure.identity`) known to all parties. Clients
  sign their round keys together with the round's parameters, every response that can change
  the sum, and the survivor set of the consistency check; receivers verify against the registry.
  Holds against a server that deviates from the protocol (substitutes keys, alters parameters,
  tells different clients different stories) colluding with fewer than ``2 t - |N[u]|`` of a
  client's neighbours.
- **honest-but-curious** (``honest_but_curious=True``): no identities or signatures, and no
  consistency round (four stages, see :func:`round_stages`). Holds only while the server
  follows the protocol (it may collude with fewer than ``t`` clients and read everything); a
  deviating server can substitute keys, tell clients different survivor sets and unmask
  anyone. For simulations.

In both modes a client enforces its own :class:`ClientPolicy` (minimum neighbours, threshold
above half its share holders by default): the server cannot lower it.

Stages (``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are the clients still answering; ``N(u)`` the neighbours of ``u``
in the masking graph, complete for SecAgg, sparse for SecAgg+; ``N[u] = N(u) + {u}``):

1. ``advertise_keys``: each client makes two X25519 key pairs, ``c_u`` for the channel that
   carries shares and ``s_u`` for the pairwise masks, and sends both public keys (signed with the
   round's session id, modulus, length and threshold).
2. ``share_keys``: the server sends each client the keys of its neighbours, which it verifies. The
   client draws a self-mask seed ``b_u``, Shamir-shares ``b_u`` and ``s_u^SK`` t-of-``|N[u]|``
   (keeping its own share), encrypts each neighbour's pair of shares with AES-GCM under
   ``HKDF(X25519(c_u^SK, c_v^PK))``, commits to ``b_u`` and to every share (SHA-256).
3. ``masked_input``: the server forwards the ciphertexts. Client ``u`` masks with exactly the
   neighbours ``v`` whose ciphertexts it received (they are in ``U2``):
   ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) mod R``,
   ``s_uv = HKDF(X25519(s_u^SK, s_v^PK))``.
4. ``consistency_check`` (authenticated mode only): the server sends every survivor the set
   ``U3``; the client checks that at least ``t`` of its closed neighbourhood are in it and signs
   it.
5. ``unmask``: the server tells each client which neighbours survived and which dropped, with
   the consistency signatures of its surviving neighbours. The client checks that the lists are
   exactly what the signed ``U3`` implies and that ``t`` neighbours signed the same ``U3``, then
   returns shares of ``b_v`` for the survivors and of ``s_v^SK`` for the dropped. In the
   honest-but-curious mode, which has no consistency round (as in Bonawitz et al.'s protocol
   against an honest-but-curious server), the request's lists are the client's view of ``U3``:
   it checks that they classify each of its neighbours exactly once and that at least ``t`` of
   its closed neighbourhood survived. The server checks every share against its owner's
   commitment (a bad one is pinned on its sender, whose shares are all ignored), reconstructs
   from good shares, checks every ``b_v`` against its commitment and every ``s_v^SK`` against
   ``s_v^PK``, and removes the masks that did not cancel.

Dropouts. A client that vanishes before its shares are forwarded (stages 1-2) is left out
cleanly: nobody masks with it. For SecAgg+ the server also leaves out, before anyone masks, a
client whose closed neighbourhood no longer holds ``threshold`` clients (its secrets could not be
recovered), repeating until every remaining client has enough. A client that vanishes later is
recovered from its neighbours' shares. If at stage 3, 4 or 5 some secret that is needed can no
longer be reconstructed (fewer than ``threshold`` holders answer), or fewer than ``threshold``
clients sent masked inputs, the server raises :class:`~aggkit.secure.errors.ProtocolAbort`
*before* asking for any share.

Honest clients. A client never reveals both secrets of one peer: it answers a single unmask
request, and refuses (:class:`~aggkit.secure.errors.RefusedRequest`) one that names a peer as
both survivor and dropped, that names itself as dropped, that asks about a client it did not
mask with, or that differs from the survivor set it checked. It refuses key lists that do not
echo its own keys or that repeat a key, parameters or neighbourhoods below its policy, and
rejects any ciphertext or signature that fails verification. After any refusal the client is
aborted and answers nothing more.

Why a threshold above half the holders: an honest holder reveals at most one of the two secrets
of an owner, so a server that splits the holders into a group told "survived" and one told
"dropped" needs ``t`` shares from each: impossible when ``2 t > |N[u]|`` (plus the number of
corrupt holders, who answer both). The consistency check makes a client reveal nothing unless
``t`` registered neighbours vouch for the same survivor set.

Not covered: the authenticity of the client-server channel itself (use TLS); the server choosing
the graph (SecAgg+) and the session id; a corrupt owner committing to shares it did not send
(its holders are then blamed for its own secrets only).

Examples
--------
>>> import numpy as np
>>> from aggkit.secure.identity import IdentityRegistry, SigningIdentity
>>> from aggkit.secure.protocol import SecAggClient, SecAggServer
>>> ids = {u: SigningIdentity.generate() for u in range(5)}
>>> registry = IdentityRegistry.of(ids)
>>> server = SecAggServer(range(5), modulus=2**16, vector_length=2, threshold=3, registry=registry)
>>> clients = {u: SecAggClient(u, identity=ids[u], registry=registry) for u in range(5)}
>>> inputs = {u: np.array([u, 10 * u]) for u in range(5)}
>>> requests = server.start()
>>> for stage in range(5):
...     for u, request in requests.items():
...         server.receive(clients[u].handle(request, inputs[u]))
...     requests = server.advance() if stage < 4 else None
>>> server.finish().sum
array([ 10, 100], dtype=uint64)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from aggkit import _checks, kernels
from aggkit.secure import crypto, shamir
from aggkit.secure.errors import (
    AuthenticationError,
    BadShareError,
    ProtocolAbort,
    ProtocolViolation,
    RefusedRequest,
    SecAggError,
    ShareIntegrityError,
    StageError,
)
from aggkit.secure.graph import check_graph, complete_graph
from aggkit.secure.messages import (
    MAX_CLIENT_ID,
    SESSION_ID_SIZE,
    STAGES,
    AdvertiseKeysRequest,
    AdvertiseKeysResponse,
    ConsistencyCheckRequest,
    ConsistencyCheckResponse,
    MaskedInputRequest,
    MaskedInputResponse,
    Message,
    PeerKeys,
    ShareKeysRequest,
    ShareKeysResponse,
    UnmaskRequest,
    UnmaskResponse,
)

if TYPE_CHECKING:
    from aggkit.secure.identity import IdentityRegistry, SigningIdentity

__all__ = [
    "SHARE_CIPHERTEXT_SIZE",
    "ClientPolicy",
    "SecAggClient",
    "SecAggResult",
    "SecAggServer",
    "consistency_transcript",
    "key_transcript",
    "message_transcript",
    "round_stages",
]

_SHARE = shamir.share_size(crypto.KEY_SIZE)
#: Size of one encrypted pair of shares (seed share, key share, GCM tag).
SHARE_CIPHERTEXT_SIZE = 2 * _SHARE + crypto.SEAL_OVERHEAD
_MASK_PURPOSE = b"pairwise-mask"
_CHANNEL_PURPOSE = b"share-channel"
_SEED, _KEY_SHARE = b"seed", b"key"
_REQUESTS = (
    AdvertiseKeysRequest,
    ShareKeysRequest,
    MaskedInputRequest,
    ConsistencyCheckRequest,
    UnmaskRequest,
)
_RESPONSES = (
    AdvertiseKeysResponse,
    ShareKeysResponse,
    MaskedInputResponse,
    ConsistencyCheckResponse,
    UnmaskResponse,
)
_DONE = len(STAGES)
_UNMASK = STAGES.index("unmask")
_MASKED = STAGES.index("masked_input")
_CHECK = STAGES.index("consistency_check")


def round_stages(authenticated: bool) -> tuple[str, ...]:
    """The stages a round runs, in order: the honest-but-curious mode has no consistency check.

    Examples
    --------
    >>> round_stages(True)
    ('advertise_keys', 'share_keys', 'masked_input', 'consistency_check', 'unmask')
    >>> round_stages(False)
    ('advertise_keys', 'share_keys', 'masked_input', 'unmask')
    """
    return STAGES if authenticated else STAGES[:_CHECK] + STAGES[_CHECK + 1 :]


def _next_stage(index: int, authenticated: bool) -> int:
    """The stage after ``index`` (the honest-but-curious mode skips the consistency check)."""
    return index + 1 if authenticated or index != _MASKED else index + 2


def _stage_name(index: int) -> str:
    if index < 0:
        return "not started"
    return STAGES[index] if index < _DONE else "done"


# =============================================================================== transcripts


def key_transcript(
    session_id: bytes,
    client_id: int,
    modulus: int,
    vector_length: int,
    threshold: int,
    encryption_key: bytes,
    mask_key: bytes,
) -> bytes:
    """What a client signs at ``advertise_keys``: its keys *and the round's parameters*.

    A neighbour verifies it with its own parameters, so a server that gives two clients different
    moduli, lengths, thresholds or sessions is caught before anyone masks.
    """
    params = AdvertiseKeysRequest(session_id, client_id, modulus, vector_length, threshold)
    return crypto.LABEL + b"|keys|" + params.to_bytes() + encryption_key + mask_key


def message_transcript(message: Message) -> bytes:
    """What a client signs for a response: a SHA-256 digest of its bytes, signature empty."""
    return crypto.LABEL + b"|msg|" + hashlib.sha256(message.signed_bytes()).digest()


def consistency_transcript(session_id: bytes, survivors: Iterable[int]) -> bytes:
    """What a client signs at ``consistency_check``: the session and the sorted set ``U3``."""
    ids = sorted(survivors)
    return crypto.LABEL + b"|consistency|" + session_id + struct.pack(f">{len(ids)}I", *ids)


# =============================================================================== policy


@dataclass(frozen=True)
class ClientPolicy:
    """What a client requires of a round before it shares anything; the server cannot lower it.

    Attributes
    ----------
    min_neighbours : int
        Fewest neighbours (share holders besides itself) a client accepts. With very few, the sum
        itself reveals the input to anyone who knows the others'. Default 3.
    threshold_fraction : float
        The threshold ``t`` must exceed this fraction of the client's share holders
        (``|N[u]|``, itself included). Default 0.5, Bonawitz et al.'s bound against a malicious
        server: an honest holder reveals only one of an owner's two secrets, so two groups of
        ``t`` holders (one for each secret) cannot both exist when ``2 t > |N[u]|``. With ``c``
        corrupt clients among the holders it takes ``2 t > |N[u]| + c``: raise it if you expect
        corrupt clients.

    Examples
    --------
    >>> ClientPolicy().check(0, threshold=3, holders=5)
    >>> try:
    ...     ClientPolicy().check(0, threshold=2, holders=5)
    ... except RefusedRequest as refusal:
    ...     print(refusal)
    client 0: threshold 2 is not above 0.5 of its 5 share holders (client policy)
    """

    min_neighbours: int = 3
    threshold_fraction: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.min_neighbours, bool) or not isinstance(self.min_neighbours, int):
            raise TypeError("min_neighbours must be an int")
        if self.min_neighbours < 0:
            raise ValueError("min_neighbours must be >= 0")
        if not 0.0 <= float(self.threshold_fraction) < 1.0:
            raise ValueError("threshold_fraction must be in [0, 1)")

    @classmethod
    def permissive(cls) -> ClientPolicy:
        """No minimum at all: for simulations where one party runs every client and the server."""
        return cls(min_neighbours=0, threshold_fraction=0.0)

    def check(self, client_id: int, *, threshold: int, holders: int) -> None:
        """Refuse (:class:`RefusedRequest`) a threshold or neighbourhood below this policy."""
        if holders - 1 < self.min_neighbours:
            raise RefusedRequest(
                f"client {client_id}: {holders - 1} neighbours, fewer than its minimum "
                f"{self.min_neighbours} (client policy)"
            )
        if Fraction(threshold) <= Fraction(self.threshold_fraction) * holders:
            raise RefusedRequest(
                f"client {client_id}: threshold {threshold} is not above "
                f"{self.threshold_fraction} of its {holders} share holders (client policy)"
            )

    def smallest_threshold(self) -> int:
        """The smallest threshold this policy can accept (at ``min_neighbours + 1`` holders)."""
        floor = Fraction(self.threshold_fraction) * (self.min_neighbours + 1)
        return int(floor) + 1


def _check_mode(
    identity: object, registry: object, honest_but_curious: bool, who: str, needs_identity: bool
) -> bool:
    """True for the authenticated mode; the caller must choose one mode explicitly."""
    if honest_but_curious:
        if identity is not None or registry is not None:
            raise ValueError(f"{who}: honest_but_curious=True takes no identity or registry")
        return False
    if registry is None or (needs_identity and identity is None):
        need = "identity= and registry=" if needs_identity else "registry="
        raise TypeError(
            f"{who}: choose the mode: pass {need} (authenticated, holds against a malicious "
            "server) or honest_but_curious=True (simulations; a deviating server breaks it)"
        )
    return True


# =============================================================================== client


class SecAggClient:
    """One client of a secure aggregation round.

    Feed it the server's requests in order with :meth:`handle`; it returns its response. The
    input vector is needed only at the ``masked_input`` stage.

    Parameters
    ----------
    client_id : int
        This client's id, ``0 <= client_id <= MAX_CLIENT_ID`` (its id in the registry).
    identity : SigningIdentity, optional
        Authenticated mode: this client's long-term signing key.
    registry : IdentityRegistry, optional
        Authenticated mode: the public identities of every client.
    honest_but_curious : bool
        ``True`` selects the mode without identities (no defence against a deviating server).
        One of the two modes must be chosen.
    policy : ClientPolicy
        Minimum threshold and neighbourhood this client accepts (default: :class:`ClientPolicy`).
    randbytes : callable
        Source of secret randomness (keys, seed, Shamir coefficients): ``os.urandom`` unless a
        reproducible simulation passes :class:`~aggkit.secure.crypto.DeterministicRandom`.
    """

    def __init__(
        self,
        client_id: int,
        *,
        identity: SigningIdentity | None = None,
        registry: IdentityRegistry | None = None,
        honest_but_curious: bool = False,
        policy: ClientPolicy | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ):
        if not isinstance(client_id, int | np.integer) or isinstance(client_id, bool):
            raise TypeError(f"client_id must be an int, got {type(client_id).__name__}")
        if not 0 <= client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client_id must be in [0, {MAX_CLIENT_ID}], got {client_id}")
        self.client_id = int(client_id)
        self.authenticated = _check_mode(
            identity, registry, honest_but_curious, "SecAggClient", needs_identity=True
        )
        if self.authenticated:
            if registry.get(self.client_id) != identity.public_key:  # type: ignore[union-attr]
                raise ValueError(
                    f"client {self.client_id}: the registry does not hold this identity's key"
                )
        self._identity = identity
        self._registry = registry
        self.policy = ClientPolicy() if policy is None else policy
        if not isinstance(self.policy, ClientPolicy):
            raise TypeError("policy must be a ClientPolicy")
        self._rand = randbytes
        self._stage = 0
        self._aborted = False
        self._session: bytes | None = None

    @property
    def stage(self) -> str:
        """The stage whose request the client expects next, ``"done"`` or ``"aborted"``."""
        return "aborted" if self._aborted else _stage_name(self._stage)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages of this client's mode (:func:`round_stages`)."""
        return round_stages(self.authenticated)

    # Saved by to_state(): everything a client learns or draws during a round.
    _SAVED: ClassVar[dict[str, str]] = {
        "_stage": "int",
        "_aborted": "bool",
        "_session": "bytes",
        "_modulus": "int",
        "_length": "int",
        "_threshold": "int",
        "_channel_sk": "bytes",
        "_mask_sk": "bytes",
        "_own_keys": "bytes_list",
        "_own_signature": "bytes",
        "_peer_mask_keys": "bytes_map",
        "_seed": "bytes",
        "_held": "pair_map",
        "_channel_keys": "bytes_map",
        "_masked_with": "ids",
        "_u3": "ids",
    }

    def to_state(self) -> bytes:
        """The client's round state as bytes (JSON), secrets included: keep it on the client.

        A transport whose client side is a fresh process per message (Flower's ClientApp)
        stores it between stages and rebuilds the client with :meth:`from_state`.
        """
        out: dict[str, object] = {"client_id": self.client_id}
        for name, kind in self._SAVED.items():
            if name not in self.__dict__:
                continue
            value = self.__dict__[name]
            if kind == "bytes":
                value = None if value is None else value.hex()
            elif kind == "bytes_list":
                value = [v.hex() for v in value]
            elif kind == "bytes_map":
                value = {str(k): v.hex() for k, v in value.items()}
            elif kind == "pair_map":
                value = {str(k): [a.hex(), b.hex()] for k, (a, b) in value.items()}
            elif kind == "ids":
                value = sorted(value)
            out[name] = value
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def from_state(cls, data: bytes, **kwargs) -> SecAggClient:
        """Rebuild a client from :meth:`to_state`; ``kwargs`` as for the constructor (the mode,
        identity, registry and policy are configuration, not state)."""
        try:
            saved = json.loads(data)
            client = cls(int(saved.pop("client_id")), **kwargs)
            for name, value in saved.items():
                kind = cls._SAVED[name]
                if kind == "bytes":
                    value = None if value is None else bytes.fromhex(value)
                elif kind == "bytes_list":
                    value = tuple(bytes.fromhex(v) for v in value)
                elif kind == "bytes_map":
                    value = {int(k): bytes.fromhex(v) for k, v in value.items()}
                elif kind == "pair_map":
                    value = {
                        int(k): (bytes.fromhex(a), bytes.fromhex(b)) for k, (a, b) in value.items()
                    }
                elif kind == "ids":
                    value = frozenset(int(v) for v in value)
                elif kind == "int":
                    value = int(value)
                elif kind == "bool":
                    value = bool(value)
                setattr(client, name, value)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a saved SecAggClient state: {error!r}") from None
        return client

    def handle(self, request: Message, value: np.ndarray | None = None) -> Message:
        """Answer one server request.

        Parameters
        ----------
        request : Message
            The request of the current stage.
        value : numpy.ndarray, optional
            The client's input, integers in ``[0, modulus)``, ``vector_length`` of them; required
            for the ``masked_input`` request, ignored otherwise.

        Returns
        -------
        Message
            The response to send to the server.

        Raises
        ------
        StageError
            A request out of order, repeated, or after the round ended for this client.
        RefusedRequest
            A request an honest client must not answer (see the module docstring).
        AuthenticationError
            A ciphertext, public key or signature failed verification (``SignatureError``).
        ValueError, TypeError
            A bad ``value``; the client stays at its stage and may be given a valid one.
        """
        if not isinstance(request, Message):
            raise TypeError(f"request must be a secure aggregation Message, got {type(request)}")
        if self._aborted or self._stage >= _DONE:
            raise StageError(
                f"client {self.client_id} is {self.stage}; it answers no more requests"
            )
        expected = _REQUESTS[self._stage]
        if type(request) is not expected:
            self._abort()
            raise StageError(
                f"client {self.client_id} expects {expected.__name__} (stage "
                f"{STAGES[self._stage]!r}), got {type(request).__name__}"
            )
        if request.client_id != self.client_id:
            self._abort()
            raise ProtocolViolation(
                f"request addressed to client {request.client_id}, this is {self.client_id}"
            )
        if self._session is not None and request.session_id != self._session:
            self._abort()
            raise ProtocolViolation("request from another session")
        if self._stage == 2:
            value = self._check_value(value)  # before any state change: a bad value is retryable
        stages = (self._advertise, self._share, self._mask, self._consistency, self._unmask)
        try:
            response = stages[self._stage](request, value)
        except SecAggError:
            self._abort()
            raise
        self._stage = _next_stage(self._stage, self.authenticated)
        if self._stage == _DONE:
            self._forget()
        return response

    # ------------------------------------------------------------------ stages

    def _signed(self, message: Message) -> Message:
        if not self.authenticated:
            return message
        return replace(message, signature=self._identity.sign(message_transcript(message)))  # type: ignore[union-attr,type-var]

    def _advertise(self, request: AdvertiseKeysRequest, value) -> AdvertiseKeysResponse:
        u = self.client_id
        smallest = self.policy.smallest_threshold()
        if request.threshold < smallest:
            raise RefusedRequest(
                f"client {u}: threshold {request.threshold} is below the smallest this client "
                f"accepts ({smallest}, client policy)"
            )
        self._session = request.session_id
        self._modulus = request.modulus
        self._length = request.vector_length
        self._threshold = request.threshold
        crypto.word_dtype(self._modulus)  # validates the modulus
        self._channel_sk, channel_pk = crypto.generate_keypair(self._rand)
        self._mask_sk, mask_pk = crypto.generate_keypair(self._rand)
        self._own_keys = (channel_pk, mask_pk)
        signature = b""
        if self.authenticated:
            signature = self._identity.sign(  # type: ignore[union-attr]
                key_transcript(self._session, u, *self._params(), channel_pk, mask_pk)
            )
        self._own_signature = signature
        return AdvertiseKeysResponse(self._session, u, channel_pk, mask_pk, signature)

    def _params(self) -> tuple[int, int, int]:
        return self._modulus, self._length, self._threshold

    def _share(self, request: ShareKeysRequest, value) -> ShareKeysResponse:
        u = self.client_id
        peers = {p.client_id: p for p in request.peers}
        me = peers.get(u)
        if me is None or (me.encryption_key, me.mask_key, me.signature) != (
            *self._own_keys,
            self._own_signature,
        ):
            raise RefusedRequest(f"client {u}: the server did not echo this client's own keys")
        keys = [k for p in request.peers for k in (p.encryption_key, p.mask_key)]
        if len(set(keys)) != len(keys):
            raise RefusedRequest(f"client {u}: the key list repeats a public key")
        if self.authenticated:
            for v, p in peers.items():
                if v != u:
                    self._registry.verify(  # type: ignore[union-attr]
                        v,
                        key_transcript(
                            self._session, v, *self._params(), p.encryption_key, p.mask_key
                        ),
                        p.signature,
                    )
        if len(peers) < self._threshold:
            raise RefusedRequest(
                f"client {u}: {len(peers)} key holders (itself included) are fewer than the "
                f"threshold {self._threshold}"
            )
        self.policy.check(u, threshold=self._threshold, holders=len(peers))
        self._peer_mask_keys = {v: p.mask_key for v, p in peers.items() if v != u}
        self._seed = bytes(self._rand(crypto.KEY_SIZE))
        holders = sorted(peers)
        shares = shamir.split_many(
            [self._seed, self._mask_sk], [v + 1 for v in holders], self._threshold, self._rand
        )
        self._held: dict[int, tuple[bytes, bytes]] = {}
        self._channel_keys: dict[int, bytes] = {}
        ciphertexts = []
        commitments = []
        channel_key = crypto.load_private_key(self._channel_sk)
        session = self._session
        for v, (seed_share, key_share) in zip(holders, shares, strict=True):
            commitments.append(
                (
                    v,
                    crypto.share_digest(session, u, v, _SEED, seed_share)
                    + crypto.share_digest(session, u, v, _KEY_SHARE, key_share),
                )
            )
            if v == u:
                self._held[u] = (seed_share, key_share)
                continue
            shared = crypto.agree(channel_key, peers[v].encryption_key)
            key = crypto.derive_key(shared, session, _CHANNEL_PURPOSE, u, v)
            self._channel_keys[v] = key
            ciphertexts.append((v, crypto.seal(key, session, u, v, seed_share + key_share)))
        commitment = crypto.commit(session, u, self._seed)
        return self._signed(
            ShareKeysResponse(session, u, commitment, tuple(ciphertexts), tuple(commitments))
        )

    def _check_value(self, value) -> np.ndarray:
        if value is None:
            raise ValueError(f"client {self.client_id}: the masked_input stage needs the input")
        x = np.asarray(value)
        if x.dtype.kind not in "iu":
            raise TypeError(f"client {self.client_id}: the input must be integers, got {x.dtype}")
        if x.shape != (self._length,):
            raise ValueError(
                f"client {self.client_id}: the input must have shape ({self._length},), "
                f"got {x.shape}"
            )
        return _checks.residues(x, self._modulus, f"client {self.client_id}: input values")

    def _mask(self, request: MaskedInputRequest, value: np.ndarray) -> MaskedInputResponse:
        u = self.client_id
        for v, ciphertext in request.ciphertexts:
            if v not in self._peer_mask_keys:
                raise RefusedRequest(f"client {u}: ciphertext from {v}, which is not a neighbour")
            plain = crypto.unseal(self._channel_keys[v], self._session, v, u, ciphertext)
            if len(plain) != 2 * _SHARE:
                raise AuthenticationError(f"client {u}: malformed shares from client {v}")
            self._held[v] = (plain[:_SHARE], plain[_SHARE:])
        self._masked_with = frozenset(v for v, _ in request.ciphertexts)
        if len(self._masked_with) + 1 < self._threshold:
            raise RefusedRequest(
                f"client {u}: only {len(self._masked_with)} neighbours left, fewer than the "
                f"threshold {self._threshold} minus itself"
            )
        masks = [(self._seed, False)]
        mask_key = crypto.load_private_key(self._mask_sk)
        for v in sorted(self._masked_with):
            shared = crypto.agree(mask_key, self._peer_mask_keys[v])
            seed = crypto.derive_key(shared, self._session, _MASK_PURPOSE, u, v)
            masks.append((seed, v < u))  # + PRG(s_uv) for v > u, - PRG(s_uv) for v < u
        generator = crypto.MaskGenerator(self._modulus)
        masked = value.astype(generator.dtype)  # a fresh copy, never the caller's array
        generator.apply_many(masked, masks)
        return self._signed(MaskedInputResponse(self._session, u, masked, self._modulus))

    def _check_survivors(self, u3: frozenset[int]) -> None:
        """Refuse a survivor set without this client or with fewer than ``t`` of its holders."""
        u = self.client_id
        if u not in u3:
            raise RefusedRequest(f"client {u}: the survivor set leaves out this client")
        alive = (self._masked_with | {u}) & u3
        if len(alive) < self._threshold:
            raise RefusedRequest(
                f"client {u}: {len(alive)} of its share holders survived, fewer than the "
                f"threshold {self._threshold}"
            )

    def _consistency(self, request: ConsistencyCheckRequest, value) -> ConsistencyCheckResponse:
        u = self.client_id
        u3 = frozenset(request.survivors)
        self._check_survivors(u3)
        self._u3 = u3
        signature = b""
        if self.authenticated:
            signature = self._identity.sign(consistency_transcript(self._session, u3))  # type: ignore[union-attr]
        return ConsistencyCheckResponse(self._session, u, signature)

    def _unmask(self, request: UnmaskRequest, value) -> UnmaskResponse:
        u = self.client_id
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise RefusedRequest(
                f"client {u}: the server asks for both the seed share and the key share of "
                f"client(s) {sorted(both)}"
            )
        if u in dropped or u not in survivors:
            raise RefusedRequest(f"client {u}: the server lists this client as dropped")
        unknown = (survivors | dropped) - self._masked_with - {u}
        if unknown:
            raise RefusedRequest(
                f"client {u}: asked about clients it did not mask with: {sorted(unknown)[:5]}"
            )
        if not self.authenticated:  # no consistency round: the request's survivors are U3 here
            self._check_survivors(frozenset(survivors))
            self._u3 = frozenset(survivors)
        alive = (self._masked_with | {u}) & self._u3
        if survivors != alive or dropped != self._masked_with - self._u3:
            raise RefusedRequest(
                f"client {u}: the unmask request does not match the survivor set it checked"
            )
        if self.authenticated:
            signers = {v for v, _ in request.signatures}
            if not signers <= alive:
                raise RefusedRequest(
                    f"client {u}: consistency signatures from clients that are not surviving "
                    f"neighbours: {sorted(signers - alive)[:5]}"
                )
            transcript = consistency_transcript(self._session, self._u3)
            for v, signature in request.signatures:
                self._registry.verify(v, transcript, signature)  # type: ignore[union-attr]
            if len(signers) < self._threshold:
                raise RefusedRequest(
                    f"client {u}: only {len(signers)} neighbours signed the survivor set, fewer "
                    f"than the threshold {self._threshold}"
                )
        return self._signed(
            UnmaskResponse(
                self._session,
                u,
                tuple((v, self._held[v][0]) for v in request.survivors),
                tuple((v, self._held[v][1]) for v in request.dropped),
            )
        )

    def _abort(self) -> None:
        self._aborted = True
        self._forget()

    def _forget(self) -> None:
        for name in ("_held", "_seed", "_mask_sk", "_channel_sk", "_channel_keys"):
            self.__dict__.pop(name, None)


# =============================================================================== server


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of a completed round.

    Attributes
    ----------
    sum : numpy.ndarray
        ``uint64[m]``: ``sum of x_u over included clients, mod modulus``.
    included : tuple of int
        The clients whose inputs are in the sum (their masked input arrived), sorted.
    dropped : dict of str to tuple of int
        For each stage, the clients that were asked and did not answer.
    pruned : dict of str to tuple of int
        For each stage, the clients the server left out when closing it, before anyone masked
        with them, because too few of their neighbours were left to hold their shares.
    bad_shares : tuple of int
        Clients that returned a share differing from its owner's commitment; all their shares
        were ignored (the round finished from the others).
    """

    sum: np.ndarray
    included: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    pruned: dict[str, tuple[int, ...]]
    bad_shares: tuple[int, ...] = ()


class SecAggServer:
    """The server of one secure aggregation round.

    Call :meth:`start`, deliver each stage's responses with :meth:`receive`, close the stage
    with :meth:`advance` (which returns the next stage's requests) and, after the ``unmask``
    stage, :meth:`finish`. Clients that have not answered when a stage is closed are dropped.

    Parameters
    ----------
    client_ids : iterable of int
        The clients selected for the round.
    modulus : int
        ``R``: inputs and the sum are integers mod ``R``, ``2 <= R <= 2**64``.
    vector_length : int
        ``m``, the input length.
    threshold : int
        ``t``: shares needed to reconstruct a client's secrets. ``1 <= t <= |N[u]|`` for every
        client. The server colluding with fewer than ``t`` clients learns nothing beyond the sum;
        against a deviating server ``2 t > |N[u]|`` is needed, and the clients' default
        :class:`ClientPolicy` refuses anything less.
    registry : IdentityRegistry, optional
        Authenticated mode: the clients' public identities; the server verifies every signed
        response (so a message altered on the way is refused, not summed) and forwards the
        signatures to the neighbours.
    honest_but_curious : bool
        ``True`` selects the mode without identities. One of the two modes must be chosen, the
        same as the clients'.
    graph : mapping of int to iterable of int, optional
        The masking graph (neighbours of each client, symmetric); the complete graph (SecAgg) by
        default. Use :func:`~aggkit.secure.graph.harary_graph` for SecAgg+.
    session_id : bytes, optional
        16 bytes naming the round; drawn from ``randbytes`` by default.
    randbytes : callable
        Randomness for the session id.
    """

    def __init__(
        self,
        client_ids: Iterable[int],
        *,
        modulus: int,
        vector_length: int,
        threshold: int,
        registry: IdentityRegistry | None = None,
        honest_but_curious: bool = False,
        graph: Mapping[int, Iterable[int]] | None = None,
        session_id: bytes | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ):
        self.authenticated = _check_mode(
            None, registry, honest_but_curious, "SecAggServer", needs_identity=False
        )
        ids = sorted(complete_graph(client_ids))  # validates the ids
        if not ids:
            raise ValueError("client_ids must not be empty")
        if ids[-1] > MAX_CLIENT_ID:
            raise ValueError(f"client ids must be <= {MAX_CLIENT_ID}, got {ids[-1]}")
        self._dtype = crypto.word_dtype(modulus)
        if not isinstance(vector_length, int | np.integer) or vector_length < 0:
            raise ValueError(f"vector_length must be a non-negative int, got {vector_length!r}")
        if not isinstance(threshold, int | np.integer) or isinstance(threshold, bool):
            raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
        self._graph = complete_graph(ids) if graph is None else check_graph(graph, ids)
        smallest = min(len(vs) + 1 for vs in self._graph.values())
        if not 1 <= threshold <= smallest:
            raise ValueError(
                f"threshold must be in [1, {smallest}] (the smallest closed neighbourhood), "
                f"got {threshold}"
            )
        if session_id is None:
            session_id = bytes(randbytes(SESSION_ID_SIZE))
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_SIZE:
            raise ValueError(f"session_id must be {SESSION_ID_SIZE} bytes")
        if self.authenticated:
            missing = [u for u in ids if u not in registry]  # type: ignore[operator]
            if missing:
                raise ValueError(f"clients {missing[:5]} are not in the identity registry")
        self._registry = registry
        self.client_ids = tuple(ids)
        self.modulus = int(modulus)
        self.vector_length = int(vector_length)
        self.threshold = int(threshold)
        self.session_id = session_id
        self._stage = -1
        self._aborted = False
        self._waiting: set[int] = set()
        self._answered: set[int] = set()
        self._active: frozenset[int] = frozenset(ids)
        self._dropped: dict[str, tuple[int, ...]] = {}
        self._pruned: dict[str, tuple[int, ...]] = {}
        self._bad: set[int] = set()

    # ------------------------------------------------------------------ public API

    @property
    def stage(self) -> str:
        """The open stage, ``"not started"``, ``"done"`` or ``"aborted"``."""
        return "aborted" if self._aborted else _stage_name(self._stage)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages of this server's mode (:func:`round_stages`)."""
        return round_stages(self.authenticated)

    @property
    def graph(self) -> dict[int, frozenset[int]]:
        """The masking graph (open neighbourhoods)."""
        return dict(self._graph)

    @property
    def waiting(self) -> frozenset[int]:
        """Clients sent a request at the open stage that have not answered yet."""
        return frozenset(self._waiting)

    def start(self) -> dict[int, AdvertiseKeysRequest]:
        """Open the ``advertise_keys`` stage; returns one request per client."""
        self._require_stage(-1, "start")
        self._stage = 0
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._key_signatures: dict[int, bytes] = {}
        requests = {
            u: AdvertiseKeysRequest(
                self.session_id, u, self.modulus, self.vector_length, self.threshold
            )
            for u in self.client_ids
        }
        self._open(requests)
        return requests

    def receive(self, response: Message) -> None:
        """Accept one client's response to the open stage.

        Raises
        ------
        StageError
            The response belongs to another stage (e.g. it arrived after its stage was closed).
        ProtocolViolation
            Unknown or repeated sender, another session, or content that breaks the protocol.
        SignatureError
            Authenticated mode: the signature does not verify (the message was altered or
            forged); the response is ignored.
        BadShareError
            A share differs from its owner's commitment: the sender (``error.client_id``) is
            excluded from the unmask stage and none of its shares is used.
        """
        if not isinstance(response, Message):
            raise TypeError(f"response must be a secure aggregation Message, got {type(response)}")
        if self._aborted or not 0 <= self._stage < _DONE:
            raise StageError(f"the server is {self.stage}; it accepts no responses")
        expected = _RESPONSES[self._stage]
        if type(response) is not expected:
            stage = response.STAGE
            when = "closed" if STAGES.index(stage) < self._stage else "not open"
            raise StageError(
                f"{type(response).__name__} from client {response.client_id}: stage {stage!r} "
                f"is {when} (open: {STAGES[self._stage]!r})"
            )
        if response.session_id != self.session_id:
            raise ProtocolViolation(f"response from client {response.client_id}: wrong session")
        u = response.client_id
        if u not in self._waiting:
            what = (
                "already answered"
                if u in self._answered
                else "sent a bad share and is excluded"
                if u in self._bad
                else "was not asked"
            )
            raise ProtocolViolation(f"client {u} {what} at stage {STAGES[self._stage]!r}")
        takes = (
            self._take_keys,
            self._take_shares,
            self._take_masked,
            self._take_consistency,
            self._take_unmask,
        )
        try:
            takes[self._stage](response)
        except BadShareError:
            self._waiting.discard(u)
            self._bad.add(u)
            raise
        self._waiting.discard(u)
        self._answered.add(u)

    def advance(self) -> dict[int, Message]:
        """Close the open stage (clients that did not answer are dropped); open the next one.

        Returns
        -------
        dict of int to Message
            The next stage's request for every client still in the round.

        Raises
        ------
        ProtocolAbort
            Too few clients are left; the round is over and no secret was reconstructed.
        """
        if self._aborted or not 0 <= self._stage < _DONE - 1:
            raise StageError(
                f"cannot advance: the server is {self.stage}"
                + (" (call finish() to close the unmask stage)" if self._stage == _DONE - 1 else "")
            )
        closing = self._stage
        answered = frozenset(self._answered)
        self._record_dropped(closing, answered)
        following = _next_stage(closing, self.authenticated)
        try:
            afters = (self._after_keys, self._after_shares, self._after_masked, self._after_check)
            requests = afters[closing](answered)
            if following == _UNMASK and closing == _MASKED:  # no consistency round: U4 = U3
                requests = self._after_check(self._u3)
        except ProtocolAbort:
            self._abort()
            raise
        self._stage = following
        self._open(requests)
        return requests

    def finish(self) -> SecAggResult:
        """Close the ``unmask`` stage, reconstruct the needed secrets and return the sum.

        Raises
        ------
        ProtocolAbort
            Some needed secret has fewer than ``threshold`` shares; nothing was reconstructed.
        AuthenticationError
            A reconstructed secret does not match its commitment (a share was tampered with).
        """
        if self._aborted or self._stage != _DONE - 1:
            raise StageError(f"finish() closes the unmask stage; the server is {self.stage}")
        answered = frozenset(self._answered)
        self._record_dropped(_DONE - 1, answered)
        t = self.threshold
        short = [
            (o, len(s)) for o, s in {**self._seed_shares, **self._key_shares}.items() if len(s) < t
        ]
        if short:
            self._abort()
            owner, count = short[0]
            raise ProtocolAbort(
                f"{len(short)} client(s) cannot be unmasked: client {owner} has {count} shares, "
                f"fewer than the threshold {t}",
                stage="unmask",
            )
        try:
            total = self._unmask_sum()
        except SecAggError:
            self._abort()
            raise
        self._stage = _DONE
        result = SecAggResult(
            total,
            tuple(sorted(self._u3)),
            dict(self._dropped),
            dict(self._pruned),
            tuple(sorted(self._bad)),
        )
        self._forget()
        return result

    # ------------------------------------------------------------------ stage logic

    def _verify(self, response: Message) -> None:
        if self.authenticated:
            self._registry.verify(  # type: ignore[union-attr]
                response.client_id,
                message_transcript(response),
                response.signature,  # type: ignore[attr-defined]
            )

    def _take_keys(self, r: AdvertiseKeysResponse) -> None:
        if self.authenticated:
            self._registry.verify(  # type: ignore[union-attr]
                r.client_id,
                key_transcript(
                    self.session_id,
                    r.client_id,
                    self.modulus,
                    self.vector_length,
                    self.threshold,
                    r.encryption_key,
                    r.mask_key,
                ),
                r.signature,
            )
        if r.encryption_key == r.mask_key:
            raise ProtocolViolation(f"client {r.client_id} uses one key for both purposes")
        known = {k for pair in self._keys.values() for k in pair}
        if r.encryption_key in known or r.mask_key in known:
            raise ProtocolViolation(f"client {r.client_id} reuses another client's public key")
        self._keys[r.client_id] = (r.encryption_key, r.mask_key)
        self._key_signatures[r.client_id] = r.signature

    def _after_keys(self, answered: frozenset[int]) -> dict[int, Message]:
        u1 = self._prune(answered)
        self._u1 = u1
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._commitments: dict[int, bytes] = {}
        self._share_digests: dict[int, dict[int, bytes]] = {}
        return {
            u: ShareKeysRequest(
                self.session_id,
                u,
                tuple(
                    PeerKeys(v, *self._keys[v], self._key_signatures[v])
                    for v in sorted(self._closed(u) & u1)
                ),
            )
            for u in sorted(u1)
        }

    def _take_shares(self, r: ShareKeysResponse) -> None:
        self._verify(r)
        u = r.client_id
        expected = self._graph[u] & self._u1
        got = {v for v, _ in r.ciphertexts}
        if got != expected:
            raise ProtocolViolation(
                f"client {u} sent shares for {len(got)} clients, not its {len(expected)} neighbours"
            )
        if any(len(c) != SHARE_CIPHERTEXT_SIZE for _, c in r.ciphertexts):
            raise ProtocolViolation(f"client {u} sent a ciphertext of the wrong size")
        digests = dict(r.share_commitments)
        if set(digests) != expected | {u} or any(len(d) != 64 for d in digests.values()):
            raise ProtocolViolation(f"client {u} did not commit to one share per holder")
        self._ciphertexts[u] = dict(r.ciphertexts)
        self._commitments[u] = r.seed_commitment
        self._share_digests[u] = digests

    def _after_shares(self, answered: frozenset[int]) -> dict[int, Message]:
        u2 = self._prune(answered)
        self._u2 = u2
        self._sum = np.zeros(self.vector_length, self._dtype)
        requests = {}
        for v in sorted(u2):
            senders = sorted(self._graph[v] & u2)
            requests[v] = MaskedInputRequest(
                self.session_id, v, tuple((u, self._ciphertexts[u][v]) for u in senders)
            )
        del self._ciphertexts
        return requests

    def _take_masked(self, r: MaskedInputResponse) -> None:
        y = r.masked
        if y.dtype != self._dtype or y.shape != (self.vector_length,):
            raise ProtocolViolation(
                f"client {r.client_id}: masked input must be {self._dtype}[{self.vector_length}], "
                f"got {y.dtype}{list(y.shape)}"
            )
        if r.modulus != self.modulus:  # the message checked its words against its modulus
            raise ProtocolViolation(
                f"client {r.client_id}: masked input modulo {r.modulus}, the round's is "
                f"{self.modulus}"
            )
        self._verify(r)
        kernels.masking.add_mod(self._sum, y, self.modulus)

    def _check_holders(self, alive: frozenset[int], stage: str) -> None:
        """Abort unless every secret that will be needed has ``threshold`` holders in ``alive``."""
        u3, t = self._u3, self.threshold
        dropped = self._u2 - u3
        # Secrets needed: every survivor's seed; the mask key of every dropped client that
        # some survivor masked with. Holders still alive: the owner's closed neighbourhood.
        needed = sorted(u3) + sorted(d for d in dropped if self._graph[d] & u3)
        for owner in needed:
            holders = len(self._closed(owner) & alive)
            if holders < t:
                raise ProtocolAbort(
                    f"client {owner}'s secrets are held by only {holders} surviving clients, "
                    f"fewer than the threshold {t}",
                    stage=stage,
                )

    def _after_masked(self, answered: frozenset[int]) -> dict[int, Message]:
        u3, t = answered, self.threshold
        if len(u3) < t:
            raise ProtocolAbort(
                f"{len(u3)} masked inputs arrived, fewer than the threshold {t}",
                stage="masked_input",
            )
        self._u3 = u3
        self._check_holders(u3, "masked_input")
        self._check_signatures: dict[int, bytes] = {}
        if not self.authenticated:  # no consistency round: advance() asks for the shares
            return {}
        self._u3_transcript = consistency_transcript(self.session_id, u3)
        survivors = tuple(sorted(u3))
        return {v: ConsistencyCheckRequest(self.session_id, v, survivors) for v in survivors}

    def _take_consistency(self, r: ConsistencyCheckResponse) -> None:
        if self.authenticated:
            self._registry.verify(r.client_id, self._u3_transcript, r.signature)  # type: ignore[union-attr]
        self._check_signatures[r.client_id] = r.signature

    def _after_check(self, answered: frozenset[int]) -> dict[int, Message]:
        u3, u4, t = self._u3, answered, self.threshold
        dropped = self._u2 - u3
        # A client reveals shares only if t of its surviving neighbours signed U3: ask only them.
        if self.authenticated:
            asked = frozenset(v for v in u4 if len(self._closed(v) & u4) >= t)
        else:
            asked = u4
        self._check_holders(asked, "consistency_check")
        self._seed_shares: dict[int, dict[int, bytes]] = {u: {} for u in u3}
        self._key_shares: dict[int, dict[int, bytes]] = {
            d: {} for d in dropped if self._graph[d] & u3
        }
        self._asked: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        requests = {}
        for v in sorted(asked):
            survivors = self._closed(v) & u3
            gone = self._graph[v] & dropped
            self._asked[v] = (survivors, gone)
            signatures = ()
            if self.authenticated:
                signatures = tuple(
                    (s, self._check_signatures[s]) for s in sorted(self._closed(v) & u4)
                )
            requests[v] = UnmaskRequest(
                self.session_id, v, tuple(sorted(survivors)), tuple(sorted(gone)), signatures
            )
        del self._check_signatures
        return requests

    def _take_unmask(self, r: UnmaskResponse) -> None:
        v = r.client_id
        survivors, gone = self._asked[v]
        if {o for o, _ in r.seed_shares} != survivors or {o for o, _ in r.key_shares} != gone:
            raise ProtocolViolation(f"client {v} did not return exactly the requested shares")
        if any(len(s) != _SHARE for _, s in (*r.seed_shares, *r.key_shares)):
            raise ProtocolViolation(f"client {v} sent a share of the wrong size")
        self._verify(r)
        session = self.session_id
        for kind, offset, pairs in ((_SEED, 0, r.seed_shares), (_KEY_SHARE, 32, r.key_shares)):
            for owner, share in pairs:
                expected = self._share_digests[owner][v][offset : offset + 32]
                if crypto.share_digest(session, owner, v, kind, share) != expected:
                    raise BadShareError(
                        f"client {v} returned a {kind.decode()} share of client {owner}'s secret "
                        "that differs from the owner's commitment: all its shares are ignored",
                        client_id=v,
                    )
        for owner, share in r.seed_shares:
            self._seed_shares[owner][v + 1] = share
        for owner, share in r.key_shares:
            self._key_shares[owner][v + 1] = share

    def _unmask_sum(self) -> np.ndarray:
        masks = []
        for owner in sorted(self._seed_shares):
            seed = self._reconstruct(self._seed_shares[owner], owner, "self-mask seed")
            if crypto.commit(self.session_id, owner, seed) != self._commitments[owner]:
                raise AuthenticationError(
                    f"the reconstructed self-mask seed of client {owner} does not match its "
                    "commitment: a share was tampered with"
                )
            masks.append((seed, True))
        for d in sorted(self._key_shares):
            key = self._reconstruct(self._key_shares[d], d, "mask key")
            if crypto.public_key_of(key) != self._keys[d][1]:
                raise AuthenticationError(
                    f"the reconstructed mask key of client {d} does not match its public key: "
                    "a share was tampered with"
                )
            loaded = crypto.load_private_key(key)
            for u in sorted(self._graph[d] & self._u3):
                shared = crypto.agree(loaded, self._keys[u][1])
                seed = crypto.derive_key(shared, self.session_id, _MASK_PURPOSE, u, d)
                # Survivor u added +PRG(s_ud) if d > u, -PRG(s_ud) if d < u: undo it.
                masks.append((seed, u < d))
        total = self._sum
        crypto.MaskGenerator(self.modulus).apply_many(total, masks)
        return total.astype(np.uint64)

    def _reconstruct(self, shares: dict[int, bytes], owner: int, what: str) -> bytes:
        # The t lowest points: with a complete graph every owner uses the same points, so the
        # Lagrange coefficients are computed once.
        points = sorted(shares)[: self.threshold]
        try:
            return shamir.combine({x: shares[x] for x in points}, self.threshold)
        except ShareIntegrityError as error:
            raise AuthenticationError(
                f"the shares of client {owner}'s {what} are invalid ({error}): tampered with"
            ) from None

    # ------------------------------------------------------------------ helpers

    def _closed(self, u: int) -> frozenset[int]:
        return self._graph[u] | {u}

    def _prune(self, alive: frozenset[int]) -> frozenset[int]:
        """Leave out clients whose closed neighbourhood among ``alive`` is below the threshold."""
        t = self.threshold
        kept = set(alive)
        changed = True
        while changed:
            short = {u for u in kept if len(self._closed(u) & kept) < t}
            kept -= short
            changed = bool(short)
        left = alive - kept
        if left:
            self._pruned[STAGES[self._stage]] = tuple(sorted(left))
        if not kept:
            raise ProtocolAbort(
                f"{len(alive)} clients answered, and none has {t} (the threshold) of its "
                "neighbours, itself included, still in the round",
                stage=STAGES[self._stage],
            )
        return frozenset(kept)

    def _record_dropped(self, stage: int, answered: frozenset[int]) -> None:
        missing = self._active - answered
        if missing:
            self._dropped[STAGES[stage]] = tuple(sorted(missing))

    def _open(self, requests: Mapping[int, Message]) -> None:
        self._active = frozenset(requests)
        self._waiting = set(requests)
        self._answered = set()

    def _require_stage(self, index: int, action: str) -> None:
        if self._aborted or self._stage != index:
            raise StageError(f"cannot {action}: the server is {self.stage}")

    def _abort(self) -> None:
        self._aborted = True
        self._forget()

    def _forget(self) -> None:
        for name in ("_seed_shares", "_key_shares", "_ciphertexts", "_sum"):
            self.__dict__.pop(name, None)
