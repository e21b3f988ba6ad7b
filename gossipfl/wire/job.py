"""The job manifest: the settings that make a training job one job, compared at hello.

Two peers can share a network id and a model layout and still run different jobs: one
merges with ``trimmed-mean`` for 30 rounds, the other with ``cs-plus`` for 100. Models
would flow between them and nobody would notice that the job is not what its operators
think. So every peer states its job -- a small mapping of setting names to their values
as text (``rule.name = "trimmed-mean"``, ``training.rounds = "30"``) -- in its Hello and
in its membership messages, and a peer whose job differs is refused with a message that
names the settings that differ.

The manifest is a consistency check between honest operators, not a security boundary:
an insider can state any job it likes, as it can send any model it likes (the merge rules
deal with that). It is bounded like every other field a peer sends.

On the wire a manifest is one string: ``key=value`` lines sorted by key, so that equal
manifests are equal strings. Keys are tokens of at most :data:`MAX_JOB_KEY` characters
without ``=``; values printable strings of at most :data:`MAX_JOB_VALUE` characters.
"""

from __future__ import annotations

from collections.abc import Mapping

from gossipfl.wire.errors import SchemaError

MAX_JOB_ENTRIES = 64
MAX_JOB_KEY = 64
MAX_JOB_VALUE = 256
MAX_JOB_TEXT = MAX_JOB_ENTRIES * (MAX_JOB_KEY + MAX_JOB_VALUE + 2)

Job = Mapping[str, str]


def check_job(value: object, what: str = "job") -> dict[str, str]:
    """A copy of ``value`` if it is a valid manifest, else :class:`SchemaError`."""
    if not isinstance(value, Mapping):
        raise SchemaError(f"{what} must be a mapping of setting names to text")
    if len(value) > MAX_JOB_ENTRIES:
        raise SchemaError(f"{what} has {len(value)} entries, more than {MAX_JOB_ENTRIES}")
    clean: dict[str, str] = {}
    for key, item in value.items():
        if type(key) is not str or not 0 < len(key) <= MAX_JOB_KEY:
            raise SchemaError(f"{what}: a key must be a string of 1 to {MAX_JOB_KEY} characters")
        if not key.isprintable() or " " in key or "=" in key:
            raise SchemaError(f"{what}: key {key!r:.70} has a space, '=' or a control character")
        if type(item) is not str or len(item) > MAX_JOB_VALUE:
            raise SchemaError(f"{what}[{key!r}] must be text of at most {MAX_JOB_VALUE} characters")
        if not item.isprintable():
            raise SchemaError(f"{what}[{key!r}] contains control characters")
        clean[key] = item
    return clean


def job_text(job: Job) -> str:
    """The manifest's wire form: sorted ``key=value`` lines (empty for no job)."""
    return "\n".join(f"{key}={job[key]}" for key in sorted(job))


def parse_job(text: object, what: str = "job") -> dict[str, str]:
    """The manifest of a wire string; :class:`SchemaError` if it is not one (bounds,
    a line without ``=``, a repeated key, keys out of order)."""
    if type(text) is not str:
        raise SchemaError(f"{what} must be a string")
    if len(text) > MAX_JOB_TEXT:
        raise SchemaError(f"{what} is longer than {MAX_JOB_TEXT} characters")
    if not text:
        return {}
    lines = text.split("\n")
    if len(lines) > MAX_JOB_ENTRIES:
        raise SchemaError(f"{what} has {len(lines)} entries, more than {MAX_JOB_ENTRIES}")
    pairs: dict[str, str] = {}
    previous: str | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise SchemaError(f"{what}: line {line!r:.70} is not key=value")
        if previous is not None and key <= previous:
            raise SchemaError(f"{what}: keys must be sorted and distinct ({key!r:.70})")
        previous = key
        pairs[key] = value
    return check_job(pairs, what)


def job_differences(mine: Job, theirs: Job) -> list[str]:
    """The keys whose values differ (or that only one side sets), sorted."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def describe_job_mismatch(
    mine: Job, theirs: Job, *, who: str = "the peer", me: str = "we", most: int = 3
) -> str:
    """One clause naming the first ``most`` differing settings, e.g. ``rule.name: the
    peer runs 'trimmed-mean', we run 'cs-plus'`` (``who`` and ``me`` name the two sides;
    ``me`` is plural only as "we"); empty if the jobs are the same."""
    keys = job_differences(mine, theirs)
    mine_s = "" if me == "we" else "s"
    parts = [
        f"{key}: {who} {_states(theirs.get(key), 's')}, {me} {_states(mine.get(key), mine_s)}"
        for key in keys[:most]
    ]
    if len(keys) > most:
        parts.append(f"and {len(keys) - most} more")
    return "; ".join(parts)


def _states(value: str | None, s: str) -> str:
    """``runs 'x'`` / ``run 'x'`` (``s``: the verb's third-person ending)."""
    if value is None:
        return f"do{'es' if s else ''} not set it"
    return f"run{s} {value!r}"


__all__ = [
    "MAX_JOB_ENTRIES",
    "MAX_JOB_KEY",
    "MAX_JOB_TEXT",
    "MAX_JOB_VALUE",
    "Job",
    "check_job",
    "describe_job_mismatch",
    "job_differences",
    "job_text",
    "parse_job",
]
