"""Config dataclasses <-> JSON-ready dicts, defined once for the kit's configs (`UNetConfig`,
`TrainConfig`, `CurationConfig`, ...).

`read_json_object` reads a config file. `to_json_dict` turns a dataclass into plain dicts and lists (nested dataclasses become dicts,
tuples become lists). `from_json_dict` builds it back from the field annotations: nested
dataclasses (also `X | None`) are built recursively, lists become tuples where the field is a
tuple, and a missing key keeps the field's default. A key the class does not have, a nested
value that is not a table, or a scalar of the wrong type raises ValueError naming the source,
the key's dotted path and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read_json_object(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The JSON object in the file `path`; FileNotFoundError or ValueError naming `what` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def to_json_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance as a dict of JSON types (nested dataclasses as dicts, tuples as lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"to_json_dict expects a dataclass instance, got {type(config).__name__}")
    return {f.name: _to_json(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def from_json_dict(cls: type[T], raw: Any, source: str = "config", ignore: tuple[str, ...] = ()) -> T:
    """Build dataclass `cls` from a dict such as `to_json_dict` writes (or a hand-written subset).

    `source` names where `raw` came from (a file, "train config", ...) in every error; `ignore`
    lists top-level keys that may be present and are not fields (e.g. a format marker)."""
    return _build(cls, raw, source, "", frozenset(ignore))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, source: str, path: str, ignore: frozenset = frozenset()) -> Any:
    where = f"{source}: {path}" if path else source
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table of {cls.__name__} fields, got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields) - ignore)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(fields)}")
    types_ = _field_types(cls)
    values = {name: _value(types_[name], raw[name], source, f"{path}.{name}" if path else name) for name in fields if name in raw}
    return cls(**values)


def _value(annotation: Any, value: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        nested = [m for m in members if dataclasses.is_dataclass(m)]
        if nested:
            return _build(nested[0], value, source, path)
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, source, path)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: {path} must be a list, got {value!r}")
        return _deep_tuple(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(annotation)
    if expected is not None and (not isinstance(value, expected) or (annotation is not bool and isinstance(value, bool))):
        raise ValueError(f"{source}: {path} must be {annotation.__name__}, got {value!r}")
    return float(value) if annotation is float else value


def _deep_tuple(value: Any) -> Any:
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
