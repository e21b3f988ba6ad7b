"""``gossipfl init``: identity + commented config, idempotence, --force, bad input."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.cli.init import config_template, resolve_home
from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity, load_identity
from gossipfl.merge import RULES
from gossipfl.topology.families import FAMILIES
from gossipfl.transport.libp2p import parse_multiaddr


def run_init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["init", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_init_writes_identity_and_config_and_prints_the_peer_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "peer"
    status, out, _ = run_init(capsys, "--home", str(home))
    assert status == 0
    me = load_identity(home / "identity.key")
    assert f"peer id:  {me.peer_id}" in out
    assert f'allow = ["{me.peer_id}"]' in out
    if os.name != "nt":
        assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["identity"]["key_file"] == "identity.key"
    assert me.peer_id in (home / "config.toml").read_text()  # named in a comment


def test_quiet_prints_only_the_peer_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_init(capsys, "--home", str(tmp_path), "-q")
    assert status == 0
    assert out == load_identity(tmp_path / "identity.key").peer_id + "\n"


def test_existing_identity_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_init(capsys, "--home", str(tmp_path), "-q")
    first = load_identity(tmp_path / "identity.key").peer_id
    (tmp_path / "config.toml").write_text("# my edits\n")

    status, out, err = run_init(capsys, "--home", str(tmp_path))
    assert status == 2
    assert out == ""
    assert f"already exists (peer {first})" in err
    assert "--force" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert load_identity(tmp_path / "identity.key").peer_id == first

    status, out, _ = run_init(capsys, "--home", str(tmp_path), "--force")
    assert status == 0
    second = load_identity(tmp_path / "identity.key").peer_id
    assert second != first
    assert (tmp_path / "config.toml.bak").read_text() == "# my edits\n"
    assert "previous one is config.toml.bak" in out


def test_a_lost_key_is_recreated_and_an_edited_config_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.toml").write_text("# hand-written\n")
    status, out, _ = run_init(capsys, "--home", str(tmp_path))
    assert status == 0
    assert "kept the existing file" in out
    assert (tmp_path / "config.toml").read_text() == "# hand-written\n"


def test_options_land_in_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    friend = generate_identity().peer_id
    boot = f"/ip4/192.0.2.7/tcp/4141/p2p/{friend}"
    status, _, _ = run_init(
        capsys,
        *("--home", str(tmp_path)),
        *("--listen", "/ip4/0.0.0.0/tcp/5000", "--listen", "/ip6/::/tcp/5000"),
        *("--bootstrap", boot, "--allow", friend, "--network-id", "job-7.b_c"),
    )
    assert status == 0
    network = tomllib.loads((tmp_path / "config.toml").read_text())["network"]
    assert network == {
        "network_id": "job-7.b_c",
        "listen": ["/ip4/0.0.0.0/tcp/5000", "/ip6/::/tcp/5000"],
        "bootstrap": [boot],
        "allow": [friend],
        "mdns": False,
        "relay_service": False,
        "relays": [],
        "hole_punching": True,
    }


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--listen", "0.0.0.0:4141"], "is not a multiaddr"),
        (["--listen", "/ip4/0.0.0.0/tcp/1/p2p/{peer}"], "must not end in /p2p"),
        (["--bootstrap", "/ip4/192.0.2.7/tcp/4141"], "must end in /p2p/<peer id>"),
        (["--allow", "alice"], "is not a libp2p peer ID"),
        (["--network-id", "  "], "--network-id must be"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    args = [a.format(peer=generate_identity().peer_id) for a in args]
    home = tmp_path / "peer"
    status, out, err = run_init(capsys, "--home", str(home), *args)
    assert status == 2
    assert out == ""
    assert err.startswith("gossipfl: error: ")
    assert complaint in err
    assert not home.exists()


def test_home_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    status, _, err = run_init(capsys, "--home", str(tmp_path / "f"))
    assert status == 2
    assert "not a directory" in err


def test_home_comes_from_flag_then_environment_then_default(tmp_path: Path) -> None:
    assert (
        resolve_home(str(tmp_path / "a"), {"GOSSIPFL_HOME": str(tmp_path / "b")}) == tmp_path / "a"
    )
    assert resolve_home(None, {"GOSSIPFL_HOME": str(tmp_path / "b")}) == tmp_path / "b"
    assert resolve_home(None, {}) == Path("~/.gossipfl").expanduser()
    with pytest.raises(ConfigError):
        resolve_home(None, {"GOSSIPFL_HOME": " "})


def test_the_environment_variable_is_honoured_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "GOSSIPFL_HOME": str(tmp_path / "from-env")}
    done = subprocess.run(
        [sys.executable, "-m", "gossipfl", "init", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == load_identity(tmp_path / "from-env" / "identity.key").peer_id


def test_template_defaults_are_valid_names() -> None:
    config = tomllib.loads(config_template(peer_id=generate_identity().peer_id))
    assert set(config) == {
        "identity", "network", "topology", "rule", "training", "data", "task", "privacy",
        "output", "limits", "score",
    }  # fmt: skip
    assert config["topology"]["name"] in FAMILIES
    assert config["rule"]["name"] in RULES
    for address in config["network"]["listen"]:
        assert parse_multiaddr(address)[1] is None
    assert config["network"]["allow"] == []
    assert config["training"]["protocol"] in {"sync", "async", "epidemic"}
    assert config["training"]["codec"] in {"fp32", "fp16", "int8"}
