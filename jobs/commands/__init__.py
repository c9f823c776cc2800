"""CLI command groups. Each module has `register(subparsers, formatter)` and sets `run` handlers."""


class CommandError(Exception):
    """A known failure: printed by the CLI as one clear line, exit code 1."""
