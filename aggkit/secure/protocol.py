"""Client and server state machines of SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The server learns ``sum_{u in U3} x_u mod R`` over the clients ``U3`` whose masked inputs
arrived, and nothing else about the inputs, as long as fewer than ``threshold`` clients collude
with it (honest-but-curious model). Both classes are transport-agnostic: they consume and produce
:mod:`~aggkit.secure.messages` objects, which any transport carries as bytes;
``simulation.py`` runs them in-process.

Stages (``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are the clients still answering; ``N(u)`` the neighbours of ``u``
in the masking graph, complete for SecAgg, sparse for SecAgg+; ``N[u] = N(u) + {u}``):

1. ``advertise_keys``: each client makes two X25519 key pairs, ``c_u`` for the channel that
   carries shares and ``s_u`` for the pairwise masks, and sends both public keys.
2. ``share_keys``: the server sends each client the keys of its neighbours. The client draws a
   self-mask seed ``b_u``, Shamir-shares ``b_u`` and ``s_u^SK`` t-of-``|N[u]|`` (keeping its own
   share), encrypts each neighbour's pair of shares with AES-GCM under
   ``HKDF(X25519(c_u^SK, c_v^PK))``, and commits to ``b_u`` (SHA-256).
3. ``masked_input``: the server forwards the ciphertexts. Client ``u`` masks with exactly the
   neighbours ``v`` whose ciphertexts it received (they are in ``U2``):
   ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) mod R``,
   ``s_uv = HKDF(X25519(s_u^SK, s_v^PK))``.
4. ``unmask``: the server tells each survivor which neighbours survived (``U3``) and which
   dropped (``U2 - U3``); the client returns shares of ``b_v`` for the first and of ``s_v^SK``
   for the second. The server reconstructs, checks every ``b_v`` against its commitment and every
   ``s_v^SK`` against ``s_v^PK``, subtracts the self masks of the survivors and the pairwise
   masks they shared with dropped clients.

Dropouts. A client that vanishes before its shares are forwarded (stages 1-2) is left out
cleanly: nobody masks with it. For SecAgg+ the server also leaves out, before anyone masks, a
client whose closed neighbourhood no longer holds ``threshold`` clients (its secrets could not be
recovered), repeating until every remaining client has enough. A client that vanishes later is
recovered from its neighbours' shares. If at stage 3 or 4 some secret that is needed can no longer
be reconstructed (fewer than ``threshold`` holders answer), or fewer than ``threshold`` clients
sent masked inputs, the server raises :class:`~aggkit.secure.errors.ProtocolAbort` *before*
reconstructing any secret.

Honest clients. A client never reveals both secrets of one peer: it answers a single unmask
request, and refuses (:class:`~aggkit.secure.errors.RefusedRequest`) one that names a peer as
both survivor and dropped, that names itself as dropped, that asks about a client it did not
mask with, or that lists fewer than ``threshold`` survivors. It refuses key lists that do not echo
its own keys or that repeat a key, and rejects any ciphertext that fails authentication. After any
refusal the client is aborted and answers nothing more.

Not covered (as in the paper's honest-but-curious variant): the consistency-check round with
signatures that defends against a server that lies to different clients about ``U3``; the
authenticity of the client-server channel itself (use TLS or the transport's authentication).

Examples
--------
>>> import numpy as np
>>> from aggkit.secure.protocol import SecAggClient, SecAggServer
>>> server = SecAggServer([0, 1, 2], modulus=2**16, vector_length=2, threshold=2)
>>> clients = {u: SecAggClient(u) for u in range(3)}
>>> inputs = {0: np.array([1, 2]), 1: np.array([3, 4]), 2: np.array([5, 6])}
>>> requests = server.start()
>>> for stage in range(4):
...     for u, request in requests.items():
...         server.receive(clients[u].handle(request, inputs[u]))
...     requests = server.advance() if stage < 3 else None
>>> server.finish().sum
array([ 9, 12], dtype=uint64)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from aggkit.secure import crypto, shamir
from aggkit.secure.errors import (
    AuthenticationError,
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
    MaskedInputRequest,
    MaskedInputResponse,
    Message,
    PeerKeys,
    ShareKeysRequest,
    ShareKeysResponse,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SHARE_CIPHERTEXT_SIZE", "SecAggClient", "SecAggResult", "SecAggServer"]

_SHARE = shamir.share_size(crypto.KEY_SIZE)
#: Size of one encrypted pair of shares (seed share, key share, GCM tag).
SHARE_CIPHERTEXT_SIZE = 2 * _SHARE + crypto.SEAL_OVERHEAD
_MASK_PURPOSE = b"pairwise-mask"
_CHANNEL_PURPOSE = b"share-channel"
_REQUESTS = (AdvertiseKeysRequest, ShareKeysRequest, MaskedInputRequest, UnmaskRequest)
_RESPONSES = (AdvertiseKeysResponse, ShareKeysResponse, MaskedInputResponse, UnmaskResponse)
_DONE = len(STAGES)


def _stage_name(index: int) -> str:
    if index < 0:
        return "not started"
    return STAGES[index] if index < _DONE else "done"


# =============================================================================== client


class SecAggClient:
    """One client of a secure aggregation round.

    Feed it the server's requests in order with :meth:`handle`; it returns its response. The
    input vector is needed only at the ``masked_input`` stage.

    Parameters
    ----------
    client_id : int
        This client's id, ``0 <= client_id <= MAX_CLIENT_ID``.
    randbytes : callable
        Source of secret randomness (keys, seed, Shamir coefficients): ``os.urandom`` unless a
        reproducible simulation passes :class:`~aggkit.secure.crypto.DeterministicRandom`.
    """

    def __init__(self, client_id: int, *, randbytes: Callable[[int], bytes] = os.urandom):
        if not isinstance(client_id, int | np.integer) or isinstance(client_id, bool):
            raise TypeError(f"client_id must be an int, got {type(client_id).__name__}")
        if not 0 <= client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client_id must be in [0, {MAX_CLIENT_ID}], got {client_id}")
        self.client_id = int(client_id)
        self._rand = randbytes
        self._stage = 0
        self._aborted = False
        self._session: bytes | None = None

    @property
    def stage(self) -> str:
        """The stage whose request the client expects next, ``"done"`` or ``"aborted"``."""
        return "aborted" if self._aborted else _stage_name(self._stage)

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
            A ciphertext or public key failed verification.
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
        try:
            response = (self._advertise, self._share, self._mask, self._unmask)[self._stage](
                request, value
            )
        except SecAggError:
            self._abort()
            raise
        self._stage += 1
        if self._stage == _DONE:
            self._forget()
        return response

    # ------------------------------------------------------------------ stages

    def _advertise(self, request: AdvertiseKeysRequest, value) -> AdvertiseKeysResponse:
        self._session = request.session_id
        self._modulus = request.modulus
        self._length = request.vector_length
        self._threshold = request.threshold
        crypto.word_dtype(self._modulus)  # validates the modulus
        self._channel_sk, channel_pk = crypto.generate_keypair(self._rand)
        self._mask_sk, mask_pk = crypto.generate_keypair(self._rand)
        self._own_keys = (channel_pk, mask_pk)
        return AdvertiseKeysResponse(self._session, self.client_id, channel_pk, mask_pk)

    def _share(self, request: ShareKeysRequest, value) -> ShareKeysResponse:
        u = self.client_id
        peers = {p.client_id: p for p in request.peers}
        me = peers.get(u)
        if me is None or (me.encryption_key, me.mask_key) != self._own_keys:
            raise RefusedRequest(f"client {u}: the server did not echo this client's own keys")
        keys = [k for p in request.peers for k in (p.encryption_key, p.mask_key)]
        if len(set(keys)) != len(keys):
            raise RefusedRequest(f"client {u}: the key list repeats a public key")
        if len(peers) < self._threshold:
            raise RefusedRequest(
                f"client {u}: {len(peers)} key holders (itself included) are fewer than the "
                f"threshold {self._threshold}"
            )
        self._peer_mask_keys = {v: p.mask_key for v, p in peers.items() if v != u}
        self._seed = bytes(self._rand(crypto.KEY_SIZE))
        holders = sorted(peers)
        shares = shamir.split_many(
            [self._seed, self._mask_sk], [v + 1 for v in holders], self._threshold, self._rand
        )
        self._held: dict[int, tuple[bytes, bytes]] = {}
        self._channel_keys: dict[int, bytes] = {}
        ciphertexts = []
        channel_key = crypto.load_private_key(self._channel_sk)
        for v, (seed_share, key_share) in zip(holders, shares, strict=True):
            if v == u:
                self._held[u] = (seed_share, key_share)
                continue
            shared = crypto.agree(channel_key, peers[v].encryption_key)
            key = crypto.derive_key(shared, self._session, _CHANNEL_PURPOSE, u, v)
            self._channel_keys[v] = key
            ciphertexts.append((v, crypto.seal(key, self._session, u, v, seed_share + key_share)))
        commitment = crypto.commit(self._session, u, self._seed)
        return ShareKeysResponse(self._session, u, commitment, tuple(ciphertexts))

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
        if x.size and (x.min() < 0 or (self._modulus < 1 << 64 and x.max() >= self._modulus)):
            raise ValueError(
                f"client {self.client_id}: input values must be in [0, {self._modulus})"
            )
        return x

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
        return MaskedInputResponse(self._session, u, masked)

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
        if len(survivors) < self._threshold:
            raise RefusedRequest(
                f"client {u}: {len(survivors)} survivors are fewer than the threshold "
                f"{self._threshold}"
            )
        return UnmaskResponse(
            self._session,
            u,
            tuple((v, self._held[v][0]) for v in request.survivors),
            tuple((v, self._held[v][1]) for v in request.dropped),
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
    """

    sum: np.ndarray
    included: tuple[int, ...]
    dropped: dict[str, tuple[int, ...]]
    pruned: dict[str, tuple[int, ...]]


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
        Bonawitz et al.'s analysis against an active server needs ``t > 2/3`` of the holders.
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
        graph: Mapping[int, Iterable[int]] | None = None,
        session_id: bytes | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ):
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

    # ------------------------------------------------------------------ public API

    @property
    def stage(self) -> str:
        """The open stage, ``"not started"``, ``"done"`` or ``"aborted"``."""
        return "aborted" if self._aborted else _stage_name(self._stage)

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
            what = "already answered" if u in self._answered else "was not asked"
            raise ProtocolViolation(f"client {u} {what} at stage {STAGES[self._stage]!r}")
        (self._take_keys, self._take_shares, self._take_masked, self._take_unmask)[self._stage](
            response
        )
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
        try:
            requests = (self._after_keys, self._after_shares, self._after_masked)[closing](answered)
        except ProtocolAbort:
            self._abort()
            raise
        self._stage += 1
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
            total, tuple(sorted(self._u3)), dict(self._dropped), dict(self._pruned)
        )
        self._forget()
        return result

    # ------------------------------------------------------------------ stage logic

    def _take_keys(self, r: AdvertiseKeysResponse) -> None:
        if r.encryption_key == r.mask_key:
            raise ProtocolViolation(f"client {r.client_id} uses one key for both purposes")
        known = {k for pair in self._keys.values() for k in pair}
        if r.encryption_key in known or r.mask_key in known:
            raise ProtocolViolation(f"client {r.client_id} reuses another client's public key")
        self._keys[r.client_id] = (r.encryption_key, r.mask_key)

    def _after_keys(self, answered: frozenset[int]) -> dict[int, Message]:
        u1 = self._prune(answered)
        self._u1 = u1
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._commitments: dict[int, bytes] = {}
        return {
            u: ShareKeysRequest(
                self.session_id,
                u,
                tuple(PeerKeys(v, *self._keys[v]) for v in sorted(self._closed(u) & u1)),
            )
            for u in sorted(u1)
        }

    def _take_shares(self, r: ShareKeysResponse) -> None:
        u = r.client_id
        expected = self._graph[u] & self._u1
        got = {v for v, _ in r.ciphertexts}
        if got != expected:
            raise ProtocolViolation(
                f"client {u} sent shares for {len(got)} clients, not its {len(expected)} neighbours"
            )
        if any(len(c) != SHARE_CIPHERTEXT_SIZE for _, c in r.ciphertexts):
            raise ProtocolViolation(f"client {u} sent a ciphertext of the wrong size")
        self._ciphertexts[u] = dict(r.ciphertexts)
        self._commitments[u] = r.seed_commitment

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
        full = 1 << (8 * self._dtype.itemsize)
        if self.modulus < full and y.size and int(y.max()) >= self.modulus:
            raise ProtocolViolation(f"client {r.client_id}: masked values not in [0, modulus)")
        from aggkit import kernels

        kernels.masking.add_mod(self._sum, y, self.modulus)

    def _after_masked(self, answered: frozenset[int]) -> dict[int, Message]:
        u3, u2, t = answered, self._u2, self.threshold
        if len(u3) < t:
            raise ProtocolAbort(
                f"{len(u3)} masked inputs arrived, fewer than the threshold {t}",
                stage="masked_input",
            )
        dropped = u2 - u3
        # Secrets needed: every survivor's seed; the mask key of every dropped client that
        # some survivor masked with. Holders still alive: the owner's closed neighbourhood in U3.
        needed = sorted(u3) + sorted(d for d in dropped if self._graph[d] & u3)
        for owner in needed:
            holders = len(self._closed(owner) & u3)
            if holders < t:
                raise ProtocolAbort(
                    f"client {owner}'s secrets are held by only {holders} surviving clients, "
                    f"fewer than the threshold {t}",
                    stage="masked_input",
                )
        self._u3 = u3
        self._seed_shares: dict[int, dict[int, bytes]] = {u: {} for u in u3}
        self._key_shares: dict[int, dict[int, bytes]] = {
            d: {} for d in dropped if self._graph[d] & u3
        }
        self._asked: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        requests = {}
        for v in sorted(u3):
            survivors = self._closed(v) & u3
            gone = self._graph[v] & dropped
            self._asked[v] = (survivors, gone)
            requests[v] = UnmaskRequest(
                self.session_id, v, tuple(sorted(survivors)), tuple(sorted(gone))
            )
        return requests

    def _take_unmask(self, r: UnmaskResponse) -> None:
        v = r.client_id
        survivors, gone = self._asked[v]
        if {o for o, _ in r.seed_shares} != survivors or {o for o, _ in r.key_shares} != gone:
            raise ProtocolViolation(f"client {v} did not return exactly the requested shares")
        if any(len(s) != _SHARE for _, s in (*r.seed_shares, *r.key_shares)):
            raise ProtocolViolation(f"client {v} sent a share of the wrong size")
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
