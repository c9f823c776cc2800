"""The error a command raises for a known failure: printed as one clear line, exit code 1."""


class CommandError(Exception):
    """A known failure: printed by the CLI as one clear line, exit code 1."""
