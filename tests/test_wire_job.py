"""The job manifest: its wire text round-trips, bad text is refused with a typed error,
a Hello without a job stays readable by peers that predate it, and a mismatch names the
settings that differ."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given

from gossipfl import wire
from gossipfl.model import Layout
from gossipfl.wire.envelope import KEYS
from gossipfl.wire.job import MAX_JOB_ENTRIES, MAX_JOB_VALUE
from tests.test_wire_messages import jobs

LAYOUT = Layout.of([("w", "float32", (3,))])


@given(jobs)
def test_the_text_form_round_trips_and_is_canonical(job: dict[str, str]) -> None:
    text = wire.job_text(job)
    assert wire.parse_job(text) == job
    # Equal manifests are equal strings, whatever order they were built in.
    assert wire.job_text(dict(reversed(list(job.items())))) == text


@given(jobs, jobs)
def test_differences_are_exactly_the_keys_that_differ(a: dict[str, str], b: dict[str, str]) -> None:
    keys = wire.job_differences(a, b)
    assert keys == sorted(keys)
    assert {k: a[k] for k in a if k not in keys} == {k: b[k] for k in b if k not in keys}
    assert (keys == []) == (a == b)
    assert (wire.describe_job_mismatch(a, b) == "") == (a == b)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rule.name", "not key=value"),
        ("b=1\na=2", "sorted"),
        ("a=1\na=2", "sorted and distinct"),
        ("a b=1", "space"),
        ("a=\x07", "control characters"),
        ("=1", "1 to 64"),
        ("k" * 65 + "=1", "1 to 64"),
        ("a=" + "x" * (MAX_JOB_VALUE + 1), f"at most {MAX_JOB_VALUE}"),
        ("\n".join(f"k{i:03d}=1" for i in range(MAX_JOB_ENTRIES + 1)), "more than 64"),
        ("x" * 30_000, "longer than"),
    ],
)
def test_a_bad_manifest_is_a_schema_error(text: str, words: str) -> None:
    with pytest.raises(wire.SchemaError, match=words):
        wire.parse_job(text)


def test_a_manifest_must_be_text_to_text() -> None:
    with pytest.raises(wire.SchemaError, match="mapping"):
        wire.check_job(["rule.name"])
    with pytest.raises(wire.SchemaError, match="text"):
        wire.check_job({"training.rounds": 30})
    with pytest.raises(wire.SchemaError, match=r"Hello\.job"):
        wire.Hello(network_id="n", layout=LAYOUT, codecs=("fp32",), job={"a=b": "1"})


def hello_header(hello: wire.Hello) -> dict[str, object]:
    data = wire.encode(hello)
    size = int.from_bytes(data[:4], "big")
    header: dict[str, object] = msgpack.unpackb(data[4 : 4 + size])
    return header


def test_no_job_means_no_key_so_older_peers_still_read_our_hello() -> None:
    plain = wire.Hello(network_id="n", layout=LAYOUT, codecs=("fp32",))
    assert set(hello_header(plain)) == KEYS["hello"]
    stated = wire.Hello(network_id="n", layout=LAYOUT, codecs=("fp32",), job={"b": "2", "a": "1"})
    assert hello_header(stated)["job"] == "a=1\nb=2"
    back = wire.decode(wire.encode(stated))
    assert isinstance(back, wire.Hello)
    assert dict(back.job) == {"a": "1", "b": "2"}


def test_a_hello_whose_job_text_is_malformed_is_refused_as_a_schema_error() -> None:
    stated = wire.Hello(network_id="n", layout=LAYOUT, codecs=("fp32",), job={"a": "1"})
    data = wire.encode(stated).replace(b"a=1", b"a+1")
    with pytest.raises(wire.SchemaError, match=r"Hello\.job"):
        wire.decode(data)


def test_a_hello_job_cannot_be_changed_after_the_check() -> None:
    source = {"rule.name": "mean"}
    hello = wire.Hello(network_id="n", layout=LAYOUT, codecs=("fp32",), job=source)
    source["rule.name"] = "krum"
    assert hello.job["rule.name"] == "mean"
    with pytest.raises(TypeError):
        hello.job["rule.name"] = "krum"  # type: ignore[index]


def test_a_mismatch_names_at_most_three_settings_and_counts_the_rest() -> None:
    mine = {f"k{i}": "1" for i in range(5)}
    theirs = {f"k{i}": "2" for i in range(5)}
    text = wire.describe_job_mismatch(mine, theirs, who="it", me="this peer")
    assert text.startswith("k0: it runs '2', this peer runs '1'; k1:")
    assert text.endswith("; and 2 more")
