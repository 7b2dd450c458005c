"""JSON in, typed dataclasses out: the one loader for training configs and bundle manifests.

`from_json(Cls, data, source)` checks parsed JSON against the annotations of the dataclass
`Cls` (nested dataclasses, `Optional`, `Union`, `Literal`, `List`, `Tuple`, `Dict`, `Any`,
`int`, `float`, `bool`, `str`) and builds it. Every problem is one line that starts with
`source` (the file) and names the dotted key: `run.json: train.epochs: expected integer,
got "3"`, `bundle.json: unknown key models[0].sha265 (known in models[0]: ...)`, `missing key
models[1].weights`. A dataclass that sets `OPEN_KEYS = True` ignores keys it does not
declare (bundle manifests, which callers may extend); any other refuses them. In a `Union`
of dataclasses, one that sets `TAG = "key"` is the form of every object holding that key,
and the untagged one the form of the others, so that a problem is reported against the form
the object meant (bundle.json's group entries beside its single models).

Written here rather than taken from pydantic or dacite: the inference install would gain a
dependency (pydantic, about 0.1 s to import) for a hundred lines, and neither names the
file and key in one line the way the command line reports every other problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Tuple, Type, TypeVar, Union

from .errors import DannaSepError

T = TypeVar("T")


class SchemaError(DannaSepError):
    """JSON that does not fit its schema; the message starts with the file and names the key."""


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(kind))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(kind))
    if kind is type(None):
        return "null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(kind)[0])}"
    if origin in (tuple, Tuple):
        return f"list of {len(typing.get_args(kind))} numbers"
    if origin in (dict, Dict):
        return "object"
    if dataclasses.is_dataclass(kind):
        return "object"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(kind, str(kind))


class _Reader:
    """Checks one document; `error` is the DannaSepError subclass its problems raise."""

    def __init__(self, source: str, error: Type[DannaSepError]):
        self.source = source
        self.error = error

    def fail(self, message: str) -> DannaSepError:
        return self.error(f"{self.source}: {message}")

    def convert(self, value: Any, kind: Any, key: str) -> Any:
        """`value` checked against the annotation `kind`; an error naming `key` otherwise."""
        def bad() -> DannaSepError:
            return self.fail(f"{key}: expected {_type_name(kind)}, got {json.dumps(value)}")

        origin = typing.get_origin(kind)
        if kind is Any:
            return value
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise bad()
            return self.build(kind, value, key + ".")
        if origin in (Union, types.UnionType):
            options = typing.get_args(kind)
            if value is None:
                if type(None) in options:
                    return None
                raise bad()
            forms = [o for o in options if dataclasses.is_dataclass(o)]
            if len(forms) > 1 and isinstance(value, Mapping):
                tagged = [o for o in forms if getattr(o, "TAG", None) in value]
                meant = tagged or [o for o in forms if getattr(o, "TAG", None) is None]
                if len(meant) == 1:
                    return self.build(meant[0], value, key + ".")
            for option in options:
                if option is type(None):
                    continue
                try:
                    return self.convert(value, option, key)
                except DannaSepError:
                    pass
            raise bad()
        if origin is Literal:
            if value not in typing.get_args(kind) or isinstance(value, bool):
                raise bad()
            return value
        if origin in (list, List):
            if not isinstance(value, list):
                raise bad()
            (item,) = typing.get_args(kind)
            return [self.convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin in (tuple, Tuple):
            items = typing.get_args(kind)
            if not isinstance(value, (list, tuple)) or len(value) != len(items):
                raise bad()
            return tuple(self.convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
        if origin in (dict, Dict):
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise bad()
            item = typing.get_args(kind)[1] if typing.get_args(kind) else Any
            return {k: self.convert(v, item, f"{key}.{k}") for k, v in value.items()}
        if kind is bool:
            if not isinstance(value, bool):
                raise bad()
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad()
            return value
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad()
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise bad()
            return value
        raise TypeError(f"unsupported annotation {kind!r}")  # pragma: no cover - a bug in a schema

    def build(self, cls: type, data: Mapping[str, Any], prefix: str) -> Any:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown and not getattr(cls, "OPEN_KEYS", False):
            where = prefix.rstrip(".") or "the top level"
            raise self.fail(f"unknown key {prefix}{unknown[0]!s} (known in {where}: {', '.join(fields)})")
        values = {}
        for name, spec in fields.items():
            if name in data:
                values[name] = self.convert(data[name], hints[name], prefix + name)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise self.fail(f"missing key {prefix}{name}")
        return cls(**values)


def from_json(cls: Type[T], data: Any, source: str = "<json>", error: Type[DannaSepError] = SchemaError) -> T:
    """The dataclass `cls` built from parsed JSON `data`, every key checked (see the module
    docstring); problems raise `error` with a message that starts with `source`."""
    reader = _Reader(source, error)
    if not isinstance(data, Mapping):
        raise reader.fail("expected a JSON object at the top level")
    return reader.build(cls, data, "")


def read_json(path: str | os.PathLike, error: Type[DannaSepError] = SchemaError, what: str = "file") -> Any:
    """Parsed JSON of the file at `path`; a missing, unreadable or malformed file raises
    `error` naming it (and the line and column of a syntax error)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{source}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{source}: unreadable ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def plain(value: Any) -> Any:
    """`value` with tuples as lists, all the way down: the form it has after a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_json(obj: Any) -> Dict[str, Any]:
    """Plain JSON-ready form of a dataclass, every default filled in (tuples as lists)."""
    return plain(dataclasses.asdict(obj))


def differences(a: Any, b: Any) -> List[str]:
    """Dotted keys whose values differ between two dataclasses of one schema."""
    def walk(x: Any, y: Any, prefix: str) -> List[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            out: List[str] = []
            for key in sorted(set(x) | set(y)):
                out.extend(walk(x.get(key), y.get(key), f"{prefix}{key}."))
            return out
        return [] if x == y else [prefix.rstrip(".")]

    return walk(to_json(a), to_json(b), "")
