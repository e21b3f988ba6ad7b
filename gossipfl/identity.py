"""A peer's identity: an Ed25519 key pair kept in a key file.

The peer ID other peers see (``12D3KooW...``) is derived from the public key, so the key
file *is* the peer: keep it, and the peer keeps its name across restarts (allowlists and
bootstrap lists stay valid); lose it, and the peer becomes a stranger; leak it, and anyone
can impersonate the peer. Hence the rules enforced here:

- the file holds the private key in the libp2p protobuf encoding of the peer-id spec:
  ``PrivateKey { Type = Ed25519, Data = 32-byte seed || 32-byte public key }`` (68
  bytes), the form js-libp2p and go-libp2p read and write. Files written by earlier
  versions hold only the 32-byte seed (py-libp2p's own form, which the others refuse):
  they are still read, :attr:`Identity.legacy` says so, and ``gossipfl init --upgrade-key``
  rewrites them in place under the same peer ID;
- it is created with mode 0600 (and its directory 0700) and never rewritten in place;
- a key file that group or others can read is refused, as OpenSSH refuses such keys: a
  secret that has been world-readable must be treated as leaked;
- anything that is not an Ed25519 private key is refused with a message that names the
  file and the problem.

The same key signs what a peer says about itself where the channel alone is not enough
(membership records relayed by other peers): :meth:`Identity.signer`, and
:func:`ed25519_public_key` to get a peer's public key back from its peer ID alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gossipfl.errors import ConfigError

if TYPE_CHECKING:  # libp2p is imported lazily: `gossipfl --help` must stay fast
    from libp2p.crypto.keys import KeyPair

KEY_FILE_MODE = 0o600
"""Owner read/write only."""
KEY_DIR_MODE = 0o700
MAX_KEY_FILE_SIZE = 4096
"""A serialized Ed25519 key is 68 bytes (36 in the legacy form); anything much larger is
not one of ours."""
_PROTO_TYPE_ED25519 = b"\x08\x01"
"""Field 1 (``Type``, varint) = 1: Ed25519."""
ED25519_PEER_ID_PREFIX = bytes.fromhex("002408011220")
"""What an Ed25519 peer ID (``12D3KooW...``) decodes to before the 32 key bytes: the
multihash code *identity* (0x00) and length 36 (0x24), then the libp2p protobuf
``PublicKey`` message: field 1 ``Type`` = 1 (Ed25519), field 2 ``Data``, 32 bytes."""
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_MAX_PEER_ID = 64
"""Characters of a base58 Ed25519 peer ID at most (they have 52 or 53)."""


class IdentityError(ConfigError):
    """A key file that cannot be used: missing, unreadable, too open, or not a key."""


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair and the peer ID derived from it (``12D3KooW...``)."""

    key_pair: KeyPair = field(repr=False)
    peer_id: str
    path: Path | None = None

    legacy: bool = False
    """True when the key came from a file in the 32-byte legacy form (see the module
    docstring); ``gossipfl init --upgrade-key`` rewrites it."""

    @classmethod
    def from_private_key_bytes(cls, data: bytes, *, path: Path | None = None) -> Identity:
        """Parse a libp2p protobuf-encoded Ed25519 private key: the spec's 64-byte
        ``Data`` (seed and public key, which must match), or the legacy 32-byte seed."""
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.crypto.keys import KeyPair, KeyType
        from libp2p.peer.id import ID

        where = f"key file {path}" if path is not None else "private key"
        key_type, payload = _parse_private_key(data, where)
        if key_type != KeyType.Ed25519.value:
            name = KeyType(key_type).name if key_type in {k.value for k in KeyType} else None
            raise IdentityError(
                f"{where} holds a {name or f'type-{key_type}'} key; gossipfl uses Ed25519"
            )
        if len(payload) not in (32, 64, 96):
            raise IdentityError(
                f"{where} holds {len(payload)} bytes of Ed25519 key; expected 64 (seed and "
                "public key) or 32 (a seed alone); restore it from a backup, or move it "
                "away and run `gossipfl init` to create a new identity (the peer ID will "
                "change)"
            )
        private_key = Ed25519PrivateKey.from_bytes(payload[:32])
        public_key = private_key.get_public_key()
        if len(payload) > 32 and payload[32:64] != public_key.to_bytes():
            raise IdentityError(
                f"{where} is damaged: its public key does not belong to its private key"
            )
        return cls(
            KeyPair(private_key, public_key),
            str(ID.from_pubkey(public_key)),
            path,
            legacy=len(payload) == 32,
        )

    def private_key_bytes(self) -> bytes:
        """The private key in the libp2p spec's protobuf encoding (what the key file
        holds): ``08 01 12 40`` then the 32-byte seed and the 32-byte public key."""
        seed = self.key_pair.private_key.to_bytes()
        public = self.key_pair.public_key.to_bytes()
        payload = bytes(seed) + bytes(public)
        return _PROTO_TYPE_ED25519 + b"\x12" + bytes([len(payload)]) + payload

    def signer(self) -> Callable[[bytes], bytes]:
        """A function that signs bytes with this identity's key (64-byte pure Ed25519
        signatures, RFC 8032), checkable by anyone who knows only the peer ID (see
        :func:`ed25519_public_key`).

        It uses ``cryptography`` (OpenSSL) with the key loaded once, not py-libp2p's
        wrapper: a peer signs its membership record every exchange interval.
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        seed = self.key_pair.private_key.to_bytes()
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise IdentityError("this identity's private key is not a 32-byte Ed25519 seed")
        return Ed25519PrivateKey.from_private_bytes(seed).sign


def _varint(data: bytes, at: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise IdentityError(f"{where} is not a libp2p private key (a truncated varint)")


def _parse_private_key(data: bytes, where: str) -> tuple[int, bytes]:
    """``(Type, Data)`` of a protobuf ``PrivateKey`` message (both fields required; any
    other field refused: a key file has nothing else to say)."""
    key_type: int | None = None
    payload: bytes | None = None
    at = 0
    while at < len(data):
        tag, at = _varint(data, at, where)
        if tag == 0x08:
            key_type, at = _varint(data, at, where)
        elif tag == 0x12:
            length, at = _varint(data, at, where)
            if at + length > len(data):
                raise IdentityError(f"{where} is not a libp2p private key (truncated)")
            payload, at = data[at : at + length], at + length
        else:
            raise IdentityError(
                f"{where} is not a libp2p private key (unexpected protobuf field tag "
                f"{tag:#x}); restore it from a backup, or move it away and run `gossipfl "
                "init` to create a new identity (the peer ID will change)"
            )
    if key_type is None or payload is None:
        raise IdentityError(
            f"{where} is not a libp2p private key (no key type or no key data); restore "
            "it from a backup, or move it away and run `gossipfl init` to create a new "
            "identity (the peer ID will change)"
        )
    return key_type, payload


def _base58_decode(text: str) -> bytes | None:
    value = 0
    for char in text:
        digit = _BASE58.find(char)
        if digit < 0:
            return None
        value = value * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))  # each leading "1" is a leading zero byte
    return b"\0" * zeros + value.to_bytes((value.bit_length() + 7) // 8, "big")


def ed25519_public_key(peer_id: str) -> bytes | None:
    """The raw 32-byte Ed25519 public key that ``peer_id`` names, or None if it names none.

    An Ed25519 peer ID is not a hash of the key but the key itself (an *identity*
    multihash of its protobuf encoding), so a signature by a peer can be checked with no
    key exchange and no lookup: whoever knows the peer ID knows the key. Pure and cheap
    (a few microseconds): no libp2p import.
    """
    if not 0 < len(peer_id) <= _MAX_PEER_ID:
        return None
    raw = _base58_decode(peer_id)
    if raw is None or len(raw) != len(ED25519_PEER_ID_PREFIX) + 32:
        return None
    if not raw.startswith(ED25519_PEER_ID_PREFIX):
        return None
    return raw[len(ED25519_PEER_ID_PREFIX) :]


def generate_identity() -> Identity:
    """A fresh random identity, held in memory only (tests, throwaway peers)."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    key_pair = create_new_key_pair()
    return Identity(key_pair, str(ID.from_pubkey(key_pair.public_key)))


def _check_permissions(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"key file {path} is not a regular file")
    if os.name == "nt":  # POSIX modes mean nothing there; rely on the profile's ACLs
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"key file {path} can be read by other users (mode {mode:04o}); a private key "
            f"must be private: run `chmod 600 {path}` if nobody else could have copied it, "
            "otherwise create a new identity"
        )


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read the identity in ``path``; refuse a missing, too-open or malformed key file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            _check_permissions(path, st)
            data = fh.read(MAX_KEY_FILE_SIZE + 1)
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no key file at {path}; run `gossipfl init --home {path.parent}` to create an "
            "identity there, or point [identity] key_file at the peer's key file"
        ) from exc
    except IsADirectoryError as exc:
        raise IdentityError(f"key file {path} is a directory") from exc
    except PermissionError as exc:
        raise IdentityError(f"cannot read key file {path}: permission denied") from exc
    if not data:
        raise IdentityError(f"key file {path} is empty")
    if len(data) > MAX_KEY_FILE_SIZE:
        raise IdentityError(f"key file {path} is too large to be an Ed25519 key")
    return Identity.from_private_key_bytes(data, path=path)


def _ensure_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise IdentityError(
            f"cannot create a key file in {directory}: it is not a directory; choose another "
            "home directory (--home)"
        )
    try:
        directory.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(
            f"cannot create the directory {directory} for the key file: "
            f"{exc.strerror or exc}; choose a home directory you can write to (--home)"
        ) from None


def save_identity(
    identity: Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Identity:
    """Write ``identity`` to ``path`` with mode 0600.

    Without ``overwrite`` an existing file is never touched (the create is atomic, so two
    concurrent ``gossipfl init`` cannot both win). With it, the new key is written to a
    temporary file and renamed over the old one, so a crash leaves one key or the other,
    never half of each.
    """
    path = Path(path)
    _ensure_directory(path.parent)
    data = identity.private_key_bytes()
    if not overwrite:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError as exc:
            raise IdentityError(
                f"key file {path} already exists; it is this peer's identity. Use --force "
                "to replace it (the peer ID will change)"
            ) from exc
        except OSError as exc:
            raise IdentityError(
                f"cannot create key file {path}: {exc.strerror or exc}; choose a home "
                "directory you can write to (--home)"
            ) from None
        _write_all(fd, data, path)
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            _write_all(fd, data, Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return Identity(identity.key_pair, identity.peer_id, path)


def _write_all(fd: int, data: bytes, path: Path) -> None:
    try:
        if os.name != "nt":
            os.fchmod(fd, KEY_FILE_MODE)  # whatever the umask said
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise IdentityError(f"cannot write key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def create_identity(path: str | os.PathLike[str], *, overwrite: bool = False) -> Identity:
    """Generate a new identity and write it to ``path`` (see :func:`save_identity`)."""
    return save_identity(generate_identity(), path, overwrite=overwrite)


def load_or_create_identity(path: str | os.PathLike[str]) -> tuple[Identity, bool]:
    """The identity in ``path``, creating it first if there is none.

    Returns ``(identity, created)``. A file that exists but cannot be used is an error,
    never silently replaced: replacing it would change the peer ID.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        try:
            return create_identity(path), True
        except IdentityError:
            if not path.exists():
                raise
            # another process created it between our check and our create: use theirs
    return load_identity(path), False
