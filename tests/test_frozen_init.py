"""The faster __init__ of the frozen event dataclasses (gossipfl._frozen) builds the
same objects as the dataclass's own."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import numpy as np
import pytest

from gossipfl._frozen import quick_init
from gossipfl.peer.reports import RoundReport
from gossipfl.protocol.events import LocalStepDone, RoundStats, Send
from gossipfl.transport.base import Disconnected


@dataclasses.dataclass(frozen=True)
class _Plain:
    a: int
    b: str = "x"
    c: dict[str, int] = dataclasses.field(default_factory=dict)
    d: int = dataclasses.field(default=3, kw_only=True)


@quick_init
@dataclasses.dataclass(frozen=True)
class _Quick:
    a: int
    b: str = "x"
    c: dict[str, int] = dataclasses.field(default_factory=dict)
    d: int = dataclasses.field(default=3, kw_only=True)


def test_same_signature_defaults_factories_and_frozen() -> None:
    plain, quick = inspect.signature(_Plain.__init__), inspect.signature(_Quick.__init__)
    assert [(p.name, p.kind) for p in plain.parameters.values()] == [
        (p.name, p.kind) for p in quick.parameters.values()
    ]
    assert vars(_Quick(1)) == vars(_Plain(1)) == {"a": 1, "b": "x", "c": {}, "d": 3}
    assert vars(_Quick(2, "y", {"k": 1}, d=4)) == vars(_Plain(2, "y", {"k": 1}, d=4))
    assert _Quick(1).c is not _Quick(1).c  # a fresh default each time
    with pytest.raises(TypeError):
        _Quick(1, "y", {}, 4)  # type: ignore[call-arg]  # d is keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Quick(1).a = 2  # type: ignore[misc]
    assert _Quick(1) == _Quick(1)
    assert hash(RoundStats(expected=2)) == hash(RoundStats(expected=2))


def test_the_events_behave_as_before() -> None:
    stats = RoundStats(expected=4, missing=("p",), deadline=0.5)
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert dataclasses.replace(stats, late=2).late == 2
    report = RoundReport(peer="p", round=1, vector=None, stats=stats)  # type: ignore[arg-type]
    assert report.train_metrics == {}
    assert report.bytes_sent == 0
    assert LocalStepDone(1, None).metrics == {}  # type: ignore[arg-type]
    assert repr(Send("p", 2, None)) == "Send(peer='p', round=2, vector=None, reply=False)"  # type: ignore[arg-type]
    assert Disconnected("p") == Disconnected("p", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.late = 1  # type: ignore[misc]


def test_slots_and_post_init() -> None:
    seen: list[int] = []

    @quick_init
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Checked:
        a: int
        b: tuple[int, ...] = ()

        def __post_init__(self) -> None:
            seen.append(self.a)
            if self.a < 0:
                raise ValueError("negative")

    item = Checked(a=3)
    assert (item.a, item.b, seen) == (3, (), [3])
    assert not hasattr(item, "__dict__")
    with pytest.raises(ValueError, match="negative"):
        Checked(a=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.a = 4  # type: ignore[misc]


def test_a_decoded_update_is_validated_as_before() -> None:
    from gossipfl.wire import SchemaError, Update

    vector = np.zeros(3, np.float32)
    update = Update(sender="p", round=1, vector=vector)
    assert (update.codec, update.reply, update.meta, update.digest) == ("fp32", False, {}, None)
    with pytest.raises(SchemaError):
        Update(sender="a b", round=1, vector=vector)
    with pytest.raises(SchemaError):
        Update(sender="p", round=-1, vector=vector)
    with pytest.raises(TypeError):
        Update("p", 1, vector)  # type: ignore[call-arg]  # keyword-only, as before


def test_refuses_what_it_cannot_do_exactly() -> None:
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Base:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Derived(Base):
        b: int

    for cls in (Mutable, Derived):
        with pytest.raises(TypeError):
            quick_init(cls)
