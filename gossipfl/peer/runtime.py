"""The peer runtime: drives a sans-I/O protocol core over a transport.

A :class:`Peer` is the one object an application holds. It owns a nursery with a few
long-lived tasks and runs the protocol core in :meth:`Peer.run`::

    receive loop   transport events -> decode -> handshake check -> core events
    dial loop      (re)connects to neighbours that are not connected, backing off with jitter
    heartbeats     tells neighbours we are alive; marks silent neighbours down
    senders        one short-lived task per neighbour with queued frames (ordered, bounded)
    run()          core actions -> train / send / timers / merge / reports / checkpoints

Only :meth:`run` touches the protocol core, so the core needs no locks. Everything a remote
peer sends passes through :func:`gossipfl.wire.decode` and the handshake check before it
can reach a merge; any failure is logged with the peer id and counted, never raised.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import trio

from gossipfl import wire
from gossipfl._mockclock import MockClock
from gossipfl.errors import ConfigError, GossipflError
from gossipfl.merge import MergeContext, MergeRule, NonFiniteInputError, _compiled, make_rule
from gossipfl.model import ModelAdapter, NumpyAdapter
from gossipfl.peer.checkpoint import CheckpointError, CheckpointStore
from gossipfl.peer.config import PeerConfig
from gossipfl.peer.outbox import Frames, Outboxes
from gossipfl.peer.reports import PeerCounters, RoundReport, Vector
from gossipfl.peer.stacking import shares_buffer, stack_for_merge
from gossipfl.peer.timers import TimerWheel, timer_wheel
from gossipfl.peerlog import PeerWarnings
from gossipfl.protocol import (
    Action,
    AsyncGossip,
    DeadlinePassed,
    Event,
    Finished,
    LocalStepDone,
    Merge,
    MergeDone,
    ModelReceived,
    Neighbourhood,
    PeerDown,
    PeerId,
    PeerUp,
    RoundDone,
    Send,
    SetTimer,
    SyncGossip,
    Train,
)
from gossipfl.transport import (
    Connected,
    Disconnected,
    Received,
    Transport,
    TransportError,
    TransportEvent,
)
from gossipfl.wire._numeric import all_finite

if TYPE_CHECKING:
    from gossipfl.peer.secure import SecureExchange

logger = logging.getLogger(__name__)

_YIELD_EVERY = 64
"""Queued events handled back to back before the loops yield to other tasks."""

TrainFn = Callable[[int], Mapping[str, float] | None]
"""Local training for one round: called with the round number, trains the model in place,
optionally returns metrics such as ``{"loss": 0.3}``."""
OutgoingHook = Callable[[PeerId, int, Vector], Vector | None]
"""Rewrites the model sent to a peer in a round (``None``: send nothing). Used to make a
peer Byzantine in experiments; honest peers have none."""
RoundHook = Callable[[RoundReport], None]


EXTREME = float(np.sqrt(np.finfo(np.float32).max))
"""The largest magnitude (about 1.8e19) a merge takes from a neighbour's model: the square
of anything larger overflows float32. No honest model comes near it."""


# The message kinds _on_message tells apart, as tuples made once: ``A | B`` in an
# isinstance call builds a union object every time (~0.1 µs each, per frame).
_SECURE_CONTROL = (wire.SecureKey, wire.SecureGroup, wire.SecureFix)
_MODELS = (wire.Update, wire.SecureShare)


class _Tick:
    """Queued when the run's :class:`~gossipfl.peer.timers.TimerWheel` says one of our
    timers may be due (never reaches the protocol core)."""


_TICK = _Tick()


class _InlineDrive:
    """The state of one :meth:`Peer.run` or :meth:`Peer.serve` of a peer that trains
    inline (see :meth:`Peer._pump`)."""

    __slots__ = ("busy", "done", "failure", "forever", "last", "total")

    def __init__(self, *, total: int, last: int, forever: bool) -> None:
        self.total = total
        self.last = last  # the last completed round
        self.forever = forever
        self.busy = False  # a pump is running (events posted meanwhile join its queue)
        self.done = trio.Event()
        self.failure: Exception | None = None


@dataclass(frozen=True)
class _Dropped:
    """A neighbour's model a merge left out (``peer`` None: the merge as a whole)."""

    peer: PeerId | None
    why: str


def _peak(vector: Vector) -> float:
    """The largest magnitude in ``vector`` (NaN if it holds one); two passes, no copy."""
    if vector.size == 0:
        return 0.0
    # the reductions .min() and .max() call, without their Python wrappers (every merge)
    low, high = float(np.minimum.reduce(vector)), float(np.maximum.reduce(vector))
    if math.isnan(low) or math.isnan(high):
        return math.nan
    return max(-low, high)


@dataclass(frozen=True)
class RunSummary:
    """What :meth:`Peer.run` returns."""

    first_round: int
    last_round: int
    """The last completed round (``first_round - 1`` if none ran)."""
    counters: PeerCounters


def _as_step_time(value: float | Callable[[int], float] | None) -> Callable[[int], float] | None:
    """``compute_time`` as a function of the round (a number: the same every round)."""
    if value is None or callable(value):
        return value
    seconds = float(value)
    if not 0 <= seconds < math.inf:
        raise ConfigError(f"compute_time must be >= 0 seconds, got {value!r}")

    def constant(_round: int) -> float:
        return seconds

    return constant


def _virtual_clock() -> bool:
    """Whether this trio run keeps virtual time (a ``MockClock``: simulations, tests)."""
    return isinstance(trio.lowlevel.current_clock(), MockClock)


def as_adapter(model: object) -> ModelAdapter:
    """Accept a :class:`~gossipfl.model.ModelAdapter`, a dict of numpy arrays, or a torch
    ``nn.Module``."""
    if hasattr(model, "get_flat") and hasattr(model, "set_flat"):
        return model  # type: ignore[return-value]
    if isinstance(model, Mapping):
        return NumpyAdapter(dict(model))
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - depends on the install
        nn = None  # type: ignore[assignment]
    if nn is not None and isinstance(model, nn.Module):
        from gossipfl.model import TorchAdapter

        return TorchAdapter(model)
    raise ConfigError(
        f"cannot use a {type(model).__name__} as a model: pass a torch nn.Module, "
        "a dict of numpy arrays, or a gossipfl.model.ModelAdapter"
    )


class Peer:
    """One participant in decentralized training.

    Use it as an async context manager, then run rounds::

        async with Peer(transport=t, model=module, train=train_one_round,
                        neighbourhood=hood, rule="cs-plus") as peer:
            summary = await peer.run(rounds=100)

    Args:
        transport: how frames travel (:class:`~gossipfl.transport.MemoryTransport`, libp2p).
        model: the model whose weights are gossiped (see :func:`as_adapter`).
        neighbourhood: who we listen to and talk to, round by round.
        train: local training for a round; ``None`` gossips without training
            (consensus only).
        rule: a merge rule name from :data:`gossipfl.merge.RULES` or a rule instance.
        config: network behaviour (:class:`PeerConfig`).
        on_round: called after every completed round with a :class:`RoundReport`.
        checkpoints: where to keep checkpoints; a peer restarts from the latest one.
        outgoing: see :data:`OutgoingHook`.
        compute_time: how many seconds the local step of a round takes, on top of the
            training itself: a number, or a function of the round. The runtime sleeps
            that long on trio's clock after training: virtual seconds in a simulation,
            real ones to play a slower device in a testbed.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        model: object,
        neighbourhood: Neighbourhood,
        train: TrainFn | None = None,
        rule: MergeRule | str = "mean",
        config: PeerConfig | None = None,
        on_round: RoundHook | None = None,
        checkpoints: CheckpointStore | None = None,
        outgoing: OutgoingHook | None = None,
        compute_time: float | Callable[[int], float] | None = None,
        name: str | None = None,
    ) -> None:
        self.config = config or PeerConfig()
        self.config.validate()
        self.transport = transport
        self.id: PeerId = transport.local_id
        self.name = name or self.id
        self.adapter = as_adapter(model)
        self.neighbourhood = neighbourhood
        self.rule = make_rule(rule) if isinstance(rule, str) else rule
        self.counters = PeerCounters()
        self._warnings = PeerWarnings()
        self.round = 0
        self._train = train
        self._on_round = on_round
        self._checkpoints = checkpoints
        self._outgoing = outgoing
        self._compute_time = _as_step_time(compute_time)
        self._rng = random.Random(f"{self.config.seed}:{self.id}")
        self._num_params = int(self.adapter.get_flat().size)
        self._hello = wire.Hello(
            network_id=self.config.network_id,
            layout=self.adapter.layout,
            codecs=wire.DEFAULT_CODECS.names,
            name=self.name,
            job=self.config.job,
        )
        # Nothing longer than our own model is any use to us: decode refuses it early.
        self._limits = wire.Limits.for_params(self._num_params, max_frame=self.config.max_frame)
        self._hello_frame = wire.encode(self._hello)
        self._core: SyncGossip | AsyncGossip | None = None
        self._running = False
        self._events_send, self._events_receive = trio.open_memory_channel[Event](math.inf)
        # With inline training: the events not handled yet, and the run()/serve() under way.
        self._inbox: deque[Event | _Tick] = deque()
        self._inline: _InlineDrive | None = None
        self._queued_models = 0
        self._decoders: dict[PeerId, wire.StreamDecoder] = {}
        # An in-process network hands the receivers of one frame one bytes object: they
        # decode it once between them (gossipfl.wire.memo). None over real transports.
        memo = getattr(transport, "decode_memo", None)
        self._decode_memo: wire.DecodeMemo | None = (
            memo if isinstance(memo, wire.DecodeMemo) else None
        )
        self._connected: set[PeerId] = set()
        self._verified: set[PeerId] = set()
        self._reported_down: set[PeerId] = set()
        self._last_heard: dict[PeerId, float] = {}
        self._newest: dict[PeerId, int] = {}  # newest round received per connection
        self._connectivity = trio.Event()
        self._changed = trio.Event()  # set (and replaced) when verified peers or outboxes change
        self._outbox = Outboxes(
            transport,
            hello=self._hello_frame,
            size=self.config.outbox_size,
            counters=self.counters,
            on_failure=self._mark_down,
            on_idle=self._notify,
            name=self.name,
        )
        self._unyielded = 0
        self._threads = True  # decided in __aenter__, where the run's clock is known
        # Merge in a worker thread too (decided in __aenter__): large models, and any model
        # that may take the compiled kernels, whose first use compiles one (0.3-4 s with a
        # cold cache): that must not stall the event loop.
        self._merge_in_threads = True
        self._now: Callable[[], float] = trio.current_time  # the run's clock, once known
        self._wheel: TimerWheel | None = None  # with inline training: the run's timers
        self._deadline: tuple[int, float] | None = None  # (round, trio time) of the wait
        self._step_done: tuple[float, LocalStepDone] | None = None  # simulated step end
        self._encoded: tuple[Vector, int, bool, dict[str, Frames]] | None = None
        # The payload digest of each codec's encoding of the model version last sent: a
        # version is hashed once, however many rounds, replies and neighbours it goes to.
        self._digests: tuple[Vector, dict[str, bytes]] | None = None
        self._codecs_of: dict[PeerId, tuple[str, ...]] = {}  # what each neighbour decodes
        # Peers whose hello was refused (either way): another network, job or model does
        # not change in a second, so they are not redialled before this trio time.
        self._incompatible_until: dict[PeerId, float] = {}
        self._incompatible: set[PeerId] = set()  # until a hello of theirs is accepted
        self._slow: frozenset[PeerId] = frozenset()
        self._anchor_time: float | None = None  # see SyncGossip(anchor_time=...)
        self._resumed_pace: float | None = None  # our round duration before a restart
        self._secure: SecureExchange | None = None
        if self.config.secure_averaging:
            self._secure = self._secure_exchange()
        self._save_lock = trio.Lock()
        self._saved_round = -1
        self._nursery: trio.Nursery | None = None
        self._deliver_to: Callable[[Callable[[TransportEvent], None] | None], None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._final_vector: Vector | None = None

    def _secure_exchange(self) -> SecureExchange:
        """Secure averaging's state, once the rule and model are known to allow it."""
        from gossipfl.peer.secure import SecureExchange
        from gossipfl.privacy.secure_averaging import check_secure_averaging

        check_secure_averaging(
            rule=self.rule.name,
            protocol=self.config.protocol,
            num_params=self._num_params,
            max_frame=self.config.max_frame,
            static=bool(getattr(self.neighbourhood, "static", False)),
        )
        return SecureExchange(
            self.id,
            self._num_params,
            signatures=self.transport.signatures,
            send=self._outbox.send,
            counters=self.counters,
            name=self.name,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Peer:
        self._threads = (
            self.config.threads if self.config.threads is not None else not _virtual_clock()
        )
        self._now = trio.lowlevel.current_clock().current_time  # trio.current_time, direct
        self._merge_in_threads = self._threads and (
            self._num_params > self.config.thread_threshold
            or self._num_params >= _compiled.AUTO_MIN_PARAMS
            or _compiled.mode() == "numba"
        )
        if not self._threads:
            self._wheel = timer_wheel()
        self._stack = contextlib.AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._outbox.attach(self._nursery)
        if not self._threads:
            # Frames straight from the in-memory network, in its task: no task switch per
            # frame (the receive loop still takes the connection events).
            self._deliver_to = getattr(self.transport, "deliver_to", None)
            if self._deliver_to is not None:
                self._deliver_to(self._on_delivered)
        self._nursery.start_soon(self._receive_loop)
        self._nursery.start_soon(self._dial_loop)
        if self.config.heartbeat_interval is not None:
            self._nursery.start_soon(self._heartbeat_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        assert self._stack is not None
        if self._deliver_to is not None:
            self._deliver_to(None)  # what arrives from now on stays queued, unread
            self._deliver_to = None
        self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(exc_type, exc, tb)

    @property
    def vector(self) -> Vector:
        """A copy of the current model as one flat float32 vector."""
        return self.adapter.get_flat()

    async def wait_for_neighbours(
        self, timeout: float, *, round: int | None = None, minimum: int | None = None
    ) -> set[PeerId]:
        """Wait until the neighbours of ``round`` (default: the current one) are connected
        and their handshakes accepted, or ``timeout`` seconds pass; return those still
        missing. ``minimum`` settles for that many instead of all.

        Call it before :meth:`run` when peers start at different times: a peer that starts
        training before anyone can hear it gossips with nobody until its dial loop's backoff
        brings the others in.
        """
        wanted = self.neighbours(round) - {self.id}
        need = len(wanted) if minimum is None else min(minimum, len(wanted))
        with trio.move_on_after(timeout):
            while len(wanted & self._verified) < need:
                await self._changed.wait()
        return wanted - self._verified

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _drain(self, timeout: float) -> None:
        """Give queued messages (our last round's model above all) up to ``timeout``
        seconds to leave: a neighbour still finishing that round needs it."""
        with trio.move_on_after(timeout):
            while self._outbox.busy:
                await self._changed.wait()

    def neighbours(self, round: int | None = None) -> set[PeerId]:
        """In- and out-neighbours of ``round`` (default: the current round)."""
        r = self.round if round is None else round
        return set(self.neighbourhood.receive_from(r)) | set(self.neighbourhood.send_to(r))

    def set_neighbourhood(self, neighbourhood: Neighbourhood) -> None:
        """Swap the neighbourhood (membership changed); takes effect at once."""
        self.neighbourhood = neighbourhood
        if self._core is not None:
            self._core.neighbourhood = neighbourhood
        if self._secure is not None:
            self._secure.regroup(neighbourhood.receive_from(self.round))
        self._connectivity.set()

    # ------------------------------------------------------------------------ run

    async def run(
        self, rounds: int, *, start_round: int | None = None, away_since: float | None = None
    ) -> RunSummary:
        """Train and gossip until round ``rounds`` (exclusive) is reached.

        A peer with a checkpoint resumes after its last completed round; otherwise it starts
        at ``start_round`` (default: where its previous run stopped, 0 at first). Returns when
        this peer is done; it keeps answering its neighbours until the ``async with`` exits.

        ``away_since`` (trio's clock) says when a rejoining peer stopped: its neighbours can
        have got as far as that time allows, and it may skip that far to catch up (without
        it, skips are bounded by the time since this call). A peer resuming from a
        checkpoint knows it from the checkpoint's age.
        """
        if self._nursery is None:
            raise GossipflError("use `async with Peer(...) as peer:` before calling run()")
        if self._running:
            raise GossipflError("run() is already running on this peer")
        if start_round is not None:
            self.round = start_round
        self._anchor_time = away_since
        start = self._resume()
        degree = len(self.neighbourhood.receive_from(start))
        if self.config.protocol != "async":
            self.rule.check(degree)
        self.round = start
        cfg = self.config
        if cfg.protocol == "async":
            self._core = AsyncGossip(
                neighbourhood=self.neighbourhood,
                rounds=rounds,
                initial=self.adapter.get_flat(),
                start_round=start,
                fanout=cfg.fanout,
                max_staleness=cfg.max_staleness,
                seed=self._rng.randrange(2**32),
            )
        else:
            self._core = SyncGossip(
                neighbourhood=self.neighbourhood,
                rounds=rounds,
                deadline=cfg.deadline,
                start_round=start,
                max_ahead=cfg.max_ahead,
                catch_up_lag=cfg.catch_up_lag,
                tolerance=self.rule.byzantine_tolerance,
                # A share is masked for its round: an old one would not cancel.
                max_reuse=0 if self._secure is not None else cfg.max_reuse,
                clock=self._now,
                wait=cfg.wait,
                speedup=cfg.catch_up_speedup,
                anchor_time=self._anchor_time,
                pace=self._resumed_pace,
                start_grace=cfg.start_grace,
            )
        self._connectivity.set()  # let the dial loop look at the new neighbourhood
        self._running = True
        try:
            last = await self._drive(self._core.start(), rounds, start)
            await self._drain(cfg.deadline)
        finally:
            self._deadline = self._step_done = None
            self._running = False
        if self._checkpoints is not None and last >= start and self._final_vector is not None:
            # Background saves may be skipped or cancelled at shutdown; the last one is not.
            await self._save(self._checkpoints, last, self._final_vector)
        return RunSummary(start, last, self.counters)

    async def serve(self) -> None:
        """After :meth:`run`: keep answering neighbours until cancelled.

        A finished peer stays useful to slower ones: in asynchronous gossip it still
        answers their pulls with its final model. Sync peers just absorb late messages.
        """
        if self._core is None or self._running:
            raise GossipflError("serve() follows a completed run()")
        self._running = True
        try:
            await self._drive([], self._core.rounds, self.round, forever=True)
        finally:
            self._running = False

    async def _drive(
        self, actions: list[Action], total: int, start: int, *, forever: bool = False
    ) -> int:
        """The event loop around the core; returns the last completed round.

        The round deadline is not a task: the loop waits for the next event with the
        deadline as its timeout. Inline training (simulations) also runs right here, so a
        simulated round spawns no tasks at all.
        """
        assert self._core is not None
        if self._wheel is not None:
            return await self._drive_inline(actions, total, start, forever=forever)
        last = start - 1
        pending: deque[Action] = deque(actions)
        while True:
            while pending:
                action = pending.popleft()
                if isinstance(action, Finished):
                    if not forever:
                        return last
                    continue
                if isinstance(action, RoundDone):
                    last = action.round
                if isinstance(action, Train) and not self._threads:
                    pending.extend(self._train_inline(action.round))
                    continue
                pending.extend(self._execute(action, total))
            event = await self._next_event()
            if isinstance(event, ModelReceived):
                self._queued_models -= 1
            pending.extend(self._core.handle(event))

    async def _drive_inline(
        self, actions: list[Action], total: int, start: int, *, forever: bool
    ) -> int:
        """:meth:`_drive` for a peer that trains inline (its timers on the run's wheel):
        each event is handled when it is posted, by :meth:`_pump`, in the task that
        posts it (the network's delivery, the timer wheel); this task only waits for
        the end (or a failure, raised here as :meth:`_drive` would have).

        Why: with a task reading a queue, every model that arrived and every timer woke
        that task, and a large simulation spent a good part of its CPU switching tasks
        (trio's scheduler, channels). The peer's events are handled in the same order,
        at the same virtual times: the order in which *different* peers handle the
        events of one instant was never fixed (trio shuffles its run queue).
        """
        drive = _InlineDrive(total=total, last=start - 1, forever=forever)
        self._inline = drive
        try:
            self._pump(actions)
            await drive.done.wait()
        finally:
            if self._inline is drive:
                self._inline = None
        if drive.failure is not None:
            raise drive.failure
        return drive.last

    def _pump(self, actions: list[Action] | None = None) -> None:
        """Carry out ``actions``, then handle the queued events one by one, each with the
        actions it yields, as :meth:`_drive` does; until the queue is empty or the run
        is finished. Does nothing outside a run (events wait in the queue for the next)
        or inside a pump (this event waits for the pump under way: no re-entry)."""
        drive = self._inline
        if drive is None or drive.busy:
            return
        assert self._core is not None
        drive.busy = True
        try:
            pending: deque[Action] = deque(actions or ())
            while True:
                while pending:
                    action = pending.popleft()
                    if type(action) is Send:  # half of all actions: straight to the sender
                        self._send_model(action)
                        continue
                    if isinstance(action, Finished):
                        if not drive.forever:
                            self._inline = None  # later events wait, as in a queue
                            drive.done.set()
                            return
                        continue
                    if isinstance(action, RoundDone):
                        drive.last = action.round
                    if isinstance(action, Train):
                        pending.extend(self._train_inline(action.round))
                        continue
                    pending.extend(self._execute(action, drive.total))
                event = self._next_queued()
                if event is None:
                    return
                pending.extend(self._core.handle(event))
        except Exception as exc:  # raised by run() or serve(), in their task
            if self._inline is drive:
                self._inline = None
            drive.failure = exc
            drive.done.set()
        finally:
            drive.busy = False

    def _next_queued(self) -> Event | None:
        """The next event of the inline queue (a tick: the timer it announces, if still
        due); None when it is empty."""
        inbox = self._inbox
        while inbox:
            event = inbox.popleft()
            if isinstance(event, _Tick):
                due = self._due_timer()
                if due is None:
                    continue
                return due
            if isinstance(event, ModelReceived):
                self._queued_models -= 1
            return event
        return None

    async def _next_event(self) -> Event:
        """The next event (worker-thread mode: with inline training, :meth:`_pump` takes
        them): a queued one, the end of a local step, or the deadline passing, whichever
        comes first."""
        try:
            # Usually something is already queued: take it without arming a timeout, and
            # without yielding each time; yield every so often so other tasks still get
            # their turn.
            event = self._events_receive.receive_nowait()
        except trio.WouldBlock:
            return await self._wait_with_timers()
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        return event

    def _due_timer(self) -> Event | None:
        """The earliest of our timers that is due, cleared (None: none is)."""
        now = self._now()
        step, deadline = self._step_done, self._deadline
        if step is not None and step[0] <= now and (deadline is None or step[0] <= deadline[1]):
            self._step_done = None
            return step[1]
        if deadline is not None and deadline[1] <= now:
            self._deadline = None
            return DeadlinePassed(deadline[0])
        return None

    def _tick(self) -> None:
        """The wheel says a timer of ours may be due: if one is, queue a tick and handle
        the queue (:meth:`_pump`), in the wheel's task. A timer cleared or moved since (a
        round's deadline, mostly: the models came first) has nothing to say; one moved
        earlier or later has its own tick."""
        now = self._now()
        step, deadline = self._step_done, self._deadline
        if (step is not None and step[0] <= now) or (deadline is not None and deadline[1] <= now):
            self._inbox.append(_TICK)
            self._pump()

    async def _wait_with_timers(self) -> Event:
        """Nothing is queued: wait for an event, or until a timer is due."""
        timers: list[tuple[float, Event]] = []
        if self._step_done is not None:
            timers.append(self._step_done)
        if self._deadline is not None:
            timers.append((self._deadline[1], DeadlinePassed(self._deadline[0])))
        if not timers:
            return await self._events_receive.receive()
        at, due = min(timers, key=lambda t: t[0])
        with trio.move_on_at(at) as scope:
            received = await self._events_receive.receive()
        if not scope.cancelled_caught:
            return received
        if isinstance(due, LocalStepDone):
            self._step_done = None
        else:
            self._deadline = None
        return due

    def _resume(self) -> int:
        if self._checkpoints is None:
            return self.round
        ckpt = self._checkpoints.load(
            self.adapter.layout.fingerprint, peer=self.id, network=self.config.network_id
        )
        if ckpt is None:
            return self.round
        if ckpt.vector.size != self._num_params:
            raise CheckpointError(
                f"checkpoint {self._checkpoints.path} holds {ckpt.vector.size} parameters and "
                f"the model has {self._num_params}; remove it or point the peer at another "
                "directory"
            )
        self.adapter.set_flat(ckpt.vector)
        logger.info("%s resumes from its checkpoint of round %d", self.name, ckpt.round)
        if ckpt.saved_at is not None and not _virtual_clock():
            # Where we would be now had we never stopped: the neighbours can have got as
            # far as the time since the checkpoint allows, and no further.
            downtime = max(0.0, time.time() - ckpt.saved_at)
            self._anchor_time = trio.current_time() - downtime
            self._resumed_pace = ckpt.pace
        return ckpt.round + 1

    def _post(self, event: Event) -> None:
        if self._wheel is not None:
            self._inbox.append(event)
            self._pump()
        else:
            self._events_send.send_nowait(event)

    # -------------------------------------------------------------------- actions

    def _execute(self, action: Action, total_rounds: int) -> list[Action]:
        """Carry out one action; return follow-up actions the core produced at once."""
        assert self._core is not None
        assert self._nursery is not None
        if isinstance(action, Send):
            self._send_model(action)
        elif isinstance(action, Train):
            self._nursery.start_soon(self._train_round, action.round)
        elif isinstance(action, SetTimer):
            at = self._now() + action.delay
            self._deadline = (action.round, at)
            if self._wheel is not None:
                self._wheel.add(at, self._tick)
        elif isinstance(action, Merge):
            self._deadline = None
            if self._secure is not None:
                self._nursery.start_soon(self._secure_merge, action)
            elif self._merge_in_threads:
                self._nursery.start_soon(self._merge_in_thread, action, total_rounds)
            else:
                merged = self._merge(action, total_rounds)
                return self._core.handle(MergeDone(action.round, merged))
        elif isinstance(action, RoundDone):
            self._round_done(action)
        return []

    async def _train_round(self, round: int) -> None:
        """Local training in a worker thread, so the event loop keeps serving the network."""
        metrics: Mapping[str, float] | None = None
        if self._train is not None:
            metrics = await trio.to_thread.run_sync(self._train, round)
        if self._compute_time is not None:
            await trio.sleep(self._compute_time(round))
        self._post(LocalStepDone(round, self._trained_vector(round), dict(metrics or {})))

    def _trained_vector(self, round: int) -> Vector:
        """Our model after local training, refused if training blew it up: otherwise the
        first sign would be a wire error when we try to send it."""
        vector = self.adapter.get_flat()
        if not all_finite(vector):  # the check every encode and decode makes
            raise self._diverged(round)
        return vector

    def _train_inline(self, round: int) -> list[Action]:
        """Train now, in the event loop (simulations). With a simulated compute time the
        step is reported when that time has passed, the loop serving the network meanwhile."""
        metrics = self._train(round) if self._train is not None else None
        done = LocalStepDone(round, self._trained_vector(round), dict(metrics or {}))
        delay = self._compute_time(round) if self._compute_time is not None else 0.0
        if delay > 0:
            at = self._now() + delay
            self._step_done = (at, done)
            if self._wheel is not None:
                self._wheel.add(at, self._tick)
            return []
        assert self._core is not None
        return self._core.handle(done)

    async def _secure_merge(self, action: Merge) -> None:
        """The masked merge (:meth:`SecureExchange.merge`): it may wait for corrections."""
        assert self._secure is not None
        merged = await self._secure.merge(action, self.config.deadline)
        self.adapter.set_flat(merged)
        self._post(MergeDone(action.round, merged))

    def _merge(self, action: Merge, total_rounds: int) -> Vector:
        """Merge a round's models (in the event loop); see :meth:`_merged`."""
        merged, dropped = self._merged(action, total_rounds)
        self._blame(action.round, dropped)
        return merged

    async def _merge_in_thread(self, action: Merge, total_rounds: int) -> None:
        merged, dropped = await trio.to_thread.run_sync(self._merged, action, total_rounds)
        self._blame(action.round, dropped)  # back in the event loop: the transport is ours
        self._post(MergeDone(action.round, merged))

    def _merged(self, action: Merge, total_rounds: int) -> tuple[Vector, list[_Dropped]]:
        """The merged model, set as ours, and the neighbours' models left out of it.

        A neighbour's model is left out if it holds NaN or inf (the wire refuses those,
        so that is a last line of defence) or values beyond :data:`EXTREME` that would
        reach our model: past it, squaring a parameter overflows float32, so the next
        local step would turn the model to inf and seem to blame our own training. The
        rest are merged again. A merge that overflows with no such culprit (a rule's own
        arithmetic) keeps our model for the round. None of this raises: what neighbours
        send must never stop a peer. Only our own model holding NaN or inf is an error
        (its local training diverged). Runs in a worker thread for large models, so it
        reports (:meth:`_blame`) nothing itself.
        """
        context = MergeContext(round=action.round, total_rounds=total_rounds)
        peers, vectors, weights = list(action.peers), list(action.vectors), list(action.weights)
        dropped: list[_Dropped] = []
        own_peak: float | None = None
        while True:
            if not vectors:
                merged = np.array(action.own, dtype=np.float32, copy=True)
                if not np.isfinite(merged).all():
                    raise self._diverged(action.round)
                break
            bad: dict[int, str] = {}
            try:
                merged = self.rule.merge(
                    action.own,
                    stack_for_merge(vectors),
                    np.asarray(weights, dtype=np.float32),
                    context=context,
                )
                if shares_buffer(merged):  # pragma: no cover - no rule returns a view
                    merged = merged.copy()
            except NonFiniteInputError as exc:
                if exc.own:
                    raise self._diverged(action.round) from None
                bad = dict.fromkeys(exc.neighbours, "NaN or inf")
            else:
                peak = _peak(merged)
                if peak <= EXTREME:
                    break
                if own_peak is None:
                    own_peak = _peak(np.asarray(action.own, dtype=np.float32))
                # Our own model may be this large already (then its training is to blame,
                # not the neighbours): only what exceeds both is theirs.
                bound = max(EXTREME, own_peak)
                if peak <= bound:
                    break
                for i, vector in enumerate(vectors):
                    theirs = _peak(np.asarray(vector, dtype=np.float32))
                    if not theirs <= bound:
                        bad[i] = (
                            f"values up to {theirs:.3g}, beyond the {EXTREME:.2g} that no "
                            "honest model reaches"
                        )
                if not bad:
                    if math.isfinite(peak):
                        break  # rounding, or the rule's own extrapolation: nobody to blame
                    dropped.append(_Dropped(None, f"values up to {peak:.3g}"))
                    merged = np.array(action.own, dtype=np.float32, copy=True)
                    break
            dropped += [_Dropped(peers[i], why) for i, why in sorted(bad.items())]
            keep = [i for i in range(len(vectors)) if i not in bad]
            peers = [peers[i] for i in keep]
            vectors = [vectors[i] for i in keep]
            weights = [weights[i] for i in keep]
        self.adapter.set_flat(merged)
        return merged, dropped

    def _blame(self, round: int, dropped: list[_Dropped]) -> None:
        """Say whose models a merge left out (rate-limited per peer), count them as bad
        frames and tell the transport's peer score."""
        for item in dropped:
            if item.peer is None:
                self._warnings.warn(
                    logger,
                    "merge",
                    "%s: round %d: the %r merge overflowed (%s) though no neighbour's model "
                    "was extreme on its own; kept our own model for this round",
                    self.name,
                    round,
                    self.rule.name,
                    item.why,
                )
                continue
            self.counters.bad_frames += 1
            self._warnings.warn(
                logger,
                item.peer,
                "%s: round %d: left the model from %s out of the merge: it holds %s",
                self.name,
                round,
                item.peer,
                item.why,
            )
            self._penalize(item.peer, "bad_frame", f"a model holding {item.why}")

    def _diverged(self, round: int) -> GossipflError:
        """Our own model holds NaN or inf: its local training diverged (:meth:`_merged`
        leaves out the neighbours' models that would make it do so)."""
        return GossipflError(
            f"{self.name}: the local model holds NaN or inf after round {round}'s training "
            "(local training diverged; try a smaller learning rate)"
        )

    def _send_model(self, action: Send) -> None:
        vector = action.vector
        if self._outgoing is not None:
            tampered = self._outgoing(action.peer, action.round, action.vector)
            if tampered is None:
                return
            vector = tampered
        if self._secure is not None:
            # A share is masked for its receiver: nothing to share between neighbours.
            shared = self._secure.share(action.peer, action.round, vector)
            if shared is not None:
                self._outbox.send(action.peer, shared)
            return
        # The same model goes to every neighbour of a round: encode it once per codec. The
        # cache holds the vector itself (compared by identity), so a recycled id() cannot
        # alias.
        cached = self._encoded
        if not (
            cached is not None
            and cached[0] is vector
            and cached[1] == action.round
            and cached[2] == action.reply
        ):
            cached = self._encoded = (vector, action.round, action.reply, {})
        codec = self._codec_for(action.peer)
        frames = cached[3].get(codec)
        if frames is None:
            # The payload digest of each codec's encoding of this model version is
            # computed (with the finiteness check, in one pass) by its first encoding,
            # and kept for later ones. Keyed by the vector's identity, like the frame
            # cache: models are never changed in place.
            known = self._digests
            if known is None or known[0] is not vector:
                known = self._digests = (vector, {})
            update = wire.Update(
                sender=self.id,
                round=action.round,
                vector=vector,
                codec=codec,
                reply=action.reply,
                digest=known[1].get(codec),
            )
            # One frame, or (past max_frame) a head and chunks the receiver reassembles.
            frames, known[1][codec] = wire.encode_update(update, max_frame=self.config.max_frame)
            cached[3][codec] = frames
        self._outbox.send(action.peer, frames)

    def _codec_for(self, peer: PeerId) -> str:
        """Our configured codec if ``peer`` decodes it (every gossipfl peer does), else the
        first codec of its Hello that we can encode (docs/protocol.md, section 5.1)."""
        theirs = self._codecs_of.get(peer)
        if theirs is None or self.config.codec in theirs:
            return self.config.codec
        return next((c for c in theirs if c in wire.DEFAULT_CODECS), self.config.codec)

    def _round_done(self, action: RoundDone) -> None:
        self.round = action.round + 1
        if self._secure is not None:
            self._secure.round = self.round
        self._final_vector = action.vector
        self._log_pacing(action)
        if self._on_round is not None:
            self._on_round(
                RoundReport(
                    peer=self.id,
                    round=action.round,
                    vector=action.vector,
                    stats=action.stats,
                    train_metrics=action.metrics,
                    bytes_sent=self.counters.bytes_sent,
                    time=self._now(),
                )
            )
        store = self._checkpoints
        if store is not None and (action.round + 1) % self.config.checkpoint_every == 0:
            assert self._nursery is not None
            if not self._save_lock.locked():  # a save in flight: skip this one, not queue it
                self._nursery.start_soon(self._save, store, action.round, action.vector)

    def _log_pacing(self, action: RoundDone) -> None:
        """Say when a neighbour stops (or starts again) being waited for, and who claims
        rounds that the elapsed time makes implausible: the traces an operator needs to
        see that an insider is stalling or lying."""
        core = self._core
        if not isinstance(core, SyncGossip):
            return
        if not (action.stats.slow or self._slow or action.stats.implausible):
            return  # the usual round: nobody slow, before or now, and no claim to doubt
        slow = frozenset(action.stats.slow)
        for peer in sorted(slow - self._slow):
            self.counters.slow_neighbours += 1
            self._warnings.warn(
                logger,
                peer,
                "%s: %s keeps its neighbours waiting (its models arrive %.2f s after ours, "
                "the others' far sooner); not waiting for it any more",
                self.name,
                peer,
                core.typical_delay(peer) or 0.0,
            )
        for peer in sorted(self._slow - slow):
            logger.info("%s: %s is in time again; waiting for it again", self.name, peer)
        self._slow = slow
        for peer in action.stats.implausible:
            self.counters.implausible_claims += 1
            self._warnings.warn(
                logger,
                peer,
                "%s: %s claims to be at round %s, further ahead than the time elapsed allows; "
                "not believed",
                self.name,
                peer,
                core.claimed_round(peer),
            )

    async def _save(self, store: CheckpointStore, round: int, vector: Vector) -> None:
        """Saves are serialized and never go back in rounds: a slow background save of an
        early round must not land after, and over, a later one. A save that fails (a full
        disk) is reported by the store, rate-limited, and training goes on."""
        async with self._save_lock:
            if round <= self._saved_round:
                return
            save = functools.partial(
                store.save,
                pace=self._core.pace if isinstance(self._core, SyncGossip) else None,
                peer=self.id,
                network=self.config.network_id,
            )
            try:
                await trio.to_thread.run_sync(save, round, vector, self.adapter.layout.fingerprint)
            except OSError as exc:
                store.failures.failed(exc)
            else:
                store.failures.succeeded()
                self._saved_round = round

    # -------------------------------------------------------------------- sending

    def _mark_down(self, peer: PeerId) -> None:
        if peer not in self._reported_down:
            self._reported_down.add(peer)
            self._post(PeerDown(peer))
        self._connectivity.set()

    def _mark_up(self, peer: PeerId) -> None:
        if peer in self._reported_down:
            self._reported_down.discard(peer)
            self._post(PeerUp(peer))

    # ------------------------------------------------------------------ receiving

    async def _receive_loop(self) -> None:
        events = self.transport.events()
        receive_nowait = getattr(events, "receive_nowait", None)
        burst = 0
        while True:
            event: TransportEvent | None = None
            if receive_nowait is not None and burst < _YIELD_EVERY:
                # drain what is queued without a yield per frame (see _next_event)
                try:
                    event = receive_nowait()
                    burst += 1
                except trio.WouldBlock:
                    pass
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if event is None:
                burst = 0
                try:
                    event = await anext(events)
                except (StopAsyncIteration, trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if isinstance(event, Received):
                await self._on_frame(event.peer, event.data)
            else:
                self._on_connection(event)

    def _on_connection(self, event: TransportEvent) -> None:
        if isinstance(event, Connected):
            self._connected.add(event.peer)
            self._outbox.send(event.peer, None)
        elif isinstance(event, Disconnected):
            self._connected.discard(event.peer)
            self._decoders.pop(event.peer, None)
            self._newest.pop(event.peer, None)
            self._outbox.forget(event.peer)
            self._verified.discard(event.peer)
            self._codecs_of.pop(event.peer, None)
            self._mark_down(event.peer)

    async def _on_frame(self, peer: PeerId, data: bytes | bytearray) -> None:
        message: object | None
        if self._threads and len(data) > 4 * self.config.thread_threshold:
            decoder = self._decoder_for(peer, data)
            try:  # decoded in a thread; a bad frame reported here, in the event loop
                message = await trio.to_thread.run_sync(decoder.feed_message, data)
            except wire.WireError as exc:
                self._bad_frame(peer, exc)
                return
        else:
            message = self._decoded(peer, data)
        if message is None:
            return  # a bad frame, or a chunk of an update still being assembled
        refusal = self._take(peer, message)
        if refusal is not None:
            await self._refuse(peer, refusal)

    def _on_delivered(self, event: TransportEvent) -> None:
        """The receive loop's work for an event handed over by the transport in its own
        task (``deliver_to``), synchronously: the same checks; a refusal is sent by a
        task of ours."""
        if not isinstance(event, Received):
            self._on_connection(event)
            return
        message = self._decoded(event.peer, event.data)
        if message is None:
            return
        refusal = self._take(event.peer, message)
        if refusal is not None and self._nursery is not None:
            self._nursery.start_soon(self._refuse, event.peer, refusal)

    def _decoded(self, peer: PeerId, data: bytes | bytearray) -> object | None:
        """Count a frame from ``peer`` and feed it to the decoder of its stream: the
        message it completes, or None (a chunk of an update still being assembled, or a
        bad frame, counted and reported here)."""
        decoder = self._decoder_for(peer, data)
        try:
            message: object | None = decoder.feed_message(data)
        except wire.WireError as exc:
            self._bad_frame(peer, exc)
            return None
        return message

    def _decoder_for(self, peer: PeerId, data: bytes | bytearray) -> wire.StreamDecoder:
        """Count a frame from ``peer``; the decoder of its stream."""
        self.counters.frames_received += 1
        self.counters.bytes_received += len(data)
        decoder = self._decoders.get(peer)
        if decoder is None:
            decoder = self._decoders[peer] = wire.StreamDecoder(
                limits=self._limits, memo=self._decode_memo
            )
        return decoder

    def _bad_frame(self, peer: PeerId, exc: wire.WireError) -> None:
        self.counters.bad_frames += 1
        del self._decoders[peer]  # resynchronize on the next message
        self._warnings.warn(logger, peer, "%s: bad frame from %s: %s", self.name, peer, exc)
        self._penalize(peer, "bad_frame", str(exc))

    def _take(self, peer: PeerId, message: object) -> wire.Refusal | None:
        """:meth:`_on_message`, a remote peer's errors counted, never raised; the refusal
        to send back, if any."""
        try:
            if isinstance(message, wire.Hello):
                return self._on_hello(peer, message)
            self._on_message(peer, message)
        except GossipflError as exc:  # a remote peer must never crash us
            self.counters.bad_frames += 1
            self._warnings.warn(
                logger, peer, "%s: unusable message from %s: %s", self.name, peer, exc
            )
            self._penalize(peer, "bad_frame", str(exc))
        return None

    async def _refuse(self, peer: PeerId, refusal: wire.Refusal) -> None:
        """Tell ``peer`` why we refuse it, and hang up."""
        with contextlib.suppress(TransportError):
            await self.transport.send(peer, wire.encode(refusal))
            await self.transport.disconnect(peer)

    def _hold_off(self, peer: PeerId) -> None:
        """Do not redial ``peer`` for about ``dial_backoff_max`` (a refused handshake would
        only be refused again: measured before this, a redial every 0.5 s)."""
        wait = self.config.dial_backoff_max * (0.5 + self._rng.random())
        self._incompatible_until[peer] = trio.current_time() + wait
        self._incompatible.add(peer)

    def _penalize(self, peer: PeerId, kind: str, detail: str) -> None:
        """Tell the transport's peer score (transports that keep one: libp2p's)."""
        penalize = getattr(self.transport, "penalize", None)
        if penalize is not None:
            penalize(peer, kind, detail)

    def _on_hello(self, peer: PeerId, message: wire.Hello) -> wire.Refusal | None:
        """Accept ``peer``'s handshake, or return the refusal to send it."""
        self._last_heard[peer] = self._now()
        refusal = wire.refuse_hello(mine=self._hello, theirs=message)
        if refusal is None:
            self._verified.add(peer)
            self._incompatible.discard(peer)
            self._codecs_of[peer] = tuple(message.codecs)
            self._notify()
            self._mark_up(peer)
            if self._secure is not None:
                self._secure.greet(peer)
            return None
        self.counters.refused += 1
        self._hold_off(peer)
        self._warnings.warn(logger, peer, "%s: refusing %s: %s", self.name, peer, refusal.text)
        return refusal

    def _on_message(self, peer: PeerId, message: object) -> None:
        """Act on a decoded message other than a Hello."""
        self._last_heard[peer] = self._now()
        if isinstance(message, wire.Refusal):
            self._warnings.warn(
                logger, peer, "%s: %s refused us: %s", self.name, peer, message.text
            )
            if message.code not in (wire.RefusalCode.BUSY, wire.RefusalCode.SHUTTING_DOWN):
                self._hold_off(peer)
            self._mark_down(peer)
            return
        if peer not in self._verified:
            self.counters.unverified += 1
            return
        if peer in self._reported_down:
            self._mark_up(peer)  # a silent peer spoke again
        if isinstance(message, _SECURE_CONTROL):
            if self._secure is None:
                self._not_secure(peer, message)
            else:
                self._secure.on_control(peer, message, self.neighbourhood.receive_from(self.round))
            return
        if isinstance(message, _MODELS):
            if isinstance(message, wire.Update) != (self._secure is None):
                self._not_secure(peer, message)
                return
            if message.sender != peer:
                # The sender is whoever the transport authenticated; a message that says
                # otherwise is a lie (or a relay we never asked for): drop it.
                self.counters.spoofed += 1
                self._warnings.warn(
                    logger,
                    peer,
                    "%s: %s sent a model labelled as from %s; dropped",
                    self.name,
                    peer,
                    message.sender,
                )
                self._penalize(peer, "bad_frame", f"a model claiming sender {message.sender}")
                return
            if message.vector.size != self._num_params:
                self.counters.wrong_shape += 1
                self._warnings.warn(
                    logger,
                    peer,
                    "%s: %s sent %d parameters, the model has %d",
                    self.name,
                    peer,
                    message.vector.size,
                    self._num_params,
                )
                self._penalize(peer, "bad_frame", "a model of the wrong size")
                return
            if isinstance(message, wire.SecureShare) and message.missing:
                assert self._secure is not None
                self._secure.on_share(peer, message)  # a correction: not a round of its own
                return
            newest = self._newest.get(peer, -1)
            if message.round < newest and self.config.protocol != "async":
                # Links are ordered and a synchronous peer sends each round once, forward:
                # a round older than one it already sent us on this connection is a replay.
                self.counters.replayed += 1
                self._warnings.warn(
                    logger,
                    peer,
                    "%s: %s sent round %d after round %d (a replay); dropped",
                    self.name,
                    peer,
                    message.round,
                    newest,
                )
                self._penalize(peer, "replay", f"round {message.round} after round {newest}")
                return
            self._newest[peer] = max(newest, message.round)
            if self._queued_models >= self.config.inbox_size:
                self.counters.inbox_drops += 1
                return
            if isinstance(message, wire.SecureShare):
                assert self._secure is not None
                share = self._secure.on_share(peer, message)
                if share is not None:
                    self._queued_models += 1
                    self._post(ModelReceived(peer, message.round, share))
                return
            self._queued_models += 1
            self._post(ModelReceived(peer, message.round, message.vector, message.reply))

    def _not_secure(self, peer: PeerId, message: object) -> None:
        """A secure-averaging message without secure averaging, or the other way round:
        the two peers run different jobs (their manifests should have said so)."""
        self.counters.secure_refused += 1
        ours = "on" if self._secure is not None else "off"
        self._warnings.warn(
            logger,
            peer,
            "%s: %s sent a %s message, but secure averaging is %s here; dropped",
            self.name,
            peer,
            type(message).__name__,
            ours,
        )

    # ------------------------------------------------------------ liveness upkeep

    def _wanted(self) -> set[PeerId]:
        return self.neighbours() - {self.id}

    async def _dial_loop(self) -> None:
        """Keep connections to the current neighbours, with exponential backoff and jitter
        per peer so that a restarted network does not redial in lockstep."""
        cfg = self.config
        delay: dict[PeerId, float] = {}
        next_try: dict[PeerId, float] = {}
        while True:
            now = trio.current_time()
            for peer, until in list(self._incompatible_until.items()):
                if until <= now:
                    del self._incompatible_until[peer]
                else:
                    next_try[peer] = max(next_try.get(peer, -math.inf), until)
            for peer in sorted(self._wanted() - self._connected):
                if next_try.get(peer, -math.inf) > now:
                    continue
                try:
                    await self.transport.connect(peer)
                except TransportError as exc:
                    d = min(cfg.dial_backoff_max, delay.get(peer, cfg.dial_backoff_min / 2) * 2)
                    if peer in self._incompatible:
                        d = cfg.dial_backoff_max  # refused for cause: not for a second only
                    delay[peer] = d
                    next_try[peer] = trio.current_time() + d * (0.5 + self._rng.random())
                    logger.debug(
                        "%s: dial %s failed (%s); retry in ~%.2fs", self.name, peer, exc, d
                    )
                else:
                    delay.pop(peer, None)
                    next_try.pop(peer, None)
            self._connectivity = trio.Event()
            waiting = [t for p, t in next_try.items() if p not in self._connected]
            with trio.move_on_at(min(waiting, default=math.inf)):
                await self._connectivity.wait()

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        assert cfg.heartbeat_interval is not None
        while True:
            await trio.sleep(cfg.heartbeat_interval)
            now = trio.current_time()
            frame = (wire.encode(wire.Heartbeat(round=self.round)),)
            for peer in sorted(self._wanted() & self._connected):
                self._outbox.send(peer, frame)
                heard = self._last_heard.get(peer)
                if (
                    peer in self._verified
                    and heard is not None
                    and now - heard > cfg.heartbeat_timeout
                    and peer not in self._reported_down
                ):
                    logger.info("%s: %s is silent; treating it as down", self.name, peer)
                    self._mark_down(peer)
