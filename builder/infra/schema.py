"""Typed settings tables, validated at load.

A settings file maps onto a tree of dataclasses.  ``load()`` walks the tree
with the type hints and refuses, naming the file and the dotted key, any
unknown key, wrong type or value that fails a field's ``check``.  The same
dataclasses document the settings (``help`` in field metadata).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from builder.infra import paths
from builder.infra.errors import UserError

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, *, help: str, check: Any = None,
            factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with documentation and an optional value check.

    ``check(value)`` returns None when fine or a sentence saying what is wrong.
    """
    meta = {"help": help, "check": check}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def matches(pattern: str, what: str) -> Any:
    rx = re.compile(pattern)

    def check(value: Any) -> str | None:
        return None if rx.fullmatch(str(value)) else f"must be {what}"

    return check


def at_least(minimum: int) -> Any:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}"

    return check


def choices(text: str, known: typing.Sequence[str], what: str) -> list[str]:
    """A comma-separated command-line list of names, each one of ``known`` (in the given order, once
    each); an unknown name, or none at all, is refused naming the known ones."""
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise UserError(f"{what} {', '.join(unknown) or '(none)'} unknown",
                        hint=f"choose from {', '.join(known)}, comma-separated")
    return names


def read_yaml(path: Path, what: str = "settings file") -> Any:
    if not path.exists():
        raise UserError(f"{path}: {what} not found", hint="create it or pass --config")
    text = paths.read_text(path, what)
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def load_file(cls: type[T], path: Path) -> T:
    data = read_yaml(path)
    return load(cls, {} if data is None else data, path.name)


def load(cls: type[T], data: Any, filename: str, prefix: str = "") -> T:
    return typing.cast(T, _convert(cls, data, filename, prefix))


def _fail(filename: str, key: str, message: str, hint: str | None = None) -> UserError:
    return UserError(f"{filename}: {key or '(top level)'}: {message}", hint=hint)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return str(tp)


def _convert(tp: Any, value: Any, filename: str, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, filename, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(filename, key, f"expected a mapping, got {type(value).__name__}")
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        kwargs = {}
        for name, item in value.items():
            sub = f"{key}.{name}" if key else str(name)
            if name not in fields:
                raise _fail(filename, sub, "unknown key",
                            hint="known keys here: " + ", ".join(sorted(fields)))
            converted = _convert(hints[name], item, filename, sub)
            check = fields[name].metadata.get("check")
            if check is not None and converted is not None:
                problem = check(converted)
                if problem:
                    raise _fail(filename, sub, f"{problem} (got {item!r})")
            kwargs[name] = converted
        obj = typing.cast(Any, tp)(**kwargs)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            problem = validate()
            if problem:
                raise _fail(filename, key, problem)
        return obj
    if origin is list:
        if not isinstance(value, list):
            raise _fail(filename, key, f"expected a list, got {type(value).__name__}")
        (inner,) = get_args(tp)
        return [_convert(inner, v, filename, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(filename, key, f"expected a mapping, got {type(value).__name__}")
        _, inner = get_args(tp)
        return {str(k): _convert(inner, v, filename, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in get_args(tp):
            raise _fail(filename, key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(filename, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(filename, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(filename, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _fail(filename, key, f"expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"schema type {tp!r} is not supported")


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for documentation and ``isobuild config --help``."""
    rows: list[tuple[str, str, str]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(typing.cast(type, tp), key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
