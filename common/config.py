"""Typed settings: nested dataclasses loaded from YAML, with dotted `key=value` overrides.

Every job and command (curate, caption, train, sample, scenes make, ...) describes its settings
as dataclasses and loads them with `load_yaml_config(Settings, path, ["a.b=1", ...])`. Loading
checks everything at once, before any work starts: unknown keys (named with their full path and
the keys that exist there), values of the wrong type, and enum-like fields typed as
`Literal[...]` (named with their allowed values). `keys_help(Settings)` lists every key with its
type, default and the comment beside its field, for `--help`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A setting that does not exist or does not fit its type: one line, naming the key."""


def _union_args(hint) -> list | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return None


def _dataclass_in(hint):
    """The dataclass inside `hint` (itself, or X of `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = _union_args(hint)
    if args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _describe(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    args = _union_args(hint)
    if args:
        return " | ".join("null" if a is type(None) else _describe(a) for a in args)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        inner = typing.get_args(hint)
        if origin is tuple and inner and inner[-1] is not Ellipsis:  # a fixed-length tuple: [W, H]
            return "[" + ", ".join(_describe(a) for a in inner) + "]"
        return f"list[{_describe(inner[0])}]" if inner else "list"
    if origin is dict:
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def coerce(value, hint, where: str):
    """`value` checked (and gently converted: YAML 1.1 reads 1e-3 as a string) against `hint`."""
    if hint is typing.Any:
        return value
    args = _union_args(hint)
    if args:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: {value!r} is not {_describe(hint)}")
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a number")
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a shard id written as 3, a version named 2
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not a string")
        return value
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {value!r} is not a list (write key=[a,b])")
        inner = typing.get_args(hint)
        if inner and origin is list:
            return [coerce(v, inner[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if inner and origin is tuple and inner[-1] is not Ellipsis and len(inner) == len(value):
            return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not a mapping")
        return value
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a dict, recursively; unknown keys and bad values name their path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; the keys under "
                          f"{where.rstrip('.') or 'the top level'} are: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}{name}.")
        elif nested is None:
            value = coerce(value, hint, f"{where}{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a check in the dataclass's __post_init__
        raise ConfigError(f"{where.rstrip('.') + ': ' if where else ''}{e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` strings onto a nested dict; values are parsed as YAML (numbers, lists, true)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r} is not key=value (e.g. optim.lr=3e-4)")
        path, raw = item.split("=", 1)
        node = data
        *parents, leaf = path.strip().split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"{item!r}: {p} is not a section")
        node[leaf] = parse_value(raw)
    return data


def parse_value(raw: str):
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # a plain string with YAML-significant characters (a URL with ': ', a SQL condition)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; a user means the number
        try:
            return float(value)
        except ValueError:
            pass
    return value


def read_yaml(path: str | Path | None) -> dict:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping")
    return data


def load_yaml_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """`cls` from a YAML file (or its defaults) with `overrides` applied on top."""
    return from_dict(cls, apply_overrides(read_yaml(path), overrides or []))


def overrides_of(cls, name: str | None = None):
    """A dataclass with every field of `cls` optional (None = keep the base value): the typed form
    of "these settings of a preset, changed" (e.g. a training config's model.dit)."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, hints[f.name] | None, dataclasses.field(default=None)) for f in dataclasses.fields(cls)]
    made = dataclasses.make_dataclass(name or f"{cls.__name__}Overrides", fields)
    made.__module__ = inspect.stack()[1].frame.f_globals["__name__"]  # picklable as <caller>.<name>
    made.__doc__ = f"Overrides of {cls.__name__}: each key left out keeps the base value."
    made.__base_class__ = cls
    return made


def set_fields(overrides) -> dict:
    """The fields of an `overrides_of` instance that were given."""
    return {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}


_COMMENT = re.compile(r"^\s*(\w+)\s*:.*?#\s?(.*)$")


def _comments(cls) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        m = _COMMENT.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def keys_help(cls, prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    """Every key of `cls` (nested sections flattened with dots): type, default, comment."""
    lines = []
    hints = typing.get_type_hints(cls)
    comments = _comments(getattr(cls, "__base_class__", cls))
    base_hints = typing.get_type_hints(getattr(cls, "__base_class__", cls))
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in skip:
            continue
        nested = _dataclass_in(hints[f.name])
        if nested is not None:
            lines.append(keys_help(nested, key + ".", skip))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        if nested is not None:
            lines.append(f"  {key}.<key>    {nested.__doc__.strip().splitlines()[0] if nested.__doc__ else ''}")
            continue
        shown = "null" if default is None else default if not isinstance(default, bool) else str(default).lower()
        hint = base_hints.get(f.name, hints[f.name])
        text = f"  {key} = {shown}    ({_describe(hint)})"
        if comments.get(f.name):
            text += f"  {comments[f.name]}"
        lines.append(text)
    return "\n".join(line for line in lines if line)
