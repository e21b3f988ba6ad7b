"""The peer daemon: one :class:`~gossipfl.peer.Peer` on a libp2p host, kept in a job.

:class:`Node` is what ``gossipfl start`` runs. In order:

1. open the libp2p transport (identity, listen addresses, allowlist) and print the banner;
2. start the membership exchange and discovery (bootstrap addresses, roster, mDNS, DHT);
3. load the data set (in a thread) while waiting for the job to gather: until
   ``min_peers`` members are alive (and, with dynamic membership, the member list has
   been stable for ``settle`` seconds and is large enough for the merge rule), or
   ``start_timeout`` passes. A peer resuming from a checkpoint does not wait;
4. pick its shard (see :mod:`~gossipfl.daemon.workload`) and train for ``rounds`` rounds,
   writing ``metrics.jsonl`` and checkpoints and evaluating every ``eval_every`` rounds;
5. linger ``linger`` seconds for slower neighbours, announce its leave, close.

**When a membership change takes effect** (dynamic membership). The exchange makes every
member's view converge within a few intervals. A node applies a new member list at a
*round boundary* (never in the middle of collecting a round), and only once the list has
been unchanged for ``settle`` seconds; so a burst of joins causes one switch, and peers
that converged to the same list switch at nearly the same moment, typically within a
round of each other. The sync protocol absorbs the remaining skew: a model from a peer
that is not (yet, or any more) our in-neighbour is dropped and counted as unexpected, and
a neighbour that never sends is waited for at most the round deadline (or not at all
once it is known to be down).

**Shutdown.** :meth:`Node.stop` (the CLI calls it on SIGINT/SIGTERM) cancels the work;
the node then announces its leave (at most 0.2 s) and closes the host, whose connections
close concurrently. Checkpoints are written after every round (``checkpoint_every``), so
a stopped or killed peer resumes where it was.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import trio

from gossipfl.daemon.config import DaemonConfig
from gossipfl.daemon.exchange import MembershipExchange
from gossipfl.daemon.job import job_manifest, join_command
from gossipfl.daemon.membership import MemberRecord, MembershipView
from gossipfl.daemon.metrics import (
    METRICS_FILE,
    MODELS_FILE,
    MetricsLog,
    ModelRecorder,
    report_row,
)
from gossipfl.daemon.neighbourhoods import (
    TopologyRule,
    in_degree,
    membership_neighbourhood,
    node_labels,
)
from gossipfl.daemon.progress import Reporter
from gossipfl.daemon.roster import Roster, load_roster
from gossipfl.daemon.workload import Workload, build_workload, load_data
from gossipfl.errors import ConfigError
from gossipfl.identity import Identity
from gossipfl.protocol import Neighbourhood, TopologyNeighbourhood

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
SHARD_FILE = "shard.json"
"""Where a daemon remembers which shard it trains on (in its state directory)."""
LEAVE_TIMEOUT = 0.2
"""Seconds spent announcing our leave at shutdown (best effort)."""
CLOSE_TIMEOUT = 0.2
"""Seconds the transport waits for neighbours to read our last frames on close."""


@dataclass
class NodeResult:
    """How a node's run ended."""

    peer_id: str
    first_round: int
    last_round: int
    """The last completed round (``first_round - 1`` if none)."""
    reason: str
    """``finished``, or why it stopped early (``SIGTERM``, ...)."""
    accuracy: float | None = None
    """The last evaluated test accuracy."""


def resolve_allowlist(config: DaemonConfig, roster: Roster | None) -> list[str] | None:
    """The peer IDs allowed to connect, or ``None`` for any peer.

    An explicit ``[network] allow`` wins. Without it, a roster's peers are the allowlist
    (the job is known, so nobody else needs in). With neither, any peer may connect: the
    transport's ``allow=[]`` would admit *nobody*, so the template's empty list maps to
    ``None`` here, and :func:`open_exposure` decides whether to warn.
    """
    from gossipfl.transport.libp2p import parse_peer_id

    if config.network.allow:
        allowed = [parse_peer_id(p) for p in config.network.allow]
        if roster is not None:
            outside = [e.name for e in roster.entries if e.peer_id not in allowed]
            if outside:
                logger.warning(
                    "roster peers not on the allowlist (they cannot connect): %s",
                    ", ".join(outside),
                )
        return allowed
    if roster is not None:
        return roster.ids
    return None


def open_exposure(listen: Sequence[str]) -> list[str]:
    """The listen addresses reachable from other machines (not loopback)."""
    exposed = []
    for text in listen:
        parts = text.split("/")
        host = parts[2] if len(parts) > 2 else ""
        if parts[1:2] == ["ip4"] and host.startswith("127."):
            continue
        if parts[1:2] == ["ip6"] and host == "::1":
            continue
        exposed.append(text)
    return exposed


def _is_loopback(address: str) -> bool:
    return address.startswith(("/ip4/127.", "/ip6/::1/"))


class JobMismatchError(ConfigError):
    """The peer this one joins through runs another job (the text names the settings)."""


class Node:
    """One daemon; see the module docstring.

    Args:
        config: the daemon's configuration (validated).
        identity: this peer's key pair.
        reporter: where the banner and progress go.
    """

    def __init__(
        self,
        config: DaemonConfig,
        identity: Identity,
        *,
        reporter: Reporter | None = None,
        fresh: bool = False,
    ) -> None:
        config.validate()
        self.config = config
        self.identity = identity
        self.fresh = fresh
        """Start a new job: the state of a previous one is moved aside, not resumed."""
        self.reporter = reporter or Reporter(quiet=True)
        self.state_dir = config.path(config.output.dir)
        self.roster: Roster | None = (
            load_roster(config.path(config.topology.roster)) if config.topology.roster else None
        )
        name, params = config.topology.name, dict(config.topology.params)
        if self.roster is not None and self.roster.topology:
            # The roster's own [topology] replaces the config's: every peer reads the roster.
            name = str(self.roster.topology.get("name", name))
            params = {k: v for k, v in self.roster.topology.items() if k not in _RESERVED}
        self.rule = TopologyRule(
            name, params, seed=config.training.seed, protocol=config.training.protocol
        )
        self.job = job_manifest(config)
        """The job manifest this peer states (:mod:`gossipfl.daemon.job`)."""
        self._bootstrap_ids: set[str] = set()
        self._bootstrap_other_jobs: set[str] = set()  # those that answered: another job
        self._other_jobs_told: set[str] = set()
        self.peer: Any = None
        self.view: MembershipView | None = None
        self.exchange: MembershipExchange | None = None
        self.listen_addrs: list[str] = []
        self._stop_reason: str | None = None
        self._work: trio.CancelScope | None = None
        self._applied: list[str] = []
        self._pending: list[str] = []
        self._changed_at = -math.inf
        self._metrics: MetricsLog | None = None
        self._recorder: ModelRecorder | None = None
        self._workload: Workload | None = None
        self._accuracy: float | None = None
        self._paths: dict[str, str] = {}  # how each connected peer is reached, as last said
        self._reachability = ""  # whether peers can dial this one, as last said
        self._attack_kit: Any = None
        self._insider: Any = None
        self._transport: Any = None
        self._reported_traces: dict[str, Any] = {}
        self._first_round = 0
        self._last_round = -1
        if self.roster is not None and identity.peer_id not in self.roster.ids:
            raise ConfigError(
                f"this peer ({identity.peer_id}) is not in the roster "
                f"{config.topology.roster}; add it, or start without a roster"
            )

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "stopped") -> None:
        """Stop training and leave (safe to call from a signal handler task)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._work is not None:
            self._work.cancel()

    # ---------------------------------------------------------------------- run

    async def run(self) -> NodeResult:
        from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig

        cfg, net = self.config, self.config.network
        allow = resolve_allowlist(cfg, self.roster)
        tconfig = TransportConfig(
            **cfg.transport_settings(),
            dial_timeout=net.dial_timeout,
            close_timeout=CLOSE_TIMEOUT,
            relay_service=net.relay_service,
            relays=tuple(net.relays),
            hole_punching=net.hole_punching,
            reachability_check=True,
        )
        async with Libp2pTransport.open(
            identity=self.identity, listen=net.listen, allow=allow, config=tconfig
        ) as transport:
            self._transport = transport
            self.listen_addrs = sorted(transport.listen_addrs, key=_is_loopback)
            self._announce(allow)
            if self.fresh:
                self._set_aside_previous_job()
            self._metrics = MetricsLog(self.state_dir / METRICS_FILE, peer=self.identity.peer_id)
            if cfg.output.record_models:
                self._recorder = ModelRecorder(self.state_dir / MODELS_FILE)
            try:
                with trio.CancelScope() as self._work:
                    if self._stop_reason is not None:
                        self._work.cancel()
                    await self._run_services(transport)
                if self.exchange is not None:
                    with trio.CancelScope(shield=True):
                        await self.exchange.leave(timeout=LEAVE_TIMEOUT)
            finally:
                reason = self._stop_reason or "finished"
                crafted = self._attack_kit.outgoing.crafted if self._attack_kit else None
                self._report_reachability()  # a check that answered after the last round
                self._metrics.write(
                    "stop",
                    reason=reason,
                    last_round=self._last_round,
                    crafted=crafted,
                    counters=asdict(self.peer.counters) if self.peer is not None else None,
                    traffic=self._traffic(),
                    **self._traces(),
                )
                self._metrics.close()
                if self._recorder is not None:
                    self._recorder.close()
                self.reporter.close()
        return NodeResult(
            self.identity.peer_id, self._first_round, self._last_round, reason, self._accuracy
        )

    def _set_aside_previous_job(self) -> None:
        """``--fresh``: move a previous job's state directory aside (never delete it: it
        holds checkpoints and metrics someone may still want)."""
        state = self.state_dir
        if not state.exists() or not any(state.iterdir()):
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = state.with_name(f"{state.name}.{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = state.with_name(f"{state.name}.{stamp}-{n}")
        state.rename(aside)
        self.reporter.say(f"a new job: the previous job's {state.name}/ is now {aside}")

    def _announce(self, allow: list[str] | None) -> None:
        addrs = self.listen_addrs
        dialable = next((a for a in addrs if not _is_loopback(a)), addrs[0] if addrs else "")
        lines = [("peer id", self.identity.peer_id), ("listening", "\n".join(addrs) or "-")]
        if dialable:
            lines.append(("join with", join_command(dialable, self.config)))
        self.reporter.banner(lines)
        if allow is not None and self.roster is None:
            self.reporter.say(
                f"allowlist: {len(allow)} peers. A new peer must be on it (a peer prints its ID "
                "with `gossipfl init --quiet`), and this peer must be on the new peer's"
            )
        if allow is None:
            exposed = open_exposure(self.config.network.listen)
            if exposed:
                self.reporter.warn(
                    f"no allowlist: ANY peer that reaches {', '.join(exposed)} can join this "
                    "job and send models. List your peers in [network] allow (or --allow), "
                    "or listen on 127.0.0.1 only."
                )
                logger.warning("running with an open allowlist on %s", ", ".join(exposed))

    async def _run_services(self, transport: Any) -> None:
        net = self.config.network
        me = self.identity.peer_id
        roster_ids = set(self.roster.ids) if self.roster is not None else None

        def admit(peer: str) -> bool:
            allowed: bool = transport.allowlist.allows(peer)
            return allowed and (roster_ids is None or peer in roster_ids)

        self.view = MembershipView(
            MemberRecord(me, self._advertised(transport), time.time_ns() // 1_000_000, 0),
            network_id=net.network_id,
            sign=self.identity.signer(),
            timeout=net.member_timeout,
            interval=net.exchange_interval,
            admit=admit,
        )
        insider = self.config.insider_behaviour()
        exchange_class = MembershipExchange
        if insider is not None:
            logger.warning("this peer is an insider attacker: %s", insider.describe())
            exchange_class = insider.exchange_class(self.identity.signer()) or exchange_class
        self._insider = insider
        self.exchange = exchange_class(
            transport,
            self.view,
            network_id=net.network_id,
            interval=net.exchange_interval,
            rng=random.Random(),
            on_change=self._membership_changed,
            current_round=lambda: int(self.peer.round) if self.peer is not None else 0,
            on_violation=self._membership_violation,
            job=self.job,
            on_other_job=self._other_job,
        )
        self.exchange.install()
        from gossipfl.transport.libp2p import parse_multiaddr

        for text in net.bootstrap:
            address, named = parse_multiaddr(text, need_peer_id=True)
            assert named is not None
            self._bootstrap_ids.add(named)
            self.exchange.add_candidate(named, address)
        if self.roster is not None:
            for entry in self.roster.entries:
                for known in entry.addresses or (None,):
                    self.exchange.add_candidate(entry.peer_id, known)
        async with trio.open_nursery() as services:
            services.start_soon(self.exchange.run)
            if net.relays:
                services.start_soon(self._follow_reservations, transport)
            if insider is not None:
                services.start_soon(insider.run, self._insider_context(transport))
            if net.mdns or net.dht:
                from gossipfl.daemon import discovery

                if net.mdns:
                    services.start_soon(
                        discovery.run_mdns, transport, self.exchange, net.network_id
                    )
                if net.dht:
                    services.start_soon(discovery.run_dht, transport, self.exchange, net.network_id)
            await self._train(transport)
            services.cancel_scope.cancel()

    @staticmethod
    def _advertised(transport: Any) -> tuple[str, ...]:
        """The addresses our membership record gives: those that reach us now (a
        circuit only while its relay holds our reservation), dialable ones first."""
        return tuple(sorted(transport.advertised_addrs, key=_is_loopback))

    async def _follow_reservations(self, transport: Any) -> None:
        """Keep our record's addresses to those that reach us: a circuit is added once
        its relay holds our reservation and dropped when the reservation is lost (the
        next heartbeat carries the change to the others)."""
        assert self.view is not None
        while True:
            await transport.reservations_changed()
            addrs = self._advertised(transport)
            if addrs != self.view.own.addrs:
                self.view.set_addresses(addrs)
                logger.info("our membership record's addresses: %s", ", ".join(addrs) or "-")

    def _other_job(self, peer: str, differences: str, asked: bool) -> None:
        """A peer states another job. If every peer we were told to join through does,
        and no peer of our job has spoken to us, we cannot join the job we meant to:
        stop, naming the settings (training beside the job, alone, is worth nothing;
        most often the operator pasted a join command without the job's settings).

        One bootstrap peer's word is not enough while another may still answer or a
        peer of our job already has: an insider among the bootstrap peers could
        otherwise stop every peer that joins through it by stating another job. Such a
        peer, like any other of another job, is only not taken in; say so once."""
        if asked and peer in self._bootstrap_ids:
            self._bootstrap_other_jobs.add(peer)
            alone = self.exchange is None or len(self.exchange.view.known()) <= 1
            if alone and self._bootstrap_other_jobs >= self._bootstrap_ids:
                raise JobMismatchError(
                    f"the peer you join through ({peer}) runs another job: {differences}. "
                    "Start this peer with the join command that peer printed"
                )
        if peer not in self._other_jobs_told and len(self._other_jobs_told) < 64:
            self._other_jobs_told.add(peer)  # said once per peer, for the first 64
            self.reporter.warn(f"peer {peer} runs another job ({differences}): not a member")

    def _membership_violation(self, peer: str, kind: str, detail: str) -> None:
        """A member broke the membership protocol (``kind``: a forged or implausible
        record, a malformed message). The exchange has counted and logged it already;
        the transport's peer score hears of it too."""
        penalize = getattr(self._transport, "penalize", None)
        if penalize is not None:
            penalize(peer, kind, detail)

    def _traffic(self) -> dict[str, Any] | None:
        """The transport's frame bytes: in all, per neighbour, and the part that went over
        relayed connections (behind NAT, what the relays carried for us)."""
        stats = getattr(self._transport, "stats", None)
        if stats is None or not hasattr(stats, "bytes_sent_relayed"):
            return None  # a transport without them (in memory)
        return {
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
            "bytes_sent_relayed": stats.bytes_sent_relayed,
            "bytes_received_relayed": stats.bytes_received_relayed,
            "bytes_sent_to": dict(stats.bytes_sent_to),
            "bytes_received_from": dict(stats.bytes_received_from),
        }

    def _traces(self) -> dict[str, Any]:
        """What this peer counted against the others: the runtime's counters, the
        transport's violations by peer and kind, the membership exchange's."""
        out: dict[str, Any] = {}
        if self.peer is not None:
            counters = asdict(self.peer.counters)
            out["runtime"] = {k: counters[k] for k in _MISBEHAVIOUR if counters.get(k)}
        transport = self._transport
        if transport is not None and hasattr(transport, "violations"):
            out["violations"] = transport.violations
            out["banned"] = sorted(getattr(transport, "banned_peers", {}))
        if self.exchange is not None:
            out["membership"] = dict(self.exchange.violations)
        return out

    def _insider_context(self, transport: Any) -> Any:
        from gossipfl.attacks.insider import InsiderContext

        me = self.identity.peer_id

        def targets() -> list[str]:
            return [p for p in self._members() if p != me]

        assert self.exchange is not None
        return InsiderContext(
            transport=transport,
            network_id=self.config.network.network_id,
            targets=targets,
            members_request=self.exchange.message,
        )

    # ------------------------------------------------------------------ gathering

    def _membership_changed(self) -> None:
        assert self.view is not None
        live = self.view.live(trio.current_time())
        if live != self._pending:
            self._pending = live
            self._changed_at = trio.current_time()

    def _members(self) -> list[str]:
        assert self.view is not None
        live = self.view.live(trio.current_time())
        if self.roster is not None:
            return [p for p in live if p in self.roster.ids]
        return live

    async def _gather(self, resuming: bool) -> list[str]:
        """Wait until the job has gathered (see the module docstring); return the members."""
        cfg = self.config.topology
        wanted = cfg.min_peers or (len(self.roster) if self.roster is not None else 2)
        deadline = trio.current_time() + cfg.start_timeout if cfg.start_timeout else math.inf
        if resuming and self.roster is not None:
            wanted = 1  # the roster fixes the neighbourhood; the runtime dials them
        elif resuming:
            # A resuming peer alone would race through its remaining rounds: give the
            # exchange a few intervals to find the others, but do not wait for a quorum
            # that may have finished without us.
            wanted = min(wanted, 2)
            patience = max(cfg.settle, 5 * self.config.network.exchange_interval)
            deadline = min(deadline, trio.current_time() + patience)
        said = ""
        told: set[str] = set()
        rule_name = self.config.rule.name
        while True:
            now = trio.current_time()
            members = self._members()
            stable = self.roster is not None or now - self._changed_at >= cfg.settle
            problem = ""
            if len(members) < wanted:
                problem = f"waiting for peers: {len(members)} of {wanted} present"
                if self.roster is not None:
                    problem += absent_from(self.roster, members)
            elif not stable:
                problem = "waiting for the membership to settle"
            elif self.roster is None and not resuming:
                problem = self._rule_problem(members)
            if not problem:
                return members
            if now >= deadline:
                self.reporter.warn(f"start_timeout passed ({problem}); starting anyway")
                return members
            if problem != said and not problem.startswith("waiting for the membership"):
                self.reporter.say(problem + (f" (rule {rule_name})" if "rule" in problem else ""))
                said = problem
            assert self.exchange is not None
            for reason in self.exchange.unreachable.values():
                if reason not in told:
                    told.add(reason)
                    self.reporter.say(reason)
            await trio.sleep(min(0.1, self.config.network.exchange_interval / 4))

    def _rule_problem(self, members: list[str]) -> str:
        """Why the merge rule cannot work with this many members, and what would: how
        many members it needs on this topology, and which rules work with the peers
        present (an empty string when it works)."""
        from gossipfl.merge import RULES, make_rule

        hood, _ = membership_neighbourhood(self.rule, self.identity.peer_id, members)
        degree = in_degree(hood)
        rule = make_rule(self.config.rule.name, **self.config.rule.params)
        try:
            rule.check(degree)
        except ConfigError as exc:
            return f"waiting for more peers: with {len(members)} members, {exc}. " + (
                self._what_would_work(rule, len(members), degree, RULES)
            )
        return ""

    def _what_would_work(self, rule: Any, members: int, degree: int, rules: Any) -> str:
        """A hint: the smallest job this rule works in, and the rules that fit now."""
        from gossipfl.merge import make_rule

        needed = None
        for n in range(members + 1, 257):
            try:
                topology = self.rule.build(n)
            except ConfigError:
                continue
            if min(len(topology.in_neighbours(i)) for i in range(n)) >= rule.min_degree:
                needed = n
                break
        fits = []
        for name in rules:
            try:
                make_rule(name).check(degree)
            except ConfigError:
                continue
            fits.append(name)
        hints = []
        if needed is not None:
            hints.append(f"start {needed - members} more peer(s) ({needed} in all)")
        robust = [n for n in fits if make_rule(n).byzantine_tolerance > 0]
        if robust:
            hints.append(f"or use a rule that works with {degree} neighbours: " + ", ".join(robust))
        elif fits:
            hints.append(f"or use {', '.join(fits)} (no Byzantine tolerance)")
        return "To start: " + " ".join(hints) if hints else ""

    def _neighbourhood(self, members: list[str]) -> Neighbourhood:
        if self.roster is not None:
            topology = self.rule.build(len(self.roster), fallback=False)
            ids = self.roster.node_ids(node_labels(topology))
            return TopologyNeighbourhood(topology, ids.index(self.identity.peer_id), ids)
        hood, _ = membership_neighbourhood(self.rule, self.identity.peer_id, members)
        return hood

    def _shard(self, members: list[str], *, resuming: bool = False) -> tuple[int, int]:
        """This peer's (shard, shards); see :mod:`~gossipfl.daemon.workload`. The choice is
        kept in the state directory, so that a restarted peer trains on the same shard
        even if the membership has changed meanwhile."""
        data = self.config.data
        saved = self.state_dir / SHARD_FILE
        if resuming and data.shard is None and data.shards is None and saved.exists():
            try:
                kept = json.loads(saved.read_text(encoding="utf-8"))
                return int(kept["shard"]), int(kept["shards"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ignoring an unreadable %s", saved)
        shard, shards = self._choose_shard(members)
        from gossipfl.files import describe, write_atomic

        try:  # whole or not at all: a full disk must not leave an empty shard.json
            write_atomic(saved, json.dumps({"shard": shard, "shards": shards}).encode())
        except OSError as exc:
            logger.warning(
                "cannot write %s: %s; training goes on with shard %d of %d, but a restart "
                "may pick another shard",
                saved,
                describe(exc),
                shard,
                shards,
            )
        return shard, shards

    def _choose_shard(self, members: list[str]) -> tuple[int, int]:
        data = self.config.data
        me = self.identity.peer_id
        if data.file and self.config.task.name and data.shard is None and data.shards is None:
            return 0, 1  # the operator's own data: all of it, no sharding
        if self.roster is not None:
            topology = self.rule.build(len(self.roster), fallback=False)
            ids = self.roster.node_ids(node_labels(topology))
            default = (ids.index(me), len(ids))
        else:
            ordered = sorted(set(members) | {me})
            default = (ordered.index(me), len(ordered))
        shards = data.shards if data.shards is not None else default[1]
        shard = data.shard if data.shard is not None else default[0]
        if data.shards is None and data.shard is not None and shard >= shards:
            shards = shard + 1
        if data.shards is not None and data.shard is None and shard >= shards:
            raise ConfigError(
                f"this peer is number {shard + 1} but data.shards = {shards}: set data.shard"
            )
        return shard, shards

    # ------------------------------------------------------------------- training

    async def _train(self, transport: Any) -> None:
        from gossipfl.peer import CheckpointStore, Peer, PeerConfig

        cfg = self.config
        store = CheckpointStore(self.state_dir / CHECKPOINT_DIR)
        resuming = store.path.exists()
        if resuming and self._already_finished(store):
            return
        async with trio.open_nursery() as loading:
            holder: list[Any] = []

            async def load() -> None:
                if cfg.training.mode == "train":
                    # Abandoned on cancel: Ctrl+C while sklearn loads must not wait for it.
                    holder.append(
                        await trio.to_thread.run_sync(  # type: ignore[call-arg]
                            load_data, cfg, abandon_on_cancel=True
                        )
                    )

            loading.start_soon(load)
            members = await self._gather(resuming)
        dataset = holder[0] if holder else None
        self._applied = self._pending = list(members)
        neighbourhood = self._neighbourhood(members)
        shard, shards = self._shard(members, resuming=resuming)
        attack_kit = None
        peer_transport: Any = transport
        if cfg.is_byzantine:
            from gossipfl.attacks import arm_peer

            attack_kit = arm_peer(
                cfg.attack.name, transport, params=cfg.attack.params, seed=cfg.training.seed + shard
            )
            peer_transport = attack_kit.transport
            self._attack_kit = attack_kit
        if self._insider is not None:
            peer_transport = self._insider.wrap_transport(peer_transport)
        # In a thread: building the model imports torch and may run the task's own code
        # for seconds, during which the event loop must keep answering the other peers
        # (pings, dial-backs, hellos). Abandoned on cancel, like the data load above.
        build = functools.partial(
            build_workload,
            cfg,
            dataset,
            shard=shard,
            shards=shards,
            flip_labels=attack_kit is not None and attack_kit.trains,
        )
        workload = await trio.to_thread.run_sync(build, abandon_on_cancel=True)  # type: ignore[call-arg]
        self._workload = workload
        train = workload.train
        if attack_kit is not None and not attack_kit.trains:
            train = None
        net, tc = cfg.network, cfg.training
        peer_config = PeerConfig(
            network_id=net.network_id,
            max_frame=cfg.limits.max_frame,  # our frames fit the limit we hold others to
            protocol=tc.protocol,
            codec=tc.codec,
            deadline=tc.deadline,
            start_grace=tc.start_grace,
            heartbeat_interval=net.heartbeat_interval,
            heartbeat_timeout=net.heartbeat_timeout,
            dial_backoff_max=min(10.0, max(1.0, 2 * net.exchange_interval)),
            checkpoint_every=cfg.output.checkpoint_every,
            seed=tc.seed,
            job=self.job,
            secure_averaging=cfg.privacy.secure_averaging,
        )
        name = self._name()
        assert self._metrics is not None
        self._metrics.write(
            "start",
            addresses=self.listen_addrs,
            name=name,
            shard=shard,
            shards=shards,
            members=len(members),
            neighbours=sorted(set(neighbourhood.receive_from(0))),
            mode="static" if self.roster is not None else "dynamic",
            attack=cfg.attack.name if cfg.is_byzantine else None,
            insider=self._insider.describe() if self._insider is not None else None,
            resuming=resuming,
        )
        from gossipfl.merge import make_rule

        checkpoint = store.load(peer=self.identity.peer_id, network=self.config.network.network_id)
        if checkpoint is not None:
            self.reporter.say(
                f"resuming this peer's job from its checkpoint of round {checkpoint.round + 1} "
                f"({store.path}); `gossipfl start --fresh` starts a new job instead"
            )
            if workload.dp is not None:
                # counted as if every round so far trained: never less than was spent
                model_noise = workload.dp.mechanism == "model-noise"  # a step is a round
                per_round = 1 if model_noise else cfg.training.local_steps
                workload.dp.steps_taken = (checkpoint.round + 1) * per_round
        if workload.dp is not None:
            dp = workload.dp
            how = (
                f"noise on the model (each round's update clipped to {dp.clip:g})"
                if dp.mechanism == "model-noise"
                else f"DP-SGD, clip {dp.clip:g}, sampling rate {dp.sampling_rate:.3g}"
            )
            self.reporter.say(
                f"differential privacy: {how}, noise multiplier {dp.noise_multiplier:.3g}; "
                f"epsilon {dp.epsilon:.3g} spent"
                + (f" of {dp.budget:g}" if dp.budget is not None else "")
                + f" at delta {dp.delta:g}"
            )
        self.reporter.say(
            f"{'resuming' if resuming else 'starting'}: {len(members)} members, "
            f"{in_degree(neighbourhood)} neighbours, {workload.describe()}"
        )
        first = checkpoint.round + 1 if checkpoint is not None else self._join_round(members)
        self._first_round, self._last_round = first, first - 1
        async with Peer(
            transport=peer_transport,
            model=workload.model,
            neighbourhood=neighbourhood,
            train=train,
            rule="mean" if attack_kit is not None else make_rule(cfg.rule.name, **cfg.rule.params),
            config=peer_config,
            on_round=self._on_round,
            checkpoints=store,
            outgoing=attack_kit.outgoing if attack_kit is not None else None,
            compute_time=tc.step_time or None,
            name=name,
        ) as peer:
            self.peer = peer
            if not resuming:
                # The members are up; give the gossip handshakes with our neighbours (at
                # most a round deadline) to complete, so round 0 is heard by everyone.
                await peer.wait_for_neighbours(timeout=tc.deadline)
            self.reporter.start(tc.rounds, first)
            until = min(tc.rounds, tc.leave_after) if tc.leave_after else tc.rounds
            summary = await peer.run(until, start_round=first)
            self._first_round, self._last_round = summary.first_round, summary.last_round
            if cfg.output.linger > 0:
                with trio.move_on_after(cfg.output.linger):
                    await peer.serve()

    def _already_finished(self, store: Any) -> bool:
        """A peer restarted after its job ended says so and stops, instead of training
        nothing (or failing) while it waits for peers that have all gone."""
        checkpoint = store.load(peer=self.identity.peer_id, network=self.config.network.network_id)
        rounds = self.config.training.rounds
        if checkpoint is None or checkpoint.round < rounds - 1:
            return False
        self._first_round, self._last_round = checkpoint.round + 1, checkpoint.round
        self._stop_reason = "already finished"
        self.reporter.say(
            f"this peer's job is finished: its checkpoint ({store.path}) is of round "
            f"{checkpoint.round + 1}, the last of training.rounds = {rounds}. "
            "`gossipfl start --fresh` starts a new job; raise training.rounds to train on"
        )
        return True

    def _join_round(self, members: list[str]) -> int:
        """Where a new peer joins a job already under way (dynamic membership): the median
        of the rounds the other live members are at. Each member signs its own round, so
        a liar can only misstate its own, and fewer than half of them cannot move the
        median outside the honest ones'. Without this a newcomer would start at round 0
        and could catch up only as fast as its skips may go (a quarter of a round per
        round beyond its own pace)."""
        if self.roster is not None or self.view is None:
            return 0
        me = self.identity.peer_id
        rounds = sorted(
            rec.round
            for p in members
            if p != me and (rec := self.view.record(p)) is not None and not rec.left
        )
        if not rounds:
            return 0
        start = min(rounds[(len(rounds) - 1) // 2], max(0, self.config.training.rounds - 1))
        if start > 0:
            self.reporter.say(
                f"joining a job in progress at round {start + 1} (the members' median)"
            )
            logger.info("joining at round %d; the members are at rounds %s", start, rounds)
        return start

    def _name(self) -> str:
        if self.roster is not None:
            entry = self.roster.entry(self.identity.peer_id)
            if entry is not None:
                return entry.name
        return self.identity.peer_id[-8:]

    def _report_paths(self) -> None:
        """Say how each connected peer is reached when that changes (``direct``, or
        ``relayed via R``): behind NAT, an operator needs to see which neighbours go
        through a relay (and cost its bandwidth). In metrics as ``path`` rows."""
        paths = getattr(self._transport, "peer_paths", None)
        if not isinstance(paths, dict):
            return  # a transport without paths (in memory)
        for peer, path in sorted(paths.items()):
            text = str(path)
            if self._paths.get(peer) != text:
                self._paths[peer] = text
                self.reporter.say(f"peer {peer}: {text}")
                if self._metrics is not None:
                    self._metrics.write("path", neighbour=peer, path=text)

    def _report_reachability(self) -> None:
        """Say whether peers can dial this one, when a dial-back check first answers and
        when the answer changes (``reachability`` rows in metrics): behind NAT, the
        operator learns that others reach it only through relays."""
        found = getattr(self._transport, "reachability", None)
        if found is None or found.state == "unknown" or str(found) == self._reachability:
            return
        self._reachability = str(found)
        self.reporter.say(f"this peer is {found}")
        if self._metrics is not None:
            self._metrics.write(
                "reachability",
                state=found.state,
                addresses=list(found.addresses),
                checked_by=list(found.checked_by),
                detail=found.detail,
            )

    def _on_round(self, report: Any) -> None:
        """After each round: evaluate, log, report, and apply membership changes."""
        cfg = self.config
        rounds = cfg.training.rounds
        previous = self._last_round
        self._last_round = max(self._last_round, report.round)
        accuracy = loss = None
        every = cfg.output.eval_every
        workload = self._workload
        if (
            workload is not None
            and workload.evaluate is not None
            and every
            and ((report.round + 1) % every == 0 or report.round == rounds - 1)
        ):
            accuracy, loss = workload.evaluate(report.vector)
            self._accuracy = accuracy
        row = report_row(report)
        members = self._applied
        assert self._metrics is not None
        self._metrics.write(
            "round",
            **row,
            accuracy=accuracy,
            test_loss=loss,
            members=len(members),
            degree=len(self.peer.neighbourhood.receive_from(report.round + 1))
            if self.peer is not None
            else None,
        )
        if self._recorder is not None:
            self._recorder.record(report)
        self._report_paths()
        self._report_reachability()
        if report.stats.skipped_to is not None:
            self.reporter.say(
                f"caught up with the neighbours: skipped from round {previous + 2} to round "
                f"{report.round + 1} of {rounds} (they were ahead; the rounds between were "
                "not trained here)"
            )
        self.reporter.round(
            report.round,
            accuracy=accuracy,
            loss=row["train_loss"],
            received=report.stats.received,
            expected=report.stats.expected,
            members=len(members),
            epsilon=row["epsilon"],
        )
        traces = self._traces()
        if traces != self._reported_traces:
            # Something new was counted against another peer: say so in the metrics at
            # once (the stop row has the totals too).
            self._reported_traces = traces
            self._metrics.write("violations", round=report.round, **traces)
        self._maybe_apply_membership(report.round + 1)

    def _maybe_apply_membership(self, next_round: int) -> None:
        """At a round boundary: switch to the pending member list if it has settled."""
        if self.roster is not None or self.peer is None:
            return
        now = trio.current_time()
        pending = self._members()
        if pending != self._pending:
            self._pending, self._changed_at = pending, now
        if pending == self._applied or now - self._changed_at < self.config.topology.settle:
            return
        try:
            hood = self._neighbourhood(pending)
        except ConfigError as exc:
            logger.warning("cannot use the new membership (%d members): %s", len(pending), exc)
            return
        if self._rule_problem(pending):
            logger.warning(
                "with %d members the merge rule %s gets fewer neighbours than it needs to "
                "defend against Byzantine ones",
                len(pending),
                self.config.rule.name,
            )
        joined = sorted(set(pending) - set(self._applied))
        left = sorted(set(self._applied) - set(pending))
        self._applied = list(pending)
        self.peer.set_neighbourhood(hood)
        assert self._metrics is not None
        self._metrics.write(
            "membership",
            round=next_round,
            members=len(pending),
            joined=joined,
            left=left,
            neighbours=sorted(hood.receive_from(next_round)),
        )
        self.reporter.say(
            f"round {next_round + 1}: membership now {len(pending)} "
            f"(+{len(joined)} -{len(left)}), {in_degree(hood, next_round)} neighbours"
        )


#: Absent roster peers named in the waiting message; more are counted.
ABSENT_SHOWN = 5


def absent_from(roster: Roster, members: Sequence[str]) -> str:
    """`` (absent: beta 12D3KooW...q7Yz, ...)``: the roster peers not yet seen, by name
    and the end of their ID, so that an operator knows whom to start (or chase) rather
    than only how many are missing."""
    present = set(members)
    absent = [e for e in roster.entries if e.peer_id not in present]
    if not absent:
        return ""
    shown = [f"{e.name} {e.peer_id[:8]}...{e.peer_id[-4:]}" for e in absent[:ABSENT_SHOWN]]
    more = len(absent) - len(shown)
    return f" (absent: {', '.join(shown)}{f' and {more} more' if more else ''})"


_RESERVED = frozenset({"name", "roster", "min_peers", "settle", "start_timeout"})
_MISBEHAVIOUR = (
    "bad_frames",
    "unverified",
    "refused",
    "wrong_shape",
    "spoofed",
    "replayed",
    "slow_neighbours",
    "implausible_claims",
)
"""The runtime's counters of what other peers did wrong (``metrics.jsonl``)."""


__all__ = [
    "CHECKPOINT_DIR",
    "JobMismatchError",
    "Node",
    "NodeResult",
    "open_exposure",
    "resolve_allowlist",
]
