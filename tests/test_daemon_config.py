"""The daemon's configuration: the init template, overrides, rosters, allowlist policy,
shard choice, and the `gossipfl start` flags (no network)."""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from gossipfl.cli import build_parser
from gossipfl.cli.init import config_template
from gossipfl.cli.start import load_config
from gossipfl.daemon.config import DaemonConfig, parse_value
from gossipfl.daemon.job import job_manifest, join_command
from gossipfl.daemon.node import open_exposure, resolve_allowlist
from gossipfl.daemon.roster import is_roster_file, load_roster, parse_roster, roster_toml
from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity
from gossipfl.wire import job_differences

IDS = [generate_identity().peer_id for _ in range(3)]


def template() -> str:
    return config_template(peer_id=IDS[0])


def test_the_init_template_holds_exactly_the_defaults() -> None:
    loaded = DaemonConfig.from_dict(tomllib.loads(template()))
    assert loaded == DaemonConfig()


def test_commented_keys_of_the_template_are_the_true_defaults() -> None:
    # Advanced keys appear as "# key = value"; uncommented, they must change nothing.
    fields = {name for section in DaemonConfig().to_dict().values() for name in section} | {
        "shard",
        "shards",
    }
    lines = []
    uncommented = 0
    for line in template().splitlines():
        match = re.fullmatch(r"# (\w+) = (.+)", line)
        if match and match.group(1) in fields and match.group(1) not in {"shard", "shards", "name"}:
            lines.append(f"{match.group(1)} = {match.group(2)}")
            uncommented += 1
        else:
            lines.append(line)
    assert uncommented == 6  # dht, dial_timeout, heartbeats, exchange and member timing
    assert DaemonConfig.from_dict(tomllib.loads("\n".join(lines))) == DaemonConfig()


def test_every_setting_is_documented_in_the_template() -> None:
    text = template()
    for section, table in DaemonConfig().to_dict().items():
        if section in ("attack", "insider"):
            assert f"# [{section}]" in text
            continue
        assert f"[{section}]" in text
        for key in table:
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{section}.{key}"
    assert "# shard = " in text
    assert "# shards = " in text


def test_overrides_parse_like_toml_and_are_validated(tmp_path: Path) -> None:
    config = DaemonConfig(base_dir=tmp_path).with_overrides(
        [
            "training.lr=0.05",
            "topology.name=base-k",
            "topology.k=3",
            "network.listen=['/ip4/127.0.0.1/tcp/0']",
            "data.shard=2",
            "data.shards=4",
            "attack.name=gaussian",
            "attack.sigma=1e6",
        ]
    )
    assert config.training.lr == 0.05
    assert config.topology.name == "base-k"
    assert config.topology.params == {"k": 3}
    assert config.network.listen == ["/ip4/127.0.0.1/tcp/0"]
    assert (config.data.shard, config.data.shards) == (2, 4)
    assert config.is_byzantine
    assert config.attack.params == {"sigma": 1e6}
    assert parse_value("ring") == "ring"
    assert parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("training.protocol=gossip", "training.protocol must be one of"),
        ("training.lr=fast", "training.lr must be a number, got 'fast'; e.g. training.lr=0.1"),
        ("training.rounds=-1", "cannot be negative"),
        ("training.step_time=-0.5", "training.step_time must be >= 0 seconds"),
        ("training.start_grace=-1", "training.start_grace must be >= 0 seconds"),
        ("training.start_grace=inf", "training.start_grace must be >= 0 seconds"),
        ("network.heartbeat_timeout=0.5", "heartbeat_interval must be shorter"),
        ("data.shard=3", "data.shard must be in 0..shards-1"),
        ("rule.name=magic", "unknown merge rule"),
        ("attack.name=teleport", "unknown attack"),
        ("network.colour=blue", "unknown config key network.colour"),
        (
            "network.relays=['/ip4/10.0.0.3/tcp/1']",
            "network.relays (--relay): relay address '/ip4/10.0.0.3/tcp/1'",
        ),
        ("nonsense.key=1", "unknown config key 'nonsense'"),
        ("training.rounds", "expects key=value"),
    ],
)
def test_bad_settings_name_what_is_wrong(assignment: str, complaint: str) -> None:
    base = DaemonConfig().with_overrides(["data.shards=3"]) if "shard=" in assignment else None
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        (base or DaemonConfig()).with_overrides([assignment])


def test_relative_paths_start_at_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.toml"
    path.write_text('[output]\ndir = "st"\n[identity]\nkey_file = "../k.key"\n')
    config = DaemonConfig.from_toml(path)
    assert config.path(config.output.dir) == tmp_path / "conf" / "st"
    assert config.path(config.identity.key_file) == tmp_path / "k.key"
    path.write_text("[output\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        DaemonConfig.from_toml(path)


def roster_text(tmp_path: Path) -> Path:
    path = tmp_path / "peers.toml"
    path.write_text(
        '[topology]\nname = "ring"\n'
        f'[[peer]]\nname = "a"\naddress = "/ip4/10.0.0.1/tcp/4141/p2p/{IDS[0]}"\n'
        f'[[peer]]\nname = "b"\nid = "{IDS[1]}"\naddresses = ["/ip4/10.0.0.2/tcp/4141"]\n'
        f'[[peer]]\nid = "{IDS[2]}"\n'
    )
    return path


def test_a_roster_names_peers_in_node_order(tmp_path: Path) -> None:
    roster = load_roster(roster_text(tmp_path))
    assert roster.ids == IDS
    assert [e.name for e in roster.entries] == ["a", "b", "node-2"]
    assert roster.entries[1].addresses == (f"/ip4/10.0.0.2/tcp/4141/p2p/{IDS[1]}",)
    assert roster.entries[2].addresses == ()
    assert dict(roster.topology) == {"name": "ring"}
    # Graph files with named nodes map peers by name instead of file order.
    assert roster.node_ids(["node-2", "a", "b"]) == [IDS[2], IDS[0], IDS[1]]
    assert roster.node_ids(["x", "y", "z"]) == IDS
    assert is_roster_file(str(tmp_path / "peers.toml"))
    assert not is_roster_file("ring")
    again = parse_roster(tomllib.loads(roster_toml(roster.entries, roster.topology)))
    assert again == roster


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("", "list the peers"),
        ('[[peer]]\nname = "a"\n', "give its id or an address"),
        ('[[peer]]\naddress = "/ip4/10.0.0.1/tcp/1"\n', "must end in /p2p/"),
        (f'[[peer]]\nid = "{IDS[0]}"\n[[peer]]\nid = "{IDS[0]}"\n', "listed twice"),
        (
            f'[[peer]]\nid = "{IDS[0]}"\naddress = "/ip4/10.0.0.1/tcp/1/p2p/{IDS[1]}"\n',
            "names",
        ),
        (f'[[peer]]\nid = "{IDS[0]}"\ncolour = "red"\n', "unknown keys colour"),
        ("peers = 3\n", "unknown keys peers"),
    ],
    # the ids are random peer IDs: name the cases, so that every collection agrees
    ids=["empty", "no-id", "no-p2p", "twice", "names", "unknown-key", "unknown-top-key"],
)
def test_bad_rosters_are_refused(body: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_roster(tomllib.loads(body))


def test_the_default_allowlist_policy(tmp_path: Path) -> None:
    roster = load_roster(roster_text(tmp_path))
    plain = DaemonConfig()
    # Empty allow and no roster: anyone (None) -- never [] which would admit nobody.
    assert resolve_allowlist(plain, None) is None
    # A roster: its peers.
    assert resolve_allowlist(plain, roster) == IDS
    # An explicit list wins.
    explicit = plain.with_overrides([f"network.allow=['{IDS[1]}']"])
    assert resolve_allowlist(explicit, roster) == [IDS[1]]
    assert open_exposure(["/ip4/127.0.0.1/tcp/1", "/ip6/::1/tcp/1"]) == []
    assert open_exposure(["/ip4/0.0.0.0/tcp/1", "/ip4/127.0.0.1/tcp/2"]) == ["/ip4/0.0.0.0/tcp/1"]


def test_the_join_command_carries_a_non_default_network_id() -> None:
    address = f"/ip4/10.0.0.1/tcp/4141/p2p/{IDS[0]}"
    assert join_command(address, DaemonConfig()) == f"gossipfl start --bootstrap {address}"
    other = DaemonConfig().with_overrides(["network.network_id=job-7"])
    assert join_command(address, other).endswith("--set network.network_id=job-7")


def start_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["start", *argv])


def test_flags_land_in_the_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        template().replace("bootstrap = []", f'bootstrap = ["/ip4/10.0.0.9/tcp/1/p2p/{IDS[2]}"]')
    )
    roster = roster_text(tmp_path)
    config, resolved = load_config(
        start_args(
            "--home", str(home),
            "--listen", "/ip4/127.0.0.1/tcp/0",
            "--bootstrap", f"/ip4/10.0.0.1/tcp/1/p2p/{IDS[0]}",
            "--allow", IDS[1],
            "--topology", str(roster),
            "--rule", "trimmed-mean",
            "--rounds", "7",
            "--min-peers", "3",
            "--shard", "2/4",
            "--attack", "sign-flip",
            "--dht",
            "--relay-service",
            "--relay", f"/ip4/10.0.0.3/tcp/1/p2p/{IDS[1]}",
            "--no-hole-punching",
            "--set", "training.deadline=0.5",
        )
    )  # fmt: skip
    assert resolved == home
    assert config.base_dir == home.resolve()
    assert config.network.listen == ["/ip4/127.0.0.1/tcp/0"]
    assert len(config.network.bootstrap) == 2  # the file's and the flag's
    assert config.network.allow == [IDS[1]]
    assert config.topology.roster == str(roster.resolve())
    assert (config.rule.name, config.training.rounds, config.topology.min_peers) == (
        "trimmed-mean",
        7,
        3,
    )
    assert (config.data.shard, config.data.shards) == (1, 4)  # --shard counts from 1
    assert config.attack.name == "sign-flip"
    assert config.network.dht
    assert config.network.relay_service
    assert config.network.relays == [f"/ip4/10.0.0.3/tcp/1/p2p/{IDS[1]}"]
    assert not config.network.hole_punching
    assert config.training.deadline == 0.5
    plain, _ = load_config(start_args("--home", str(tmp_path / "fresh"), "--topology", "ring"))
    assert plain.topology.name == "ring"
    assert not plain.network.relay_service
    assert plain.network.relays == []
    assert plain.network.hole_punching
    assert not plain.topology.roster
    with pytest.raises(ConfigError, match="--shard expects I/N"):
        load_config(start_args("--home", str(home), "--shard", "2"))


def test_the_banner_and_plain_progress_lines() -> None:
    import io

    from gossipfl.daemon.progress import Reporter

    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(out=out, err=err, fancy=False)
    reporter.banner(
        [("peer id", "12D3KooWabc"), ("listening", "/ip4/a\n/ip4/b"), ("join with", "x")]
    )
    assert out.getvalue().splitlines() == [
        "peer id:   12D3KooWabc",
        "listening: /ip4/a",
        "           /ip4/b",
        "join with: x",
    ]
    reporter.start(rounds=40)
    for r in range(40):
        accuracy = 0.9 if (r + 1) % 10 == 0 else None
        reporter.round(r, accuracy=accuracy, loss=0.5, received=2, expected=3, members=4)
    lines = err.getvalue().splitlines()
    # The first round, every evaluated one, and otherwise every second (1/20 of 40).
    shown = [int(line.split()[1].split("/")[0]) for line in lines]
    assert shown == [1, 3, 5, 7, 9, 10, *range(12, 41, 2)]
    assert lines[0] == "round 1/40  loss 0.500  in 2/3  members 4"
    assert lines[-1] == "round 40/40  acc  90.0%  loss 0.500  in 2/3  members 4"
    quiet_err = io.StringIO()
    quiet = Reporter(out=out, err=quiet_err, fancy=False, quiet=True)
    quiet.say("hidden")
    quiet.warn("shown")
    assert quiet_err.getvalue() == "WARNING: shown\n"


def test_start_refuses_a_missing_roster_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gossipfl.cli import main

    status = main(["start", "--home", str(tmp_path), "--roster", str(tmp_path / "none.toml")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("gossipfl: error: cannot read roster")


ADDRESS = f"/ip4/10.0.0.1/tcp/4141/p2p/{IDS[0]}"
CLINIC_CSV = "examples/tasks/data/clinic.csv"


@pytest.mark.parametrize(
    "argv",
    [
        ["--rule", "trimmed-mean", "--rounds", "30"],
        ["--rule", "trimmed-mean", "--set", "rule.params.b=1", "--set", "training.seed=7"],
        ["--task", "examples/tasks/shapes_cnn.py:Shapes", "--set", "task.params.lr=0.02"],
        [
            "--topology",
            "random-regular",
            "--set",
            "topology.degree=3",
            "--set",
            "training.codec=int8",
        ],
        ["--task", "mnist1d", "--set", "data.partition=iid", "--set", "training.protocol=async"],
        [
            "--task",
            "examples/tasks/clinic_table.py:Clinic",
            "--data-file",
            "examples/tasks/data/clinic.csv",
        ],
    ],
)
def test_the_printed_join_command_starts_a_peer_of_the_same_job(
    tmp_path: Path, argv: list[str]
) -> None:
    host, _ = load_config(start_args("--home", str(tmp_path / "host"), *argv))
    command = join_command(ADDRESS, host)
    words = shlex.split(command)
    assert words[:4] == ["gossipfl", "start", "--bootstrap", ADDRESS]
    if "--data-file" in argv:  # each peer brings its own data: the command says where
        assert words[-2:] == ["--data-file", "YOUR_DATA_FILE"]
        words[-1] = argv[-1]
    joiner, _ = load_config(start_args("--home", str(tmp_path / "joiner"), *words[2:]))
    assert job_manifest(joiner) == job_manifest(host)
    # Without those flags it would be another job.
    plain, _ = load_config(start_args("--home", str(tmp_path / "plain"), "--bootstrap", ADDRESS))
    assert job_differences(job_manifest(plain), job_manifest(host))


def test_the_manifest_names_the_job_not_the_host() -> None:
    manifest = job_manifest(DaemonConfig())
    assert manifest["rule.name"] == "cs-plus"
    assert manifest["training.rounds"] == "100"
    assert manifest["topology.name"] == "exponential"
    assert manifest["data.name"] == "digits"
    assert not any(k.startswith(("network.", "output.", "identity.")) for k in manifest)
    # A task counts by its label and all of its parameters, defaults included.
    task = DaemonConfig().with_overrides(["task.name=examples/tasks/shapes_cnn.py:Shapes"])
    explicit = task.with_overrides([f"task.params.lr={task.task.build().settings()['lr']}"])
    assert job_manifest(task) == job_manifest(explicit)
    assert job_manifest(task)["task.name"] == "Shapes"
    assert "data.name" not in job_manifest(task)
    # Timings and addresses are each peer's own business.
    mine = task.with_overrides(["training.deadline=9", "network.listen=['/ip4/127.0.0.1/tcp/0']"])
    assert job_manifest(mine) == job_manifest(task)


def test_two_versions_of_one_task_file_are_two_jobs(tmp_path: Path) -> None:
    """A task file counts by its bytes too: one name, one label, one set of parameters,
    but another model in the file is another job (hosts named apart, copies equal)."""
    source = Path("examples/tasks/shapes_cnn.py").read_text()
    here, there, edited = (tmp_path / name for name in ("a", "b", "c"))
    for folder, text in ((here, source), (there, source), (edited, source + "\n# v2\n")):
        folder.mkdir()
        (folder / "shapes_cnn.py").write_text(text)

    def manifest(folder: Path) -> dict[str, str]:
        return job_manifest(
            DaemonConfig().with_overrides([f"task.name={folder / 'shapes_cnn.py'}:Shapes"])
        )

    assert manifest(here) == manifest(there)
    assert manifest(here)["task.source"].startswith("blake2b:")
    assert job_differences(manifest(here), manifest(edited)) == ["task.source"]
    # A task of an installed module counts by its module's file; a built-in has none.
    module = job_manifest(
        DaemonConfig().with_overrides(["task.name=gossipfl.tasks.builtin:Synthetic"])
    )
    assert module["task.source"].startswith("blake2b:")
    assert "task.source" not in job_manifest(DaemonConfig().with_overrides(["task.name=synthetic"]))


def test_limits_and_score_sections_default_to_the_transports_own() -> None:
    """[limits] and [score] restate TransportConfig's and ScorePolicy's defaults (the
    daemon's config must not import libp2p to build its template): they must agree."""
    from gossipfl.peerscore import ScorePolicy
    from gossipfl.transport.libp2p.config import TransportConfig

    settings = DaemonConfig().transport_settings()
    assert TransportConfig(**settings) == TransportConfig()
    assert settings["score"] == ScorePolicy()


def test_limits_and_score_reach_the_transport_and_bad_ones_are_named() -> None:
    config = DaemonConfig().with_overrides(
        ["limits.max_frame=33554432", "limits.frame_rate=200", "score.weights.replay=100"]
    )
    config.validate()
    settings = config.transport_settings()
    assert settings["max_frame"] == 32 * 1024 * 1024
    assert settings["frame_rate"] == 200.0
    assert settings["score"].weights["replay"] == 100
    assert settings["score"].weights["window"] == 60.0  # the kinds not named keep theirs
    table = DaemonConfig.from_dict(tomllib.loads("[score]\nweights = { bad_frame = 50 }\n"))
    assert table.transport_settings()["score"].weights["bad_frame"] == 50
    for bad, message in (
        ("limits.max_frame=1000", "limits.max_frame must be at least 65536 bytes"),
        ("limits.frame_rate=-1", "limits.frame_rate must be a positive finite number"),
        ("limits.max_connections=0", "limits.max_connections must be a positive int"),
        ("score.threshold=0", "score.threshold must be a positive finite number"),
        ("score.weights.window=-2", "score.weights['window'] must be a finite number >= 0"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            DaemonConfig().with_overrides([bad]).validate()
