"""Finding a task by reference: a built-in name, ``package.module:attr``, or
``path/to/file.py:attr``.

``attr`` names a :class:`~gossipfl.tasks.base.Task` subclass (built with the given
parameters) or a function that returns a task (called with them). A file is imported under
a private module name, so a user's ``task.py`` never shadows another module called
``task``; its folder is not added to ``sys.path`` (import your own helpers relative to it
with a package, or put them on the path yourself).

Every failure is a :class:`~gossipfl.tasks.base.TaskError` that says what was looked for,
where, and what would work (the built-in names, the classes a module holds).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from gossipfl.errors import ConfigError
from gossipfl.tasks.base import Task, TaskError
from gossipfl.tasks.builtin import BUILTIN_TASKS
from gossipfl.textparams import build


def split_reference(reference: str) -> tuple[str, str | None]:
    """``(module or file, attribute)`` of a reference; the attribute is None for a
    built-in name."""
    text = reference.strip()
    if not text:
        raise TaskError(
            "empty task reference; give a built-in name (gossipfl task list), "
            "package.module:Class or path/to/file.py:Class"
        )
    if ":" not in text:
        return text, None
    where, _, attr = text.rpartition(":")
    if not where or not attr.isidentifier():
        raise TaskError(
            f"task reference {reference!r} must look like package.module:Class or "
            "path/to/file.py:Class"
        )
    return where, attr


def absolute_reference(reference: str) -> str:
    """``reference`` with a relative task file made absolute (against the working
    directory): a reference taken from a command line that must still work from another
    directory (a peer's home, a worker process)."""
    where, attr = split_reference(reference)
    if attr is not None and where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return reference


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"gossipfl_user_task_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TaskError(f"importing task file {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise TaskError(
            f"cannot import task module {name!r} ({exc}); is it installed, or on PYTHONPATH? "
            "A file is given as path/to/file.py:Class"
        ) from exc
    except Exception as exc:
        raise TaskError(
            f"importing task module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _tasks_in(module: ModuleType) -> list[str]:
    return sorted(
        n
        for n, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, Task) and not inspect.isabstract(v)
    )


def _undeclared(cls: type[Task]) -> list[str]:
    """Annotated class attributes that are not dataclass fields: parameters written in a
    task class that was not decorated with ``@dataclass``, which would silently ignore
    ``--set task.params.NAME=...``."""
    fields = {f.name for f in dataclasses.fields(cls)}
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Task or not issubclass(klass, Task):
            continue
        for name, kind in vars(klass).get("__annotations__", {}).items():
            if name not in fields and "ClassVar" not in str(kind) and not name.startswith("_"):
                names.append(name)
    return sorted(set(names))


def _build(cls: type[Task], name: str, params: dict[str, object]) -> Task:
    undeclared = _undeclared(cls)
    if undeclared:
        raise TaskError(
            f"task {name}: {', '.join(undeclared)} look like parameters, but {cls.__name__} "
            "is not a dataclass: put @dataclass(kw_only=True, eq=False) above the class"
        )
    try:
        return build(cls, kind="task", name=name, params=params)
    except TaskError:
        raise
    except ConfigError as exc:  # a parameter out of range, or unknown
        raise TaskError(str(exc)) from None


def task_source_digest(reference: str) -> str | None:
    """A digest of the code a task reference names: the bytes of its file
    (``path/to/file.py:Class``) or of its module's file (``package.module:Class``); None
    for a built-in task (its code is gossipfl's own) or a module without a file.

    Two hosts can hold different versions of one task file under one name: the same
    label and parameters, another model or loss. The digest goes into the job manifest
    so that their peers are refused as two jobs rather than merge unlike models. Call it
    after the task was built (a module reference is then imported)."""
    where, attr = split_reference(reference)
    if attr is None:
        return None
    if where.endswith(".py") or "/" in where or "\\" in where:
        path: Path | None = Path(where).expanduser()
    else:
        origin = getattr(sys.modules.get(where) or _import_module(where), "__file__", None)
        path = Path(origin) if origin else None
    if path is None or not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc}") from exc
    return "blake2b:" + hashlib.blake2b(data, digest_size=16).hexdigest()


def load_task(reference: str, params: Mapping[str, object] | None = None) -> Task:
    """The task ``reference`` names, built with ``params`` (values may be text, as from a
    command line: they are parsed by the parameter's type)."""
    where, attr = split_reference(reference)
    params = dict(params or {})
    if attr is None:
        cls = BUILTIN_TASKS.get(where)
        if cls is None:
            close = difflib.get_close_matches(where, list(BUILTIN_TASKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TaskError(
                f"unknown task {where!r}{hint}; built-in tasks: {', '.join(BUILTIN_TASKS)}; "
                "or your own as package.module:Class or path/to/file.py:Class"
            )
        return _build(cls, where, params)
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _import_file(Path(where).expanduser()) if is_file else _import_module(where)
    target: Any = getattr(module, attr, None)
    if target is None:
        found = _tasks_in(module)
        listing = f"; its tasks: {', '.join(found)}" if found else ""
        raise TaskError(f"{where} has no {attr!r}{listing}")
    if inspect.isclass(target) and issubclass(target, Task):
        if inspect.isabstract(target):
            missing = ", ".join(sorted(getattr(target, "__abstractmethods__", ())))
            raise TaskError(f"task {attr} in {where} does not define {missing}")
        return _build(target, attr, params)
    if callable(target):
        try:
            made = target(**params)
        except TypeError as exc:
            raise TaskError(f"task factory {attr} in {where}: {exc}") from exc
        if not isinstance(made, Task):
            raise TaskError(
                f"{attr} in {where} returned a {type(made).__name__}, not a gossipfl Task"
            )
        return made
    raise TaskError(f"{attr} in {where} is a {type(target).__name__}, not a Task class")


__all__ = ["load_task", "split_reference", "task_source_digest"]
