"""A corpus of mistakes people make on the command line and in config files.

The contract (see :mod:`gossipfl.cli`): a mistake ends with exactly one line on stderr,
``gossipfl[ COMMAND]: error: what happened; what to do``, and exit status 2. Never a
traceback, never a usage block, never a run that quietly does something else. Each entry
names the fragment of the hint the line must carry: a "did you mean", the right form of
what was typed, or the command that fixes it.

Every mistake here failed that contract before the corpus was written (a traceback, a
usage block, exit 0 or 1, or a line with no hint). Most run in-process through
:func:`gossipfl.cli.main`; a few run as real ``python -m gossipfl`` processes to prove the
exit status the shell sees.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossipfl.cli import EXIT_INTERNAL, main, report
from gossipfl.cli.init import config_template
from gossipfl.cli.start import is_bare_home, parse_shard, start_identity
from gossipfl.daemon.config import check_network_id
from gossipfl.daemon.progress import Reporter, describe_rounds
from gossipfl.errors import ConfigError, close_matches, did_you_mean
from gossipfl.identity import IdentityError, generate_identity
from gossipfl.transport.libp2p.allowlist import parse_peer_id

LINE = re.compile(r"^gossipfl( [a-z]+)*: error: \S")

# A copy of the README's example address, placeholder and all.
README_BOOTSTRAP = "/ip4/192.0.2.7/tcp/4141/p2p/12D3KooW..."

# What `gossipfl start` mistakes are given before the mistake itself: a loopback port, one
# round, alone, a rule that works alone. Were a mistake not caught, the run would end
# (exit 0) instead of waiting for peers, so an uncaught mistake fails fast.
START = (
    "start", "--home", "{home}", "--listen", "/ip4/127.0.0.1/tcp/0", "--rounds", "1",
    "--min-peers", "1", "--rule", "mean", "--set", "output.linger=0", "--quiet",
)  # fmt: skip
SHAPES = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "shapes_cnn.py"
SIMULATE = ("simulate", "--rounds", "1", "--no-plot", "--out", "{tmp}/runs")

MISTAKES = [
    # ----------------------------------------------------------- any command
    pytest.param(("simulat",), "did you mean 'simulate'", id="command-typo"),
    pytest.param(("topolgy", "list"), "did you mean 'topology'", id="command-typo-2"),
    pytest.param(("--debug", "init"), "--help", id="unknown-global-flag"),
    pytest.param(("init", "-vv"), "goes before the command", id="global-flag-after-command"),
    pytest.param(
        (*SIMULATE, "--verbose"), "gossipfl --verbose simulate", id="global-flag-after-simulate"
    ),
    # ---------------------------------------------------------------- init
    pytest.param(("init", "--home", "/proc/nope"), "--home", id="init-home-unwritable"),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--network-id", "two words"),
        "letters, digits",
        id="init-network-id-space",
    ),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--network-id", "job/7"),
        "letters, digits",
        id="init-network-id-slash",
    ),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--netwrk-id", "x"),
        "did you mean --network-id",
        id="init-flag-typo",
    ),
    pytest.param(("init", "--home"), "write --home DIR", id="init-home-without-value"),
    pytest.param(("init", "--force=yes"), "takes no value", id="init-switch-with-value"),
    pytest.param(("init", "{tmp}/peer"), "--help", id="init-positional"),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--bootstrap", README_BOOTSTRAP),
        "placeholder",
        id="init-readme-placeholder",
    ),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--allow", "12D3KooWP3pCQNT4"),
        "whole peer ID",
        id="init-truncated-peer-id",
    ),
    pytest.param(
        ("init", "--home", "{tmp}/peer", "--listen", "0.0.0.0:4141"),
        "/ip4/0.0.0.0/tcp/4141",
        id="init-listen-host-port",
    ),
    # --------------------------------------------------------------- start
    pytest.param(
        (*START, "--bootstrap", "/ip4/127.0.0.1/tcp/4141"),
        "join with",
        id="start-bootstrap-without-p2p",
    ),
    pytest.param(
        (*START, "--bootstrap", "127.0.0.1:4141"),
        "/ip4/127.0.0.1/tcp/4141/p2p/<peer id>",
        id="start-bootstrap-host-port",
    ),
    pytest.param(
        (*START, "--bootstrap", "/ip4/127.0.0.1/tcp/4141/p2p/12D3KooWP3pC"),
        "whole peer ID",
        id="start-bootstrap-truncated-peer-id",
    ),
    pytest.param(
        (*START, "--bootstrap", README_BOOTSTRAP), "placeholder", id="start-readme-placeholder"
    ),
    pytest.param((*START, "--allow", "alice"), "prints", id="start-allow-a-name"),
    pytest.param((*START, "--allow", "12D3KooW..."), "placeholder", id="start-allow-placeholder"),
    pytest.param(
        (*START, "--listen", "/ip4/127.0.0.1/tcp/0/p2p/{peer}"), "remove", id="start-listen-p2p"
    ),
    pytest.param(
        (*START, "--listen", "0.0.0.0:4141"), "/ip4/0.0.0.0/tcp/4141", id="start-listen-host-port"
    ),
    pytest.param(
        (*START, "--listen", "/ip4/127.0.0.1/tcp/{port}"),
        "choose another port",
        id="start-port-in-use",
    ),
    pytest.param(
        (*START, "--set", "output.dir=/proc/nope"),
        "directory you can write to",
        id="start-output-dir-unwritable",
    ),
    pytest.param(
        (*START, "--set", "data.file={tmp}/missing.npz"), "data.file", id="start-data-file-missing"
    ),
    pytest.param((*START, "--set", "data.file={binary}"), "x_train", id="start-data-file-not-npz"),
    pytest.param((*START, "--set", "training.lr=nan"), "e.g. training.lr=0.1", id="start-lr-nan"),
    pytest.param(
        (*START, "--set", "training.momentum=inf"), "e.g. training.momentum=0.9", id="start-inf"
    ),
    pytest.param(
        (*START, "--set", "identity.key_file=missing.key"),
        "gossipfl init",
        id="start-key-file-missing",
    ),
    pytest.param(
        ("start", "--home", "{keyless}", "--quiet"), "gossipfl init", id="start-key-file-deleted"
    ),
    pytest.param((*START, "--config", "{binary}"), "check that the path", id="start-binary-config"),
    pytest.param((*START, "--config", "{tmp}/none.toml"), "check the path", id="start-no-config"),
    pytest.param((*START, "--config", "{tmp}"), "check the path", id="start-config-is-a-dir"),
    pytest.param(
        (*START, "--config", "{typo}"), "did you mean 'training'", id="start-section-typo"
    ),
    pytest.param(
        (*START, "--config", "{spaced}"), "letters, digits", id="start-network-id-in-file"
    ),
    pytest.param(
        (*START, "--set", "network.network_id=two words"),
        "letters, digits",
        id="start-network-id-set",
    ),
    pytest.param(
        (*START, "--set", "training.rounds", "5"), "--set training.rounds=5", id="start-set-space"
    ),
    pytest.param((*START, "--rule", "medain"), "did you mean 'median'", id="start-rule-typo"),
    pytest.param(
        (*START, "--attack", "signflip"), "did you mean 'sign-flip'", id="start-attack-typo"
    ),
    pytest.param((*START, "--topology", "torsu"), "did you mean 'torus'", id="start-topology-typo"),
    pytest.param(
        (*START, "--set", "training.codec=int4"), "did you mean 'int8'", id="start-codec-typo"
    ),
    pytest.param(
        (*START, "--set", "training.protocol=asnyc"),
        "did you mean 'async'",
        id="start-protocol-typo",
    ),
    pytest.param(
        (*START, "--set", "network.alow=[]"), "did you mean 'network.allow'", id="start-key-typo"
    ),
    pytest.param(
        (*START, "--set", "rounds=5"), "did you mean 'training.rounds'", id="start-key-section"
    ),
    pytest.param(
        (*START, "--lsten", "/ip4/127.0.0.1/tcp/0"), "did you mean --listen", id="start-flag-typo"
    ),
    pytest.param((*START, "--min-peers", "two"), "give a whole number", id="start-min-peers-text"),
    pytest.param(("start", "--home", "{notadir}"), "--home", id="start-home-is-a-file"),
    # ------------------------------------------------------------ simulate
    pytest.param(
        (*SIMULATE, "--topolgy", "ring"), "did you mean --topology", id="simulate-flag-typo"
    ),
    pytest.param((*SIMULATE, "--frobnicate"), "--help", id="simulate-unknown-flag"),
    pytest.param((*SIMULATE, "--set", "rounds", "5"), "--set rounds=5", id="simulate-set-space"),
    pytest.param((*SIMULATE, "--set", "rounds"), "--set rounds=VALUE", id="simulate-set-no-value"),
    pytest.param((*SIMULATE, "--rounds", "ten"), "give a whole number", id="simulate-int-text"),
    pytest.param((*SIMULATE, "--alpha", "lots"), "give a number", id="simulate-float-text"),
    pytest.param((*SIMULATE, "--peers"), "write --peers", id="simulate-missing-value"),
    pytest.param((*SIMULATE, "--attack", "alie"), "--byzantine", id="simulate-attack-alone"),
    pytest.param(
        (*SIMULATE, "--byzantine", "2", "--attack", "ali"),
        "did you mean 'alie'",
        id="simulate-attack-typo",
    ),
    pytest.param((*SIMULATE, "--rule", "medain"), "did you mean 'median'", id="simulate-rule-typo"),
    pytest.param((*SIMULATE, "--codec", "int4"), "did you mean 'int8'", id="simulate-codec-typo"),
    pytest.param(
        (*SIMULATE, "--protocol", "asyn"), "did you mean 'async'", id="simulate-protocol-typo"
    ),
    pytest.param(
        (*SIMULATE, "--mode", "consenus"), "did you mean 'consensus'", id="simulate-mode-typo"
    ),
    pytest.param(
        (*SIMULATE, "--transport", "libp2"), "did you mean 'libp2p'", id="simulate-transport-typo"
    ),
    pytest.param((*SIMULATE, "--data", "digit"), "did you mean 'digits'", id="simulate-data-typo"),
    pytest.param(
        (*SIMULATE, "--partition", "dirichelt"),
        "did you mean 'dirichlet'",
        id="simulate-partition-typo",
    ),
    pytest.param((*SIMULATE, "--model", "mpl"), "did you mean 'mlp'", id="simulate-model-typo"),
    pytest.param(
        (*SIMULATE, "--set", "trainig.lr=0.1"),
        "did you mean 'training'",
        id="simulate-section-typo",
    ),
    pytest.param(
        (*SIMULATE, "--set", "training.lrr=0.1"),
        "did you mean 'training.lr'",
        id="simulate-key-typo",
    ),
    pytest.param((*SIMULATE, "--task", "mnist-1d"), "did you mean 'mnist1d'", id="task-typo"),
    pytest.param(
        (*SIMULATE, "--task", "{tmp}/nowhere.py:MyTask"), "does not exist", id="task-no-file"
    ),
    pytest.param(
        (*SIMULATE, "--task", "mnist1d", "--set", "task.params.depth=3"),
        "has no parameter",
        id="task-unknown-param",
    ),
    pytest.param(
        (*SIMULATE, "--task", "mnist1d", "--set", "task.params.lr=-1"), "lr", id="task-bad-value"
    ),
    pytest.param(("task", "show", f"{SHAPES}:Shape"), "its tasks: Shapes", id="task-class-typo"),
    pytest.param(
        (*START, "--task", "digits-mlp", "--data-file", "{tmp}/mine.csv"),
        "does not exist",
        id="start-data-file-missing",
    ),
    pytest.param((*SIMULATE, "--set", "rounds=ten"), "e.g. rounds=100", id="simulate-set-int-text"),
    pytest.param(
        (*SIMULATE, "--set", "network.loss=nan"), "e.g. network.loss=0", id="simulate-nan"
    ),
    pytest.param(
        (*SIMULATE, "--transport", "libp2p", "--peers", "8"),
        "--topology",
        id="simulate-libp2p-torus-too-small",
    ),
    pytest.param((*SIMULATE, "--peers", "5"), "--peers 9", id="simulate-torus-too-small"),
    pytest.param(
        (*SIMULATE, "--out", "/proc/nope"), "directory you can write to", id="simulate-out"
    ),
    pytest.param(
        (*SIMULATE, "--config", "{binary}"), "check that the path", id="simulate-binary-config"
    ),
    pytest.param(
        (*SIMULATE, "--config", "{tmp}/none.toml"), "check the path", id="simulate-no-config"
    ),
    # ------------------------------------------------------------ topology
    pytest.param(("topology", "shw", "ring"), "did you mean 'show'", id="topology-action-typo"),
    pytest.param(("topology",), "--help", id="topology-no-action"),
    pytest.param(("topology", "show"), "--help", id="topology-no-spec"),
    pytest.param(
        ("topology", "list", "--familes"), "did you mean --families", id="topology-flag-typo"
    ),
    pytest.param(
        ("topology", "show", "ring", "--peers", "ten"),
        "give a whole number",
        id="topology-int-text",
    ),
    pytest.param(
        ("topology", "show", "ring", "--parm", "k=2"),
        "did you mean --param",
        id="topology-param-typo",
    ),
    pytest.param(
        ("topology", "show", "ring", "--param", "k", "2"), "--param k=2", id="topology-param-space"
    ),
    pytest.param(("topology", "show", "torus", "--peers", "8"), "--peers 9", id="topology-torus-8"),
    pytest.param(
        ("topology", "show", "ring", "--plot", "/proc/nope/graph.png"),
        "directory you can write to",
        id="topology-plot-unwritable",
    ),
    # ---------------------------------------------------------- experiment
    pytest.param(
        ("experiment", "runn", "x.toml"), "did you mean 'run'", id="experiment-action-typo"
    ),
    pytest.param(("experiment",), "--help", id="experiment-no-action"),
    pytest.param(
        ("experiment", "run", "{tmp}/none.toml"), "check the path", id="experiment-no-file"
    ),
    pytest.param(("experiment", "show", "{binary}"), "check that the path", id="experiment-binary"),
    pytest.param(
        ("experiment", "run", "x.toml", "--jobs", "2"), "--help", id="experiment-unknown-flag"
    ),
    # ---------------------------------------------------------------- plot
    pytest.param(("plot",), "--help", id="plot-no-directory"),
    pytest.param(("plot", "{tmp}", "--format", "jpg"), "choose from", id="plot-format"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The files and directories the mistakes refer to, and a port someone listens on."""
    base = tmp_path_factory.mktemp("places")
    home = base / "home"
    assert main(["init", "--home", str(home), "--quiet", "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
    peer = (home / "config.toml").read_text().split("#   ", 1)[1].split()[0]
    keyless = base / "keyless"
    assert (
        main(["init", "--home", str(keyless), "--quiet", "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
    )
    (keyless / "identity.key").unlink()
    binary = base / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    typo = base / "typo.toml"
    typo.write_text(config_template(peer_id=peer).replace("[training]", "[trainig]"))
    spaced = base / "spaced.toml"
    spaced.write_text(
        config_template(peer_id=peer).replace('network_id = "gossipfl"', 'network_id = "a b"')
    )
    notadir = base / "file"
    notadir.write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {
            "home": str(home),
            "peer": peer,
            "keyless": str(keyless),
            "binary": str(binary),
            "typo": str(typo),
            "spaced": str(spaced),
            "notadir": str(notadir),
            "port": str(busy.getsockname()[1]),
        }


def fill(argv: tuple[str, ...], places: dict[str, str], tmp: Path) -> list[str]:
    return [arg.format(tmp=tmp, **places) for arg in argv]


def check_one_line(status: int | str | None, err: str, hint: str) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert LINE.match(lines[0]), lines[0]
    assert hint in lines[0], f"no hint {hint!r} in: {lines[0]}"
    assert status == 2, f"exit status {status}: {lines[0]}"


def test_the_corpus_is_large_and_covers_every_command() -> None:
    assert len(MISTAKES) >= 50
    commands = {next(a for a in m.values[0] if not a.startswith("-")) for m in MISTAKES}
    assert commands >= {"init", "start", "simulate", "topology", "experiment", "plot"}


@pytest.mark.parametrize(("argv", "hint"), MISTAKES)
def test_a_mistake_is_one_line_exit_2_and_a_hint(
    argv: tuple[str, ...],
    hint: str,
    places: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        status: int | str | None = main(fill(argv, places, tmp_path))
    except SystemExit as exc:  # argparse's own exit, after our one line
        status = exc.code
    check_one_line(status, capsys.readouterr().err, hint)


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (("init", "--home", "/proc/nope"), "--home"),
        (("simulate", "--topolgy", "ring"), "did you mean --topology"),
        (("simulate", "--set", "rounds", "5"), "--set rounds=5"),
        ((*START, "--allow", "alice"), "prints"),
        ((*START, "--bootstrap", README_BOOTSTRAP), "placeholder"),
    ],
    ids=["init", "flag-typo", "set-space", "start-allow", "start-bootstrap"],
)
def test_the_shell_sees_exit_status_2(
    argv: tuple[str, ...], hint: str, places: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gossipfl", *fill(argv, places, tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,  # not the checkout: `-m` would import whatever is in the cwd
    )
    check_one_line(done.returncode, done.stderr, hint)


# ------------------------------------------------------------ the contract's pieces


def test_did_you_mean_ignores_case_and_underscores_and_keeps_only_close_names() -> None:
    assert did_you_mean("Sign_Flp", ["sign-flip", "label-flip"]) == "; did you mean 'sign-flip'?"
    assert did_you_mean("consens", ["train", "consensus"]) == "; did you mean 'consensus'?"
    assert did_you_mean("--topolgy", ["--topology", "--peers"], quote=False) == (
        "; did you mean --topology?"
    )
    assert did_you_mean("xyz", ["ring", "torus"]) == ""
    assert close_matches("", ["ring"]) == []


def test_a_bug_shows_its_traceback_and_says_it_is_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gossipfl.cli.topology as topology_cli

    def broken(args: object) -> int:
        raise RuntimeError("a bug in our code")

    monkeypatch.setattr(topology_cli, "_list", broken)
    assert main(["topology", "list"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gossipfl: internal error: RuntimeError: a bug in our code.")
    assert "please report it" in last


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (ConfigError("bad"), 2, "gossipfl: error: bad"),
        (ExceptionGroup("trio", [ExceptionGroup("inner", [ConfigError("deep")])]), 2, "deep"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), 2, "check the path"),
        (ExceptionGroup("trio", [ConfigError("a"), ValueError("b")]), EXIT_INTERNAL, "bug"),
        (BaseExceptionGroup("trio", [KeyboardInterrupt()]), 130, "interrupted"),
        (ConfigError("two\nlines"), 2, "gossipfl: error: two lines"),
    ],
)
def test_what_escapes_a_command_is_reported_by_kind(
    raised: BaseException, status: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report(raised) == status
    assert line in capsys.readouterr().err.strip().splitlines()[-1]


def test_shards_count_from_1_on_the_command_line_and_from_0_in_files() -> None:
    assert parse_shard("1/4") == (0, 4)
    assert parse_shard("4/4") == (3, 4)
    for wrong in ("0/4", "5/4", "1/0"):
        with pytest.raises(ConfigError, match="shards count from 1 here"):
            parse_shard(wrong)
    with pytest.raises(ConfigError, match=r"e\.g\. 1/8"):
        parse_shard("2")


def test_the_last_line_counts_rounds_from_1_like_the_progress_lines() -> None:
    err = io.StringIO()
    reporter = Reporter(out=io.StringIO(), err=err, fancy=False)
    reporter.start(rounds=20)
    reporter.round(0, accuracy=None, loss=None, received=1, expected=1, members=2)
    reporter.finished("finished", first_round=0, last_round=19, accuracy=0.5)
    assert err.getvalue().splitlines() == [
        "round 1/20  in 1/1  members 2",
        "finished: rounds 1..20, test accuracy 50.0%",
    ]
    assert describe_rounds(4, 4) == "round 5"
    assert describe_rounds(0, -1) == "no round completed"


def test_a_bare_home_gets_an_identity_and_a_known_peer_never_a_new_one(tmp_path: Path) -> None:
    from gossipfl.daemon.config import DaemonConfig

    bare = DaemonConfig(base_dir=tmp_path / "new")
    assert is_bare_home(bare, has_config_file=False)
    identity, created = start_identity(bare, may_create=True)
    assert created
    assert start_identity(bare, may_create=False) == (identity, False)  # found, kept
    assert not is_bare_home(bare, has_config_file=True)
    moved = DaemonConfig(base_dir=tmp_path / "moved")
    with pytest.raises(IdentityError, match="gossipfl init --home"):
        start_identity(moved, may_create=False)
    assert not (tmp_path / "moved" / "identity.key").exists()


@pytest.mark.parametrize("good", ["gossipfl", "job-7", "mnist.run_3", "A" * 128])
def test_network_ids_that_work_everywhere(good: str) -> None:
    assert check_network_id(good, what="x") == good


@pytest.mark.parametrize("bad", ["", "two words", "a/b", "-x", 'job "7"', "é", "A" * 129])
def test_network_ids_a_shell_or_the_wire_would_break(bad: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        check_network_id(bad, what="x")


def test_peer_ids_of_every_key_kind_are_accepted_and_fragments_are_not() -> None:
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.id import ID

    secp = str(ID.from_pubkey(create_new_key_pair().public_key))
    ed = generate_identity().peer_id
    for good in (ed, secp, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"):
        assert parse_peer_id(good) == good
    for fragment in (ed[:12], ed[:-1], "12D3KooW", "1"):
        with pytest.raises(ConfigError, match="not a libp2p peer ID"):
            parse_peer_id(fragment)


def test_an_attack_with_byzantine_peers_is_still_welcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*SIMULATE, "--peers", "9", "--byzantine", "1", "--attack", "alie", "--json"]
    assert main(fill(tuple(argv), {}, tmp_path)) == 0
    assert "δ_max" in capsys.readouterr().err
