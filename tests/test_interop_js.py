"""gossipfl and js-libp2p 3.x side by side (node and the packages pinned in tests/js).

Runs wherever node and the packages are installed (`make install` runs `npm ci` in
tests/js when npm is present); elsewhere every test here is skipped with the reason, and
`make test` prints it in its summary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
