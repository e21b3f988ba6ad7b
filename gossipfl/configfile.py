"""Configuration files: TOML tables mapped onto dataclasses.

``gossipfl simulate`` and ``gossipfl start`` both read a TOML file whose tables are
sections (``[training]``, ``[network]``, ...) and whose keys are typed settings, then apply
``--set section.key=value`` overrides from the command line. :class:`TomlConfig` gives a
dataclass of such sections (and of top-level settings) that behaviour once:

- every key is checked against the declared type of its field (``int``, ``float``
  (``inf`` allowed, NaN never), ``bool``, ``str``, ``list[str]``, optionally ``None``),
  and a wrong value is refused with the setting's default as an example; an unknown key
  is refused with the closest valid one suggested (``trainig`` → ``training``, ``rounds``
  → ``training.rounds``) and the valid ones listed;
- a section with a ``params`` table (``[topology]``, ``[rule]``, ``[task]``, ...) takes any
  other key as a free-form parameter, checked later by whatever builds the topology, rule
  or task; the parameters may also be written as a ``[section.params]`` table or as
  ``section.params.KEY`` (``--set task.params.lr=0.05``);
- ``--set`` values are parsed as TOML would parse them, falling back to plain strings, so
  ``--set topology.name=ring`` needs no quotes;
- ``to_toml`` writes a file that reads back to the same configuration;
- a file that cannot be read (missing, a directory, binary, bad TOML) is a
  :class:`~gossipfl.errors.ConfigError` that says what to check, never a traceback.

A field with ``metadata={"setting": False}`` (e.g. the directory relative paths start at)
is state, not a setting: it is never read from or written to a file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from gossipfl.errors import ConfigError, close_matches, did_you_mean

Scalar = str | int | float | bool


def parse_value(raw: str) -> Any:
    """A command-line value read as TOML would read it (numbers, booleans, quoted strings,
    arrays), or kept as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file, or a :class:`ConfigError` saying why not and what to do;
    ``what`` names the kind of file in the message."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(
            f"cannot read {what} {path}: it is a directory; check the path (it must name "
            "the TOML file itself)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror or exc}; check the path"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} {path} is not a text file (not UTF-8), so not TOML; check that the path "
            "names the TOML file and not, say, a key file or an archive"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not valid TOML: {exc}; fix that line (text values need "
            'quotes: name = "ring")'
        ) from None


_TYPE_WORDS: dict[Any, str] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text (in a file, in quotes)",
}


def literal(value: Any) -> str:
    """``value`` as it would be typed after ``--set key=`` (TOML, bare words unquoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


def coerce(key: str, value: Any, hint: Any, example: Any = None) -> Any:
    """``value`` as the declared type ``hint``, or a :class:`ConfigError` naming ``key``
    and showing a value that works (``example``, the setting's default, when given).

    NaN is refused for every number: no setting means anything with it, and it would
    poison a model or a timer silently.
    """
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        return coerce(key, value, next(a for a in args if a is not type(None)), example)
    eg = f"; e.g. {key}={literal(example)}" if example is not None and example != "" else ""
    if typing.get_origin(hint) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(
                f'{key} must be a list of strings, got {value!r}; e.g. {key}=["a", "b"]'
            )
        return list(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key} must be a number, got nan (not a number){eg}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            return math.inf
    elif hint is str and isinstance(value, str):
        return value
    word = _TYPE_WORDS.get(hint, f"a {getattr(hint, '__name__', hint)}")
    raise ConfigError(f"{key} must be {word}, got {value!r}{eg}")


def _default(field: dataclasses.Field[Any]) -> Any:
    """A field's default value (for the example in an error message), or None."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _settings(obj: object) -> list[dataclasses.Field[Any]]:
    return [
        f
        for f in dataclasses.fields(obj)  # type: ignore[arg-type]
        if f.metadata.get("setting", True) and f.name != "params"
    ]


class TomlConfig:
    """Base class for a dataclass configuration; see the module docstring."""

    def validate(self) -> None:
        """Check the settings as a whole; subclasses add their rules."""

    # ----------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **state: Any) -> Self:
        """A configuration from nested tables (``state``: the non-setting fields)."""
        config = cls(**state)
        for key, value in data.items():
            config.set(key, value)
        config.validate()
        return config

    def with_overrides(self, assignments: Iterable[str]) -> Self:
        """A copy with ``key=value`` assignments applied."""
        config = self.copy()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"--set expects key=value, got {assignment!r}; e.g. --set training.lr=0.05"
                )
            config.set(key.strip(), parse_value(raw.strip()))
        config.validate()
        return config

    def copy(self) -> Self:
        """A deep copy: no section, list or parameter table is shared."""
        return copy.deepcopy(self)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (``setting``, ``section.setting`` or a whole ``section`` table)."""
        head, _, rest = key.partition(".")
        fields = {f.name: f for f in _settings(self)}
        if head not in fields:
            raise ConfigError(
                f"unknown config key {head!r}{self._suggest(head)} (top-level keys: "
                f"{', '.join(fields)})"
            )
        current = getattr(self, head)
        if not _is_section(current):
            if rest:
                raise ConfigError(f"{head!r} is a plain setting, not a section: cannot set {key!r}")
            hint = typing.get_type_hints(type(self))[head]
            setattr(self, head, coerce(key, value, hint, _default(fields[head])))
        elif rest:
            _set_in_section(head, current, rest, value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                _set_in_section(head, current, k, v)
        else:
            raise ConfigError(f"[{head}] must be a table of settings, got {value!r}")

    def _suggest(self, head: str) -> str:
        """A "did you mean" for an unknown top-level key: a misspelt section or setting
        (``trainig``), else a setting that lives in a section (``rounds`` for
        ``training.rounds`` in a peer's config)."""
        settings = _settings(self)
        hint = did_you_mean(head, [f.name for f in settings])
        if hint:
            return hint
        nested = {
            f"{f.name}.{s.name}": s.name
            for f in settings
            if _is_section(section := getattr(self, f.name))
            for s in _settings(section)
        }
        close = close_matches(head, set(nested.values()), limit=1)
        found = [dotted for dotted, name in nested.items() if name in close]
        return f"; did you mean {' or '.join(map(repr, found))}?" if found else ""

    # ----------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts: parameters flattened into their sections, unset (None)
        settings left out."""
        out: dict[str, Any] = {}
        for f in _settings(self):
            value = getattr(self, f.name)
            if _is_section(value):
                table = {
                    s.name: copy.copy(getattr(value, s.name))
                    for s in _settings(value)
                    if getattr(value, s.name) is not None
                }
                table.update(getattr(value, "params", {}))
                out[f.name] = table
            elif value is not None:
                out[f.name] = value
        return out

    def to_toml(self) -> str:
        import tomli_w

        def clean(obj: Any) -> Any:
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, float) and math.isinf(obj):
                return "inf" if obj > 0 else "-inf"
            return obj

        return tomli_w.dumps(clean(self.to_dict()))


def _set_entry(key: str, entries: dict[str, Any], name: str, value: Any, what: str) -> None:
    """Set ``entries[name]`` (a free-form table: a family's parameters, rule weights) to a
    scalar ``value``; ``key`` is the full dotted key, for the error."""
    if not name or "." in name:
        raise ConfigError(f"{key} is not a {what} name")
    if not isinstance(value, str | int | float | bool):
        raise ConfigError(f"{key} must be a number, string or boolean")
    entries[name] = value


def _set_in_section(section_name: str, section: Any, key: str, value: Any) -> None:
    settings = {f.name: f for f in _settings(section)}
    if key in settings and isinstance(value, Mapping) and isinstance(getattr(section, key), dict):
        for name, item in value.items():  # a [section.table] table: entry by entry
            _set_in_section(section_name, section, f"{key}.{name}", item)
    elif key in settings:
        hint = typing.get_type_hints(type(section))[key]
        example = _default(settings[key])
        setattr(section, key, coerce(f"{section_name}.{key}", value, hint, example))
    elif (table := key.partition(".")[0]) in settings and isinstance(
        getattr(section, table), dict
    ):  # section.table.name: one entry of a table setting ([score] weights)
        entries = getattr(section, table)
        _set_entry(f"{section_name}.{key}", entries, key.partition(".")[2], value, f"{table} entry")
    elif hasattr(section, "params"):
        if key == "params" and isinstance(value, Mapping):  # a [section.params] table
            for name, item in value.items():
                _set_in_section(section_name, section, f"params.{name}", item)
            return
        name = key.removeprefix("params.")  # section.params.lr is section.lr
        _set_entry(f"{section_name}.{key}", section.params, name, value, "parameter")
    else:
        close = close_matches(key, settings)
        hint = f"; did you mean {' or '.join(repr(f'{section_name}.{c}') for c in close)}?"
        raise ConfigError(
            f"unknown config key {section_name}.{key}{hint if close else ''} "
            f"([{section_name}] has: {', '.join(settings)})"
        )
