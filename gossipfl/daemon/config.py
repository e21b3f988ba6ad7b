"""The configuration of a peer daemon (``gossipfl start``), read from ``config.toml``.

The file is the one ``gossipfl init`` writes: its sections and keys map one to one onto the
dataclasses below, and a missing key takes the default the template shows. Settings come,
in increasing priority, from the defaults, the file, the command-line flags and ``--set
key=value`` overrides (``--set training.lr=0.05``, ``--set topology.k=3``).

The ``topology``, ``rule`` and ``attack`` sections take ``name`` plus free-form parameters
of that family, rule or attack (checked when the daemon builds them). A few keys are
advanced and appear only as comments in the template (``[network] dht``, the heartbeat
and membership timings); they are read all the same.

Relative paths (the key file, the roster, a data file, the output directory) are relative
to the config file's directory, or to the home directory when there is no file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.configfile import Scalar, TomlConfig, parse_value, read_toml
from gossipfl.errors import ConfigError, did_you_mean, unknown_name
from gossipfl.learning.learner import LearnerConfig, TrainingSettings
from gossipfl.privacy.section import DPSection
from gossipfl.tasks.section import TaskSection

if TYPE_CHECKING:
    from gossipfl.attacks.insider import Insider

PROTOCOLS = ("sync", "async", "epidemic")
CODECS = ("fp32", "fp16", "int8")
MODES = ("train", "consensus")


@dataclass
class IdentitySection:
    key_file: str = "identity.key"
    """This peer's Ed25519 private key. ``gossipfl start`` creates it only in a bare home
    (no config file, no state); anywhere else a missing key file is refused, since a new
    key would silently give the peer a new peer ID."""


@dataclass
class NetworkSection:
    network_id: str = "gossipfl"
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4141"])
    bootstrap: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    """Peer IDs allowed to connect. Empty: any peer (with a roster: the roster's peers)."""
    mdns: bool = False
    dht: bool = False
    """Also look peers up in a Kademlia DHT run by the members of the job."""
    relay_service: bool = False
    """Relay (circuit relay v2) for the allowlisted peers that cannot be dialled directly
    (behind NAT). Needs an allowlist (``allow`` or a roster)."""
    relays: list[str] = field(default_factory=list)
    """Relays to reserve a slot on, as full multiaddrs ``/ip4/.../tcp/.../p2p/<relay id>``,
    so that peers reach this one through them (for a peer behind NAT)."""
    hole_punching: bool = True
    """Turn a relayed connection into a direct one by hole punching (DCUtR) when both
    NATs allow it; the peer stays relayed when they do not."""
    dial_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    """A neighbour silent this long is not waited for (a frozen process)."""
    exchange_interval: float = 1.0
    """Seconds between two membership exchanges with a random member."""
    member_timeout: float = 10.0
    """A member whose record has not been refreshed for this long has left."""


@dataclass
class TopologySection:
    name: str = "exponential"
    roster: str = ""
    """A roster file (static membership: node names -> peers); empty: dynamic membership."""
    min_peers: int = 0
    """Members to wait for before round 0; 0: the whole roster (static) or 2 (dynamic)."""
    settle: float = 2.0
    """Dynamic membership: a change is applied once it has been stable this long."""
    start_timeout: float = 0.0
    """Give up waiting for ``min_peers`` after this many seconds and start; 0: never."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class RuleSection:
    name: str = "cs-plus"
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class TrainingSection(TrainingSettings):
    """Local training (model, backend, lr, momentum, weight_decay, batch_size,
    local_steps, hidden: see :class:`~gossipfl.learning.learner.TrainingSettings`) and
    the gossip around it."""

    rounds: int = 100
    protocol: str = "sync"
    deadline: float = 5.0
    start_grace: float = 3.0
    """Round 0 waits at least this many seconds for each neighbour's model (at most
    ``max(deadline, start_grace)``), whatever the adaptive wait says: the peers of a job
    start within seconds of one another (each once it sees the others alive, then it
    loads its data and greets its neighbours), and round 0 is the one round whose wait
    that skew, not the network, decides. An insider withholding its round-0 model costs
    this much once."""
    codec: str = "fp32"
    mode: str = "train"
    """``train``, or ``consensus`` (no data: average random vectors, a network check)."""
    seed: int = 0
    dimension: int = 100
    """Consensus mode: length of the random vector."""
    step_time: float = 0.0
    """Seconds added to every round's local step, to play a slower device in a testbed
    (``simulate --transport libp2p`` passes each peer's simulated step time here)."""
    leave_after: int = 0
    """Leave the job after this many rounds (0: train to the end): a testbed's churn.
    Unlike lowering ``rounds``, which would make it another job, the peer leaves this
    job; started again without it, it resumes from its checkpoint."""


@dataclass
class DataSection:
    name: str = "digits"
    partition: str = "dirichlet"
    alpha: float = 1.0
    shard: int | None = None
    """This peer's shard index; unset: its roster index, or its place in the membership."""
    shards: int | None = None
    """How many shards the training set is cut into; unset: the roster or membership size."""
    file: str = ""
    """A data set in an ``.npz`` file (x_train, y_train, x_test, y_test) instead of ``name``."""


@dataclass
class OutputSection:
    dir: str = "state"
    checkpoint_every: int = 1
    eval_every: int = 5
    """Evaluate on the common test split every this many rounds (and at the last)."""
    record_models: bool = False
    """Also append every round's model to ``models.bin`` (for ``simulate --transport
    libp2p``, which computes consensus distances from them)."""
    linger: float = 1.0
    """Seconds to keep answering neighbours after the last round, before leaving."""


@dataclass
class AttackSection:
    name: str = "none"
    """Make this peer Byzantine (tests and experiments only): an attack name."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class InsiderSection:
    name: str = "none"
    """Make this otherwise honest peer attack the runtime (tests and experiments only): a
    behaviour of :data:`gossipfl.attacks.insider.INSIDERS`, with its parameters."""
    params: dict[str, Scalar] = field(default_factory=dict)


MiB = 1 << 20


@dataclass
class LimitsSection:
    """What one peer may cost this one: the libp2p transport's limits
    (:class:`~gossipfl.transport.libp2p.TransportConfig`; docs/operations.md, "Resource
    limits and peer scores"). Sizes in bytes, times in seconds, rates per second. The
    defaults suit models up to a few million parameters on a LAN or the internet; a
    peer that breaks one is counted against (``[score]``), then banned."""

    max_frame: int = 16 * MiB
    """Largest frame sent or accepted (larger models travel in several chunks)."""
    read_timeout: float = 30.0
    """A frame that has started must progress within this time, or its stream is reset."""
    write_timeout: float = 30.0
    """A send that cannot push its frame within this time gives up on that neighbour."""
    max_connections: int = 300
    max_inbound_streams: int = 32
    """Streams one connection may hold open at once, all protocols together."""
    max_streams_per_peer: int = 4
    """Gossip streams one peer may hold open at once."""
    max_buffered: int = 64 * MiB
    """Received frames waiting to be processed, all peers together."""
    max_buffered_per_peer: int = 16 * MiB
    max_connection_buffer: int = 64 * MiB
    """Bytes received and not yet read on one connection, all its streams together."""
    frame_rate: float = 1000.0
    frame_burst: int = 5000
    max_requests_per_peer: int = 8
    request_rate: float = 50.0
    request_burst: int = 100
    connection_rate: float = 1.0
    connection_burst: int = 20


@dataclass
class ScoreSection:
    """When violations of ``[limits]`` (and malformed or forged messages) ban a peer
    (:class:`~gossipfl.peerscore.ScorePolicy`). Each violation adds its kind's weight to
    the peer's score, which halves every ``half_life`` seconds; reaching ``threshold``
    bans the peer for ``ban`` seconds, doubling on each repeat up to ``max_ban``."""

    threshold: float = 100.0
    half_life: float = 60.0
    ban: float = 60.0
    max_ban: float = 3600.0
    forget_bans_after: float = 86400.0
    """A peer with no ban for this long is a first offender again."""
    default_weight: float = 10.0
    """Weight of a kind of violation not in ``weights``."""
    weights: dict[str, Scalar] = field(default_factory=dict)
    """Weights by kind, replacing the defaults of the kinds named (``window``,
    ``bad_frame``, ``replay``...: docs/operations.md lists them)."""


@dataclass
class DaemonConfig(TomlConfig):
    """Everything ``gossipfl start`` reads; see the module docstring."""

    identity: IdentitySection = field(default_factory=IdentitySection)
    network: NetworkSection = field(default_factory=NetworkSection)
    topology: TopologySection = field(default_factory=TopologySection)
    rule: RuleSection = field(default_factory=RuleSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    data: DataSection = field(default_factory=DataSection)
    output: OutputSection = field(default_factory=OutputSection)
    attack: AttackSection = field(default_factory=AttackSection)
    insider: InsiderSection = field(default_factory=InsiderSection)
    task: TaskSection = field(default_factory=TaskSection)
    """Your own model and data (see :mod:`gossipfl.tasks`); unset: ``[data]`` and
    ``[training]`` choose a built-in workload."""
    limits: LimitsSection = field(default_factory=LimitsSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    privacy: DPSection = field(default_factory=DPSection)
    """Differential privacy for this peer's training data (DP-SGD); a local choice, not
    part of the job: peers of one job may differ. Secure averaging is part of the job."""
    base_dir: Path = field(default_factory=Path.cwd, compare=False, metadata={"setting": False})
    """Where relative paths start (the config file's directory); not a setting."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_toml(cls, path: str | Path) -> DaemonConfig:
        path = Path(path).expanduser()
        data = read_toml(path)
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ---------------------------------------------------------------- helpers

    def path(self, value: str) -> Path:
        """A path setting, resolved against :attr:`base_dir`."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    @property
    def dynamic(self) -> bool:
        """Membership from discovery (no roster file)."""
        return not self.topology.roster

    # ------------------------------------------------------------- validation

    def validate(self) -> None:
        """Check every setting that can be checked without the network or the data.

        Names (rule, attack, codec, topology, ...) are checked here, with a "did you
        mean", so that a typo in a flag or a file stops ``gossipfl start`` before it binds
        a port, not minutes later inside the running peer.
        """
        self._validate_network()
        self._validate_limits()
        self._validate_topology()
        self._validate_training()
        self._validate_data()
        self.privacy.check(self.training.mode)
        if self.privacy.secure_averaging:
            from gossipfl.privacy.secure_averaging import check_secure_averaging

            check_secure_averaging(rule=self.rule.name, protocol=self.training.protocol)
        out = self.output
        if out.checkpoint_every < 1 or out.eval_every < 0:
            raise ConfigError("output.checkpoint_every must be >= 1 and output.eval_every >= 0")
        if out.linger < 0:
            raise ConfigError(f"output.linger cannot be negative, got {out.linger}")
        self._validate_roles()

    def transport_settings(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~gossipfl.transport.libp2p.TransportConfig` from
        ``[limits]`` and ``[score]``; :class:`ConfigError` naming the key of a bad value."""
        from gossipfl.peerscore import DEFAULT_WEIGHTS, ScorePolicy

        score = self.score
        try:
            policy = ScorePolicy(
                weights={**DEFAULT_WEIGHTS, **score.weights},  # type: ignore[dict-item]
                default_weight=score.default_weight,
                half_life=score.half_life,
                threshold=score.threshold,
                ban=score.ban,
                max_ban=score.max_ban,
                forget_bans_after=score.forget_bans_after,
            )
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("ScorePolicy.", "score.")) from None
        return {**dataclasses.asdict(self.limits), "score": policy}

    def _validate_limits(self) -> None:
        from gossipfl.transport.libp2p.config import TransportConfig

        try:
            TransportConfig(**self.transport_settings())
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("TransportConfig.", "limits.")) from None
        except TypeError as exc:  # a value of the wrong type the TOML let through
            raise ConfigError(f"[limits]: {exc}") from None
        if self.limits.max_frame < 64 * 1024:  # a chunk message must hold its header
            raise ConfigError(
                f"limits.max_frame must be at least 65536 bytes, got {self.limits.max_frame}"
            )

    def _validate_network(self) -> None:
        from gossipfl.transport.libp2p.allowlist import (
            parse_listen_address,
            parse_multiaddr,
            parse_peer_id,
        )

        net = self.network
        check_network_id(net.network_id, what="network.network_id")
        for name in (
            "dial_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "exchange_interval",
            "member_timeout",
        ):
            _positive(f"network.{name}", getattr(net, name))
        if net.heartbeat_interval >= net.heartbeat_timeout:
            raise ConfigError(
                "network.heartbeat_interval must be shorter than network.heartbeat_timeout"
            )
        if net.exchange_interval >= net.member_timeout:
            raise ConfigError("network.exchange_interval must be shorter than member_timeout")
        for text in net.listen:
            _in("network.listen (--listen)", text, parse_listen_address)
        for text in net.bootstrap:
            _in(
                "network.bootstrap (--bootstrap)",
                text,
                lambda t: parse_multiaddr(t, need_peer_id=True),
            )
        for text in net.allow:
            _in("network.allow (--allow)", text, parse_peer_id)
        for text in net.relays:
            _in("network.relays (--relay)", text, _relay_address)

    def _validate_topology(self) -> None:
        top = self.topology
        if top.min_peers < 0 or top.settle < 0 or top.start_timeout < 0:
            raise ConfigError("topology.min_peers, settle and start_timeout cannot be negative")
        if not top.roster:
            check_topology_name(top.name, base_dir=self.base_dir)
            check_topology_params(top.name, top.params)

    def _validate_training(self) -> None:
        tr = self.training
        if tr.rounds < 0:
            raise ConfigError(
                f"training.rounds cannot be negative, got {tr.rounds}; e.g. training.rounds=100"
            )
        _one_of("training.protocol", tr.protocol, PROTOCOLS)
        _one_of("training.codec", tr.codec, CODECS)
        _one_of("training.mode", tr.mode, MODES)
        _positive("training.deadline", tr.deadline)
        if tr.leave_after < 0:
            raise ConfigError(f"training.leave_after must be >= 0 rounds, got {tr.leave_after}")
        if not 0 <= tr.start_grace < math.inf:
            raise ConfigError(f"training.start_grace must be >= 0 seconds, got {tr.start_grace}")
        if not 0 <= tr.step_time < math.inf:
            raise ConfigError(f"training.step_time must be >= 0 seconds, got {tr.step_time}")
        if tr.dimension < 1:
            raise ConfigError(f"training.dimension must be at least 1, got {tr.dimension}")
        defaults = TrainingSection()
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(tr, name)
            if not math.isfinite(value):
                raise ConfigError(
                    f"training.{name} must be a finite number, got {value}; "
                    f"e.g. training.{name}={getattr(defaults, name)}"
                )
        if tr.mode == "train" and self.task.name.strip():
            self.task.build(base_dir=self.base_dir)  # unknown task or parameter: now
        elif tr.mode == "train":
            from gossipfl.learning.learner import MODELS

            _one_of("training.model", tr.model, tuple(MODELS))
            _one_of("training.backend", tr.backend, MODELS[tr.model])
            self.learner_config().validate()

    def _validate_data(self) -> None:
        data = self.data
        if self.training.mode == "train":
            from gossipfl.data import DATASETS, PARTITIONS

            if not data.file and data.name not in DATASETS:
                raise unknown_name(
                    "data set", data.name, sorted(DATASETS), extra="; or give data.file"
                )
            _one_of("data.partition", data.partition, tuple(PARTITIONS))
            if data.partition == "dirichlet":
                _positive("data.alpha", data.alpha)
        if data.shards is not None and data.shards < 1:
            raise ConfigError(f"data.shards must be at least 1, got {data.shards}")
        if data.shard is not None and (
            data.shard < 0 or (data.shards is not None and data.shard >= data.shards)
        ):
            raise ConfigError(
                f"data.shard must be in 0..shards-1, got shard {data.shard} of {data.shards} "
                "(data.shard counts from 0; --shard I/N counts from 1)"
            )

    def _validate_roles(self) -> None:
        from gossipfl.attacks import ATTACKS, NO_ATTACK
        from gossipfl.attacks.registry import canonical_name
        from gossipfl.merge import RULES

        if self.rule.name not in RULES:
            raise unknown_name("merge rule", self.rule.name, RULES)
        if canonical_name(self.attack.name) not in (NO_ATTACK, *ATTACKS):
            raise unknown_name(
                "attack", self.attack.name, ATTACKS, extra=f"; or {NO_ATTACK!r} for an honest peer"
            )
        # Built once here for their parameters' sake: the peer builds them only once it
        # runs, and an unused [attack] parameter would otherwise pass in silence.
        from gossipfl.attacks import make_attack
        from gossipfl.merge import make_rule

        make_rule(self.rule.name, **self.rule.params)
        if self.is_byzantine:
            make_attack(self.attack.name, **self.attack.params)
        self.insider_behaviour()

    def check_files(self) -> None:
        """Check the paths the peer will use, before it starts: the data file is a file,
        and the output directory exists or can be created, and can be written to.

        Not part of :meth:`validate`: a config file may be written on one machine for
        another, where these paths exist.
        """
        if self.data.file:
            path = self.path(self.data.file)
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(
                    f"data.file {path} {what}; give an .npz with x_train, y_train, x_test "
                    "and y_test, or leave data.file empty to use data.name"
                )
        check_writable_directory(self.path(self.output.dir), what="output.dir")

    def learner_config(self) -> LearnerConfig:
        """The :class:`~gossipfl.learning.LearnerConfig` of ``[training]``."""
        return self.training.learner_config(init_seed=self.training.seed)

    @property
    def is_byzantine(self) -> bool:
        return self.attack.name.strip().lower() != "none"

    def insider_behaviour(self) -> Insider | None:
        """The behaviour of ``[insider]``, built; None for an honest peer."""
        from gossipfl.attacks.insider import NO_INSIDER, make_insider

        if self.insider.name.strip().lower() == NO_INSIDER:
            if self.insider.params:
                raise ConfigError("[insider] has parameters, but its name is 'none'")
            return None
        return make_insider(self.insider.name, **self.insider.params)


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def _one_of(key: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a value that is not one of ``choices``, suggesting the closest."""
    if value not in choices:
        raise ConfigError(
            f"{key} must be one of {', '.join(choices)}, got {value!r}"
            f"{did_you_mean(value, choices)}"
        )


def _relay_address(text: str) -> None:
    from gossipfl.transport.libp2p.config import TransportConfig

    TransportConfig(relays=(text,))


def _in(what: str, text: str, parse: Callable[[str], object]) -> None:
    """Run ``parse`` on one entry of a list setting; its error names the list too."""
    try:
        parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


NETWORK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A network id: a word that survives a shell, a TOML file, a log line and a protocol path
unquoted, within the wire's limit (a token of at most 128 characters, no spaces)."""


def check_network_id(value: str, *, what: str) -> str:
    """``value`` if it is a valid network id (see :data:`NETWORK_ID`), else a ConfigError.

    Peers compare network ids at the handshake, and the id travels in the join command a
    peer prints for others to paste into a shell: a space or a quote in it would split or
    break that command, so such ids are refused where they are read (``gossipfl init`` and
    the config file), not discovered by the peer that pastes the command.
    """
    if not isinstance(value, str) or not NETWORK_ID.fullmatch(value):
        raise ConfigError(
            f"{what} must be letters, digits, '.', '_' or '-' (at most 128, starting with "
            f"a letter or digit), got {value!r}; e.g. job-7"
        )
    return value


def check_topology_name(name: str, *, base_dir: Path) -> None:
    """Refuse a topology that is neither a family, a shipped name nor an existing file,
    with the topology library's own "did you mean"."""
    from gossipfl.topology import build_topology
    from gossipfl.topology.families import get_family
    from gossipfl.topology.files import shipped_path

    if get_family(name) is not None or shipped_path(name) is not None:
        return
    path = base_dir / Path(name).expanduser()
    if path.is_file() or Path(name).expanduser().is_file():
        return
    build_topology(name)  # raises the library's message: unknown name, or no such file
    raise ConfigError(f"topology.name {name!r} is neither a family, a shipped name nor a file")


def check_topology_params(name: str, params: Mapping[str, object]) -> None:
    """Refuse a parameter the topology family does not have (the peer would build the
    family only once it knows its members, and a misspelt parameter must not wait that
    long). Values are checked then, since they can depend on the number of members."""
    from gossipfl.topology.families import get_family

    family = get_family(name)
    if family is None:
        return
    valid = [p.name for p in family.params]
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"topology {family.name}: unknown parameter {key}{did_you_mean(key, valid)} "
                f"(valid parameters: {', '.join(valid) or 'none'})"
            )


def check_writable_directory(path: Path, *, what: str) -> None:
    """Create ``path`` if needed and make sure it can be written to; else a ConfigError
    naming ``what`` (the setting or flag that chose it)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{what} {path}: cannot create it ({exc.strerror or exc}); choose a directory "
            "you can write to"
        ) from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {path}: not a directory this user can write to; choose a directory you "
            "can write to"
        )


__all__ = [
    "AttackSection",
    "DaemonConfig",
    "DataSection",
    "IdentitySection",
    "InsiderSection",
    "NetworkSection",
    "OutputSection",
    "RuleSection",
    "TopologySection",
    "TrainingSection",
    "check_network_id",
    "check_topology_name",
    "check_topology_params",
    "check_writable_directory",
    "parse_value",
]
