"""What makes an event tamper-evident: its link in the child's hash chain and its sector's signature.

Headers on every event message (the payload contract is unchanged; the child index, a sourced
stream, keeps them):
- ``Refbus-Chain: <pos>:<hex>``: the event's place in its child's chain (1 for the first) and its
  chain hash, sha256(chain hash of the child's previous event || the event's bytes as stored); the
  first event chains on 32 zero bytes.
- ``Refbus-Key: <key id>``: the key that signs it; the key's owner must be the event's sender.
- ``Refbus-Sig: <i>/<n> <signature> <path>`` (base64): the signer's events of one published batch
  are signed together, up to GROUP at a time, by one Ed25519 signature over the Merkle root of their
  chain hashes; every member carries the signature and its Merkle path (X-Road's batch signatures
  over hash trees). One signature per group keeps signing and verifying affordable (docs/decisions/
  0013-tamper-evidence.md has the measurements), and each event still verifies on its own (a child's
  history, a page).
"""

import base64
import hashlib
from collections.abc import Sequence

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHAIN = "Refbus-Chain"
KEY = "Refbus-Key"
SIG = "Refbus-Sig"

GENESIS = b"\0" * 32
SIG_DOMAIN = b"refbus/events/v1\0"
SEAL_DOMAIN = b"refbus/seal/v1\0"
KEY_DOMAIN = b"refbus/key/v1\0"
ACCESS_DOMAIN = b"refbus/access/v1\0"


class Link(msgspec.Struct, frozen=True, array_like=True):
    """A child's newest link: its position in the chain and its chain hash."""

    pos: int = 0
    hash: bytes = GENESIS


START = Link()


def chain_hash(prev: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(prev + payload).digest()


def next_link(prev: Link, payload: bytes) -> Link:
    return Link(prev.pos + 1, chain_hash(prev.hash, payload))


def format_link(link: Link) -> str:
    return f"{link.pos}:{link.hash.hex()}"


def parse_link(text: str | None) -> Link | None:
    """The link a Refbus-Chain header states; None when absent or malformed."""
    if not text:
        return None
    pos, _, digest = text.partition(":")
    if not pos.isdigit() or len(digest) != 64:
        return None
    try:
        return Link(int(pos), bytes.fromhex(digest))
    except ValueError:
        return None


GROUP = 64
"At most this many events under one signature: a Merkle path of at most 6 hashes on each."


def _leaf(chain: bytes) -> bytes:
    return hashlib.sha256(b"\0" + chain).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\1" + left + right).digest()


def merkle(chains: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over these chain hashes and each one's path (its siblings, leaf to root); a node
    without a sibling rises unchanged."""
    level = [_leaf(c) for c in chains]
    paths: list[list[bytes]] = [[] for _ in chains]
    index = list(range(len(chains)))
    while len(level) > 1:
        for leaf, i in enumerate(index):
            sibling = i ^ 1
            if sibling < len(level):
                paths[leaf].append(level[sibling])
            index[leaf] = i // 2
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0], paths


def merkle_root(chains: Sequence[bytes]) -> bytes:
    """The root `merkle` computes, without the paths."""
    level = [_leaf(c) for c in chains]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def b64(text: str) -> bytes:
    """A signature's bytes from base64; 64 zero bytes (which verify nothing) when it is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return bytes(64)


def parse_sig_head(text: str) -> tuple[int, int, str] | None:
    """(index, group size, signature as base64) of a Refbus-Sig header, without decoding the path."""
    parts = text.split(" ")
    if len(parts) != 3 or len(parts[1]) != 88:
        return None
    i, _, n = parts[0].partition("/")
    if not (i.isdigit() and n.isdigit()) or int(i) >= int(n):
        return None
    return int(i), int(n), parts[1]


def root_from(chain: bytes, i: int, n: int, path: Sequence[bytes]) -> bytes | None:
    """The root a leaf's path leads to; None when the path does not fit (i, n)."""
    node, size, steps = _leaf(chain), n, iter(path)
    while size > 1:
        if i ^ 1 < size:
            sibling = next(steps, None)
            if sibling is None:
                return None
            node = _node(node, sibling) if i % 2 == 0 else _node(sibling, node)
        i, size = i // 2, (size + 1) // 2
    return node if next(steps, None) is None else None


def signed_root(n: int, root: bytes) -> bytes:
    return SIG_DOMAIN + n.to_bytes(4, "big") + root


def format_sig(i: int, n: int, signature: bytes, path: Sequence[bytes]) -> str:
    # "-" for no path (a group of one): a header value's trailing space does not survive the wire.
    encoded = base64.b64encode(b"".join(path)).decode() or "-"
    return f"{i}/{n} {base64.b64encode(signature).decode()} {encoded}"


def parse_sig(text: str | None) -> tuple[int, int, bytes, list[bytes]] | None:
    """(index, group size, signature, path) of a Refbus-Sig header; None when absent or malformed."""
    if not text:
        return None
    parts = text.split(" ")
    if len(parts) != 3:
        return None
    i, _, n = parts[0].partition("/")
    try:
        sig = base64.b64decode(parts[1], validate=True)
        path = b"" if parts[2] == "-" else base64.b64decode(parts[2], validate=True)
    except ValueError:
        return None
    if not (i.isdigit() and n.isdigit()) or len(sig) != 64 or len(path) % 32 or int(i) >= int(n):
        return None
    return int(i), int(n), sig, [path[k : k + 32] for k in range(0, len(path), 32)]


def sign_messages(messages: Sequence[tuple[str, bytes, dict[str, str]]], signers: "SignerLookup") -> None:
    """Sign a batch about to be published, in place: each key's messages in groups of at most GROUP,
    one signature over each group's Merkle root, carried by every member with its path. Earlier
    signatures (a batch split and sent again) are replaced."""
    groups: dict[str, list[int]] = {}
    for i, (_, _, headers) in enumerate(messages):
        headers.pop(SIG, None)
        kid = headers.get(KEY)
        if kid is not None:
            groups.setdefault(kid, []).append(i)
    for kid, members in groups.items():
        private = signers(kid)
        if private is None:
            continue
        for start in range(0, len(members), GROUP):
            group = members[start : start + GROUP]
            chains = []
            for i in group:
                link = parse_link(messages[i][2].get(CHAIN))
                assert link is not None
                chains.append(link.hash)
            root, paths = merkle(chains)
            signature = private.sign(signed_root(len(group), root))
            for k, i in enumerate(group):
                messages[i][2][SIG] = format_sig(k, len(group), signature, paths[k])


def key_id(owner: str, public: bytes) -> str:
    return f"{owner}-{hashlib.sha256(public).hexdigest()[:16]}"


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class SignerLookup:  # a Protocol-like callable: key id -> private key or None
    def __call__(self, kid: str) -> Ed25519PrivateKey | None: ...  # pragma: no cover
