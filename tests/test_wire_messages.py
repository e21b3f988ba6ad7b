"""Round trips of every message kind and array dtype; construction-time validation;
the handshake check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl import wire
from gossipfl.model import LAYOUT_DTYPES, Layout, TensorSpec
from gossipfl.wire.arrays import ArraySpec, spec_of, view_array, wire_bytes

# Python's str.isprintable() rejects exactly these categories (and accepts the space).
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
printable = st.characters(blacklist_categories=_UNPRINTABLE)


def tokens(max_size: int) -> st.SearchStrategy[str]:
    return st.text(printable, min_size=1, max_size=max_size)


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.one_of(printable, st.just(" ")), max_size=max_size)


rounds = st.integers(0, (1 << 63) - 1)
digests = st.binary(min_size=32, max_size=32)
codec_names = st.sampled_from(["fp32", "fp16", "int8"])
meta_values = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts(256),
)
metas = st.dictionaries(tokens(32), meta_values, max_size=16)
shapes = st.lists(st.integers(0, 50), max_size=4).map(tuple)
specs = st.builds(
    TensorSpec,
    st.text(printable, min_size=1, max_size=40),
    st.sampled_from(sorted(LAYOUT_DTYPES)),
    shapes,
)
layouts = st.lists(specs, max_size=12, unique_by=lambda s: s.name).map(
    lambda items: Layout(tuple(items))
)
job_keys = st.text(
    st.characters(blacklist_categories=_UNPRINTABLE, blacklist_characters="="),
    min_size=1,
    max_size=64,
)
jobs = st.dictionaries(job_keys, texts(256), max_size=64)
hellos = st.builds(
    wire.Hello,
    network_id=tokens(128),
    layout=layouts,
    codecs=st.lists(tokens(32), min_size=1, max_size=16, unique=True).map(tuple),
    name=texts(64),
    version=st.integers(0, 0xFFFF),
    job=jobs,
)
small_vectors = hnp.arrays(
    np.float32,
    st.integers(0, 300),
    elements=st.floats(-60000, 60000, allow_nan=False, width=32),
)


def roundtrip(message: wire.Message) -> wire.Message:
    data = wire.encode(message)
    assert len(data) % 8 == 0 or isinstance(message, wire.Update | wire.Chunk)
    back = wire.decode(data)
    assert type(back) is type(message)
    return back


@given(hellos)
def test_hello_roundtrip(hello: wire.Hello) -> None:
    back = roundtrip(hello)
    assert back == hello
    assert isinstance(back, wire.Hello)
    assert back.layout.fingerprint == hello.layout.fingerprint


@given(
    sender=tokens(128),
    round_=rounds,
    vector=small_vectors,
    codec=codec_names,
    reply=st.booleans(),
    meta=metas,
)
def test_update_roundtrip(
    sender: str, round_: int, vector: np.ndarray, codec: str, reply: bool, meta: dict
) -> None:
    update = wire.Update(
        sender=sender, round=round_, vector=vector, codec=codec, reply=reply, meta=meta
    )
    back = roundtrip(update)
    assert isinstance(back, wire.Update)
    assert (back.sender, back.round, back.codec, back.reply) == (sender, round_, codec, reply)
    assert back.meta == meta
    assert back.digest == wire.with_digest(update).digest
    assert back.vector.dtype == np.float32
    assert not back.vector.flags.writeable
    if codec == "fp32":
        np.testing.assert_array_equal(back.vector, vector)
    elif codec == "fp16":
        np.testing.assert_array_equal(back.vector, vector.astype(np.float16).astype(np.float32))
    else:
        assert np.abs(back.vector - vector).max(initial=0) <= 60000 / 254 * 1.0001


@given(
    round_=rounds,
    codec=tokens(32),
    digest=st.one_of(st.none(), digests),
)
def test_pull_roundtrip(round_: int, codec: str, digest: bytes | None) -> None:
    message = wire.PullRequest(round=round_, codec=codec, digest=digest)
    assert roundtrip(message) == message


@given(rounds)
def test_heartbeat_roundtrip(round_: int) -> None:
    assert roundtrip(wire.Heartbeat(round=round_)) == wire.Heartbeat(round=round_)


@given(rounds, tokens(32), digests)
def test_announce_roundtrip(round_: int, codec: str, digest: bytes) -> None:
    message = wire.Announce(round=round_, codec=codec, digest=digest)
    assert roundtrip(message) == message


@given(st.sampled_from(list(wire.RefusalCode)), texts(1024))
def test_refusal_roundtrip(code: wire.RefusalCode, text: str) -> None:
    message = wire.Refusal(code=code, text=text)
    back = roundtrip(message)
    assert back == message
    assert isinstance(back, wire.Refusal)
    assert type(back.code) is wire.RefusalCode


@given(st.integers(0, 0xFFFFFFFF), st.binary(min_size=1, max_size=2000))
def test_chunk_roundtrip(seq: int, data: bytes) -> None:
    back = roundtrip(wire.Chunk(seq=seq, data=memoryview(data)))
    assert isinstance(back, wire.Chunk)
    assert back.seq == seq
    assert bytes(back.data) == data
    assert back.data.readonly


@given(tokens(128), rounds, st.integers(0, 5000), digests, st.booleans(), metas)
def test_update_head_roundtrip(
    sender: str, round_: int, n: int, digest: bytes, reply: bool, meta: dict
) -> None:
    codec = wire.Int8(64)
    head = wire.UpdateHead(
        sender=sender,
        round=round_,
        codec="int8",
        n=n,
        params={"block": 64},
        arrays=codec.specs(n, {"block": 64}),
        digest=digest,
        reply=reply,
        meta=meta,
    )
    back = roundtrip(head)
    assert isinstance(back, wire.UpdateHead)
    for name in ("sender", "round", "codec", "n", "params", "arrays", "digest", "reply", "meta"):
        assert getattr(back, name) == getattr(head, name)
    assert back.payload_size == n + 4 * (-(-n // 64))


@pytest.mark.parametrize("dtype", sorted(wire.WIRE_DTYPES))
@given(data=st.data())
def test_every_wire_dtype_roundtrips(dtype: str, data: st.DataObject) -> None:
    np_dtype = wire.WIRE_DTYPES[dtype]
    array = data.draw(hnp.arrays(np_dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)))
    order = data.draw(st.sampled_from(["C", "F"]))
    array = np.asarray(array, order=order)  # Fortran order must be written in C order
    spec = spec_of(array)
    assert spec == ArraySpec(dtype, array.shape)
    payload = b"\x00" * 8 + bytes(wire_bytes(array))
    back = view_array(spec, memoryview(payload), 8)
    assert back.dtype == np_dtype
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.complex64, np.bool_, object])
def test_dtypes_outside_the_allowlist_cannot_travel(dtype: type) -> None:
    with pytest.raises(wire.ArrayError):
        spec_of(np.zeros(3, dtype=dtype))


def test_big_endian_arrays_are_written_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    assert bytes(wire_bytes(array)) == np.arange(4, dtype="<i4").tobytes()


# ----------------------------------------------------------------- construction checks


VEC = np.zeros(4, dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sender": ""}, "sender"),
        ({"sender": "a b"}, "sender"),
        ({"sender": "x" * 129}, "sender"),
        ({"sender": "evil\x1b[31m"}, "control"),
        ({"round": -1}, "round"),
        ({"round": 1 << 63}, "round"),
        ({"round": True}, "round"),
        ({"round": 1.0}, "round"),
        ({"vector": np.zeros(4)}, "float32"),
        ({"vector": np.zeros((2, 2), np.float32)}, "1-D"),
        ({"vector": [0.0]}, "vector"),
        ({"reply": 1}, "reply"),
        ({"meta": {"k": [1]}}, "meta"),
        ({"meta": {"k": float("nan")}}, "finite"),
        ({"meta": {"k": 1 << 64}}, "64 bits"),
        ({"meta": {f"k{i}": i for i in range(17)}}, "entries"),
        ({"meta": {"bad key": 1}}, "spaces"),
        ({"digest": b"short"}, "32 bytes"),
    ],
)
def test_update_construction_is_validated(kwargs: dict, match: str) -> None:
    fields = {"sender": "p", "round": 0, "vector": VEC, **kwargs}
    with pytest.raises(wire.SchemaError, match=match):
        wire.Update(**fields)


def test_other_constructors_validate() -> None:
    layout = Layout(())
    with pytest.raises(wire.SchemaError, match="codecs"):
        wire.Hello(network_id="n", layout=layout, codecs=())
    with pytest.raises(wire.SchemaError, match="twice"):
        wire.Hello(network_id="n", layout=layout, codecs=("fp32", "fp32"))
    with pytest.raises(wire.SchemaError, match="layout"):
        wire.Hello(network_id="n", layout="W float32 [1]\n", codecs=("fp32",))  # type: ignore[arg-type]
    with pytest.raises(wire.SchemaError, match="RefusalCode"):
        wire.Refusal(code=999)  # type: ignore[arg-type]
    assert wire.Refusal(code=3).code is wire.RefusalCode.LAYOUT_MISMATCH  # type: ignore[arg-type]
    with pytest.raises(wire.SchemaError, match="text"):
        wire.Refusal(code=wire.RefusalCode.OTHER, text="two\nlines")
    with pytest.raises(wire.SchemaError, match="digest"):
        wire.Announce(round=0, codec="fp32", digest=b"")
    with pytest.raises(wire.SchemaError, match=r"Chunk\.data"):
        wire.Chunk(seq=0, data=memoryview(b""))
    with pytest.raises(wire.SchemaError, match=r"not a gossipfl\.wire message"):
        wire.encode("hello")  # type: ignore[arg-type]


def test_hello_accepts_a_codec_list() -> None:
    hello = wire.Hello(network_id="n", layout=Layout(()), codecs=["fp32"])  # type: ignore[arg-type]
    assert hello.codecs == ("fp32",)


# -------------------------------------------------------------------------- handshake


def make_hello(layout: Layout, **kwargs: object) -> wire.Hello:
    fields: dict = {"network_id": "digits", "layout": layout, "codecs": ("fp32", "int8")}
    fields.update(kwargs)
    return wire.Hello(**fields)


BASE = Layout.of([("fc.weight", "float32", (64, 10)), ("fc.bias", "float32", (10,))])


def test_check_hello_accepts_a_compatible_peer() -> None:
    assert wire.check_hello(mine=make_hello(BASE), theirs=make_hello(BASE, name="p2")) is None
    mine, theirs = make_hello(BASE), make_hello(BASE, codecs=("fp16", "int8", "fp32"))
    assert wire.common_codecs(mine, theirs) == ("int8", "fp32")


@pytest.mark.parametrize(
    ("theirs", "expected_code", "words"),
    [
        # a protocol 1 peer (BLAKE2b digests): refused at the hello, not at every digest
        (make_hello(BASE, version=1), wire.RefusalCode.VERSION_MISMATCH, ["version 1", "2"]),
        (make_hello(BASE, network_id="other"), wire.RefusalCode.NETWORK_MISMATCH, ["'other'"]),
        (
            make_hello(
                Layout.of([("fc.weight", "float32", (64, 12)), ("fc.bias", "float32", (10,))])
            ),
            wire.RefusalCode.LAYOUT_MISMATCH,
            ["'fc.weight'", "[64, 10]", "[64, 12]"],
        ),
        (
            make_hello(Layout.of([("fc.weight", "float32", (64, 10)), ("fc.b", "float32", (10,))])),
            wire.RefusalCode.LAYOUT_MISMATCH,
            ["tensor #1", "'fc.bias'", "'fc.b'"],
        ),
        (
            make_hello(
                Layout.of([("fc.weight", "float32", (64, 10)), ("fc.bias", "float16", (10,))])
            ),
            wire.RefusalCode.LAYOUT_MISMATCH,
            ["'fc.bias'", "float16"],
        ),
        (
            make_hello(Layout.of([("fc.weight", "float32", (64, 10))])),
            wire.RefusalCode.LAYOUT_MISMATCH,
            ["lacks", "'fc.bias'"],
        ),
        (
            make_hello(Layout((*BASE.tensors, TensorSpec("extra", "int64", ())))),
            wire.RefusalCode.LAYOUT_MISMATCH,
            ["extra tensor", "'extra'"],
        ),
        (make_hello(BASE, codecs=("fp16",)), wire.RefusalCode.NO_COMMON_CODEC, ["fp16", "fp32"]),
        (
            # Checked before the layout: a different task explains a different model.
            make_hello(Layout(()), job={"rule.name": "trimmed-mean", "task.name": "Shapes"}),
            wire.RefusalCode.JOB_MISMATCH,
            [
                "rule.name: the peer runs 'trimmed-mean', we run 'mean'",
                "task.name: the peer runs 'Shapes', we do not set it",
            ],
        ),
    ],
)
def test_check_hello_names_what_differs(
    theirs: wire.Hello, expected_code: wire.RefusalCode, words: list[str]
) -> None:
    mine = make_hello(BASE, job={"rule.name": "mean"} if theirs.job else {})
    problem = wire.check_hello(mine=mine, theirs=theirs)
    assert problem is not None
    for word in words:
        assert word in problem
    refusal = wire.refuse_hello(mine=mine, theirs=theirs)
    assert refusal is not None
    assert refusal.code is expected_code
    assert refusal.text == problem
    # The refusal itself must be sendable.
    assert wire.decode(wire.encode(refusal)) == refusal


def test_a_refusal_survives_the_wire_after_a_decoded_hello() -> None:
    theirs = wire.decode(wire.encode(make_hello(BASE, network_id="x")))
    assert isinstance(theirs, wire.Hello)
    assert "'x'" in (wire.check_hello(mine=make_hello(BASE), theirs=theirs) or "")
