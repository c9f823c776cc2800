"""Typed job configs: nested dataclasses loaded from YAML, with dotted command-line overrides.

Every job (curate, caption, train, ...) describes its settings as dataclasses and loads them with
`load_yaml_config(JobConfig, path, ["a.b=1", ...])`. It lives beside the data contract because a
job's resolved config is also what it records in the dataset's lineage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml


def _dataclass_in(hint):
    """The dataclass inside `hint` (itself, or X of `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a dict, recursively; unknown keys are an error naming the path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {[where + k for k in unknown]}; known under "
                         f"{where or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}{name}.")
        elif hint in (float, float | None) and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` strings onto a nested dict; values are parsed as YAML (numbers, lists, true)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        path, raw = item.split("=", 1)
        node = data
        *parents, leaf = path.strip().split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[leaf] = parse_value(raw)
    return data


def parse_value(raw: str):
    value = yaml.safe_load(raw)
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
        raise ValueError(f"{path}: a config file must be a YAML mapping")
    return data


def load_yaml_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """`cls` from a YAML file (or its defaults) with `overrides` applied on top."""
    return from_dict(cls, apply_overrides(read_yaml(path), overrides or []))
