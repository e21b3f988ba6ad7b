"""The CLI entry point: version, help, and the error contract (status 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gossipfl import __version__
from gossipfl.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gossipfl {__version__}"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: gossipfl" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gossipfl", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == f"gossipfl {__version__}"


def test_the_embedding_api_is_at_the_top_level_and_loads_lazily() -> None:
    code = (
        "import sys, gossipfl; assert 'numpy' not in sys.modules; "
        "from gossipfl import Peer, BlockingPeer, PeerConfig; "
        "assert Peer.__module__ == 'gossipfl.peer.runtime'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_daemon_and_libp2p_packages_load_their_parts_on_first_use() -> None:
    """`gossipfl init` reads gossipfl.daemon.config and the address parsers alone: the
    packages around them must not import the daemon loop or the libp2p host (~1 s)."""
    code = (
        "import sys; import gossipfl.daemon.config, gossipfl.transport.libp2p.allowlist; "
        "assert 'gossipfl.daemon.node' not in sys.modules; "
        "assert 'gossipfl.transport.libp2p.host' not in sys.modules; "
        "from gossipfl.daemon import DaemonConfig, Node, load_roster; "
        "from gossipfl.transport.libp2p import Allowlist, Libp2pTransport, GOSSIP_PROTOCOL; "
        "assert Node.__module__ == 'gossipfl.daemon.node'; "
        "assert Libp2pTransport.__module__ == 'gossipfl.transport.libp2p.host'; "
        "import gossipfl.daemon as d, gossipfl.transport.libp2p as t; "
        "assert all(getattr(d, n) is not None for n in d.__all__); "
        "assert all(getattr(t, n) is not None for n in t.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_peer_launchers_fork_server_preloads_the_libp2p_host() -> None:
    """The fork server imports py-libp2p once for all peers: naming the (lazy) package is
    not enough, or every forked peer imports ~1,000 modules itself (a restarted peer then
    came back too late to catch up in tests/test_insiders.py)."""
    code = (
        "import importlib, sys; from gossipfl.simulation.processes import PRELOAD; "
        "[importlib.import_module(m) for m in PRELOAD if m != '__main__']; "
        "assert 'gossipfl.transport.libp2p.host' in sys.modules; "
        "assert 'libp2p.host.basic_host' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
