"""Long-term client identities for the authenticated (actively secure) protocol: Ed25519 keys.

Against a server that may deviate from the protocol (Bonawitz et al. 2017, section 6), a client
must know that the round keys it receives really belong to the other clients; otherwise the
server hands it keys of its own and decrypts every share it sends. The deployment therefore gives
every client a long-term signing key (:class:`SigningIdentity`) and every party the table of
their public keys (:class:`IdentityRegistry`, node id -> Ed25519 public key), distributed out of
band (a file shipped with the deployment, a PKI). Clients sign their round keys, the survivor set
of the consistency check and every response that can change the sum; receivers verify against
the registry and refuse anything else with :class:`~aggkit.secure.errors.SignatureError`.

Files:

- an identity is the 32-byte Ed25519 private key, hex-encoded on one line (keep it private:
  ``0600``, :meth:`SigningIdentity.save` creates it so);
- a registry is JSON, ``{"format": "aggkit-secagg-registry-v1", "keys": {"<id>": "<hex>"}}``.

Examples
--------
>>> alice = SigningIdentity.generate()
>>> registry = IdentityRegistry({7: alice.public_key})
>>> signature = alice.sign(b"round keys")
>>> registry.verify(7, b"round keys", signature)
>>> registry.verify(7, b"other keys", signature)
Traceback (most recent call last):
...
aggkit.secure.errors.SignatureError: the signature of client 7 does not verify
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aggkit.secure.errors import SignatureError
from aggkit.secure.messages import MAX_CLIENT_ID

__all__ = ["PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "IdentityRegistry", "SigningIdentity"]

#: Bytes of an Ed25519 public key and of a signature.
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_REGISTRY_FORMAT = "aggkit-secagg-registry-v1"


class SigningIdentity:
    """A client's long-term Ed25519 signing key.

    Parameters
    ----------
    private_key : bytes
        The 32 raw private-key bytes.

    Examples
    --------
    >>> me = SigningIdentity(bytes(32))
    >>> len(me.public_key), len(me.sign(b"x"))
    (32, 64)
    """

    __slots__ = ("_key", "public_key")

    def __init__(self, private_key: bytes):
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise ValueError("an Ed25519 private key is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        #: The 32-byte public key to put in the registry.
        self.public_key: bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = os.urandom) -> SigningIdentity:
        """A fresh identity (``randbytes`` only for reproducible simulations)."""
        return cls(bytes(randbytes(32)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SigningIdentity:
        """Read an identity written by :meth:`save`."""
        text = Path(path).read_text().strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{path}: not a hex-encoded Ed25519 private key") from None
        return cls(raw)

    def save(self, path: str | os.PathLike) -> None:
        """Write the private key, hex, to a new file readable by its owner only."""
        raw = self._key.private_bytes_raw()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(raw.hex() + "\n")

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningIdentity(public_key={self.public_key.hex()[:16]}...)"


class IdentityRegistry(Mapping[int, bytes]):
    """The public keys of the deployment's clients: node id -> 32-byte Ed25519 public key.

    A read-only mapping. Every party of an authenticated round holds the same registry; a client
    verifies its neighbours' signatures with it, the server the clients'.

    Parameters
    ----------
    keys : mapping of int to bytes
        ``{client_id: public_key}``.

    Examples
    --------
    >>> ids = {u: SigningIdentity.generate() for u in range(3)}
    >>> registry = IdentityRegistry.of(ids)
    >>> sorted(registry), registry[1] == ids[1].public_key
    ([0, 1, 2], True)
    """

    def __init__(self, keys: Mapping[int, bytes]):
        checked: dict[int, bytes] = {}
        loaded: dict[int, Ed25519PublicKey] = {}
        for u, key in keys.items():
            if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u <= MAX_CLIENT_ID:
                raise ValueError(f"registry: client id must be an int in [0, {MAX_CLIENT_ID}]")
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
                raise ValueError(f"registry: the key of client {u} must be 32 bytes")
            try:
                loaded[u] = Ed25519PublicKey.from_public_bytes(key)
            except ValueError:
                raise ValueError(f"registry: the key of client {u} is not an Ed25519 key") from None
            checked[u] = key
        self._keys = checked
        self._loaded = loaded

    @classmethod
    def of(cls, identities: Mapping[int, SigningIdentity]) -> IdentityRegistry:
        """The registry of a set of identities (simulations, tests)."""
        return cls({u: ident.public_key for u, ident in identities.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> IdentityRegistry:
        """Read a registry file written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != _REGISTRY_FORMAT:
            raise ValueError(f"{path}: not an aggkit secure aggregation registry")
        try:
            keys = {int(u): bytes.fromhex(k) for u, k in data["keys"].items()}
        except (KeyError, AttributeError, ValueError, TypeError):
            raise ValueError(f"{path}: malformed registry keys") from None
        return cls(keys)

    def save(self, path: str | os.PathLike) -> None:
        """Write the registry as JSON (public data)."""
        keys = {str(u): k.hex() for u, k in sorted(self._keys.items())}
        Path(path).write_text(json.dumps({"format": _REGISTRY_FORMAT, "keys": keys}, indent=1))

    def verify(self, client_id: int, data: bytes, signature: bytes) -> None:
        """Check ``client_id``'s signature of ``data``; :class:`SignatureError` if it fails."""
        key = self._loaded.get(client_id)
        if key is None:
            raise SignatureError(f"client {client_id} is not in the identity registry")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"client {client_id} sent no valid signature")
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"the signature of client {client_id} does not verify") from None

    def __getitem__(self, client_id: int) -> bytes:
        return self._keys[client_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"IdentityRegistry({len(self._keys)} clients)"


def main(argv: list[str] | None = None) -> None:
    """``python -m aggkit.secure.identity``: make identities and the registry of a deployment.

    - ``new KEYFILE``: a new identity (mode 0600); prints its public key (hex);
    - ``public KEYFILE``: prints the public key of an identity;
    - ``registry OUT.json ID=PUBLICKEY ...``: writes the registry of the given clients.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m aggkit.secure.identity",
        description="Ed25519 identities for authenticated secure aggregation.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="write a new identity; print its public key")
    new.add_argument("keyfile")
    public = commands.add_parser("public", help="print an identity's public key")
    public.add_argument("keyfile")
    registry = commands.add_parser("registry", help="write a registry: ID=PUBLICKEY ...")
    registry.add_argument("out")
    registry.add_argument("entries", nargs="+", metavar="ID=PUBLICKEY")
    args = parser.parse_args(argv)
    if args.command == "new":
        identity = SigningIdentity.generate()
        identity.save(args.keyfile)
        print(identity.public_key.hex())
    elif args.command == "public":
        print(SigningIdentity.load(args.keyfile).public_key.hex())
    else:
        keys = {}
        for entry in args.entries:
            node, _, key = entry.partition("=")
            try:
                keys[int(node)] = bytes.fromhex(key)
            except ValueError:
                parser.error(f"{entry!r} is not ID=PUBLICKEY (hex)")
        IdentityRegistry(keys).save(args.out)
        print(f"wrote {args.out}: {len(keys)} clients")


if __name__ == "__main__":
    main()
