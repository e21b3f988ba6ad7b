"""Configuration files: TOML tables mapped onto dataclasses.

``gossipfl simulate`` and ``gossipfl start`` both read a TOML file whose tables are
sections (``[training]``, ``[network]``, ...) and whose keys are typed settings, then apply
``--set section.key=value`` overrides from the command line. :class:`TomlConfig` gives a
dataclass of such sections (and of top-level settings) that behaviour once:

- every key is checked against the declared type of its field (``int``, ``float``
  (``inf`` allowed), ``bool``, ``str``, ``list[str]``, optionally ``None``), and an
  unknown key is refused with the valid ones listed;
- a section with a ``params`` table (``[topology]``, ``[rule]``, ...) takes any other key
  as a free-form parameter, checked later by whatever builds the topology or rule;
- ``--set`` values are parsed as TOML would parse them, falling back to plain strings, so
  ``--set topology.name=ring`` needs no quotes;
- ``to_toml`` writes a file that reads back to the same configuration.

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

from gossipfl.errors import ConfigError

Scalar = str | int | float | bool


def parse_value(raw: str) -> Any:
    """A command-line value read as TOML would read it (numbers, booleans, quoted strings,
    arrays), or kept as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file, or a :class:`ConfigError` saying why not; ``what`` names
    the kind of file in the message."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the declared type ``hint``, or a :class:`ConfigError` naming ``key``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        return coerce(key, value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return list(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            return math.inf
    elif hint is str and isinstance(value, str):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key} must be a {name}, got {value!r}")


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
                raise ConfigError(f"--set expects key=value, got {assignment!r}")
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
            raise ConfigError(f"unknown config key {head!r}; top-level keys: {', '.join(fields)}")
        current = getattr(self, head)
        if not _is_section(current):
            if rest:
                raise ConfigError(f"{head!r} is a plain setting, not a section: cannot set {key!r}")
            setattr(self, head, coerce(key, value, typing.get_type_hints(type(self))[head]))
        elif rest:
            _set_in_section(head, current, rest, value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                _set_in_section(head, current, k, v)
        else:
            raise ConfigError(f"[{head}] must be a table of settings, got {value!r}")

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


def _set_in_section(section_name: str, section: Any, key: str, value: Any) -> None:
    names = [f.name for f in _settings(section)]
    if key in names:
        hint = typing.get_type_hints(type(section))[key]
        setattr(section, key, coerce(f"{section_name}.{key}", value, hint))
    elif hasattr(section, "params"):
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{section_name}.{key} must be a number, string or boolean")
        section.params[key] = value
    else:
        raise ConfigError(
            f"unknown config key {section_name}.{key}; [{section_name}] has: {', '.join(names)}"
        )
