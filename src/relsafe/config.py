"""Validated configs: dataclasses are the source of truth; YAML loads into them; flags override.

* Unknown keys are errors that name the key, the file and the valid keys.
* Values are checked against the field's type hint (``int``, ``float``, ``str``, ``bool``, ``Path``,
  ``Literal[...]``, ``Optional``, ``list[...]``/``tuple[...]``, ``dict[str, ...]`` and nested
  dataclasses) and converted where it is lossless (an ``int`` where a ``float`` is expected).
* A dataclass may define ``validate(self)`` raising :class:`ConfigError` for cross-field rules.
* Overrides use dotted paths: ``["train.lr=1e-4", "methods.0.name=uwm"]``; values parse as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from relsafe.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _convert(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {
            _convert(k, kt, f"{where} key"): _convert(v, vt, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot interpret {value!r} as {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and bad types are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}"
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys for {cls.__name__}: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON/YAML-able structure (Paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (UTF-8, size-bounded, alias- and depth-bounded): a missing, unreadable or
    non-UTF-8 file, malformed YAML or an alias bomb is a :class:`ConfigError` naming it."""
    from relsafe.errors import InputError
    from relsafe.utils_io import load_yaml_text, read_text_file

    path = Path(path)
    try:
        text = read_text_file(path, "config file")
        return _acyclic(load_yaml_text(text, str(path)), str(path))
    except ConfigError:
        raise
    except InputError as e:
        raise ConfigError(str(e)) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}:{_yaml_where(e)} malformed YAML: {_yaml_what(e)}") from e


def _acyclic(data: Any, source: str) -> Any:
    """``data``, unless a YAML alias made it contain itself (``a: &x [*x]``): that is a
    :class:`ConfigError` naming ``source`` (a config is a tree; a cycle would recurse forever)."""
    stack: list[tuple[Any, bool]] = [(data, False)]
    active: set[int] = set()
    while stack:
        obj, leaving = stack.pop()
        if not isinstance(obj, dict | list):
            continue
        if leaving:
            active.discard(id(obj))
            continue
        if id(obj) in active:
            raise ConfigError(f"{source}: a YAML alias (*ref) refers to a value that contains it")
        active.add(id(obj))
        stack.append((obj, True))
        stack.extend((v, False) for v in (obj.values() if isinstance(obj, dict) else obj))
    return data


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""


def _yaml_what(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):  # a control character in the text
        c = e.character
        ch = chr(c) if isinstance(c, int) else c
        return f"character {ch!r} (at character {e.position}) is not allowed in YAML"
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    what = "; ".join(str(x) for x in parts if x)
    return what or " ".join(str(e).split())


def parse_override_value(raw: str, item: str, where: str = "--set") -> Any:
    """The value of one ``key=value`` override, parsed as (bounded) YAML; errors name ``item``."""
    from relsafe.errors import InputError
    from relsafe.utils_io import load_yaml_text

    try:
        return _acyclic(load_yaml_text(raw, f"{where} {item!r}"), f"{where} {item!r}")
    except InputError as e:
        raise ConfigError(str(e)) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: cannot parse the value in {item!r}: {_yaml_what(e)}") from e


def apply_overrides(data: dict, overrides: typing.Sequence[str], where: str = "--set") -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested mapping, in place.

    A list is indexed by a non-negative integer below its length (``methods.0.name=uwm``); an
    index out of range, a negative one, an empty key part or a path through a scalar is a
    :class:`ConfigError` naming the override.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the config to override must be a mapping")
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: an override is a 'key.path=value' string, got {item!r}")
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: override {item!r} is not of the form key.path=value")
        parts = key.split(".")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"{where}: override {item!r} has an empty part in its key {key!r}")
        value = parse_override_value(raw, item, where)
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            here = ".".join(parts[:depth]) or "the config"
            if isinstance(node, list):
                i = _index(part, item, node, where)
                if last:
                    node[i] = value
                else:
                    node = node[i]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(
                    f"{where}: {item!r} goes through {here!r}, which is {node!r}, not a mapping "
                    "or a list"
                )
    return data


def _index(part: str, item: str, items: list, where: str = "--set") -> int:
    try:
        i = int(part)
    except ValueError as e:
        raise ConfigError(f"{where}: {item!r} indexes a list with non-integer {part!r}") from e
    if i < 0 or i >= len(items) or not part.strip().isdigit():
        span = f"indexed 0 to {len(items) - 1}" if items else "so no index is valid"
        raise ConfigError(
            f"{where}: {item!r}: list index {part!r} is out of range; the list has "
            f"{len(items)} item(s), {span}"
        )
    return i


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> T:
    """Load ``cls`` from an optional YAML file plus dotted overrides."""
    data: Any = {} if path is None else load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    apply_overrides(data, overrides)
    return from_dict(cls, data, str(path) if path else "config")
