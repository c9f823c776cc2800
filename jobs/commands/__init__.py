"""CLI command groups. Each module has `register(subparsers, formatter)` and sets `run` handlers."""


from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class CommandError(Exception):
    """A known failure: printed by the CLI as one clear line, exit code 1."""


def config_path(job: str, name: str) -> str:
    """`name` as a YAML file, else the bundled profile jobs/configs/<job>/<name>.yaml.

    Only a file counts: `make demo` writes ./demo/, which must not hide the bundled `demo` profile."""
    if Path(name).is_file():
        return name
    bundled = CONFIGS / job / f"{name}.yaml"
    if bundled.exists():
        return str(bundled)
    profiles = sorted(p.stem for p in (CONFIGS / job).glob("*.yaml"))
    raise FileNotFoundError(f"no {job} config {name!r}: not a file, and not one of {profiles}")
