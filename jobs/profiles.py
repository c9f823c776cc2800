"""Bundled config profiles: `--config NAME` means jobs/configs/<job>/NAME.yaml unless NAME is a file."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


def profiles(job: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / job).glob("*.yaml"))


def config_path(job: str, name: str) -> str:
    """`name` as a YAML file, else the bundled profile jobs/configs/<job>/<name>.yaml.

    Only a file counts: `make demo` writes ./demo/, which must not hide the bundled `demo` profile."""
    if Path(name).is_file():
        return name
    bundled = CONFIGS / job / f"{name}.yaml"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError(f"no {job} config {name!r}: not a file, and not one of {profiles(job)}")
