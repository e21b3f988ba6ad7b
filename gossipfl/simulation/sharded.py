"""One simulation split over several shards: processes of this machine, or Ray actors.

A simulation of more peers than one process can run in time is split by graph
partition (:func:`gossipfl.topology.partition.partition_nodes`, few cut edges): each
shard runs its peers -- the same :class:`~gossipfl.peer.Peer` runtime, protocol core and
wire bytes as an unsharded run -- on its own trio run and virtual clock, and a driver
moves the messages between shards. The result is the unsharded run's, bit for bit: same
rounds, same metrics, same per-peer rows.

**Why that can be exact.** In the in-process network every effect one peer has on
another is a message that arrives at least one link latency ``L`` after it was sent
(frames, and since this module, the notice that a connection was opened:
:mod:`gossipfl.transport.memory`). So the shards advance in *conservative windows*:

1. Each shard runs until the window's end ``G`` and keeps running everything due at
   ``G`` until all its tasks wait (``trio.testing.wait_all_tasks_blocked`` with the
   clock's auto-jump held off), then hands the driver the messages its peers sent to
   other shards, the round reports of its peers, and the time of its next timer.
   (Shards in processes of this machine send each other the messages directly, and
   each takes step 2 itself, to the same result: :class:`ShardMesh`.)
2. The driver routes the messages. Nothing anywhere can happen before ``t`` = the
   earliest next timer of any shard or arrival of any routed message, and nothing sent
   at ``t`` or later arrives before ``t + L``: so every shard may safely run to
   ``G' = t + L``. Idle stretches cost one window, not one per latency.
3. A shard receives its messages before it runs past their arrival (checked: one that
   arrives late is an error, not a silent difference).

Each link's randomness (loss, jitter) lives with its sender and is seeded by
(seed, source, destination); every peer's learner, data part and model are built from
the seed and its index; events due at the same instant are handled in an order that
does not change the result -- as in the unsharded run, where trio's scheduler already
randomises that order. The metrics are computed by the driver's own
:class:`~gossipfl.simulation.collector.MetricsCollector` from the reports in
per-peer order, the same computation as unsharded.

What differs from the unsharded run: the network totals of the summary count traffic
until every shard has heard that all peers are done (a window later than one process
would stop), and so does ``virtual_s``. Differential privacy (DP-SGD, model noise)
shards like the rest: each peer's noise is seeded by its index, and the driver sums up
every shard's spending. Byzantine peers that attack from what they receive run in the
shard that holds their node (the partition is of the graph with them). Secure averaging
shards too: its mask keys travel as messages, and each is signed by a key the network
derives from the peer's name and its seed, the same in every shard. So does the
membership-inference study: the shards hand back their peers' final models and the
driver runs it, with a fresh peer 0's learner scoring them. Omniscient Byzantine peers,
churn and links without latency are refused for now (each needs state that crosses
shards outside messages: the attack oracle, the churn schedule).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import operator
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import trio

from gossipfl._mockclock import MockClock, wait_all_tasks_blocked
from gossipfl.errors import ConfigError
from gossipfl.peer import RoundReport
from gossipfl.privacy.dpsgd import DPPlan
from gossipfl.protocol.events import RoundStats
from gossipfl.simulation.byzantine import byzantine_active, place_byzantine
from gossipfl.simulation.collector import Evaluate, MetricsCollector, RoundSummary
from gossipfl.simulation.config import SimulationConfig
from gossipfl.simulation.privacy import dp_summary, membership_leakage
from gossipfl.simulation.runner import (
    SimulationResult,
    _gap_or_none,
    _simulate,
    build_topology_for,
    check_rule_fits,
    consensus_fit,
    consensus_start,
    evaluator_on_test_split,
    gc_threshold_for,
    learner_seed,
    mean_drift,
    rare_collections,
    workload_parts,
)
from gossipfl.simulation.scheduling import seeded_scheduler, virtual_clock
from gossipfl.topology import Topology
from gossipfl.topology.partition import cut_edges, partition_nodes
from gossipfl.transport import LinkProfile, MemoryNetwork, NetworkStats
from gossipfl.transport.base import PeerId

_T = TypeVar("_T")

Pending = Callable[[], "list[Window]"]
"""A backend's windows in progress: call it to wait for their ends."""

Envelope = tuple[float, PeerId, PeerId, "bytes | None"]
"""A message between shards: (arrival time, source, destination, frame or None for a
connection notice)."""


_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(RoundStats))
_stats_fields = operator.attrgetter(*_STATS_FIELDS)

_ReportRow = tuple[PeerId, int, tuple[Any, ...], dict[str, float], int, float]
"""A round report without its vector: peer, round, its stats' fields in order, train
metrics, bytes sent, time."""


class ReportBatch:
    """A window's round reports of one shard, in the compact form they travel in:
    plain tuples, and the vectors stacked into one array.

    Why: pickled as they are, 512 :class:`RoundReport` objects (each with a
    :class:`RoundStats` of 14 fields, pickled field by field through the dataclasses'
    slot state, and an array of its own) took 5.9 ms to pickle in the shard and 4.7 ms
    to unpickle in the driver, every round, while the shards waited: about 1 s of a
    1,024 × 100 run's wall time. As tuples and one array: 1.2 and 0.8 ms. What the
    driver rebuilds is equal, field for field, bit for bit."""

    __slots__ = ("rows", "vectors")

    def __init__(self) -> None:
        self.rows: list[_ReportRow] = []
        self.vectors: list[np.ndarray] | np.ndarray = []

    def add(self, report: RoundReport) -> None:
        """Keep ``report``, its vector and metrics copied (the peer keeps its own)."""
        assert isinstance(self.vectors, list)
        self.rows.append(
            (
                report.peer,
                report.round,
                _stats_fields(report.stats),
                dict(report.train_metrics),
                report.bytes_sent,
                report.time,
            )
        )
        self.vectors.append(np.array(report.vector, dtype=np.float32, copy=True))

    def packed(self) -> ReportBatch:
        """This batch with its vectors in one array (when they are all of one length)."""
        vectors = self.vectors
        if isinstance(vectors, list) and vectors and len({v.shape for v in vectors}) == 1:
            self.vectors = np.stack(vectors)
        return self

    def reports(self) -> Iterator[RoundReport]:
        """The reports, rebuilt, in the order they were added."""
        for (peer, round, stats, metrics, sent, at), vector in zip(
            self.rows, self.vectors, strict=True
        ):
            yield RoundReport(
                peer=peer,
                round=round,
                vector=vector,
                stats=RoundStats(*stats),
                train_metrics=metrics,
                bytes_sent=sent,
                time=at,
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> tuple[list[_ReportRow], list[np.ndarray] | np.ndarray]:
        return self.rows, self.vectors

    def __setstate__(self, state: tuple[list[_ReportRow], list[np.ndarray] | np.ndarray]) -> None:
        self.rows, self.vectors = state


@dataclass
class Window:
    """What a shard hands the driver at the end of a window."""

    messages: list[Envelope]
    """Sent by this shard's peers to other shards' peers, in send order."""
    reports: ReportBatch
    """Round reports of this shard's peers since the last window, in order."""
    next_event: float
    """Virtual time of the shard's earliest timer (inf: none)."""
    done: bool
    """Every peer of this shard has finished its rounds."""


@dataclass
class ShardOutcome:
    """What a shard hands the driver when its run has ended."""

    stats: NetworkStats
    virtual_s: float
    finals: dict[int, np.ndarray]
    """Consensus mode: each peer's final vector (else empty)."""
    peak_rss_mib: float
    """Peak resident memory of the process the shard ran in."""
    pid: int
    """That process."""
    busy_s: float
    """Wall seconds the shard spent running windows (from the end of its set-up)."""
    cpu_s: float
    """CPU seconds of the shard's thread, set-up included."""
    process_cpu_s: float
    """CPU seconds of the process the shard ran in, all its threads (in a process of its
    own: the shard's whole cost, pickling and pipes included)."""
    dp_plans: dict[int, DPPlan] = field(default_factory=dict)
    """Each of the shard's peers' privacy spending (with DP-SGD or model noise)."""
    byzantine: dict[str, Any] = field(default_factory=dict)
    """The run's Byzantine summary, with the attack counts of this shard's attackers."""
    windows: int = 0
    """With a :class:`ShardMesh`: the windows run (the driver counts them otherwise)."""
    cross_messages: int = 0
    """With a :class:`ShardMesh`: frames this shard sent to other shards."""
    cross_bytes: int = 0


def check_shardable(config: SimulationConfig, shards: int) -> None:
    """A :class:`ConfigError` naming what a sharded run of ``config`` cannot do yet."""
    if shards < 1:
        raise ConfigError(f"shards must be at least 1, got {shards}")
    if config.transport != "memory":
        raise ConfigError("only in-process simulations (transport = 'memory') can be sharded")
    reasons = []
    hint = ""
    if byzantine_active(config) and config.byzantine.omniscient:
        reasons.append("omniscient Byzantine peers")
        hint = (
            " (their oracle reads every honest model as it is sent, in every shard); "
            "set byzantine.omniscient = false for attackers that work from the models "
            "they receive: those shard"
        )
    if config.churn_nodes():
        reasons.append("churn")
    if reasons:
        raise ConfigError(f"a sharded simulation cannot have {' or '.join(reasons)} yet{hint}")
    if not config.network.latency > 0:
        raise ConfigError(
            "a sharded simulation needs network.latency > 0: the shards advance in windows "
            "of one latency, the least time a message takes from one peer to another"
        )


# ---------------------------------------------------------------- inside a shard's run


class ShardNetwork(MemoryNetwork):
    """A :class:`MemoryNetwork` on which some peers live in other shards: what is sent to
    them goes to :attr:`outbox`; what they send arrives through :meth:`inject`.

    The state of a connection with a remote peer is kept per end: the local end opens it
    (sending a notice that travels like a frame) or learns of it from the remote end's
    notice. Remote peers are always up (churn is refused)."""

    def __init__(self, *, seed: int, default: LinkProfile, remote: frozenset[PeerId]) -> None:
        super().__init__(seed=seed, default=default)
        self.remote = remote
        self.outbox: list[Envelope] = []

    def reachable(self, a: PeerId, b: PeerId) -> bool:
        remote = self.remote
        if a in remote or b in remote:
            near = b if a in remote else a
            endpoint = self._endpoints.get(near)
            return endpoint is not None and not endpoint.closed and near not in self._down
        return super().reachable(a, b)

    def _enqueue(self, at: float, src: PeerId, dst: PeerId, data: bytes | None) -> None:
        if dst in self.remote:
            self.outbox.append((at, src, dst, data))
            return
        super()._enqueue(at, src, dst, data)

    def _notice(self, src: PeerId, dst: PeerId) -> None:
        if src in self.remote and self.reachable(src, dst) and not self.is_connected(src, dst):
            self._connected.setdefault(src, set()).add(dst)
            self._connected.setdefault(dst, set()).add(src)
        super()._notice(src, dst)

    def take_outbox(self) -> list[Envelope]:
        out, self.outbox = self.outbox, []
        return out

    def inject(self, messages: Sequence[Envelope]) -> None:
        now = trio.current_time()
        for at, src, dst, data in messages:
            if at < now:
                raise RuntimeError(
                    f"a message from {src} to {dst} due at {at} reached its shard at {now}: "
                    "the windows let a shard run past a message's arrival"
                )
            super()._enqueue(at, src, dst, data)


@dataclass
class _Command:
    inbound: list[Envelope]
    until: float
    all_done: bool


class PeerShardGone(RuntimeError):
    """Another shard's end of a :class:`ShardMesh` link closed mid-run: that shard
    failed or died, and its own error (or its exit) is what the driver reports."""


class ShardMesh:
    """A shard's direct links to every other shard, for the window exchange.

    Why: routed through the driver, each window's frames that cross the cut were pickled
    twice and sent twice (shard -> driver -> shard), and every shard waited for the
    driver's serial turnaround (all windows in, route, all commands out) between the
    202 windows of a 1,024 × 100 run. Here each shard sends the others, at the end of a
    window, the messages for them and what the driver used to decide the next window
    (its next timer, its messages' earliest arrival, whether its peers are done); every
    shard then computes the same next window from the same numbers: the driver's rule
    (``until`` = the earliest timer or arrival anywhere + one latency, all done when
    every shard is), so the windows, and the metrics, are the routed run's. Inbound
    messages are taken shard by shard in index order, each shard's in send order: the
    order the driver routed them in. The driver only receives the round reports.

    Sends go through a thread of their own: two shards each sending the other more than
    a pipe holds (64 KiB) before reading would wait for each other for ever.
    """

    def __init__(
        self,
        index: int,
        links: dict[int, Any],
        shard_of: dict[PeerId, int],
        lookahead: float,
    ) -> None:
        self.index = index
        self.links = sorted(links.items())
        self.shard_of = shard_of
        self.lookahead = lookahead
        self.windows = 0
        self.cross_messages = 0
        self.cross_bytes = 0
        self._outgoing: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(
            target=self._send_loop, name="gossipfl-shard-mesh", daemon=True
        )
        self._sender.start()

    def _send_loop(self) -> None:
        while (item := self._outgoing.get()) is not None:
            link, payload = item
            try:
                link.send(payload)
            except OSError:  # that shard is gone; its error reaches the driver
                return

    def exchange(self, window: Window) -> _Command:
        """Send ``window``'s messages to their shards, receive theirs, and return the
        command for the next window (blocking: every task of this shard waits anyway)."""
        self.windows += 1
        outgoing: dict[int, list[Envelope]] = {k: [] for k, _ in self.links}
        earliest, frames, size = _sort_messages(window.messages, self.shard_of, outgoing)
        self.cross_messages += frames
        self.cross_bytes += size
        for k, link in self.links:
            self._outgoing.put((link, (earliest, window.next_event, window.done, outgoing[k])))
        inbound: list[Envelope] = []
        soonest = min(earliest, window.next_event)
        all_done = window.done
        for k, link in self.links:
            try:
                their_earliest, their_next, their_done, messages = link.recv()
            except (EOFError, OSError):
                raise PeerShardGone(f"shard {k} ended mid-run") from None
            inbound.extend(messages)
            soonest = min(soonest, their_earliest, their_next)
            all_done = all_done and their_done
        if all_done:
            return _Command(inbound, math.inf, all_done=True)
        return _Command(inbound, _window_end(soonest, self.lookahead), all_done=False)

    def close(self) -> None:
        """Wait until everything sent has been handed to the links."""
        self._outgoing.put(None)
        self._sender.join()


class ShardSide:
    """The shard's half inside its trio run: the hooks :func:`~gossipfl.simulation.runner._simulate`
    calls, and the gate task that ends each window."""

    def __init__(
        self,
        peers: list[int],
        others: frozenset[PeerId],
        first_until: float,
        mesh: ShardMesh | None = None,
    ) -> None:
        self.peers = peers
        self.mesh = mesh
        self.local_done = False
        self.finals: dict[int, np.ndarray] = {}
        self.dp_plans: dict[int, DPPlan] = {}
        self.byzantine: dict[str, Any] = {}
        self.busy_s = 0.0
        """Wall seconds spent running windows (the rest: waiting for the driver)."""
        self._others = others
        self._until = first_until
        self._reports = ReportBatch()
        self._network: ShardNetwork | None = None
        self._to_host: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._command: _Command | None = None
        self._command_set = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    # hooks for _simulate
    def network(self, *, seed: int, default: LinkProfile) -> ShardNetwork:
        self._network = ShardNetwork(seed=seed, default=default, remote=self._others)
        return self._network

    def report(self, report: RoundReport) -> None:
        # the peer keeps its vector: copy it now, as the collector does on add
        self._reports.add(report)

    async def gate(self, all_done: trio.Event) -> None:
        """End a window at each ``until`` the driver names, until it says all are done."""
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, MockClock)
        assert self._network is not None
        self._token = trio.lowlevel.current_trio_token()
        resumed = time.perf_counter()
        while True:
            await trio.sleep_until(self._until)
            clock.autojump_threshold = math.inf  # hold the clock at the window's end
            await wait_all_tasks_blocked()
            ahead = trio.lowlevel.current_statistics().seconds_to_next_deadline
            window = Window(
                messages=self._network.take_outbox(),
                reports=self._reports.packed(),
                next_event=trio.current_time() + ahead,
                done=self.local_done,
            )
            self._reports = ReportBatch()
            self.busy_s += time.perf_counter() - resumed
            if self.mesh is None:
                self._to_host.put(window)
                await self._command_set.wait()
                self._command_set = trio.Event()
                command, self._command = self._command, None
            else:
                # the reports go to the driver (this process's main thread sends them
                # while this thread waits for the other shards); the messages go
                # straight to their shards, and every shard computes the same command
                self._to_host.put(dataclasses.replace(window, messages=[]))
                command = self.mesh.exchange(window)
            resumed = time.perf_counter()
            assert command is not None
            clock.autojump_threshold = 0
            self._network.inject(command.inbound)
            if command.all_done:
                all_done.set()
                return
            self._until = command.until

    def _receive(self, command: _Command) -> None:  # in the trio thread
        self._command = command
        self._command_set.set()


# ---------------------------------------------------------------- a shard, from outside


class Shard:
    """One shard's peers in a trio run on a thread of its own, advanced window by window.

    The same object runs in a thread of the driver (:func:`thread_backend`), in a
    process of its own (:func:`process_backend`) or inside a Ray actor
    (:func:`ray_backend`).
    """

    def __init__(
        self,
        config: SimulationConfig,
        peers: list[int],
        ids: list[str],
        first_until: float,
        *,
        own_process: bool = False,
        mesh: ShardMesh | None = None,
    ) -> None:
        local = {ids[i] for i in peers}
        self.config = config
        # in a process of its own (a Ray actor), the shard sets the garbage collector's
        # pace itself; threads share the driver's setting (it is per process)
        self._own_process = own_process
        self.side = ShardSide(peers, frozenset(set(ids) - local), first_until, mesh)
        self._thread: threading.Thread | None = None

    def start(self) -> Window:
        """Build the peers and run the first window."""
        self.launch()
        return self._next(Window)

    def launch(self) -> None:
        """Start the shard's thread. With a mesh, the shard then runs to the end on its
        own: its windows (reports only) and then its :class:`ShardOutcome` come out of
        :meth:`next_item`."""
        self._thread = threading.Thread(target=self._main, name="gossipfl-shard", daemon=True)
        self._thread.start()

    def next_item(self) -> Any:
        """The next window, outcome or error the shard's thread hands out."""
        return self.side._to_host.get()

    def advance(self, inbound: list[Envelope], until: float) -> Window:
        """Deliver ``inbound`` and run to ``until``."""
        self.begin(inbound, until)
        return self.window()

    def begin(self, inbound: list[Envelope], until: float) -> None:
        """:meth:`advance` without waiting: the shard runs while the caller works."""
        self._send(_Command(inbound, until, all_done=False))

    def window(self) -> Window:
        """The end of the window :meth:`begin` started."""
        return self._next(Window)

    def finish(self, inbound: list[Envelope]) -> ShardOutcome:
        """Deliver ``inbound``, tell the peers that all are done, and wait for the end."""
        self._send(_Command(inbound, math.inf, all_done=True))
        outcome = self._next(ShardOutcome)
        assert self._thread is not None
        self._thread.join()
        return outcome

    def _send(self, command: _Command) -> None:
        token = self.side._token
        assert token is not None
        token.run_sync_soon(self.side._receive, command)

    def _next(self, kind: type[_T]) -> _T:
        item = self.side._to_host.get()
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, kind):  # pragma: no cover - a broken handshake
            raise RuntimeError(f"shard sent {type(item).__name__}, expected {kind.__name__}")
        return item

    def _main(self) -> None:
        side = self.side
        try:
            clock = virtual_clock()
            pace = _collections(self.config) if self._own_process else contextlib.nullcontext()
            # (shards in threads of one process would share trio's generator: not seeded)
            order = (
                seeded_scheduler(self.config.seed)
                if self._own_process
                else contextlib.nullcontext()
            )
            with pace, order:
                result = trio.run(_simulate, self.config, None, side, clock=clock)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            mesh = side.mesh
            if mesh is not None:
                mesh.close()
            side._to_host.put(
                ShardOutcome(
                    stats=result.network,
                    virtual_s=result.virtual_s,
                    finals=side.finals,
                    peak_rss_mib=peak,
                    pid=os.getpid(),
                    busy_s=side.busy_s,
                    cpu_s=time.thread_time(),
                    process_cpu_s=time.process_time(),
                    dp_plans=side.dp_plans,
                    byzantine=side.byzantine,
                    windows=0 if mesh is None else mesh.windows,
                    cross_messages=0 if mesh is None else mesh.cross_messages,
                    cross_bytes=0 if mesh is None else mesh.cross_bytes,
                )
            )
        except BaseException as exc:  # handed to the driver, which raises it
            side._to_host.put(exc)


# ---------------------------------------------------------------- the driver


@dataclass
class ShardingReport:
    """How the work was split and what crossed between shards."""

    shards: int
    peers_per_shard: list[int]
    cut_edges: int
    edges: int
    windows: int
    cross_messages: int
    """Frames routed between shards (connection notices not counted)."""
    cross_bytes: int
    peak_rss_mib: list[float] = field(default_factory=list)
    """Per shard, of the process it ran in (in-process shards share one)."""
    pids: list[int] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    """Per shard: wall seconds spent running windows."""
    cpu_s: list[float] = field(default_factory=list)
    """Per shard: CPU seconds of its thread."""
    process_cpu_s: list[float] = field(default_factory=list)
    """Per shard: CPU seconds of its process (shared by shards in threads)."""
    start_s: float = 0.0
    """Seconds from starting the shards to the end of their first window (peers built)."""
    waited_s: float = 0.0
    """Seconds the driver waited for windows to end after the first (the rest of its
    time it routed messages and computed metrics while the shards ran; with shards that
    route among themselves, nearly the whole run: it only computes the metrics)."""

    def row(self, rounds: int) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "peers_per_shard": self.peers_per_shard,
            "cut_edges": self.cut_edges,
            "edges": self.edges,
            "windows": self.windows,
            "cross_shard_messages": self.cross_messages,
            "cross_shard_messages_per_round": self.cross_messages / max(rounds, 1),
            "cross_shard_bytes": self.cross_bytes,
            "peak_rss_mib_per_shard": [round(m, 1) for m in self.peak_rss_mib],
            "processes": len(set(self.pids)),
            "start_s": round(self.start_s, 2),
            "driver_waited_s": round(self.waited_s, 2),
            "shard_busy_s": [round(b, 2) for b in self.busy_s],
            "shard_cpu_s": [round(c, 2) for c in self.cpu_s],
            "shard_process_cpu_s": [round(c, 2) for c in self.process_cpu_s],
        }


class _ProcessBackend:
    """Shards as processes of this machine, forked from a server that has imported this
    module (so each starts in a fraction of a second), one CPU's worth of work each.

    The shards exchange their windows' messages among themselves, over a pipe per pair
    (:class:`ShardMesh`), and run from start to end without the driver; each hands the
    driver its round reports window by window, over a pipe of its own, and its
    :class:`ShardOutcome` at the end. Everything on the pipes is pickled: the processes
    are ours, nothing a peer sent is unpickled."""

    def __init__(
        self,
        config: SimulationConfig,
        parts: list[list[int]],
        ids: list[str],
        until: float,
    ) -> None:
        import multiprocessing

        from gossipfl.childenv import environment

        self._started = time.perf_counter()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["gossipfl.simulation.sharded"])
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        links: list[dict[int, Any]] = [{} for _ in parts]
        for a in range(len(parts)):
            for b in range(a + 1, len(parts)):
                links[a][b], links[b][a] = context.Pipe()
        # one BLAS thread per shard (they share the cores); the shards need nothing from
        # the caller's script, so it is not re-imported in them
        with environment(), _main_script_hidden():
            for k in range(len(parts)):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_shard_process,
                    args=(theirs, links[k], k, config, parts, ids, until, os.getpid()),
                    name=f"gossipfl-shard-{k}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self.pipes.append(ours)
                self.processes.append(process)
        for own in links:  # the shards hold their ends now; ours would hide an EOF
            for link in own.values():
                link.close()

    def _ended(self, k: int) -> RuntimeError:
        process = self.processes[k]
        process.join(timeout=5)
        return RuntimeError(f"shard {k}'s process ended (exit code {process.exitcode})")

    def run(self, collector: MetricsCollector) -> tuple[list[ShardOutcome], float, float]:
        """Collect every shard's reports, window by window in shard order (as the routed
        run does), until every shard has handed in its outcome. Returns the outcomes,
        the seconds from starting the processes to the first window of every shard, and
        the seconds spent waiting after it.

        A shard whose mesh link broke (:class:`PeerShardGone`) is not the cause: the
        error raised is that of the shard that failed, or the exit of the one that died.
        """
        from multiprocessing.connection import wait

        started = self._started
        start_s = waited = 0.0
        windows: list[collections.deque[Window]] = [collections.deque() for _ in self.pipes]
        outcomes: dict[int, ShardOutcome] = {}
        live: dict[Any, int] = {pipe: k for k, pipe in enumerate(self.pipes)}
        bystanders: set[int] = set()
        while live:
            waiting = time.perf_counter()
            ready: list[Any] = wait(list(live))
            if start_s:
                waited += time.perf_counter() - waiting
            for pipe in ready:
                k = live[pipe]
                try:
                    item = pipe.recv()
                except (EOFError, OSError):
                    if k in bystanders:
                        del live[pipe]
                        continue
                    raise self._ended(k) from None
                if isinstance(item, PeerShardGone):
                    bystanders.add(k)
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, ShardOutcome):
                    outcomes[k] = item
                    del live[pipe]
                else:
                    windows[k].append(item)
            if not start_s and all(windows):
                start_s = time.perf_counter() - started
            while all(windows):
                _collect(collector, [queued.popleft() for queued in windows])
        if len(outcomes) < len(self.pipes):
            raise RuntimeError("every shard stopped on another's error")
        return [outcomes[k] for k in range(len(self.pipes))], start_s, waited

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start processes without multiprocessing re-running the caller's script in them.

    A forkserver child imports ``__main__`` from its file before running its target, so
    a script that calls :func:`run_sharded` at the top level (no ``if __name__ ==
    "__main__"`` guard) would start the run again in every shard and fail. The shards'
    code is all in this package; hiding the script's path while they start skips that
    import (a module run with ``-m`` has a name instead, which is imported as usual).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _shard_process(
    pipe: Any,
    links: dict[int, Any],
    index: int,
    config: SimulationConfig,
    parts: list[list[int]],
    ids: list[str],
    until: float,
    driver: int,
) -> None:
    """Body of a shard's process: run shard ``index`` of ``parts`` to its end, its
    messages to other shards over ``links``, handing the driver its windows' reports
    and its outcome (or its error) over ``pipe``; exit if the ``driver`` process is gone
    (SIGKILLed mid-run, it never hangs up)."""
    from gossipfl.childenv import exit_with

    exit_with(driver)
    try:
        mesh = ShardMesh(index, links, _shard_of(parts, ids), config.network.latency)
        shard = Shard(config, parts[index], ids, until, own_process=True, mesh=mesh)
        shard.launch()
    except BaseException as exc:  # handed to the driver, which raises it
        pipe.send(exc)
        return
    while True:
        item = shard.next_item()
        try:
            pipe.send(item)
        except OSError:  # the driver hung up
            return
        if isinstance(item, (ShardOutcome, BaseException)):
            return


class _ThreadBackend:
    """Shards as threads of this process."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards

    def start(self) -> list[Window]:
        return [shard.start() for shard in self.shards]

    def advance(self, inbound: list[list[Envelope]], until: float) -> Pending:
        for shard, msgs in zip(self.shards, inbound, strict=True):
            shard.begin(msgs, until)
        return lambda: [shard.window() for shard in self.shards]

    def finish(self, inbound: list[list[Envelope]]) -> list[ShardOutcome]:
        return [shard.finish(msgs) for shard, msgs in zip(self.shards, inbound, strict=True)]

    def close(self) -> None:
        pass


def run_sharded(
    config: SimulationConfig,
    shards: int,
    *,
    progress: Callable[[RoundSummary], None] | None = None,
    backend: Callable[[SimulationConfig, list[list[int]], list[str], float], Any] | None = None,
) -> SimulationResult:
    """Run ``config`` split over ``shards`` shards; the result equals :func:`run_simulation`'s
    (see the module docstring for what may differ: network totals, ``virtual_s``).

    ``backend`` builds the shards from (config, peers per shard, ids, first window end):
    :func:`process_backend` (the default) runs each in a process of this machine,
    :func:`ray_backend` in a Ray actor anywhere in a cluster, :func:`thread_backend` in a
    thread of this process.
    """
    config.validate()
    check_shardable(config, shards)
    wall_start = time.perf_counter()
    topology = build_topology_for(config)
    honest = config.peers
    check_rule_fits(config, topology, honest)
    placement = place_byzantine(config, topology)
    if placement is not None:
        topology = placement.topology  # Byzantine peers run in shards like the others
    ids = [f"peer-{i:04d}" for i in range(topology.n)]
    graph = topology.union_graph()
    parts = partition_nodes(graph, shards, seed=config.seed)
    lookahead = config.network.latency

    workload = _DriverWorkload.build(config, honest) if config.mode == "train" else None
    evaluate = None if workload is None else workload.evaluator()
    collector = MetricsCollector(
        ids[:honest],
        rounds=config.rounds,
        evaluate=evaluate,
        eval_every=config.output.eval_every,
        on_round=progress,
    )
    shard_of = _shard_of(parts, ids)
    # The spectral gap (a Lanczos solve, and scipy.sparse.linalg's import) is computed
    # while the shard processes start, when this process only waits: at the end, after
    # the last window, it was part of the run's wall time.
    gap = _Aside(_gap_or_none, topology)
    runner = (backend or process_backend)(config, parts, ids, lookahead)
    try:
        with _collections(config):
            if isinstance(runner, _ProcessBackend):  # the shards route among themselves
                outcomes, start_s, waited = runner.run(collector)
                windows = outcomes[0].windows
                cross = sum(o.cross_messages for o in outcomes)
                cross_bytes = sum(o.cross_bytes for o in outcomes)
            else:
                outcomes, windows, cross, cross_bytes, start_s, waited = _route(
                    runner, collector, shard_of, lookahead
                )
    finally:
        runner.close()
    collector.finish()

    stats = _sum_stats([o.stats for o in outcomes])
    result = SimulationResult(
        config=config,
        summaries=sorted(collector.summaries, key=lambda s: s.round),
        peer_rows=collector.peer_rows,
        wall_s=time.perf_counter() - wall_start,
        virtual_s=max(o.virtual_s for o in outcomes),
        network=stats,
        spectral_gap=gap.result(),
    )
    report = ShardingReport(
        shards=shards,
        peers_per_shard=[len(p) for p in parts],
        cut_edges=cut_edges(graph, parts),
        edges=graph.number_of_edges(),
        windows=windows,
        cross_messages=cross,
        cross_bytes=cross_bytes,
        peak_rss_mib=[o.peak_rss_mib for o in outcomes],
        pids=[o.pid for o in outcomes],
        start_s=start_s,
        waited_s=waited,
        busy_s=[o.busy_s for o in outcomes],
        cpu_s=[o.cpu_s for o in outcomes],
        process_cpu_s=[o.process_cpu_s for o in outcomes],
    )
    result.extra["sharding"] = report.row(config.rounds)
    if placement is not None:
        # the placement facts are every shard's; the attack counts are summed
        summary = dict(outcomes[0].byzantine)
        for counted in ("crafted", "stale_views"):
            summary[counted] = sum(o.byzantine[counted] for o in outcomes)
        result.extra.update(summary)
    plans = {i: plan for o in outcomes for i, plan in o.dp_plans.items()}
    if plans:
        result.extra.update(dp_summary([plans[i] for i in sorted(plans)]))
    finals = {i: v for o in outcomes for i, v in o.finals.items()}
    if workload is not None and config.privacy.mia:
        ordered = [finals[i] for i in range(honest)]
        result.extra.update(workload.membership_leakage(config, ordered, topology))
    if config.mode == "consensus":
        vectors = [np.asarray(finals[i], np.float64) for i in range(honest)]
        initial = np.mean(consensus_start(config, honest), axis=0)
        result.extra.update(consensus_fit(result.summaries, topology))
        result.extra["mean_drift"] = mean_drift(vectors, initial)
    return result


class _Aside(Generic[_T]):
    """``function(*args)``, computed in a thread of its own from now on; :meth:`result`
    waits for it and returns it (or raises what it raised)."""

    def __init__(self, function: Callable[..., _T], *args: Any) -> None:
        self._outcome: tuple[bool, Any] | None = None
        self._thread = threading.Thread(
            target=self._run, args=(function, args), name="gossipfl-driver-aside", daemon=True
        )
        self._thread.start()

    def _run(self, function: Callable[..., _T], args: tuple[Any, ...]) -> None:
        try:
            self._outcome = (True, function(*args))
        except BaseException as exc:  # raised in result(), in the caller's thread
            self._outcome = (False, exc)

    def result(self) -> _T:
        self._thread.join()
        assert self._outcome is not None
        ok, value = self._outcome
        if not ok:
            raise value
        result: _T = value
        return result


def _shard_of(parts: list[list[int]], ids: list[str]) -> dict[PeerId, int]:
    """Which shard each peer is in."""
    return {ids[i]: k for k, nodes in enumerate(parts) for i in nodes}


def _sort_messages(
    messages: list[Envelope], shard_of: dict[PeerId, int], into: Any
) -> tuple[float, int, int]:
    """Append each of a window's ``messages`` to the list of the shard it goes to
    (``into[k]``: a list or a dict of lists, by shard); return the earliest arrival
    among them, and how many frames (not timer-only envelopes) and bytes cross."""
    earliest = math.inf
    frames = size = 0
    for message in messages:
        into[shard_of[message[2]]].append(message)
        if message[0] < earliest:
            earliest = message[0]
        data = message[3]
        if data is not None:
            frames += 1
            size += len(data)
    return earliest, frames, size


def _window_end(soonest: float, lookahead: float) -> float:
    """The next window's end, the same rule for every shard and for the driver: one
    latency after the earliest timer or arrival anywhere (nothing sent in the window
    can reach another shard sooner)."""
    if soonest == math.inf:
        raise RuntimeError("the sharded simulation stalled: no timer and no message")
    return soonest + lookahead


def _route(
    runner: Any, collector: MetricsCollector, shard_of: dict[PeerId, int], lookahead: float
) -> tuple[list[ShardOutcome], int, int, int, float, float]:
    """Run shards that the driver advances (threads, Ray actors): route each window's
    messages, name the next window's end, compute the metrics while the shards run.
    Returns the outcomes, windows, frames and bytes crossing, the seconds to the first
    window and the seconds waited for windows after it."""
    started = time.perf_counter()
    windows = 1
    cross = cross_bytes = 0
    waited = 0.0
    states: list[Window] = runner.start()
    start_s = time.perf_counter() - started
    while True:
        inbound: list[list[Envelope]] = [[] for _ in states]
        earliest = math.inf
        for state in states:
            first, frames, size = _sort_messages(state.messages, shard_of, inbound)
            earliest = min(earliest, first)
            cross += frames
            cross_bytes += size
        if all(state.done for state in states):
            _collect(collector, states)
            return runner.finish(inbound), windows, cross, cross_bytes, start_s, waited
        earliest = min(earliest, *(state.next_event for state in states))
        pending = runner.advance(inbound, _window_end(earliest, lookahead))
        _collect(collector, states)  # the metrics, while the shards run the window
        waiting = time.perf_counter()
        states = pending()
        waited += time.perf_counter() - waiting
        windows += 1


class _RayBackend:
    """Shards as Ray actors (one :class:`Shard` each, ``num_cpus`` = ``cpus``), advanced
    together: each window's calls go out to every actor before the driver waits."""

    def __init__(
        self,
        ray: Any,
        config: SimulationConfig,
        parts: list[list[int]],
        ids: list[str],
        first_until: float,
        cpus: float,
    ) -> None:
        self.ray = ray
        actor = ray.remote(num_cpus=cpus, max_restarts=0)(Shard)
        self.actors = [
            actor.remote(config, nodes, ids, first_until, own_process=True) for nodes in parts
        ]

    def _all(self, calls: list[Any]) -> list[Any]:
        try:
            return list(self.ray.get(calls))
        except self.ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def start(self) -> list[Window]:
        return self._all([a.start.remote() for a in self.actors])

    def advance(self, inbound: list[list[Envelope]], until: float) -> Pending:
        calls = [a.advance.remote(m, until) for a, m in zip(self.actors, inbound, strict=True)]
        return lambda: self._all(calls)

    def finish(self, inbound: list[list[Envelope]]) -> list[ShardOutcome]:
        return self._all([a.finish.remote(m) for a, m in zip(self.actors, inbound, strict=True)])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


@contextlib.contextmanager
def ray_backend(
    address: str | None = None, *, cpus_per_shard: float = 1.0
) -> Iterator[Callable[[SimulationConfig, list[list[int]], list[str], float], _RayBackend]]:
    """A ``backend`` for :func:`run_sharded` that runs each shard in a Ray actor.

    ``address`` as for ``gossipfl experiment run --ray`` (None: ``RAY_ADDRESS``, else a
    local Ray started for this run and stopped after). Every node needs gossipfl
    installed; messages between shards go through the driver.
    """
    from gossipfl.experiments.cluster import connect, disconnect

    if not cpus_per_shard > 0:
        raise ConfigError(f"CPUs per shard must be positive, got {cpus_per_shard}")
    ray, started = connect(address)
    try:

        def build(
            config: SimulationConfig, parts: list[list[int]], ids: list[str], until: float
        ) -> _RayBackend:
            return _RayBackend(ray, config, parts, ids, until, cpus_per_shard)

        yield build
    finally:
        if started:
            disconnect(ray)


def _collect(collector: MetricsCollector, states: list[Window]) -> None:
    for state in states:  # shard by shard: each peer's reports stay in order
        for report in state.reports.reports():
            collector.add(report)


def thread_backend(
    config: SimulationConfig, parts: list[list[int]], ids: list[str], first_until: float
) -> _ThreadBackend:
    """A ``backend`` for :func:`run_sharded` with each shard a thread of this process:
    no parallelism (one interpreter), no start-up cost; for tests and debugging."""
    return _ThreadBackend([Shard(config, nodes, ids, first_until) for nodes in parts])


def process_backend(
    config: SimulationConfig, parts: list[list[int]], ids: list[str], first_until: float
) -> _ProcessBackend:
    """The default ``backend`` of :func:`run_sharded`: each shard a process of this
    machine (use as many shards as cores)."""
    return _ProcessBackend(config, parts, ids, first_until)


def _collections(config: SimulationConfig) -> Any:
    return rare_collections(gc_threshold_for(config))


@dataclass
class _DriverWorkload:
    """The honest peers' data, shards and learner factory, built once in the driver,
    with a fresh peer 0's learner as the probe that scores models: every round's
    evaluation and, at the end, the membership-inference study. The unsharded run uses
    its own peer 0's learner and restores its model after each use, so a fresh one
    scores the same."""

    dataset: Any
    make: Any
    parts: list[Any]
    probe: Any

    @classmethod
    def build(cls, config: SimulationConfig, honest: int) -> _DriverWorkload:
        dataset, make, parts = workload_parts(config, honest)
        return cls(dataset, make, parts, make(dataset, parts[0], learner_seed(config, 0)))

    def evaluator(self) -> Evaluate:
        """The unsharded run's evaluation."""
        return evaluator_on_test_split(self.probe, self.dataset)

    def membership_leakage(
        self, config: SimulationConfig, finals: list[np.ndarray], topology: Topology
    ) -> dict[str, float]:
        """The unsharded run's study, on the final models the shards handed back."""
        return membership_leakage(
            config, finals, self.probe, self.dataset, self.parts, topology, self.make
        )


def _sum_stats(parts: list[NetworkStats]) -> NetworkStats:
    total = NetworkStats()
    for s in parts:
        total.frames_sent += s.frames_sent
        total.frames_delivered += s.frames_delivered
        total.frames_lost += s.frames_lost
        total.frames_duplicated += s.frames_duplicated
        total.bytes_sent += s.bytes_sent
        total.bytes_by_peer.update(s.bytes_by_peer)
    return total
