"""Identity key files: created 0600, reused on restart, refused when too open or not a key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.crypto.rsa import create_new_key_pair as create_rsa_key_pair

from gossipfl.errors import ConfigError
from gossipfl.identity import (
    Identity,
    IdentityError,
    create_identity,
    generate_identity,
    load_identity,
    load_or_create_identity,
    save_identity,
)

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_created_key_file_is_private_and_its_directory_too(tmp_path: Path) -> None:
    path = tmp_path / "home" / "identity.key"
    old = os.umask(0)  # even a permissive umask must not make the key readable
    try:
        me = create_identity(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert me.path == path
    assert me.peer_id.startswith("12D3KooW")


def test_identity_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first, created = load_or_create_identity(path)
    again, created_again = load_or_create_identity(path)
    assert (created, created_again) == (True, False)
    assert again.peer_id == first.peer_id
    assert again.private_key_bytes() == first.private_key_bytes()


def test_key_file_is_the_peer_id_specs_protobuf_seed_and_public_key(tmp_path: Path) -> None:
    # what js-libp2p and go-libp2p read (tests/test_interop_js.py reads it with js-libp2p)
    me = create_identity(tmp_path / "identity.key")
    raw = (tmp_path / "identity.key").read_bytes()
    seed = me.key_pair.private_key.to_bytes()
    public = me.key_pair.public_key.to_bytes()
    assert raw == b"\x08\x01\x12\x40" + seed + public
    assert not load_identity(tmp_path / "identity.key").legacy


def test_a_legacy_seed_only_key_file_is_still_read_and_can_be_upgraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.identity_utils import save_identity as libp2p_save_identity

    from gossipfl.cli import main

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = home / "identity.key"
    pair = create_new_key_pair()
    libp2p_save_identity(pair, key)  # py-libp2p's own form: the 32-byte seed alone
    key.chmod(0o600)
    assert len(key.read_bytes()) == 36
    old = load_identity(key)
    assert old.legacy
    assert main(["init", "--home", str(home), "--upgrade-key"]) == 0
    out = capsys.readouterr().out
    assert old.peer_id in out
    new = load_identity(key)
    assert (new.peer_id, new.legacy, len(key.read_bytes())) == (old.peer_id, False, 68)
    assert main(["init", "--home", str(home), "--upgrade-key"]) == 0  # again: nothing to do
    assert "already" in capsys.readouterr().out


def test_a_key_whose_halves_disagree_is_refused(tmp_path: Path) -> None:
    a, b = create_identity(tmp_path / "a.key"), create_identity(tmp_path / "b.key")
    raw = a.private_key_bytes()[:36] + b.key_pair.public_key.to_bytes()
    with pytest.raises(IdentityError, match="damaged"):
        Identity.from_private_key_bytes(raw)


def test_existing_key_is_never_overwritten_without_asking(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    me = create_identity(path)
    with pytest.raises(IdentityError, match=r"already exists.*--force"):
        create_identity(path)
    assert load_identity(path).peer_id == me.peer_id
    replaced = create_identity(path, overwrite=True)
    assert replaced.peer_id != me.peer_id
    assert load_identity(path).peer_id == replaced.peer_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.key"]  # no temp left


@posix_only
@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_too_open_key_file_is_refused(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "identity.key"
    create_identity(path)
    path.chmod(bad_mode)
    with pytest.raises(IdentityError, match=rf"mode 0{bad_mode:o}.*chmod 600"):
        load_identity(path)
    with pytest.raises(IdentityError, match="can be read by other users"):
        load_or_create_identity(path)  # never silently replaced either


@posix_only
def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    me = create_identity(path)
    path.chmod(0o400)
    assert load_identity(path).peer_id == me.peer_id


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"", "is empty"),
        (b"hello, I am not a key\n", "not a libp2p private key"),
        (b"\x08\x01\x12\x05short", "5 bytes of Ed25519 key"),
        (b"\x08\x01\x12\x40short", "truncated"),
        (b"\x08\x01", "no key type or no key data"),
        (b"x" * 5000, "too large"),
    ],
)
def test_garbage_key_file_is_refused_with_a_clear_error(
    tmp_path: Path, content: bytes, complaint: str
) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match=complaint) as caught:
        load_identity(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(create_rsa_key_pair(bits=1024).private_key.serialize())
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="holds a RSA key; gossipfl uses Ed25519"):
        load_identity(path)


def test_missing_key_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="gossipfl init"):
        load_identity(tmp_path / "nope.key")


def test_directory_in_place_of_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "identity.key").mkdir()
    with pytest.raises(IdentityError, match=r"identity\.key"):
        load_identity(tmp_path / "identity.key")
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path / "identity.key")


def test_key_cannot_go_where_a_file_blocks_the_directory(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file, not a directory")
    with pytest.raises(IdentityError, match="not a directory"):
        create_identity(tmp_path / "home" / "identity.key")


def test_generated_identities_round_trip_through_bytes() -> None:
    me = generate_identity()
    again = Identity.from_private_key_bytes(me.private_key_bytes())
    assert again.peer_id == me.peer_id
    assert me.path is None
    assert "key_pair" not in repr(me)  # the secret never lands in a log line


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(min_size=1, max_size=200))
def test_any_bytes_load_as_a_key_or_fail_with_identity_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    try:
        me = load_identity(path)
    except IdentityError:
        return
    assert save_identity(me, tmp_path / "copy.key", overwrite=True).peer_id == me.peer_id
