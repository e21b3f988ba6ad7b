"""gossipfl and js-libp2p 3.x side by side (node and the packages pinned in tests/js).

Runs wherever node and the packages are installed (`make install` runs `npm ci` in
tests/js when npm is present); elsewhere every test here is skipped with the reason, and
`make test` prints it in its summary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gossipfl.daemon.testing import kill_all, start_daemon, wait_for
from gossipfl.identity import create_identity, load_identity

JS = Path(__file__).parent / "js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (JS / "node_modules" / "@libp2p" / "crypto").is_dir(),
    reason="JS INTEROP NOT TESTED: node or tests/js/node_modules is missing "
    "(install node and npm, then `npm ci --prefix tests/js`)",
)


def node(*args: str) -> str:
    assert NODE is not None
    done = subprocess.run(
        [NODE, *args], cwd=JS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_js_libp2p_reads_our_key_file_as_the_same_peer(tmp_path: Path) -> None:
    ours = create_identity(tmp_path / "identity.key")
    assert node("keys.mjs", "read", str(tmp_path / "identity.key")) == ours.peer_id


def test_we_read_a_key_file_js_libp2p_wrote(tmp_path: Path) -> None:
    path = tmp_path / "js.key"
    peer_id = node("keys.mjs", "write", str(path))
    path.chmod(0o600)
    theirs = load_identity(path)
    assert theirs.peer_id == peer_id
    assert not theirs.legacy


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_js_libp2p_node_dials_a_gossipfl_peer_identifies_it_and_pings(tmp_path: Path) -> None:
    """TCP, Noise, Yamux, identify and ping between js-libp2p 3.x and a running
    `gossipfl start`; a js node that is not on the allowlist is refused, and the gossipfl
    peer logs it with its peer ID."""
    friend = node("keys.mjs", "write", str(tmp_path / "friend.key"))
    stranger = node("keys.mjs", "write", str(tmp_path / "stranger.key"))
    daemons = []
    try:
        peer = start_daemon(
            tmp_path / "peer", "--listen", "/ip4/127.0.0.1/tcp/0", "--rounds", "100000",
            "--rule", "mean", "--allow", friend,
        )  # fmt: skip
        daemons.append(peer)
        address = peer.addresses[0]
        seen = json.loads(node("dial.mjs", str(tmp_path / "friend.key"), address))
        assert "error" not in seen, seen
        assert seen["peer"] == peer.peer_id
        assert {"/gossipfl/gossip/1.0.0", "/gossipfl/members/2.0.0", "/ipfs/ping/1.0.0"} <= set(
            seen["protocols"]
        )
        assert seen["agent"].startswith("py-libp2p/")
        assert 0 <= seen["ping_ms"] < 1000
        refused = json.loads(node("dial.mjs", str(tmp_path / "stranger.key"), address))
        assert "error" in refused  # today it learns no reason: the connection is reset
        wait_for(
            lambda: f"peer {stranger}" in peer.stderr() and "not on the allowlist" in peer.stderr(),
            timeout=10,
            what="the refusal logged with the stranger's peer ID",
        )
    finally:
        kill_all(daemons)
